"""llama.cpp's x86 matmul for IQ4_NL and MXFP4 matrices that are not repacked, and for NVFP4,
float operation for float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/lut4.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations (to Q8_0:
refllm.ggml_cpu.reference.quantize_activations.q8_0). A matrix whose rows are whole 8s is repacked by
llama.cpp's AVX2 build (iq4_nl_8x8, mxfp4_8x8: refllm/ggml_cpu/reference/repack.py); these
kernels run for the others (rows not whole 8s, or a matrix kept in a plain CPU buffer).

Both types are blocks of 32 weights, a 4-bit index each into a table of 16 integers, and one
scale (block layouts: ggml_repack.REPACK_BLOCKS):

    type     w = LUT[nibble]             d_w
    IQ4_NL   kvalues_iq4nl (-127..113)   fp16 d
    MXFP4    kvalues_mxfp4 (-12..12)     E8M0 e: 2^(e-127) / 2 (GGML_CPU_E8M0_TO_FP32_HALF)

For one weight row and one activation row (Q8_0: a int8, d_a fp16), with per block b

    lane[b][l] = sum(w_i * a_i, i = 4l .. 4l+3)     int32 (sign trick + maddubs + madd: exact,
                                                    |w|, |a| <= 127)
    s[b]       = d_a * d_w                          float32

ggml-cpu runs (ggml_compute_forward_mul_mat):

  vec_dot (ggml_vec_dot_iq4_nl_q8_0 / ggml_vec_dot_mxfp4_q8_0, AVX2): two 8-lane accumulators,
  one for the even blocks and one for the odd, over the whole pairs of blocks:

      acc1[l] = fma(s[2p], lane[2p][l], acc1[l]);  acc2[l] = fma(s[2p+1], lane[2p+1][l], acc2[l])
      y = hsum8(acc1 + acc2)                        (lane-wise sum first)
      y = y + s[nb-1] * (float) sum_l lane[nb-1][l]      an odd last block, by the scalar
                                                    tail `sumf += d * (sumi1 + sumi2)`: a
                                                    product, then a sum (not contracted into an
                                                    fma: golden/matmul_kernels tells the two
                                                    apart, IQ4_NL k = 288)

  tinyBLAS (IQ4_NL only, two or more tokens: llamafile_sgemm's tinyBLAS_Q0_AVX): one
  accumulator, refllm/ggml_cpu/reference/legacy.py's arithmetic with w = kvalues_iq4nl:

      acc[l] = fma(d_w * d_a, lane[b][l], acc[l])   for every block in order;   y = hsum8(acc)

MXFP4 has no tinyBLAS kernel: vec_dot for every batch size.

NVFP4 (never repacked on x86, no tinyBLAS: ggml_vec_dot_nvfp4_q8_0 for every batch size):

    block_nvfp4 { uint8 d[4]; uint8 qs[32]; }    64 weights in 4 sub-blocks of 16: sub-block s
                 has the UE4M3 scale d[s] (ggml_ue4m3_to_fp32, halved) and qs[8s .. 8s+7]: byte
                 j -> weights 16s + j (low nibble) and 16s + 8 + j (high), kvalues_mxfp4

  A block meets two Q8_0 blocks (2b, 2b+1); each is one 8-lane step, lanes 0-3 of sub-block
  2h, lanes 4-7 of sub-block 2h+1:

      s[h][l] = ue4m3(d[2h + l/4]) * d_a[2b + h]      float32
      acc[l]  = fma(s[0][l], lane[2b][l], acc[l]);  acc[l] = fma(s[1][l], lane[2b+1][l], acc[l])
      y = hsum8(acc)
"""

from __future__ import annotations

import numpy as np

from refllm.ggml_cpu.reference.legacy import legacy_matmul
from refllm.ggml_cpu.reference.repack import lut_quants
from refllm.ggml_cpu.x86 import fma32_array, hsum8_array
from refllm.kernels.reference.fields import nibbles
from refllm.kernels.reference.fp4 import ue4m3_half
from refllm.kernels.tables import KVALUES_MXFP4

F32 = np.float32

