"""Numba quantizers for the plain 16-bit float types (see reference/quant_plain.py).

`f32_to_f16_bits` is also the fp16 rounding of every block quantizer's scale (quant_legacy).
It is written from the IEEE rules with integer operations (no float arithmetic that could
round), so it is an independent check of the NumPy reference, which uses astype(float16).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _bitcast_f32_to_u32(typingctx, value):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(inline="always", cache=True)
def f32_bits(f):
    """The IEEE-754 bits of float32 `f`, as uint32."""
    return _bitcast_f32_to_u32(np.float32(f))


@njit(inline="always", cache=True)
def f32_to_f16_bits(f):
    """float32 -> IEEE half bits (uint32 < 2^16), as ggml_compute_fp32_to_fp16 rounds.

    float: s eeeeeeee m(23)   (bias 127)      half: s eeeee m(10)   (bias 15)
    Round to nearest, ties to even, on the bits dropped. NaN -> sign | 0x7E00.
    - |f| >= 2^-14 (a normal half, or overflow): subtract 112 from the exponent (127 - 15),
      drop 13 mantissa bits with rounding; a carry may run into the exponent, up to 0x7C00,
      which is inf. Anything at or past 0x7C00 (65520 and up, inf) is inf.
    - |f| < 2^-14 (a subnormal half, or 0): the half is |f| / 2^-24 rounded to an integer:
      the 24-bit significand shifted right by 126 - e (e = the float's biased exponent).
      A carry to 0x400 is the smallest normal half, correctly.
    """
    w = f32_bits(f)
    sign = (w >> np.uint32(16)) & np.uint32(0x8000)
    a = w & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):                                 # NaN
        return sign | np.uint32(0x7E00)
    if a >= np.uint32(0x38800000):                                # >= 2^-14
        if a >= np.uint32(0x477FF000):                            # >= 65520: rounds to inf
            return sign | np.uint32(0x7C00)
        r = a - np.uint32(112 << 23)
        h = (r + np.uint32(0x0FFF) + ((r >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        return sign | h
    e = a >> np.uint32(23)
    shift = np.uint32(126) - e if e > np.uint32(0) else np.uint32(125)
    if shift > np.uint32(24):                                     # |f| <= 2^-25: rounds to 0
        return sign
    mant = (a & np.uint32(0x7FFFFF)) | (np.uint32(0x800000) if e > np.uint32(0) else np.uint32(0))
    q = mant >> shift
    rem = mant - (q << shift)
    half = np.uint32(1) << (shift - np.uint32(1))
    if rem > half or (rem == half and (q & np.uint32(1)) == np.uint32(1)):
        q += np.uint32(1)
    return sign | q


@njit(inline="always", cache=True)
def f32_to_bf16_bits(f):
    """float32 -> bfloat16 bits, as ggml_compute_fp32_to_bf16: the top half of the float, round
    to nearest even on the dropped half; NaN truncated and made quiet (| 0x40)."""
    u = f32_bits(f)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x40)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit(inline="always", cache=True)
def store_u16(out, i, at, h):
    """Little-endian uint16 `h` into bytes at, at+1 of row `i` of a uint8 array."""
    out[i, at] = np.uint8(h & np.uint32(0xFF))
    out[i, at + 1] = np.uint8(h >> np.uint32(8))


@njit(parallel=True, cache=True)
def f16(x, out):
    for i in prange(x.shape[0]):
        store_u16(out, i, 0, f32_to_f16_bits(x[i, 0]))


@njit(parallel=True, cache=True)
def bf16(x, out):
    for i in prange(x.shape[0]):
        store_u16(out, i, 0, f32_to_bf16_bits(x[i, 0]))
