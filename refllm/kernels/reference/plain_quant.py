"""Quantizers for the plain 16-bit float types: float32 -> the bytes ggml writes.

One element per "block" (block_elems = 1, block_bytes = 2): x is float32 [n, 1] and the
result is uint8 [n, 2], the little-endian half float. llama-quantize converts a tensor to F16
with `ggml_fp32_to_fp16_row` and to BF16 with `ggml_fp32_to_bf16_row_ref` (ggml.c,
`ggml_quantize_chunk`); both convert element by element.
"""

from __future__ import annotations

import numpy as np


def f16(x):
    """ggml_half: ggml_compute_fp32_to_fp16 (ggml-impl.h), element by element.

    IEEE binary16, round to nearest even: subnormal halves are rounded correctly, values of
    65520 and beyond become ±inf. A NaN becomes the quiet NaN 0x7E00 with its sign (its payload
    is dropped). NumPy's astype(float16) is the same correctly rounded conversion; only its NaNs
    differ (NumPy keeps the top of the payload), so they are replaced.
    """
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):                              # beyond ±65504: ±inf
        h = x.astype("<f2").view("<u2")
    sign = (x.view("<u4") >> 16).astype("<u2") & np.uint16(0x8000)
    h = np.where(np.isnan(x), sign | np.uint16(0x7E00), h).astype("<u2")
    return h.view(np.uint8).reshape(x.shape[0], 2)


def bf16(x):
    """ggml_bf16_t: ggml_compute_fp32_to_bf16 (ggml-impl.h), element by element.

    The top 16 bits of the float32, rounded to nearest even on the 16 bits dropped:
        h = (u + 0x7FFF + ((u >> 16) & 1)) >> 16          (u: the float's bits, as uint32)
    (the largest finite floats round up to ±inf). A NaN is not rounded but truncated, and
    made quiet: h = (u >> 16) | 0x40.
    """
    u = np.asarray(x, np.float32).view("<u4")
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16   # no carry out: u <= 0xFF800000
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    h = np.where(nan, (u >> 16) | np.uint32(0x40), rounded).astype("<u2")
    return h.view(np.uint8).reshape(u.shape[0], 2)
