"""Numba kernels for the plain types (see reference/plain.py). One element per "block" row."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import bf16_to_f32, f16_to_f32, f32_from_bits, f64_from_bits, u16, u32


@njit(parallel=True, cache=True)
def f32(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = f32_from_bits(u32(blocks, i, 0))


@njit(parallel=True, cache=True)
def f16(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = f16_to_f32(u16(blocks, i, 0))


@njit(parallel=True, cache=True)
def bf16(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = bf16_to_f32(u16(blocks, i, 0))


@njit(inline="always", cache=True)
def _u64(b, i):
    return np.uint64(u32(b, i, 0)) | (np.uint64(u32(b, i, 4)) << np.uint64(32))


@njit(parallel=True, cache=True)
def f64(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = np.float32(f64_from_bits(_u64(blocks, i)))


@njit(parallel=True, cache=True)
def i8(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = np.float32(np.int8(blocks[i, 0]))


@njit(parallel=True, cache=True)
def i16(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = np.float32(np.int16(u16(blocks, i, 0)))


@njit(parallel=True, cache=True)
def i32(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = np.float32(np.int32(u32(blocks, i, 0)))


@njit(parallel=True, cache=True)
def i64(blocks, out):
    for i in prange(blocks.shape[0]):
        out[i, 0] = np.float32(np.int64(_u64(blocks, i)))
