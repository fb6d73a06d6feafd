"""Numba twins of refllm/ggml_cpu/reference/quantize_activations.py: the Q8 converters of a matmul's
activations (x86's quantize_row_q8_0 / q8_1 and quantize_row_q8_K_ref), the same float32
operations, the same bits. A row of a few hundred activations takes microseconds here, against
about 0.1 ms in NumPy, which matters at one token: SmolLM2 converts 211 rows a token."""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.ggml_cpu.reference.quantize_activations import QuantizedRows
from refllm.kernels.cpu.fp import f16_to_f32
from refllm.kernels.cpu.plain_quant import f32_to_f16_bits

F32 = np.float32
U32 = np.uint32
U64 = np.uint64


@njit(inline="always", cache=True)
def _fp16_value(v):
    return f16_to_f32(f32_to_f16_bits(np.float32(v)))


@njit(inline="always", cache=True)
def _amax_bits(row, first, size):
    """The largest |row[first:first + size]| as its float32 bits: for non-NaN floats the bit
    patterns of |x| sort as the values do (NaN counts as 0, as a comparison skips it), and an
    integer maximum vectorizes where a float one does not."""
    amax_bits = U32(0)
    for i in range(size):
        bits = F32(abs(row[first + i])).view(U32)
        bits = bits if bits <= U32(0x7F800000) else U32(0)
        amax_bits = max(amax_bits, bits)
    return amax_bits


@njit(cache=True)
def _q8_0(x, q, d, s, with_sum):
    """Fill q int8 [n, k], d float32 [n, nb] (and s when with_sum) from x float32 [n, k].
    amax by _amax_bits; the block size is unknown to LLVM (k // nb), which would otherwise
    unroll the loops into scalar code instead of vectorizing them."""
    n, k = x.shape
    nb = U64(k // 32)
    size = U64(k) // nb
    for t in range(n):
        row, q_row = x[t], q[t]
        for b in range(nb):
            first = b * size
            amax_bits = _amax_bits(row, first, size)
            amax = U32(amax_bits).view(F32)
            scale = F32(amax / F32(127))
            d[t, b] = _fp16_value(scale)
            inverse = F32(F32(127) / amax) if amax != 0 else F32(0)
            total = np.int32(0)
            for i in range(size):
                v = np.int8(np.rint(F32(row[first + i] * inverse)))
                q_row[first + i] = v
                total += np.int32(v)
            if with_sum:
                s[t, b] = _fp16_value(F32(scale * F32(total)))


@njit(cache=True)
def _q8_k(x, q, d, bsums):
    """Fill q int8 [n, k], d float32 [n, nb], bsums int16 [n, k / 16] from x float32 [n, k].
    The block's largest |x| (first of equals) is found as _q8_0 finds amax, then as the
    smallest index holding it, so that every loop vectorizes (block sizes unknown to LLVM)."""
    n, k = x.shape
    nb = U64(k // 256)
    size = U64(k) // nb
    sixteen = size // U64(16)
    for t in range(n):
        row, q_row = x[t], q[t]
        for b in range(nb):
            first = b * size
            amax_bits = _amax_bits(row, first, size)
            at = size
            for i in range(size):
                hit = F32(abs(row[first + i])).view(U32) == amax_bits
                at = min(at, i if hit else size)
            signed_max = row[first + at] if at < size else F32(0)
            iscale = F32(F32(-127) / signed_max) if signed_max != 0 else F32(0)
            for i in range(size):
                q_row[first + i] = np.int8(min(np.rint(F32(iscale * row[first + i])), F32(127)))
            d[t, b] = F32(F32(1) / iscale) if iscale != 0 else F32(0)
        for j in range(U64(k) // sixteen):
            total = np.int32(0)
            for i in range(sixteen):
                total += np.int32(q_row[j * sixteen + i])
            bsums[t, j] = np.int16(total)


def _checked(x, size):
    x = np.ascontiguousarray(x, F32)
    if x.ndim != 2 or x.shape[1] % size:
        raise ValueError(f"activations {x.shape} are not rows of whole blocks of {size}")
    return x


def q8_0(x) -> QuantizedRows:
    """reference.activations.q8_0, bit for bit."""
    x = _checked(x, 32)
    n, k = x.shape
    q, d = np.empty((n, k), np.int8), np.empty((n, k // 32), F32)
    _q8_0(x, q, d, d, False)
    return QuantizedRows(q, d)


def q8_1(x) -> QuantizedRows:
    """reference.activations.q8_1, bit for bit."""
    x = _checked(x, 32)
    n, k = x.shape
    q, d, s = np.empty((n, k), np.int8), np.empty((n, k // 32), F32), np.empty((n, k // 32), F32)
    _q8_0(x, q, d, s, True)
    return QuantizedRows(q, d, s=s)


def q8_k(x) -> QuantizedRows:
    """reference.activations.q8_k, bit for bit."""
    x = _checked(x, 256)
    n, k = x.shape
    q, d, bsums = np.empty((n, k), np.int8), np.empty((n, k // 256), F32), np.empty((n, k // 16), np.int16)
    _q8_k(x, q, d, bsums)
    return QuantizedRows(q, d, bsums=bsums)
