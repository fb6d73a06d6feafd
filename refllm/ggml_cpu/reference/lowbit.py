"""llama.cpp's x86 matmul for Q1_0 and Q2_0 (1- and 2-bit weights, one fp16 scale per block),
float operation for float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/lowbit.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations (to Q8_0:
refllm.ggml_cpu.reference.quantize_activations.q8_0). Neither type has a tinyBLAS, tiled.cpp or (on x86)
repack kernel: ggml-cpu runs the type's vec_dot for every batch size.

    block_q1_0 { ggml_half d; uint8 qs[16]; }   128 weights: bit j of qs[i] is weight 8i + j,
                                                1 -> +1, 0 -> -1
    block_q2_0 { ggml_half d; uint8 qs[16]; }   64 weights: bits 2j of qs[i] are weight 4i + j,
                                                t = 0..3 -> t - 1

Q1_0 (ggml_vec_dot_q1_0_q8_0, AVX2): a weight block meets four Q8_0 blocks K = 0..3, each one
8-lane step (lane l: weights 4l .. 4l+3 of the 32, sign trick + maddubs + madd, exact):

    blk[l] = d_a[0] * (float) lane_0[l]                     _mm256_mul_ps
    blk[l] = fma(d_a[K], (float) lane_K[l], blk[l])         K = 1, 2, 3
    acc[l] = fma(d_w, blk[l], acc[l]);        y = hsum8(acc)

Q2_0 (ggml_vec_dot_q2_0_q8_0_generic: x86 has no kernel of its own; scalar C):

    for each weight block:  sumi = 0 (float);  for each of its two Q8_0 blocks:
                                sumi = sumi + d_a * (float) (integer dot product)
                            sumf = sumf + d_w * sumi
    y = sumf

Neither of the scalar `+= a * b` is contracted into a fused multiply-add by this build (for
sumf golden/matmul_kernels tells the two apart; for sumi it cannot matter: d_a has 11
significant bits and the dot product at most 13, so the product is exact).
"""

from __future__ import annotations

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array, hsum8_array
from refllm.kernels.reference.fields import bits, f16

F32 = np.float32

# type -> (weights per block, bytes per block)
LOWBIT_BLOCKS: dict[str, tuple[int, int]] = {"Q1_0": (128, 18), "Q2_0": (64, 18)}


def lowbit_quants(raw: np.ndarray, weight_type: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A Q1_0 / Q2_0 matrix's signed weights and scales: (w int8 [rows, k], d float32 [rows, nb])."""
    blocks = np.asarray(raw, np.uint8).reshape(-1, LOWBIT_BLOCKS[weight_type][1])
    if weight_type == "Q1_0":
        w = np.where(bits(blocks[:, 2:18], 1) == 1, 1, -1).astype(np.int8)
    elif weight_type == "Q2_0":
        w = bits(blocks[:, 2:18], 2).astype(np.int8) - np.int8(1)
    else:
        raise KeyError(weight_type)
    return w.reshape(rows, -1), f16(blocks, 0).reshape(rows, -1)


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian Q1_0 (k whole 128s) or Q2_0 (k whole 64s) matrix
    raw (uint8, shape (rows, k)) and Q8_0 activations act (QuantizedRows), bit for bit as
    llama.cpp's AVX2 build (vec_dot at every batch size; the module docstring)."""
    w, d_w = lowbit_quants(raw, weight_type, shape[0])
    if weight_type == "Q1_0":
        return q1_0_matmul(w, d_w, act.q, act.d)
    return q2_0_matmul(w, d_w, act.q, act.d)


def _lanes(w, a):
    """w int8 [rows, k], a int8 [n, k] -> float32 [n, rows, k/32, 8]: per Q8_0 block, lane l
    sums the products of weights 4l .. 4l+3 (exact)."""
    rows, k = w.shape
    n = a.shape[0]
    return np.einsum("rbli,tbli->trbl", w.reshape(rows, k // 32, 8, 4).astype(np.int32),
                     a.reshape(n, k // 32, 8, 4).astype(np.int32)).astype(F32)


def q1_0_matmul(w, d_w, a, d_a) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_q1_0_q8_0 (AVX2): w int8 [rows, k] (+-1), d_w float32
    [rows, k/128], a int8 [n, k], d_a float32 [n, k/32]."""
    lanes = _lanes(w, a)                                                        # [n, rows, nb32, 8]
    n, rows, nb32, _ = lanes.shape
    acc = np.zeros((n, rows, 8), F32)
    for b in range(nb32 // 4):
        blk = d_a[:, None, 4 * b, None] * lanes[:, :, 4 * b]
        for kk in range(1, 4):
            blk = fma32_array(np.broadcast_to(d_a[:, None, 4 * b + kk, None], blk.shape), lanes[:, :, 4 * b + kk], blk)
        acc = fma32_array(np.broadcast_to(d_w[None, :, b, None], acc.shape), blk, acc)
    return hsum8_array(acc)


def q2_0_matmul(w, d_w, a, d_a) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_q2_0_q8_0_generic: w int8 [rows, k] (-1..2), d_w float32
    [rows, k/64], a int8 [n, k], d_a float32 [n, k/32]."""
    sums = _lanes(w, a).sum(axis=-1)                                            # [n, rows, nb32] exact
    n, rows, nb32 = sums.shape
    sumf = np.zeros((n, rows), F32)
    for b in range(nb32 // 2):
        sumi = np.zeros((n, rows), F32)
        for kk in range(2):
            sumi = sumi + d_a[:, None, 2 * b + kk] * sums[:, :, 2 * b + kk]
        sumf = sumf + d_w[None, :, b] * sumi
    return sumf
