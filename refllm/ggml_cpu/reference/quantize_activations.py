"""How llama.cpp's CPU backend rounds a matmul's activations before its dot products.

A CPU MUL_MAT does not multiply the weights by float32 activations. It first converts each
activation row to the weight type's `vec_dot_type` (ggml-cpu.c, type_traits_cpu) and then
runs integer dot products against that (refllm.ggml_cpu.vec_dot has the table). These are the
converters ggml's x86-64 build runs (AVX2), as NumPy; every function takes x float32
[n, k] and works row by row, block by block:

    q8_0   block_q8_0 { ggml_half d; int8 qs[32]; }
           arch/x86/quants.c quantize_row_q8_0 (and repack.cpp's 4-row ggml_quantize_mat_q8_0_4x8,
           which rounds the same way):
               amax = max |x|;  d = fp16(amax / 127);  id = amax ? 127 / amax : 0
               q = round_half_even(x * id)               (not x / d: the unrounded 127/amax)
    q8_1   block_q8_1 { ggml_half d; ggml_half s; int8 qs[32]; }
           quantize_row_q8_1: as q8_0, plus s = fp16(amax / 127 * sum(q)) -- the float32 d,
           times the integer sum, rounded to fp16. The Q4_1/Q5_1 dot products add m * s for
           each block, so this fp16 rounding reaches the result.
    q8_k   block_q8_K { float d; int8 qs[256]; int16 bsums[16]; }
           quantize_row_q8_K = ggml-quants.c quantize_row_q8_K_ref on x86:
               max = the first x with the largest |x|;  iscale = -127 / max
               q = min(127, nearest_int(iscale * x));  d = 1 / iscale      (float32, not fp16)
           (repack.cpp's ggml_quantize_mat_q8_K_4x8 may flip the sign of iscale; q and d flip
           together, so d * q is the same.)
    f16    each element rounded to fp16 (F16C, round to nearest even): F16 weights' vec_dot_type
    bf16   each element rounded to bf16 (ggml_compute_fp32_to_bf16): BF16 weights'

All arithmetic is float32, in C's order. `dequantized(rows)` gives d * q, the float32
activations the integer dot product in effect multiplies the weights by.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refllm.kernels.reference.plain_quant import bf16 as bf16_bytes
from refllm.kernels.reference.plain_quant import f16 as f16_bytes

F32 = np.float32


class QuantizedRows(NamedTuple):
    """Activation rows in a q8 layout, one entry per row and block (nb = k / block size)."""
    q: np.ndarray                    # int8 [n, k]
    d: np.ndarray                    # float32 [n, nb]: the block scale (fp16's value for q8_0/q8_1)
    s: np.ndarray | None = None      # float32 [n, nb]: q8_1 only, fp16(d * sum(q))
    bsums: np.ndarray | None = None  # int16 [n, k / 16]: q8_k only, the sums of q in 16s


def _fp16_value(x):
    """float32 x rounded to fp16, as float32."""
    return f16_bytes(np.ravel(x)).view("<f2").astype(F32).reshape(np.shape(x))


def _blocks(x, size):
    x = np.asarray(x, F32)
    n, k = x.shape
    if k % size:
        raise ValueError(f"a row of {k} activations is not whole blocks of {size}")
    return x.reshape(n, k // size, size)


def _q8_0_core(x):
    """The shared part of q8_0 and q8_1: (q int8 [n, nb, 32], d float32 unrounded [n, nb])."""
    blocks = _blocks(x, 32)                                        # [n, nb, 32]
    amax = np.abs(blocks).max(axis=-1)                             # [n, nb]
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.rint(blocks * inverse[..., None]).astype(np.int8)      # rint: half to even, as _mm256_round_ps
    return q, d


def q8_0(x) -> QuantizedRows:
    """x float32 [n, k] (k a multiple of 32) as ggml's x86 quantize_row_q8_0 writes it."""
    q, d = _q8_0_core(x)
    return QuantizedRows(q.reshape(q.shape[0], -1), _fp16_value(d))


def q8_1(x) -> QuantizedRows:
    """x float32 [n, k] (k a multiple of 32) as ggml's x86 quantize_row_q8_1 writes it."""
    q, d = _q8_0_core(x)
    s = _fp16_value(d * q.sum(axis=-1, dtype=np.int32).astype(F32))
    return QuantizedRows(q.reshape(q.shape[0], -1), _fp16_value(d), s=s)


def q8_k(x) -> QuantizedRows:
    """x float32 [n, k] (k a multiple of 256) as ggml's quantize_row_q8_K_ref writes it."""
    blocks = _blocks(x, 256)                                       # [n, nb, 256]
    first_largest = np.abs(blocks).argmax(axis=-1)[..., None]     # argmax: the first of equals
    signed_max = np.take_along_axis(blocks, first_largest, axis=-1)[..., 0]    # [n, nb]
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, F32(-127) / signed_max, F32(0)).astype(F32)
    q = np.minimum(np.rint(blocks * iscale[..., None]), F32(127)).astype(np.int8)
    with np.errstate(divide="ignore"):
        d = np.where(iscale != 0, F32(1) / iscale, F32(0)).astype(F32)
    n = q.shape[0]
    bsums = q.reshape(n, -1, 16).sum(axis=-1, dtype=np.int16)
    return QuantizedRows(q.reshape(n, -1), d, bsums=bsums)


def f16(x) -> np.ndarray:
    """x float32 [n, k] rounded to fp16, as float32."""
    return _fp16_value(np.asarray(x, F32))


def bf16(x) -> np.ndarray:
    """x float32 [n, k] rounded to bf16, as float32."""
    x = np.asarray(x, F32)
    halves = bf16_bytes(x.ravel()).view("<u2").astype(np.uint32) << 16
    return halves.view(F32).reshape(x.shape)


def dequantized(rows: QuantizedRows) -> np.ndarray:
    """d * q: the float32 activations [n, k] that the integer dot products stand for."""
    n, k = rows.q.shape
    nb = rows.d.shape[1]
    blocks = rows.q.reshape(n, nb, k // nb).astype(F32)
    return (blocks * rows.d[..., None]).reshape(n, k)
