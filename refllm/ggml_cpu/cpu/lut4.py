"""Numba twin of refllm/ggml_cpu/reference/lut4.py: IQ4_NL and MXFP4 matrices that llama.cpp
does not repack, and NVFP4, as its AVX2 vec_dot and tinyBLAS multiply them; the same float32
operations in the same order, so the same bits.

Each weight row is read straight from its bytes, one block at a time: the block's 32 weights
are looked up once, every activation row is dotted with them in 8 lanes of 4 (exact int32
sums), and the lanes are folded into that row's float32 accumulators in the kernel's order.
Below FEW_TOKENS tokens this goes token by token; from it on, the activations are transposed
(tokens contiguous) and every step runs across the tokens at once (vectorized). Single-threaded,
like the engine.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.ggml_cpu.reference.lut4 import LUT4_TYPES, NVFP4_BLOCK_BYTES, TINYBLAS_MIN_BATCH, TINYBLAS_TYPES
from refllm.ggml_cpu.reference.repack import LUT_TYPES, REPACK_BLOCKS, lut_scales
from refllm.ggml_cpu.x86 import fma32
from refllm.kernels.reference.fp4 import ue4m3_half
from refllm.kernels.tables import KVALUES_MXFP4

I32 = np.int32
F32 = np.float32

# From this many tokens on, the tokens are swept together (lut4_matmul_tokens); below, row by
# row and token by token (lut4_matmul_rows). The same bits either way.
FEW_TOKENS = 8


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat (tinyBLAS for IQ4_NL at
    two or more tokens, vec_dot otherwise)."""
    if weight_type not in LUT4_TYPES:
        raise KeyError(weight_type)
    rows, k = shape
    if weight_type == "NVFP4":
        return _nvfp4_mul_mat(raw, rows, k, act)
    nb = k // 32
    block_bytes = REPACK_BLOCKS[weight_type][1]
    n = act.q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    blocks = np.ascontiguousarray(np.asarray(raw, np.uint8).reshape(rows, nb, block_bytes))
    qs_at, lut = LUT_TYPES[weight_type]
    d_w = np.ascontiguousarray(lut_scales(blocks.reshape(rows * nb, block_bytes), weight_type).reshape(rows, nb), F32)
    tinyblas = weight_type in TINYBLAS_TYPES and n >= TINYBLAS_MIN_BATCH
    if n < FEW_TOKENS:
        a = np.ascontiguousarray(act.q).astype(np.int16).reshape(n, nb, 32)
        lut4_matmul_rows(blocks, qs_at, lut.astype(np.int16), d_w, a, np.ascontiguousarray(act.d, F32), tinyblas, out)
    else:
        a_t = np.ascontiguousarray(np.asarray(act.q).reshape(n, nb, 32).transpose(1, 2, 0), dtype=I32)
        d_a_t = np.ascontiguousarray(np.asarray(act.d, F32).T)
        lut4_matmul_tokens(blocks, qs_at, lut.astype(np.int16), d_w, a_t, d_a_t, tinyblas, out)
    return out