LUT4_TYPES = ("IQ4_NL", "MXFP4", "NVFP4")
NVFP4_BLOCK_BYTES = 36
# The types llamafile_sgemm multiplies (tinyBLAS_Q0_AVX) when the batch has this many tokens
TINYBLAS_TYPES = ("IQ4_NL",)
TINYBLAS_MIN_BATCH = 2


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian IQ4_NL, MXFP4 (k whole 32s) or NVFP4 (k whole
    64s) matrix raw (uint8, shape (rows, k)) and Q8_0 activations act (QuantizedRows), bit for
    bit as llama.cpp's AVX2 build multiplies a matrix it has not repacked: tinyBLAS (IQ4_NL,
    n >= 2) or vec_dot."""
    if weight_type not in LUT4_TYPES:
        raise KeyError(weight_type)
    if weight_type == "NVFP4":
        w, d_w = nvfp4_quants(raw, shape[0])
        return nvfp4_vec_dot_matmul(w, d_w, act.q, act.d)
    w, d_w = lut_quants(raw, weight_type, shape[0])
    if weight_type in TINYBLAS_TYPES and act.q.shape[0] >= TINYBLAS_MIN_BATCH:
        return legacy_matmul(w, d_w, None, act.q, act.d, None)
    return vec_dot_matmul(w, d_w, act.q, act.d)


def vec_dot_matmul(w, d_w, a, d_a) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_iq4_nl_q8_0 / ggml_vec_dot_mxfp4_q8_0 (AVX2) compute each
    output (module docstring): w int8 [rows, k], d_w float32 [rows, nb], a int8 [n, k], d_a
    float32 [n, nb]."""
    rows, k = w.shape
    n, nb = a.shape[0], k // 32
    lanes = np.einsum("rbji,tbji->trbj", w.reshape(rows, nb, 8, 4).astype(np.int32),
                      a.reshape(n, nb, 8, 4).astype(np.int32))                  # [n, rows, nb, 8]
    scale = (d_a[:, None, :] * d_w[None, :, :]).astype(F32)                      # [n, rows, nb]
    acc1 = np.zeros((n, rows, 8), F32)
    acc2 = np.zeros((n, rows, 8), F32)
    for b in range(0, nb - 1, 2):
        acc1 = fma32_array(scale[:, :, b, None], lanes[:, :, b].astype(F32), acc1)
        acc2 = fma32_array(scale[:, :, b + 1, None], lanes[:, :, b + 1].astype(F32), acc2)
    y = hsum8_array(acc1 + acc2)
    if nb % 2:
        y = y + scale[:, :, nb - 1] * lanes[:, :, nb - 1].sum(axis=-1).astype(F32)
    return y


def nvfp4_quants(raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """An NVFP4 matrix's weights and sub-block scales: (w int8 [rows, k] = kvalues_mxfp4[nibble],
    d float32 [rows, k / 16] = ue4m3(d[s]) / 2)."""
    blocks = np.asarray(raw, np.uint8).reshape(-1, NVFP4_BLOCK_BYTES)
    w = KVALUES_MXFP4[nibbles(blocks[:, 4:36].reshape(-1, 8))].reshape(rows, -1)
    return w, ue4m3_half(blocks[:, 0:4]).reshape(rows, -1)


def nvfp4_vec_dot_matmul(w, d_w, a, d_a) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_nvfp4_q8_0 (AVX2) computes each output (module docstring):
    w int8 [rows, k], d_w float32 [rows, k/16], a int8 [n, k], d_a float32 [n, k/32]."""
    rows, k = w.shape
    n, nb32 = a.shape[0], k // 32
    lanes = np.einsum("rbji,tbji->trbj", w.reshape(rows, nb32, 8, 4).astype(np.int32),
                      a.reshape(n, nb32, 8, 4).astype(np.int32)).astype(F32)      # [n, rows, nb32, 8]
    sub = np.repeat(d_w.reshape(rows, nb32, 2), 4, axis=-1)                       # [rows, nb32, 8]: lane -> scale
    scale = (sub[None] * d_a[:, None, :, None]).astype(F32)                       # [n, rows, nb32, 8]
    acc = np.zeros((n, rows, 8), F32)
    for b in range(nb32):
        acc = fma32_array(scale[:, :, b], lanes[:, :, b], acc)
    return hsum8_array(acc)
