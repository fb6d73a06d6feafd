"""Numba kernels for TQ1_0 and TQ2_0 (layouts in reference/ternary.py)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import load_f16

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


@njit(inline="always", cache=True)
def _trit(byte, n):
    """Base-3 digit n of a packed byte: ((uint8)(byte * 3^n) * 3) >> 8, as -1, 0 or +1."""
    shifted = np.uint8(byte * _POW3[n])                # wraps mod 256, like the C uint8
    return np.int32((np.uint16(shifted) * 3) >> 8) - 1


@njit(parallel=True, cache=True)
def tq1_0(blocks, out):
    qk = out.shape[1]                                    # 256; loop bounds derive from it
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 52)
        for n in range(5):
            for m in range(qk // 8):                     # qs[0..31]  -> weights 0..159
                out[i, n * 32 + m] = np.float32(_trit(blocks[i, m], n)) * d
            for m in range(qk // 16):                    # qs[32..47] -> weights 160..239
                out[i, 160 + n * 16 + m] = np.float32(_trit(blocks[i, 32 + m], n)) * d
        for n in range(4):
            for m in range(qk // 64):                    # qh[0..3]   -> weights 240..255
                out[i, 240 + n * 4 + m] = np.float32(_trit(blocks[i, 48 + m], n)) * d


@njit(parallel=True, cache=True)
def tq2_0(blocks, out):
    quarter = out.shape[1] // 8                          # 32
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 64)
        for h in range(2):
            for s in range(4):
                for m in range(quarter):
                    q = (blocks[i, 32 * h + m] >> (2 * s)) & 3
                    out[i, 128 * h + 32 * s + m] = np.float32(np.int32(q) - 1) * d
