"""Numba twin of refllm/ggml_cpu/reference/repack.py: llama.cpp's AVX2 repack kernels for
Q4_0, IQ4_NL, MXFP4 and Q4_K (q4_0_8x8, iq4_nl_8x8, mxfp4_8x8, q4_K_8x8), the same float32
operations in the same order, so the same bits.

Each weight row is read straight from its bytes, one block at a time: the block's quants are
unpacked once into a small int16 buffer (for Q4_K already times their sub-block scale, at
most 63 * 15), every activation row is dotted with it (exact int32 sums), and the sums are
folded into that row's float32 accumulators in the kernels' order (the reference's
docstring). No float32 copy of the matrix is made. On a machine with AVX2, Q4_K's gemm rows go
instead through refllm.ggml_cpu.avx2.q4_k_dot_tile (`q4_k_8x8_avx2`: 4 rows x 2 tokens per
register tile, the rows decoded to uint8 quants, 6-bit scales and mins a chunk at a time); the
gemv rows stay here, groups of rows shared among Numba's threads, and one token of Q4_0 goes
through avx2.q4_0_row_dot_repack.

What makes it fast: loop trip counts taken from array shapes, so
that LLVM's loop vectorizer (not the full unroller) gets the integer loops and emits
vpmaddwd; every int32 product and sum cast back to int32 (Numba types int32 * int32 as
int64); fp16 scales read through a lookup table.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.ggml_cpu import avx2
from refllm.ggml_cpu.reference.repack import (
    LUT_TYPES,
    REPACK_BLOCKS,
    check_shape,
    gemm_rows,
    lut_scales,
)
from refllm.ggml_cpu.threads import shared
from refllm.ggml_cpu.x86 import fma32

I32 = np.int32
F32 = np.float32

# fp16 bits -> float32 for every half (exact); Numba freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)
# Q4_K gemm rows go through avx2.q4_k_dot_tile where the machine has AVX2 (tests switch it off
# to check the portable kernel); rows are decoded AVX2_ROWS at a time.
USE_AVX2 = avx2.AVAILABLE
AVX2_ROWS = 64


@njit(inline="always", cache=True)
def _f16(w, r, b, at):
    """The little-endian fp16 at byte `at` of block (r, b), as float32."""
    return FP16_TO_F32[I32(w[r, b, at]) | I32(I32(w[r, b, at + 1]) << I32(8))]


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat (same arguments, same
    ValueError for a matrix llama.cpp does not repack)."""
    rows, k = shape
    raw = np.asarray(raw, np.uint8).reshape(-1)
    check_shape(weight_type, shape)
    block, block_bytes = REPACK_BLOCKS[weight_type]
    nb = k // block
    n = act.q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    blocks = np.ascontiguousarray(raw).reshape(rows, nb, block_bytes)
    d_a = np.ascontiguousarray(act.d, F32)
    if weight_type in LUT_TYPES:
        qs_at, lut = LUT_TYPES[weight_type]
        if weight_type == "Q4_0" and n == 1 and USE_AVX2:
            q4_0_gemv_avx2(raw, nb, np.ascontiguousarray(act.q[0], np.int8), d_a[0], out[0], shared(raw.nbytes))
            return out
        d_w = lut_scales(blocks.reshape(rows * nb, block_bytes), weight_type).reshape(rows, nb)
        a = np.ascontiguousarray(act.q).astype(np.int16).reshape(n, nb, 32)
        q4_0_8x8_q8_0(blocks, qs_at, lut.astype(np.int16), np.ascontiguousarray(d_w, F32), a, d_a, out)
    else:
        bsum32 = act.bsums.astype(I32).reshape(n, nb, 8, 2).sum(axis=-1, dtype=I32)
        g = gemm_rows(n) if USE_AVX2 else 0
        if g:
            # the gemm rows by AVX2 tiles, the last n % 4 (gemv) by the portable kernel
            q4_k_8x8_avx2(blocks, np.ascontiguousarray(act.q[:g], np.int8), avx2.pair_lanes(d_a[:g]),
                          avx2.pair_lanes(bsum32[:g].astype(F32)), out[:g])
        if n - g == 1 and USE_AVX2:
            q4_k_gemv_avx2(blocks, np.ascontiguousarray(act.q[g], np.int8), d_a[g], np.ascontiguousarray(bsum32[g]),
                           out[g], shared(blocks.nbytes))
            return out
        a = np.ascontiguousarray(act.q[g:]).astype(np.int16).reshape(n - g, nb, 4, 64)
        rows_kernel = q4_k_8x8_parallel if shared(blocks.nbytes) else q4_k_8x8_q8_k
        rows_kernel(blocks, a, d_a[g:], np.ascontiguousarray(bsum32[g:]), gemm_rows(n) - g, out[g:])
    return out