@njit(cache=True)
def lut4_matmul_rows(blocks, qs_at, lut, d_w, a, d_a, tinyblas, out):
    """out [n, rows] for a few tokens, row by row and token by token: tinyBLAS_Q0_AVX's
    arithmetic when `tinyblas` (one accumulator), else ggml_vec_dot_{iq4_nl,mxfp4}_q8_0's (even
    and odd blocks apart, the scalar tail of an odd block count); the reference's docstring has
    both.
    blocks uint8 [rows, nb, block bytes] (qs[16] at qs_at: byte j holds weight j in its low
    nibble and weight j + 16 in its high one, each a lut index: lut int16 [16]); d_w float32
    [rows, nb]; a int16 [n, nb, 32] (the Q8_0 quants); d_a float32 [n, nb]."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    w = np.empty(32, np.int16)
    half = w.shape[0] // 2
    lanes = np.empty(8, I32)
    acc1 = np.empty((n, 8), F32)
    acc2 = np.empty((n, 8), F32)
    tail = np.empty(n, F32)
    paired = nb - nb % 2                                 # blocks in whole pairs (vec_dot)
    for r in range(rows):
        acc1[:, :] = 0
        acc2[:, :] = 0
        tail[:] = 0
        for b in range(nb):
            for j in range(half):
                byte = I32(blocks[r, b, qs_at + j])
                w[j] = lut[byte & I32(0x0F)]
                w[half + j] = lut[byte >> I32(4)]
            for t in range(n):
                for l in range(8):
                    s = I32(0)
                    for i in range(4):
                        s = I32(s + I32(I32(w[4 * l + i]) * I32(a[t, b, 4 * l + i])))
                    lanes[l] = s
                if tinyblas:
                    scale = F32(d_w[r, b] * d_a[t, b])
                    for l in range(8):
                        acc1[t, l] = fma32(scale, F32(lanes[l]), acc1[t, l])
                else:
                    scale = F32(d_a[t, b] * d_w[r, b])
                    if b < paired:
                        if b % 2 == 0:
                            for l in range(8):
                                acc1[t, l] = fma32(scale, F32(lanes[l]), acc1[t, l])
                        else:
                            for l in range(8):
                                acc2[t, l] = fma32(scale, F32(lanes[l]), acc2[t, l])
                    else:
                        total = I32(0)
                        for l in range(8):
                            total = I32(total + lanes[l])
                        tail[t] = F32(scale * F32(total))
        for t in range(n):
            t0 = F32(F32(acc1[t, 4] + acc2[t, 4]) + F32(acc1[t, 0] + acc2[t, 0]))
            t1 = F32(F32(acc1[t, 5] + acc2[t, 5]) + F32(acc1[t, 1] + acc2[t, 1]))
            t2 = F32(F32(acc1[t, 6] + acc2[t, 6]) + F32(acc1[t, 2] + acc2[t, 2]))
            t3 = F32(F32(acc1[t, 7] + acc2[t, 7]) + F32(acc1[t, 3] + acc2[t, 3]))
            y = F32(F32(t0 + t2) + F32(t1 + t3))
            out[t, r] = F32(y + tail[t]) if nb % 2 and not tinyblas else y



@njit(cache=True)
def lut4_matmul_tokens(blocks, qs_at, lut, d_w, a_t, d_a_t, tinyblas, out):
    """out [n, rows] for a batch: the same arithmetic as lut4_matmul_rows, but every loop over
    tokens is innermost
    (tokens contiguous), so that LLVM vectorizes the integer lanes and the fmas across tokens.
    blocks uint8 [rows, nb, block bytes] (qs[16] at qs_at: byte j holds weight j in its low
    nibble and weight j + 16 in its high one, each a lut index: lut int16 [16]); d_w float32
    [rows, nb]; a_t int32 [nb, 32, n] (the Q8_0 quants, tokens last); d_a_t float32 [nb, n]."""
    rows, nb, _ = blocks.shape
    n = a_t.shape[2]
    w = np.empty(32, I32)
    half = w.shape[0] // 2
    lane = np.empty(n, I32)
    total = np.empty(n, I32)
    scale = np.empty(n, F32)
    acc1 = np.empty((8, n), F32)
    acc2 = np.empty((8, n), F32)
    tail = np.empty(n, F32)
    paired = nb - nb % 2                                 # blocks in whole pairs (vec_dot)
    for r in range(rows):
        acc1[:, :] = 0
        acc2[:, :] = 0
        tail[:] = 0
        for b in range(nb):
            for j in range(half):
                byte = I32(blocks[r, b, qs_at + j])
                w[j] = I32(lut[byte & I32(0x0F)])
                w[half + j] = I32(lut[byte >> I32(4)])
            dw = d_w[r, b]
            for t in range(n):
                scale[t] = F32(dw * d_a_t[b, t])
            odd = b % 2 == 1 and not tinyblas
            in_pairs = tinyblas or b < paired
            if not in_pairs:
                total[:] = 0
            for l in range(8):
                w0, w1, w2, w3 = w[4 * l], w[4 * l + 1], w[4 * l + 2], w[4 * l + 3]
                for t in range(n):
                    lane[t] = I32(I32(I32(w0 * a_t[b, 4 * l, t]) + I32(w1 * a_t[b, 4 * l + 1, t]))
                                  + I32(I32(w2 * a_t[b, 4 * l + 2, t]) + I32(w3 * a_t[b, 4 * l + 3, t])))
                if not in_pairs:
                    for t in range(n):
                        total[t] = I32(total[t] + lane[t])
                elif odd:
                    for t in range(n):
                        acc2[l, t] = fma32(scale[t], F32(lane[t]), acc2[l, t])
                else:
                    for t in range(n):
                        acc1[l, t] = fma32(scale[t], F32(lane[t]), acc1[l, t])
            if not in_pairs:
                for t in range(n):
                    tail[t] = F32(scale[t] * F32(total[t]))
        for t in range(n):
            t0 = F32(F32(acc1[4, t] + acc2[4, t]) + F32(acc1[0, t] + acc2[0, t]))
            t1 = F32(F32(acc1[5, t] + acc2[5, t]) + F32(acc1[1, t] + acc2[1, t]))
            t2 = F32(F32(acc1[6, t] + acc2[6, t]) + F32(acc1[2, t] + acc2[2, t]))
            t3 = F32(F32(acc1[7, t] + acc2[7, t]) + F32(acc1[3, t] + acc2[3, t]))
            y = F32(F32(t0 + t2) + F32(t1 + t3))
            out[t, r] = F32(y + tail[t]) if nb % 2 and not tinyblas else y

def _nvfp4_mul_mat(raw, rows, k, act):
    """mul_mat for NVFP4 (ggml_vec_dot_nvfp4_q8_0 at every batch size)."""
    n = act.q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    blocks = np.ascontiguousarray(np.asarray(raw, np.uint8).reshape(rows, k // 64, NVFP4_BLOCK_BYTES))
    d_sub = np.ascontiguousarray(ue4m3_half(blocks[:, :, 0:4]).reshape(rows, k // 16), F32)
    a = np.ascontiguousarray(act.q).astype(np.int16).reshape(n, k // 32, 32)
    nvfp4_matmul(blocks, d_sub, KVALUES_MXFP4.astype(np.int16), a, np.ascontiguousarray(act.d, F32), out)
    return out


@njit(cache=True)
def nvfp4_matmul(blocks, d_sub, lut, a, d_a, out):
    """out [n, rows] as ggml_vec_dot_nvfp4_q8_0 (AVX2): per Q8_0 block c, lane l of 4 products
    folded by fma with ue4m3(d[2c + l/4]) / 2 * d_a[c]; y = hsum8.
    blocks uint8 [rows, nb, 36] (block_nvfp4: d[4] at 0, qs[32] at 4; qs[8s + j] holds weights
    16s + j (low nibble) and 16s + 8 + j (high)); d_sub float32 [rows, k/16] (the sub-block
    scales); lut int16 [16] (kvalues_mxfp4); a int16 [n, k/32, 32]; d_a float32 [n, k/32]."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    w = np.empty(64, np.int16)
    acc = np.empty((n, 8), F32)
    for r in range(rows):
        acc[:, :] = 0
        for b in range(nb):
            for s in range(4):
                for j in range(8):
                    byte = I32(blocks[r, b, 4 + 8 * s + j])
                    w[16 * s + j] = lut[byte & I32(0x0F)]
                    w[16 * s + 8 + j] = lut[byte >> I32(4)]
            for t in range(n):
                for h in range(2):
                    c = 2 * b + h
                    for l in range(8):
                        lane = I32(0)
                        for i in range(4):
                            lane = I32(lane + I32(I32(w[32 * h + 4 * l + i]) * I32(a[t, c, 4 * l + i])))
                        scale = F32(d_sub[r, 2 * c + l // 4] * d_a[t, c])
                        acc[t, l] = fma32(scale, F32(lane), acc[t, l])
        for t in range(n):
            t0 = F32(acc[t, 4] + acc[t, 0])
            t1 = F32(acc[t, 5] + acc[t, 1])
            t2 = F32(acc[t, 6] + acc[t, 2])
            t3 = F32(acc[t, 7] + acc[t, 3])
            out[t, r] = F32(F32(t0 + t2) + F32(t1 + t3))
