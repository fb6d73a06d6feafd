"""Numba twin of refllm/ggml_cpu/reference/lowbit.py: Q1_0 and Q2_0 as llama.cpp's x86 build
multiplies them (ggml_vec_dot_q1_0_q8_0's AVX2 kernel, ggml_vec_dot_q2_0_q8_0_generic's scalar
C); the same float32 operations in the same order, so the same bits.

Each weight row is read straight from its bytes, one block at a time: the block's weights are
unpacked once (int16), every activation row is dotted with them (exact int32 sums), and the sums
are folded into that row's float32 accumulators in the kernel's order. Single-threaded.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.ggml_cpu.reference.lowbit import LOWBIT_BLOCKS
from refllm.ggml_cpu.x86 import fma32

I32 = np.int32
F32 = np.float32

# fp16 bits -> float32 for every half (exact); Numba freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat."""
    if weight_type not in LOWBIT_BLOCKS:
        raise KeyError(weight_type)
    rows, k = shape
    per, size = LOWBIT_BLOCKS[weight_type]
    n = act.q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    blocks = np.ascontiguousarray(np.asarray(raw, np.uint8).reshape(rows, k // per, size))
    a = np.ascontiguousarray(act.q).astype(np.int16).reshape(n, k // 32, 32)
    lowbit_matmul(blocks, weight_type == "Q1_0", a, np.ascontiguousarray(act.d, F32), out)
    return out


@njit(cache=True)
def lowbit_matmul(blocks, q1, a, d_a, out):
    """out [n, rows]: Q1_0 (q1) or Q2_0 dot products as the reference's docstring says.
    blocks uint8 [rows, nb, 18] (d fp16 at 0, qs[16] at 2; Q1_0: bit j of qs[i] is weight
    8i + j, 1 -> +1 and 0 -> -1, 128 weights; Q2_0: bits 2j of qs[i] are weight 4i + j, t - 1,
    64 weights); a int16 [n, k/32, 32] (the Q8_0 quants); d_a float32 [n, k/32]."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    per = 128 if q1 else 64
    w = np.empty(per, np.int16)
    lanes = np.empty(8, I32)
    acc = np.empty((n, 8), F32)
    blk = np.empty(8, F32)
    sumf = np.empty(n, F32)
    for r in range(rows):
        acc[:, :] = 0
        sumf[:] = 0
        for b in range(nb):
            for i in range(16):
                byte = I32(blocks[r, b, 2 + i])
                if q1:
                    for j in range(8):
                        w[8 * i + j] = np.int16(1) if (byte >> j) & 1 else np.int16(-1)
                else:
                    for j in range(4):
                        w[4 * i + j] = np.int16(((byte >> (2 * j)) & 3) - 1)
            d_w = FP16_TO_F32[I32(blocks[r, b, 0]) | (I32(blocks[r, b, 1]) << 8)]
            for t in range(n):
                sumi = F32(0)
                for kk in range(per // 32):
                    c = (per // 32) * b + kk
                    for l in range(8):
                        s = I32(0)
                        for i in range(4):
                            s = I32(s + I32(I32(w[32 * kk + 4 * l + i]) * I32(a[t, c, 4 * l + i])))
                        lanes[l] = s
                    if q1:
                        for l in range(8):
                            if kk == 0:
                                blk[l] = F32(d_a[t, c] * F32(lanes[l]))
                            else:
                                blk[l] = fma32(d_a[t, c], F32(lanes[l]), blk[l])
                    else:
                        total = I32(0)
                        for l in range(8):
                            total = I32(total + lanes[l])
                        sumi = F32(sumi + F32(d_a[t, c] * F32(total)))
                if q1:
                    for l in range(8):
                        acc[t, l] = fma32(d_w, blk[l], acc[t, l])
                else:
                    sumf[t] = F32(sumf[t] + F32(d_w * sumi))
        for t in range(n):
            if q1:
                t0 = F32(acc[t, 4] + acc[t, 0])
                t1 = F32(acc[t, 5] + acc[t, 1])
                t2 = F32(acc[t, 6] + acc[t, 2])
                t3 = F32(acc[t, 7] + acc[t, 3])
                out[t, r] = F32(F32(t0 + t2) + F32(t1 + t3))
            else:
                out[t, r] = sumf[t]
