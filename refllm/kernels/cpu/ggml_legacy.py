"""Numba twin of refllm/kernels/reference/ggml_legacy.py: the same float32 operations in the
same order, so the same bits. Two arrangements: for a batch, a chunk of rows is decoded to
int8 once and every token sweeps it (LLVM vectorizes across rows); for one or a few tokens,
each row is read straight from its bytes."""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.kernels.cpu.fp import u32
from refllm.kernels.reference.ggml_legacy import LEGACY_BLOCKS, legacy_quants
from refllm.kernels.x86 import fma32

I32 = np.int32
F32 = np.float32

# fp16 bits -> float32 for every half (exact); Numba freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)

# Weight rows decoded to int8 at a time: about 1 MiB.
CHUNK_BYTES = 1 << 20
# Below this many tokens each row is read straight from its bytes (legacy_matmul_raw).
FEW_TOKENS = 4


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat."""
    rows, k = shape
    block_bytes, qs_at, qh_at, has_min, offset = LEGACY_BLOCKS[weight_type]
    s_a = act.s if act.s is not None else act.d
    n = act.q.shape[0]
    out = np.empty((n, rows), np.float32)
    if n < FEW_TOKENS:
        legacy_matmul_raw(raw.reshape(rows, k // 32, block_bytes), qs_at, -1 if qh_at is None else qh_at,
                          has_min, offset, weight_type == "Q8_0", act.q.astype(np.int16).reshape(n, k // 32, 32),
                          act.d, s_a, out)
        return out
    row_bytes = raw.size // rows
    step = max(8, CHUNK_BYTES // k)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        w, d_w, m_w = legacy_quants(raw[start * row_bytes:stop * row_bytes], weight_type, stop - start)
        m_t = np.ascontiguousarray((m_w if has_min else d_w).T)
        legacy_matmul(np.ascontiguousarray(w.T), np.ascontiguousarray(d_w.T), m_t,
                      act.q, act.d, s_a, has_min, out[:, start:stop])
    return out


@njit(cache=True)
def legacy_matmul(w_t, d_w, m_w, a, d_a, s_a, has_min, out):
    """out [n, rows] = the legacy-type dot products (see the reference's docstring).
    w_t int8 [k, rows] (the quants transposed, rows contiguous), d_w and m_w float32
    [nb, rows], a int8 [n, k], d_a and s_a float32 [n, nb]."""
    k, rows = w_t.shape
    n = a.shape[0]
    acc = np.empty((8, rows), np.float32)
    summs = np.empty(rows, np.float32)
    lane = np.empty(rows, np.int32)
    scale = np.empty(rows, np.float32)
    for t in range(n):
        acc[:, :] = 0
        summs[:] = 0
        for b in range(k // 32):
            da = d_a[t, b]
            for r in range(rows):
                scale[r] = np.float32(d_w[b, r] * da)
            if has_min:
                sa = s_a[t, b]
                for r in range(rows):
                    summs[r] = summs[r] + m_w[b, r] * sa
            for j in range(8):
                i = 32 * b + 4 * j
                a0, a1, a2, a3 = np.int32(a[t, i]), np.int32(a[t, i + 1]), np.int32(a[t, i + 2]), np.int32(a[t, i + 3])
                for r in range(rows):
                    lane[r] = (np.int32(w_t[i, r]) * a0 + np.int32(w_t[i + 1, r]) * a1
                               + np.int32(w_t[i + 2, r]) * a2 + np.int32(w_t[i + 3, r]) * a3)
                for r in range(rows):
                    acc[j, r] = fma32(scale[r], np.float32(lane[r]), acc[j, r])
        for r in range(rows):
            t0 = np.float32(acc[4, r] + acc[0, r])
            t1 = np.float32(acc[5, r] + acc[1, r])
            t2 = np.float32(acc[6, r] + acc[2, r])
            t3 = np.float32(acc[7, r] + acc[3, r])
            out[t, r] = np.float32(np.float32(np.float32(t0 + t2) + np.float32(t1 + t3)) + summs[r])


@njit(cache=True)
def legacy_matmul_raw(blocks, qs_at, qh_at, has_min, offset, is_q8_0, a, d_a, s_a, out):
    """The same products, one weight row at a time straight from its bytes (for one or a few
    tokens, where decoding the whole matrix first would cost more than the products).
    blocks uint8 [rows, nb, block_bytes] (d at byte 0, m at byte 2 when has_min); the quants
    are qs (nibbles, or int8 for Q8_0) plus the 5th bits qh when qh_at >= 0, minus offset;
    a int16 [n, nb, 32]. (Trip counts come from array shapes so that LLVM vectorizes the
    integer loops instead of unrolling them.)"""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    w = np.empty(32, np.int16)
    half = w.shape[0] // 2
    products = np.empty(32, I32)
    lanes = np.empty(8, F32)
    acc = np.empty((n, 8), F32)
    summs = np.empty(n, F32)
    for r in range(rows):
        acc[:, :] = 0
        summs[:] = 0
        for b in range(nb):
            if is_q8_0:
                for i in range(w.shape[0]):
                    w[i] = np.int16(np.int8(blocks[r, b, qs_at + i]))
            else:
                qh = u32(blocks[r], b, qh_at) if qh_at >= 0 else np.uint32(0)
                for i in range(half):
                    byte = I32(blocks[r, b, qs_at + i])
                    w[i] = np.int16(I32(I32(byte & I32(0x0F)) | I32(I32((qh >> i) & 1) << I32(4))) - offset)
                    w[i + half] = np.int16(I32(I32(byte >> I32(4)) | I32(I32((qh >> (i + half)) & 1) << I32(4))) - offset)
            d_w = FP16_TO_F32[I32(blocks[r, b, 0]) | I32(I32(blocks[r, b, 1]) << I32(8))]
            m_w = FP16_TO_F32[I32(blocks[r, b, 2]) | I32(I32(blocks[r, b, 3]) << I32(8))] if has_min else F32(0)
            for t in range(n):
                for i in range(products.shape[0]):
                    products[i] = I32(I32(w[i]) * I32(a[t, b, i]))
                for j in range(lanes.shape[0]):
                    lanes[j] = F32(I32(I32(products[4 * j] + products[4 * j + 1])
                                       + I32(products[4 * j + 2] + products[4 * j + 3])))
                scale = F32(d_w * d_a[t, b])
                for j in range(lanes.shape[0]):
                    acc[t, j] = fma32(scale, lanes[j], acc[t, j])
                if has_min:
                    summs[t] = F32(summs[t] + m_w * s_a[t, b])
        for t in range(n):
            t0 = F32(acc[t, 4] + acc[t, 0])
            t1 = F32(acc[t, 5] + acc[t, 1])
            t2 = F32(acc[t, 6] + acc[t, 2])
            t3 = F32(acc[t, 7] + acc[t, 3])
            out[t, r] = F32(F32(F32(t0 + t2) + F32(t1 + t3)) + summs[t])
