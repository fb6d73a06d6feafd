"""Quantizers for the first block formats (decoded in legacy.py): float32 -> ggml's bytes.

Each follows ggml's `quantize_row_<type>_ref` (ggml-quants.c), which llama-quantize calls
for these types when it has no importance matrix. x is float32 [n_blocks, 32], finite
(`quantize` refuses NaN and inf, as llama-quantize does); the result is uint8
[n_blocks, block_bytes]. All arithmetic is float32, in C's order:

- The scale is computed in float32 and used unrounded for the inverse `id = d ? 1/d : 0`;
  only the stored copy is rounded to fp16 (quant_plain.f16).
- `(int8_t)v` and `(uint8_t)v` are what ggml's x86-64 build computes: truncate toward zero to
  int32 (cvttss2si: INT32_MIN for NaN, ±inf and values beyond int32) and keep the low byte.
  Only a degenerate block reaches the edge: a subnormal scale whose inverse overflows to inf
  makes x*id ±inf or NaN (0*inf), and those values become quant 0.
- Q8_0 rounds with C's roundf: half away from zero (2.5 -> 3), not NumPy's half to even.

Weights j and j + 16 of a block share byte j of `qs` (low and high nibble); the Q5 types keep
each weight's 5th bit in `qh`, a little-endian uint32 whose bit j belongs to weight j.
"""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.plain_quant import f16

F32 = np.float32


def _c_byte(v):
    """(uint8_t)v or (int8_t)v of float32 values, as ggml's x86-64 code computes it: truncate to
    int32 (INT32_MIN for NaN, ±inf and |v| >= 2^31) and keep the low byte. Returned as uint8;
    view it as int8 for the signed cast."""
    t = np.trunc(v)
    with np.errstate(invalid="ignore"):                          # NaN compares false
        in_range = np.abs(t) < F32(2.0 ** 31)
    i32 = np.where(in_range, t, F32(-2.0 ** 31)).astype(np.int64)
    return (i32 & 0xFF).astype(np.uint8)


def _roundf(v):
    """C's roundf on float32: to the nearest integer, halves away from zero (-2.5 -> -3).

    The fraction v - trunc(v) is exact, so comparing it with 0.5 decides without rounding
    (v + 0.5 would round 0.49999997 up to 1)."""
    t = np.trunc(v)
    with np.errstate(invalid="ignore"):                          # inf - inf, NaN
        away = np.abs(v - t) >= F32(0.5)
    return np.where(away, t + np.copysign(F32(1), v), t).astype(np.float32)


