"""Plain types: one value per element, no blocks (block_elems = 1).

Integers and float64 become float32 the way NumPy's astype does (round to nearest even); that
is also what ggml's CPU backend does when it casts.
"""

from __future__ import annotations

import numpy as np


def f32(blocks):   # float
    return blocks.view("<f4").copy()


def f16(blocks):   # ggml_half: IEEE binary16
    return blocks.view("<f2").astype(np.float32)


def bf16(blocks):  # ggml_bf16_t: the top 16 bits of a float32
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)


def f64(blocks):   # double
    return blocks.view("<f8").astype(np.float32)


def i8(blocks):    # int8_t
    return blocks.view("i1").astype(np.float32)


def i16(blocks):   # int16_t
    return blocks.view("<i2").astype(np.float32)


def i32(blocks):   # int32_t
    return blocks.view("<i4").astype(np.float32)


def i64(blocks):   # int64_t
    return blocks.view("<i8").astype(np.float32)
