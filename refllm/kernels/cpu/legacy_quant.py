"""Numba quantizers for the legacy block formats (see reference/quant_legacy.py for the layouts,
the C functions and the formulas).

Signature `q(x, out)`: x float32 [n_blocks, 32], finite; out uint8 [n_blocks, block_bytes],
filled.
Every float constant and operand is float32 (a Python float literal is float64 in Numba and
would promote the arithmetic); fastmath stays off, so nothing is fused or reordered.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.plain_quant import f32_to_f16_bits, store_u16

F32 = np.float32


@njit(inline="always", cache=True)
def _c_byte(v):
    """(uint8_t)v / (int8_t)v as ggml's x86-64 code computes it: truncate to int32 (INT32_MIN for
    NaN, ±inf and |v| >= 2^31), keep the low byte. Returned as int32 in 0..255."""
    if not (abs(v) < F32(2147483648.0)):                         # NaN fails too
        return np.int32(0)                                       # low byte of INT32_MIN
    return np.int32(np.int64(v) & 0xFF)                          # int64(v) truncates


@njit(inline="always", cache=True)
def _c_int8(v):
    """(int8_t)v: _c_byte, read as a signed byte."""
    b = _c_byte(v)
    return b - np.int32(256) if b >= np.int32(128) else b


@njit(inline="always", cache=True)
def _roundf(v):
    """C's roundf: nearest integer, halves away from zero. Stays float32 (NaN, inf kept)."""
    if not (abs(v) < F32(8388608.0)):                            # 2^23 and up: already integral
        return v
    t = F32(np.int32(v))                                         # trunc, exact here
    frac = v - t                                                 # exact
    if frac >= F32(0.5):
        return t + F32(1.0)
    if frac <= F32(-0.5):
        return t - F32(1.0)
    return t


@njit(inline="always", cache=True)
def _inverse(d):
    """id = d ? 1.0f/d : 0.0f."""
    return F32(1.0) / d if d != F32(0.0) else F32(0.0)


@njit(inline="always", cache=True)
def _signed_absmax(x, i):
    """The first value of largest |x| in block i, sign kept; +0.0 for an all-zero block."""
    amax = F32(0.0)
    vmax = F32(0.0)
    for j in range(x.shape[1]):
        v = x[i, j]
        if amax < abs(v):
            amax = abs(v)
            vmax = v
    return vmax


@njit(inline="always", cache=True)
def _min_max(x, i):
    """C's min/max loop: from FLT_MAX and -FLT_MAX, strict comparisons (first of equals kept)."""
    lo = F32(3.4028234663852886e38)
    hi = F32(-3.4028234663852886e38)
    for j in range(x.shape[1]):
        v = x[i, j]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@njit(inline="always", cache=True)
def _store_u32(out, i, at, w):
    for k in range(4):
        out[i, at + k] = np.uint8((w >> np.uint32(8 * k)) & np.uint32(0xFF))


@njit(parallel=True, cache=True)
def q4_0(x, out):
    half = x.shape[1] // 2                                       # 16
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-8.0)
        inv = _inverse(d)
        store_u16(out, i, 0, f32_to_f16_bits(d))
        for j in range(half):
            lo = min(np.int32(15), _c_int8(x[i, j] * inv + F32(8.5)))
            hi = min(np.int32(15), _c_int8(x[i, j + half] * inv + F32(8.5)))
            out[i, 2 + j] = np.uint8((lo & 0xFF) | ((hi << 4) & 0xFF))


@njit(parallel=True, cache=True)
def q4_1(x, out):
    half = x.shape[1] // 2
    for i in prange(x.shape[0]):
        lo_v, hi_v = _min_max(x, i)
        d = (hi_v - lo_v) / F32(15.0)
        inv = _inverse(d)
        store_u16(out, i, 0, f32_to_f16_bits(d))
        store_u16(out, i, 2, f32_to_f16_bits(lo_v))
        for j in range(half):
            lo = min(np.int32(15), _c_int8((x[i, j] - lo_v) * inv + F32(0.5)))
            hi = min(np.int32(15), _c_int8((x[i, j + half] - lo_v) * inv + F32(0.5)))
            out[i, 4 + j] = np.uint8((lo & 0xFF) | ((hi << 4) & 0xFF))


@njit(parallel=True, cache=True)
def q5_0(x, out):
    half = x.shape[1] // 2
    for i in prange(x.shape[0]):
        d = _signed_absmax(x, i) / F32(-16.0)
        inv = _inverse(d)
        store_u16(out, i, 0, f32_to_f16_bits(d))
        qh = np.uint32(0)
        for j in range(half):
            lo = min(np.int32(31), _c_int8(x[i, j] * inv + F32(16.5))) & 0xFF
            hi = min(np.int32(31), _c_int8(x[i, j + half] * inv + F32(16.5))) & 0xFF
            out[i, 6 + j] = np.uint8((lo & 0x0F) | ((hi & 0x0F) << 4))
            qh |= np.uint32((lo >> 4) & 1) << np.uint32(j)
            qh |= np.uint32((hi >> 4) & 1) << np.uint32(j + half)
        _store_u32(out, i, 2, qh)


@njit(parallel=True, cache=True)
def q5_1(x, out):
    half = x.shape[1] // 2
    for i in prange(x.shape[0]):
        lo_v, hi_v = _min_max(x, i)
        d = (hi_v - lo_v) / F32(31.0)
        inv = _inverse(d)
        store_u16(out, i, 0, f32_to_f16_bits(d))
        store_u16(out, i, 2, f32_to_f16_bits(lo_v))
        qh = np.uint32(0)
        for j in range(half):
            lo = _c_byte((x[i, j] - lo_v) * inv + F32(0.5))
            hi = _c_byte((x[i, j + half] - lo_v) * inv + F32(0.5))
            out[i, 8 + j] = np.uint8((lo & 0x0F) | ((hi & 0x0F) << 4))
            qh |= np.uint32((lo >> 4) & 1) << np.uint32(j)
            qh |= np.uint32((hi >> 4) & 1) << np.uint32(j + half)
        _store_u32(out, i, 4, qh)


@njit(parallel=True, cache=True)
def q8_0(x, out):
    for i in prange(x.shape[0]):
        amax = F32(0.0)
        for j in range(x.shape[1]):
            amax = max(amax, abs(x[i, j]))
        d = amax / F32(127.0)
        inv = _inverse(d)
        store_u16(out, i, 0, f32_to_f16_bits(d))
        for j in range(x.shape[1]):
            out[i, 2 + j] = np.uint8(_c_byte(_roundf(x[i, j] * inv)))
