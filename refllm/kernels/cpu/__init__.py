"""Numba CPU kernels, one decoder (F.py) and one quantizer (F_quant.py) per type, grouped by
family like reference/, giving the reference's bits.

Each decoder is `@njit(parallel=True, cache=True)` with signature `kernel(blocks, out)`:
blocks (n_blocks, block_bytes) uint8, C-contiguous; out (n_blocks, block_elems) float32, filled.
Every kernel must produce the same bits as its NumPy reference (tests/test_dequant.py).
Kernels do plain float32 arithmetic in the reference's order: Numba never fuses a multiply and
an add unless fastmath is on, and fastmath is never on here.

Speed: inner loops take their trip count from an array shape (`range(out.shape[1])`), not a
literal. LLVM fully unrolls a loop of literal length 16 or 32 into scalar code; a loop of
unknown length it vectorizes instead (with a run-time check that `blocks` and `out` do not
overlap), which was twice as fast for Q4_0 (2.0 -> 4.2 G elements/s on one thread).
"""
