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
    Normal halves: rebias the exponent (+112) and move exponent and mantissa up 13 bits.
    Subnormal halves (exponent 0): mant * 2^-24, exact in float32. Exponent 31: inf or NaN,
    payload kept. All three are computed and one selected, so loops over halves vectorize
    (and no float operation ever sees a subnormal input, which is slow on x86).
    """
    h = np.uint32(h)
    exp = h & np.uint32(0x7C00)
    mant = h & np.uint32(0x3FF)
    normal = f32_from_bits(((h & np.uint32(0x7FFF)) << 13) + np.uint32(112 << 23))
    subnormal = np.float32(mant) * np.float32(2.0 ** -24)
    special = f32_from_bits(np.uint32(0x7F800000) | (mant << 13))
    value = subnormal if exp == 0 else (special if exp == np.uint32(0x7C00) else normal)
    return -value if h & np.uint32(0x8000) else value


@njit(inline="always", cache=True)
def bf16_to_f32(h):
    """bfloat16 (its 16 bits) -> float32: the bits are the top half of a float32."""
    return f32_from_bits(np.uint32(h) << 16)


@njit(inline="always", cache=True)
def load_f16(b, i, at):
    """The little-endian fp16 at byte `at` of block `i`, as float32."""
    return f16_to_f32(u16(b, i, at))
