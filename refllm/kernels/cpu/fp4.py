"""Numba kernels for MXFP4 and NVFP4 (layouts in reference/fp4.py)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import f32_from_bits
from refllm.kernels.tables import KVALUES_MXFP4


@njit(inline="always", cache=True)
def _e8m0_half(e):
    e = np.uint32(e)
    return f32_from_bits(np.uint32(0x00200000) << e if e < 2 else (e - np.uint32(1)) << 23)


@njit(inline="always", cache=True)
def _ue4m3_half(x):
    if x == 0 or x == 0x7F:
        return np.float32(0.0)
    exp = np.int32((x >> 3) & 0x0F)
    man = np.float32(x & 0x07)
    if exp == 0:
        raw = man * np.float32(2.0 ** -9)
    else:
        two_to_exp = f32_from_bits(np.uint32(exp - 7 + 127) << 23)   # 2^(exp-7), exactly
        raw = (np.float32(1.0) + man / np.float32(8.0)) * two_to_exp
    return raw * np.float32(0.5)


@njit(parallel=True, cache=True)
def mxfp4(blocks, out):
    half = out.shape[1] // 2                             # 16
    for i in prange(blocks.shape[0]):
        d = _e8m0_half(blocks[i, 0])
        for j in range(half):
            byte = blocks[i, 1 + j]
            out[i, j] = d * np.float32(KVALUES_MXFP4[byte & 0x0F])
            out[i, j + half] = d * np.float32(KVALUES_MXFP4[byte >> 4])


@njit(parallel=True, cache=True)
def nvfp4(blocks, out):
    eighth = out.shape[1] // 8                           # 8
    for i in prange(blocks.shape[0]):
        for s in range(4):
            d = _ue4m3_half(blocks[i, s])
            for j in range(eighth):
                byte = blocks[i, 4 + 8 * s + j]
                out[i, 16 * s + j] = d * np.float32(KVALUES_MXFP4[byte & 0x0F])
                out[i, 16 * s + j + 8] = d * np.float32(KVALUES_MXFP4[byte >> 4])