def _inverse(d):
    """id = d ? 1.0f/d : 0.0f, in float32 (may be inf when d is subnormal)."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(np.float32)


def _first(x, index):
    """x[i, index[i]] as (n, 1)."""
    return np.take_along_axis(x, index[:, None], axis=1)


def _signed_absmax(x):
    """The block's value of largest magnitude, sign kept: C's loop
        amax = 0; max = 0; for each v: if (amax < fabsf(v)) { amax = fabsf(v); max = v; }
    keeps the first of equal magnitudes (argmax does too), and +0.0 for an all-zero block
    (even one of -0.0s, where x[argmax] would be -0.0)."""
    a = np.abs(x)
    i = np.argmax(a, axis=1)
    return np.where(_first(a, i) > 0, _first(x, i), F32(0))


def _min_max(x):
    """C's loop  min = FLT_MAX; max = -FLT_MAX; if (v < min) min = v; if (v > max) max = v;
    keeps the first of equal values (which matters only for the sign of a zero min): argmin
    and argmax also return the first."""
    return _first(x, np.argmin(x, axis=1)), _first(x, np.argmax(x, axis=1))


def _nibbles(q):
    """(n, 32) quants (uint8) -> (n, 16) bytes: byte j = q[j] | q[j + 16] << 4 (as uint8)."""
    half = q.shape[1] // 2
    return q[:, :half] | (q[:, half:] << np.uint8(4))


def _fifth_bits(q):
    """(n, 32) 5-bit quants -> qh, (n, 4) bytes of a little-endian uint32: bit j = bit 4 of q[j]."""
    bit = ((q >> 4) & 1).astype(np.uint32) << np.arange(q.shape[1], dtype=np.uint32)
    return np.bitwise_or.reduce(bit, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def q4_0(x):
    """block_q4_0, 18 bytes, 32 weights:
        ggml_half d;         // scale
        uint8_t   qs[16];    // 4-bit quants, nibbles
    quantize_row_q4_0_ref:
        max = the value of largest |x| (sign kept)
        d   = max / -8                    (so max itself maps to q = 0)
        q   = MIN(15, (int8_t)(x*id + 8.5f))         id = d ? 1/d : 0
    """
    d = _signed_absmax(x) / F32(-8)
    q = _c_byte(x * _inverse(d) + F32(8.5)).view(np.int8)
    q = np.minimum(q, np.int8(15)).view(np.uint8)
    return np.concatenate([f16(d), _nibbles(q)], axis=1)


def q4_1(x):
    """block_q4_1, 20 bytes, 32 weights:
        ggml_half d;         // scale
        ggml_half m;         // min
        uint8_t   qs[16];    // 4-bit quants, nibbles
    quantize_row_q4_1_ref:
        d = (max - min) / 15
        q = MIN(15, (int8_t)((x - min)*id + 0.5f))   id = d ? 1/d : 0
    """
    lo, hi = _min_max(x)
    d = (hi - lo) / F32(15)
    q = _c_byte((x - lo) * _inverse(d) + F32(0.5)).view(np.int8)
    q = np.minimum(q, np.int8(15)).view(np.uint8)
    return np.concatenate([f16(d), f16(lo), _nibbles(q)], axis=1)


def q5_0(x):
    """block_q5_0, 22 bytes, 32 weights:
        ggml_half d;         // scale
        uint8_t   qh[4];     // 5th bits, as a little-endian uint32 (bit j -> weight j)
        uint8_t   qs[16];    // low 4 bits, nibbles
    quantize_row_q5_0_ref:
        max = the value of largest |x| (sign kept)
        d   = max / -16
        q   = MIN(31, (int8_t)(x*id + 16.5f))        id = d ? 1/d : 0
    """
    d = _signed_absmax(x) / F32(-16)
    q = _c_byte(x * _inverse(d) + F32(16.5)).view(np.int8)
    q = np.minimum(q, np.int8(31)).view(np.uint8)
    return np.concatenate([f16(d), _fifth_bits(q), _nibbles(q & np.uint8(0x0F))], axis=1)


def q5_1(x):
    """block_q5_1, 24 bytes, 32 weights:
        ggml_half d;         // scale
        ggml_half m;         // min
        uint8_t   qh[4];     // 5th bits, as a little-endian uint32
        uint8_t   qs[16];    // low 4 bits, nibbles
    quantize_row_q5_1_ref:
        d = (max - min) / 31
        q = (uint8_t)((x - min)*id + 0.5f)           id = d ? 1/d : 0; no MIN: q <= 31 anyway
    """
    lo, hi = _min_max(x)
    d = (hi - lo) / F32(31)
    q = _c_byte((x - lo) * _inverse(d) + F32(0.5))
    return np.concatenate([f16(d), f16(lo), _fifth_bits(q), _nibbles(q & np.uint8(0x0F))], axis=1)


def q8_0(x):
    """block_q8_0, 34 bytes, 32 weights:
        ggml_half d;         // scale
        int8_t    qs[32];    // quants
    quantize_row_q8_0_ref:
        d = max|x| / 127
        q = (int8_t)roundf(x*id)                     id = d ? 1/d : 0; roundf: halves away from 0
    """
    d = np.abs(x).max(axis=1, keepdims=True) / F32(127)
    q = _c_byte(_roundf(x * _inverse(d)))
    return np.concatenate([f16(d), q], axis=1)
