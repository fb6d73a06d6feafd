"""NumPy references: per family, F.py decodes each of its types and F_quant.py quantizes them.

Each decoder takes `blocks`, a (n_blocks, block_bytes) uint8 array, and returns the (n_blocks,
block_elems) float32 values. Each reads like the C struct it decodes: the layout is in its
docstring, the code slices the fields in that order, and the arithmetic is ggml's, in ggml's
order, in float32 (so the result is bit-exact: a different order could round differently).
Each quantizer takes float32 (n_blocks, block_elems) and returns the (n_blocks, block_bytes)
uint8 blocks, naming the C function it follows.
"""
