"""Numba kernels for the legacy block formats (see reference/legacy.py for the layouts).

Loop bounds come from `out.shape[1]` (the block size) rather than literals: see cpu/__init__.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import load_f16, u32


@njit(parallel=True, cache=True)
def q4_0(blocks, out):
    half = out.shape[1] // 2                                   # 16
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(half):
            byte = blocks[i, 2 + j]
            out[i, j] = np.float32(np.int32(byte & 0x0F) - 8) * d
            out[i, j + half] = np.float32(np.int32(byte >> 4) - 8) * d


@njit(parallel=True, cache=True)
def q4_1(blocks, out):
    half = out.shape[1] // 2                                   # 16
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        m = load_f16(blocks, i, 2)
        for j in range(half):
            byte = blocks[i, 4 + j]
            out[i, j] = np.float32(byte & 0x0F) * d + m
            out[i, j + half] = np.float32(byte >> 4) * d + m


@njit(parallel=True, cache=True)
def q5_0(blocks, out):
    half = out.shape[1] // 2                                   # 16
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        qh = u32(blocks, i, 2)
        for j in range(half):
            byte = blocks[i, 6 + j]
            lo = np.int32(byte & 0x0F) | np.int32(((qh >> j) & 1) << 4)
            hi = np.int32(byte >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
            out[i, j] = np.float32(lo - 16) * d
            out[i, j + half] = np.float32(hi - 16) * d


@njit(parallel=True, cache=True)
def q5_1(blocks, out):
    half = out.shape[1] // 2                                   # 16
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        m = load_f16(blocks, i, 2)
        qh = u32(blocks, i, 4)
        for j in range(half):
            byte = blocks[i, 8 + j]
            lo = np.int32(byte & 0x0F) | np.int32(((qh >> j) & 1) << 4)
            hi = np.int32(byte >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
            out[i, j] = np.float32(lo) * d + m
            out[i, j + half] = np.float32(hi) * d + m


@njit(parallel=True, cache=True)
def q8_0(blocks, out):
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(out.shape[1]):                          # 32
            out[i, j] = np.float32(np.int8(blocks[i, 2 + j])) * d


@njit(parallel=True, cache=True)
def q8_1(blocks, out):
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(out.shape[1]):                          # 32
            out[i, j] = np.float32(np.int8(blocks[i, 4 + j])) * d


@njit(parallel=True, cache=True)
def q1_0(blocks, out):
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(out.shape[1]):                          # 128
            bit = (blocks[i, 2 + j // 8] >> (j % 8)) & 1
            out[i, j] = d if bit else -d


@njit(parallel=True, cache=True)
def q2_0(blocks, out):
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(out.shape[1]):                          # 64
            q = (blocks[i, 2 + j // 4] >> (2 * (j % 4))) & 3
            out[i, j] = np.float32(np.int32(q) - 1) * d