@njit(cache=True, parallel=True)
def q4_0_gemv_avx2(raw, nb, a, d_a, out, shared):
    """out [rows] = q4_0_8x8_q8_0's gemv for one token of Q4_0 weights (raw uint8 [rows * nb *
    18]) and Q8_0 activations (a int8 [32 nb], d_a float32 [nb]), by
    avx2.q4_0_row_dot_repack; with shared, groups of 16 rows shared among Numba's threads."""
    rows = out.shape[0]
    if shared:
        for c in prange(-(-rows // 16)):
            _q4_0_gemv_rows(raw, nb, a, d_a, out, 16 * c, min(rows, 16 * c + 16))
    else:
        _q4_0_gemv_rows(raw, nb, a, d_a, out, 0, rows)


@njit(cache=True)
def _q4_0_gemv_rows(raw, nb, a, d_a, out, start, stop):
    """q4_0_gemv_avx2 for rows start..stop-1."""
    row_bytes = np.uint64(nb * 18)
    for r in range(start, stop):
        out[r] = avx2.q4_0_row_dot_repack(raw, np.uint64(r) * row_bytes, a, d_a, np.uint64(nb))


@njit(cache=True)
def q4_0_8x8_q8_0(blocks, qs_at, lut, d_w, a, d_a, out):
    """out [n, rows] = the Q4_0 / IQ4_NL / MXFP4 repack products (gemv and gemm: the same
    lanes): per block, acc = fma(float(isum), d_w * d_a, acc).
    blocks uint8 [rows, nb, block bytes] (qs[16] at qs_at; byte j holds weight j in its low
    nibble and weight j + 16 in its high one, each a lut index: lut int16 [16]); d_w float32
    [rows, nb] (the blocks' scales); a int16 [n, nb, 32] (the Q8_0 quants); d_a float32 [n, nb]."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    w = np.empty(32, np.int16)
    half = w.shape[0] // 2
    acc = np.empty(n, F32)
    for r in range(rows):
        acc[:] = 0
        for b in range(nb):
            for j in range(half):
                byte = I32(blocks[r, b, qs_at + j])
                w[j] = lut[byte & I32(0x0F)]
                w[half + j] = lut[byte >> I32(4)]
            for t in range(n):
                isum = I32(0)
                for i in range(w.shape[0]):
                    isum = I32(isum + I32(I32(w[i]) * I32(a[t, b, i])))
                scale = F32(d_w[r, b] * d_a[t, b])
                acc[t] = fma32(F32(isum), scale, acc[t])
        for t in range(n):
            out[t, r] = acc[t]


@njit(cache=True, parallel=True)
def q4_k_gemv_avx2(blocks, a, d_a, bsum32, out, shared):
    """out [rows] = ggml_gemv_q4_K_8x8_q8_K for one activation row (a int8 [k], d_a float32
    [nb], bsum32 int32 [nb, 8]) by avx2.q4_k_row_dot, q4_k_8x8_q8_k's arithmetic; with shared,
    groups of 16 rows shared among Numba's threads."""
    rows = blocks.shape[0]
    if shared:
        for c in prange(-(-rows // 16)):
            _q4_k_gemv_rows(blocks, a, d_a, bsum32, out, 16 * c, min(rows, 16 * c + 16))
    else:
        _q4_k_gemv_rows(blocks, a, d_a, bsum32, out, 0, rows)


@njit(cache=True)
def _q4_k_gemv_rows(blocks, a, d_a, bsum32, out, start, stop):
    """q4_k_gemv_avx2 for rows start..stop-1."""
    nb = blocks.shape[1]
    raw = blocks.reshape(-1)
    bsums = bsum32.reshape(-1)
    for r in range(start, stop):
        out[r] = avx2.q4_k_row_dot(raw, np.uint64(r * nb * 144), a, d_a, bsums, np.uint64(nb))


@njit(cache=True, parallel=True)
def q4_k_8x8_parallel(blocks, a, d_a, bsum32, n_gemm, out):
    """q4_k_8x8_q8_k with groups of 64 rows shared among Numba's threads."""
    rows = blocks.shape[0]
    for c in prange(-(-rows // 64)):
        start, stop = 64 * c, min(rows, 64 * c + 64)
        q4_k_8x8_q8_k(blocks[start:stop], a, d_a, bsum32, n_gemm, out[:, start:stop])


@njit(cache=True)
def q4_k_8x8_q8_k(blocks, a, d_a, bsum32, n_gemm, out):
    """out [n, rows] = the Q4_K repack products: activation rows t < n_gemm as
    ggml_gemm_q4_K_8x8_q8_K (an fma pair per two sub-blocks), the rest as
    ggml_gemv_q4_K_8x8_q8_K (one per super-block); y = acc - accm.

    blocks uint8 [rows, nb, 144] (block_q4_K: d at 0, dmin at 2, scales[12] at 4, qs[128] at
    16; qs byte 32c + l holds weight 64c + l (low nibble) and 64c + 32 + l (high)); a int16
    [n, nb, 4, 64] (the Q8_K quants by pair of sub-blocks); d_a float32 [n, nb]; bsum32 int32
    [n, nb, 8] (the quants' sums per sub-block of 32)."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    qs = np.empty((4, 64), np.int16)                # sc * q, by pair of sub-blocks
    half = qs.shape[1] // 2
    sc = np.empty(8, I32)
    mn = np.empty(8, I32)
    acc = np.empty(n, F32)
    accm = np.empty(n, F32)
    for r in range(rows):
        acc[:] = 0
        accm[:] = 0
        for b in range(nb):
            d_w = _f16(blocks, r, b, 0)
            dmin_w = _f16(blocks, r, b, 2)
            for j in range(4):                          # get_scale_min_k4 of scales[12] at 4
                s0 = I32(blocks[r, b, 4 + j])
                m0 = I32(blocks[r, b, 8 + j])
                hi = I32(blocks[r, b, 12 + j])
                sc[j] = s0 & I32(63)
                mn[j] = m0 & I32(63)
                sc[j + 4] = I32(hi & I32(0x0F)) | I32(I32(s0 >> I32(6)) << I32(4))
                mn[j + 4] = I32(hi >> I32(4)) | I32(I32(m0 >> I32(6)) << I32(4))
            for c in range(4):
                s_lo, s_hi = sc[2 * c], sc[2 * c + 1]
                for l in range(half):
                    byte = I32(blocks[r, b, 16 + 32 * c + l])
                    qs[c, l] = np.int16(I32(byte & I32(0x0F)) * s_lo)
                    qs[c, half + l] = np.int16(I32(byte >> I32(4)) * s_hi)
            for t in range(n):
                da = d_a[t, b]
                scale = F32(d_w * da)
                scale_min = F32(dmin_w * da)
                gemm = t < n_gemm
                isum_all = I32(0)
                imin_all = I32(0)
                for p in range(4):
                    isum = I32(0)
                    for i in range(qs.shape[1]):
                        isum = I32(isum + I32(I32(qs[p, i]) * I32(a[t, b, p, i])))
                    imin = I32(I32(mn[2 * p] * bsum32[t, b, 2 * p]) + I32(mn[2 * p + 1] * bsum32[t, b, 2 * p + 1]))
                    if gemm:
                        acc[t] = fma32(F32(isum), scale, acc[t])
                        accm[t] = fma32(F32(imin), scale_min, accm[t])
                    else:
                        isum_all = I32(isum_all + isum)
                        imin_all = I32(imin_all + imin)
                if not gemm:
                    acc[t] = fma32(F32(isum_all), scale, acc[t])
                    accm[t] = fma32(F32(imin_all), scale_min, accm[t])
        for t in range(n):
            out[t, r] = acc[t] - accm[t]


@njit(cache=True, parallel=True)
def q4_k_8x8_avx2(blocks, a, d_pairs, bs_pairs, out):
    """out [n, rows] = the Q4_K gemm products by avx2.q4_k_dot_tile (n even: all gemm rows),
    chunks of AVX2_ROWS rows (_q4_k_rows_avx2) shared among Numba's threads.

    blocks as q4_k_8x8_q8_k; a int8 [n, k] (the Q8_K quants); d_pairs float32 [n / 2, nb, 8]
    and bs_pairs float32 [n / 2, nb, 8, 8] (d_a and the sums of 32 quants, avx2.pair_lanes)."""
    rows = blocks.shape[0]
    for c in prange(-(-rows // AVX2_ROWS)):
        start = c * AVX2_ROWS
        _q4_k_rows_avx2(blocks, a, d_pairs, bs_pairs, out, start, min(AVX2_ROWS, rows - start))


@njit(cache=True)
def _q4_k_rows_avx2(blocks, a, d_pairs, bs_pairs, out, start, count):
    """q4_k_8x8_avx2 for rows start..start+count-1: decoded (the quants to uint8 in element
    order, the 6-bit scales (int16) and mins, d and dmin), then swept four at a time over the
    tokens."""
    rows, nb, _ = blocks.shape
    n = a.shape[0]
    k = nb * 256
    chunk = AVX2_ROWS
    q = np.empty((chunk, k), np.uint8)
    sc = np.empty((chunk, nb, 8), np.int16)
    mn = np.empty((chunk, nb, 8), F32)
    d_w = np.empty((chunk, nb), F32)
    dmin_w = np.empty((chunk, nb), F32)
    d_rows = np.empty(nb * 8, F32)
    dmin_rows = np.empty(nb * 8, F32)
    m_rows = np.empty(nb * 64, F32)
    q_flat, sc_flat, a_flat, out_flat = q.reshape(-1), sc.reshape(-1), a.reshape(-1), out.reshape(-1)
    blocks_flat = blocks.reshape(-1)
    d_flat, bs_flat = d_pairs.reshape(-1), bs_pairs.reshape(-1)
    stride = rows
    for rr in range(count):
        r = start + rr
        for b in range(nb):
            d_w[rr, b] = _f16(blocks, r, b, 0)
            dmin_w[rr, b] = _f16(blocks, r, b, 2)
            for j in range(4):                      # get_scale_min_k4 of scales[12] at 4
                s0 = I32(blocks[r, b, 4 + j])
                m0 = I32(blocks[r, b, 8 + j])
                hi = I32(blocks[r, b, 12 + j])
                sc[rr, b, j] = s0 & I32(63)
                mn[rr, b, j] = m0 & I32(63)
                sc[rr, b, j + 4] = I32(hi & I32(0x0F)) | I32(I32(s0 >> I32(6)) << I32(4))
                mn[rr, b, j + 4] = I32(hi >> I32(4)) | I32(I32(m0 >> I32(6)) << I32(4))
            for c in range(4):                      # qs byte 32c + l: weights 64c + l, 64c + 32 + l
                avx2.unpack_nibbles32(q_flat, rr * k + 256 * b + 64 * c, blocks_flat,
                                      (r * nb + b) * 144 + 16 + 32 * c, 0, False)
    for r0 in range(0, count, 4):
        for b in range(nb):
            for p in range(8):
                d_rows[8 * b + p] = d_w[r0 + p // 2, b]
                dmin_rows[8 * b + p] = dmin_w[r0 + p // 2, b]
                for j in range(8):
                    m_rows[64 * b + 8 * j + p] = mn[r0 + p // 2, b, j]
        for t in range(0, n, 2):
            avx2.q4_k_dot_tile(out_flat, t * stride + start + r0, stride, q_flat, r0 * k, a_flat, t * k,
                               sc_flat, r0 * nb * 8, d_rows, dmin_rows, m_rows, d_flat, bs_flat, t * nb * 4, nb)
