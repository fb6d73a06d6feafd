"""Numba CPU kernels, one per ggml type, grouped by family like reference/.

Each is `@njit(parallel=True, cache=True)` with signature `kernel(blocks, out)`:
blocks (n_blocks, block_bytes) uint8, C-contiguous; out (n_blocks, block_elems) float32, filled.
Every kernel must produce the same bits as its NumPy reference (tests/test_dequant.py).
Kernels do plain float32 arithmetic in the reference's order: Numba never fuses a multiply and
an add unless fastmath is on, and fastmath is never on here.
"""
