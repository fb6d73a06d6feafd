"""NumPy reference decoders, one per ggml type, grouped by family.

Each takes `blocks`, a (n_blocks, block_bytes) uint8 array, and returns the (n_blocks,
block_elems) float32 values. Each reads like the C struct it decodes: the layout is in its
docstring, the code slices the fields in that order, and the arithmetic is ggml's, in ggml's
order, in float32 (so the result is bit-exact: a different order could round differently).
"""
