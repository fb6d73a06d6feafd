"""Scalar decoders for the Numba kernels: little-endian loads and fp16/bf16 from their bits.

Numba has no float16 type, so half floats are decoded here with integer operations into the
float32 bit pattern, which `f32_from_bits` reinterprets (an LLVM bitcast, NaN payloads kept).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _bitcast_u32_to_f32(typingctx, bits):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _bitcast_u64_to_f64(typingctx, bits):
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@njit(inline="always", cache=True)
def f32_from_bits(bits):
    """The float32 whose IEEE-754 bits are `bits` (uint32)."""
    return _bitcast_u32_to_f32(np.uint32(bits))


@njit(inline="always", cache=True)
def f64_from_bits(bits):
    """The float64 whose IEEE-754 bits are `bits` (uint64)."""
    return _bitcast_u64_to_f64(np.uint64(bits))


@njit(inline="always", cache=True)
def u16(b, i, at):
    """Little-endian uint16 at byte `at` of row `i` of a uint8 array."""
    return np.uint32(b[i, at]) | (np.uint32(b[i, at + 1]) << 8)


@njit(inline="always", cache=True)
def u32(b, i, at):
    """Little-endian uint32 at byte `at` of row `i` of a uint8 array."""
    return (np.uint32(b[i, at]) | (np.uint32(b[i, at + 1]) << 8)
            | (np.uint32(b[i, at + 2]) << 16) | (np.uint32(b[i, at + 3]) << 24))


@njit(inline="always", cache=True)
def f16_to_f32(h):
    """IEEE half (its 16 bits, as an integer) -> float32, exactly, like ggml_fp16_to_fp32.

    half:  s eeeee mmmmmmmmmm      (bias 15)
    float: s eeeeeeee mmm...m(23)  (bias 127)
    Normal numbers move the exponent (+112) and the mantissa (<<13); subnormals (e == 0) are
    mant * 2^-24, exact in float32; e == 31 is inf or NaN (payload kept).
    """
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << 16
    exp = (h >> 10) & np.uint32(0x1F)
    mant = h & np.uint32(0x3FF)
    if exp == 0:
        value = np.float32(mant) * np.float32(5.9604644775390625e-08)   # 2^-24
        return -value if sign else value
    if exp == 31:
        return f32_from_bits(sign | np.uint32(0x7F800000) | (mant << 13))
    return f32_from_bits(sign | ((exp + np.uint32(112)) << 23) | (mant << 13))


@njit(inline="always", cache=True)
def bf16_to_f32(h):
    """bfloat16 (its 16 bits) -> float32: the bits are the top half of a float32."""
    return f32_from_bits(np.uint32(h) << 16)


@njit(inline="always", cache=True)
def load_f16(b, i, at):
    """The little-endian fp16 at byte `at` of block `i`, as float32."""
    return f16_to_f32(u16(b, i, at))
