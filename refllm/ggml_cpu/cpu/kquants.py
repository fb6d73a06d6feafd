"""Numba twin of refllm/ggml_cpu/reference/kquants.py: the same integers and the same float32
operations in the same order, so the same bits, for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.

A chunk of weight rows (about 256 KiB) is decoded from its bytes at a time into sc(e) * c(e)
(int16) and the block scales (`_decode_rows`), then multiplied in one of two arrangements,
which give the same bits (integer sums are exact in any order; the float operations are the
same):

    few tokens (n < FEW_TOKENS)   row by row, FEW_ROWS rows decoded at a time (chunks shared
                                  among the threads when the matrix is big): per block and
                                  token vec_dot's eight int32 lanes (lane l: the products of
                                  weights 4l .. 4l+3 of every run of 32), by vpmaddwd
                                  (avx2.i16_block_lanes) or by one pass over the 256 products
                                  into 32 partial sums part[j], lane l = part[4l .. 4l+3]
    more tokens                   the chunk transposed (rows contiguous), every token sweeping
                                  it: the integer and float work is vectorized across rows

Which of llama.cpp's paths is reproduced (tiled.cpp for n >= 8, vec_dot below) is decided
apart from that, as in the reference. On a machine with AVX2, tiled.cpp's batches go instead
through refllm.ggml_cpu.avx2's kquant tiles (`kquant_tiled_avx2`: the codes c(e) as int8
(Q6_K's made signed, c - 32), the activations biased to unsigned (q + 128) for vpmaddubsw,
and each row's 128 * sum sc c per block subtracted again).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.ggml_cpu import avx2
from refllm.ggml_cpu.reference.kquants import KQUANT_BLOCK_BYTES, TILED_MIN_BATCH
from refllm.ggml_cpu.threads import shared
from refllm.ggml_cpu.x86 import fma32, hsum8
from refllm.kernels.cpu.fp import f16_to_f32

I32 = np.int32
F32 = np.float32

# type name -> the integer the kernels switch on
_TYPE_CODE = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}
# Bytes of decoded int16 weights per chunk.
CHUNK_BYTES = 1 << 18
# From this many tokens on, chunks are transposed and swept across rows; below, rows are
# decoded FEW_ROWS at a time (a few KiB, in L1), the chunks shared among Numba's threads.
FEW_TOKENS = 4
FEW_ROWS = 16
# tiled.cpp's batches go through avx2.kquant_dot_* where the machine has AVX2 (tests switch it
# off to check the portable kernels); rows are decoded AVX2_ROWS at a time.
USE_AVX2 = avx2.AVAILABLE
AVX2_ROWS = 64


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat (tiled.cpp's arithmetic
    for n >= 8 tokens, ggml_vec_dot_<type>_q8_K's below)."""
    rows, k = shape
    code = _TYPE_CODE[weight_type]
    blocks = np.asarray(raw, np.uint8).reshape(rows, k // 256, KQUANT_BLOCK_BYTES[weight_type])
    q = np.ascontiguousarray(act.q, np.int8)
    n = q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    if USE_AVX2 and n >= TILED_MIN_BATCH:
        _tiled_avx2(blocks, code, q, act.d, act.bsums, out)
        return out
    if n < FEW_TOKENS:
        kquant_matmul_few(blocks, code, q, np.ascontiguousarray(act.d, F32), np.ascontiguousarray(act.bsums, np.int16),
                          n >= TILED_MIN_BATCH, FEW_ROWS, USE_AVX2, out, shared(blocks.nbytes))
        return out
    step = max(16, CHUNK_BYTES // (2 * k))
    kquant_matmul(blocks, code, q, np.ascontiguousarray(act.d, F32), np.ascontiguousarray(act.bsums, np.int16),
                  n >= TILED_MIN_BATCH, n >= FEW_TOKENS, step, out)
    return out


def _tiled_avx2(blocks, code, q, d_a, bsums, out):
    """out [n, rows] = tiled.cpp's products through avx2's kquant tiles: the tokens padded to
    an even count, their quants biased to unsigned (q + 128), their d and bsums laid out per
    tile; the products padded to whole tiles of rows."""
    rows, nb, _ = blocks.shape
    n, k = q.shape
    n2 = n + n % 2
    aq = np.full((n2, k), 128, np.uint8)
    aq[:n] = q.view(np.uint8) ^ np.uint8(0x80)
    d = np.zeros((n2, nb), F32)
    d[:n] = d_a
    bs = np.zeros((n2, nb, 16), I32)
    bs[:n] = np.asarray(bsums, I32).reshape(n, nb, 16)
    rows4 = -(-rows // avx2.ROWS) * avx2.ROWS
    padded = out if (n2, rows4) == out.shape else np.empty((n2, rows4), F32)
    kquant_tiled_avx2(blocks, code, aq, avx2.pair_lanes(d), avx2.pair_lanes(bs), padded)
    if padded is not out:
        out[:] = padded[:n, :rows]


@njit(cache=True, parallel=True)
def kquant_tiled_avx2(blocks, code, aq, d_pairs, bs_pairs, out):
    """out [n2, rows4] = tiled.cpp's products of a Q<code>_K matrix by avx2's kquant tiles
    (rows4: the rows rounded up to whole 4s, the padding garbage), chunks of AVX2_ROWS rows
    (_kquant_rows_avx2) shared among Numba's threads.

    blocks uint8 [rows, nb, block bytes]; aq uint8 [n2, k] (Q8_K quants + 128, n2 even);
    d_pairs float32 [n2 / 2, nb, 8] and bs_pairs int32 [n2 / 2, nb, 16, 8] (avx2.pair_lanes of
    d_a and the bsums)."""
    rows = blocks.shape[0]
    for c in prange(-(-rows // AVX2_ROWS)):
        start = c * AVX2_ROWS
        _kquant_rows_avx2(blocks, code, aq, d_pairs, bs_pairs, out, start, min(AVX2_ROWS, rows - start))


@njit(cache=True)
def _kquant_rows_avx2(blocks, code, aq, d_pairs, bs_pairs, out, start, count):
    """kquant_tiled_avx2 for rows start..start+count-1: decoded by _decode_codes, Q6_K's codes
    made signed (c - 32: the bsum term folded in), each row's 128 * sum sc c per block noted
    (what the bias of the quants adds), and the scales spread to vpmaddwd's layout; then swept
    four at a time over the tokens."""
    nb = blocks.shape[1]
    n2 = aq.shape[0]
    k = 256 * nb
    chunk = AVX2_ROWS
    c_w = np.zeros((chunk, k), np.int8)
    sc_w = np.zeros((chunk, nb, 16), np.int16)
    sc16 = np.zeros((chunk, k // 2), np.int16)
    wsum = np.zeros((chunk, nb), I32)
    d_w = np.zeros((chunk, nb), F32)
    dmin_w = np.zeros((chunk, nb), F32)
    bw = np.zeros((chunk, nb, 16), I32)
    d_rows = np.empty(nb * 8, F32)
    dmin_rows = np.empty(nb * 8, F32)
    wsum_rows = np.empty(nb * 8, I32)
    bw_rows = np.empty(nb * 128, I32)
    with_mins = code == 2 or code == 4 or code == 5
    c_flat, sc_flat, aq_flat, out_flat = c_w.reshape(-1), sc16.reshape(-1), aq.reshape(-1), out.reshape(-1)
    d_flat, bs_flat = d_pairs.reshape(-1), bs_pairs.reshape(-1)
    stride = out.shape[1]
    _decode_codes(blocks, code, start, start + count, c_w, sc_w, d_w, dmin_w, bw, False)
    for i in range(count, -(-count // 4) * 4):
        c_w[i, :] = 0
        sc_w[i, :, :] = 0
        d_w[i, :] = 0
        dmin_w[i, :] = 0
        bw[i, :, :] = 0
    for i in range(-(-count // 4) * 4):
        for b in range(nb):
            total = I32(0)
            for e in range(256):
                if code == 6:
                    c_w[i, 256 * b + e] -= 32
                total += I32(c_w[i, 256 * b + e]) * I32(sc_w[i, b, e // 16])
            wsum[i, b] = 128 * total
            for run in range(8):
                for l in range(16):
                    sc16[i, 128 * b + 16 * run + l] = sc_w[i, b, 2 * run + l // 8]
    for r0 in range(0, count, 4):
        for b in range(nb):
            for p in range(8):
                r = r0 + p // 2
                d_rows[8 * b + p] = d_w[r, b]
                dmin_rows[8 * b + p] = dmin_w[r, b]
                wsum_rows[8 * b + p] = wsum[r, b]
                for m in range(16):
                    bw_rows[128 * b + 8 * m + p] = bw[r, b, m]
        for t in range(0, n2, 2):
            if with_mins:
                avx2.kquant_dot_mins(out_flat, t * stride + start + r0, stride, c_flat, r0 * k, aq_flat, t * k,
                                     sc_flat, r0 * (k // 2), wsum_rows, d_rows, dmin_rows, bw_rows,
                                     d_flat, bs_flat, t * nb * 4, nb)
            else:
                avx2.kquant_dot_plain(out_flat, t * stride + start + r0, stride, c_flat, r0 * k, aq_flat, t * k,
                                      sc_flat, r0 * (k // 2), wsum_rows, d_rows, dmin_rows, bw_rows,
                                      d_flat, bs_flat, t * nb * 4, nb)


@njit(cache=True)
def _u16(blk, at):
    """The little-endian uint16 at byte `at` of a block's bytes."""
    return np.uint32(blk[at]) | (np.uint32(blk[at + 1]) << 8)


@njit(inline="always")
def _factors(sc_w, i, b, first, times_scale):
    """What the two halves of a 32-weight run are multiplied by when decoded: their 16-weight
    groups' scales (first, first + 1), or 1 when only the codes are wanted. (Read before the
    run's loop: sc_w may alias the int16 output.)"""
    if times_scale:
        return I32(sc_w[i, b, first]), I32(sc_w[i, b, first + 1])
    return I32(1), I32(1)


@njit(cache=True)
def _decode_codes(blocks, code, start, stop, c_w, sc_w, d_w, dmin_w, bw, times_scale):
    """Rows start..stop-1 of a Q<code>_K matrix (blocks uint8 [rows, nb, block bytes]) into
    c_w [rows', k] (the codes c(e), int8, Q6_K's unsigned 0..63; or with times_scale sc(e) *
    c(e), int16), sc_w int16 [rows', nb, 16] (the scale of each 16 weights), d_w and dmin_w
    float32 [rows', nb] and bw int32 [rows', nb, 16] (the bsum multipliers; see the
    reference's KQuantRows). Block layouts: refllm.kernels.reference.kquants."""
    nb = blocks.shape[1]
    sc = np.empty(16, np.int32)
    for i in range(stop - start):
        for b in range(nb):
            blk = blocks[start + i, b]
            o = 256 * b
            if code == 2:
                # block_q2_K { scales[16] (lo scale, hi min); qs[64]; d; dmin }
                # weight 128h + 32c + l: bits 2c of qs[32h + l]
                for h in range(2):
                    for c in range(4):
                        sc_w[i, b, 8 * h + 2 * c] = blk[8 * h + 2 * c] & 15
                        sc_w[i, b, 8 * h + 2 * c + 1] = blk[8 * h + 2 * c + 1] & 15
                        e = o + 128 * h + 32 * c
                        f0, f1 = _factors(sc_w, i, b, 8 * h + 2 * c, times_scale)
                        for l in range(32):
                            c_w[i, e + l] = I32((blk[16 + 32 * h + l] >> (2 * c)) & 3) * (f0 if l < 16 else f1)
                for m in range(16):
                    bw[i, b, m] = I32(blk[m] >> 4)
                d_w[i, b] = f16_to_f32(_u16(blk, 80))
                dmin_w[i, b] = f16_to_f32(_u16(blk, 82))
            elif code == 3:
                # block_q3_K { hmask[32]; qs[64]; scales[12]; d }: c = low2 + 4 high - 4, scales
                # 6-bit biased by 32: low nibbles of scales[0..7] (lo, then hi), top 2 bits in
                # scales[8 + s % 4] at bit 2 (s / 4)
                for s in range(16):
                    nib = I32(blk[96 + s] & 15) if s < 8 else I32(blk[96 + s - 8] >> 4)
                    sc[s] = (nib | (I32((blk[104 + (s & 3)] >> (2 * (s >> 2))) & 3) << 4)) - 32
                for h in range(2):
                    for c in range(4):
                        sc_w[i, b, 8 * h + 2 * c] = sc[8 * h + 2 * c]
                        sc_w[i, b, 8 * h + 2 * c + 1] = sc[8 * h + 2 * c + 1]
                        e = o + 128 * h + 32 * c
                        f0, f1 = _factors(sc_w, i, b, 8 * h + 2 * c, times_scale)
                        for l in range(32):
                            low = I32((blk[32 + 32 * h + l] >> (2 * c)) & 3)
                            high = I32((blk[l] >> (4 * h + c)) & 1)
                            c_w[i, e + l] = (low + 4 * high - 4) * (f0 if l < 16 else f1)
                d_w[i, b] = f16_to_f32(_u16(blk, 108))
            elif code == 4 or code == 5:
                # block_q4_K { d; dmin; scales[12] (6-bit sc, m: get_scale_min_k4); qs[128] }
                # block_q5_K { d; dmin; scales[12]; qh[32]; qs[128] }
                # weight 64j + 32u + l: nibble u of qs[32j + l] (qs at 16 for Q4_K, 48 for Q5_K);
                # Q5_K's 5th bit: bit 2j + u of qh[l]
                qs_at = 16 if code == 4 else 48
                for j in range(8):
                    if j < 4:
                        sc[j] = I32(blk[4 + j] & 63)
                        mn = I32(blk[8 + j] & 63)
                    else:
                        sc[j] = I32(blk[8 + j] & 15) | (I32(blk[j] >> 6) << 4)
                        mn = I32(blk[8 + j] >> 4) | (I32(blk[4 + j] >> 6) << 4)
                    bw[i, b, 2 * j] = mn
                    bw[i, b, 2 * j + 1] = mn
                for j in range(4):
                    for u in range(2):
                        sc_w[i, b, 4 * j + 2 * u] = sc[2 * j + u]
                        sc_w[i, b, 4 * j + 2 * u + 1] = sc[2 * j + u]
                        e = o + 64 * j + 32 * u
                        f0, f1 = _factors(sc_w, i, b, 4 * j + 2 * u, times_scale)
                        for l in range(32):
                            low = I32((blk[qs_at + 32 * j + l] >> (4 * u)) & 15)
                            high = I32((blk[16 + l] >> (2 * j + u)) & 1) if code == 5 else I32(0)
                            c_w[i, e + l] = (low + 16 * high) * (f0 if l < 16 else f1)
                d_w[i, b] = f16_to_f32(_u16(blk, 0))
                dmin_w[i, b] = f16_to_f32(_u16(blk, 2))
            else:
                # block_q6_K { ql[128]; qh[64]; int8 scales[16]; d }: weight 128h + 32c + l:
                # nibble c / 2 of ql[64h + 32(c % 2) + l], high 2 bits: bits 2c of qh[32h + l]
                for h in range(2):
                    for c in range(4):
                        sc_w[i, b, 8 * h + 2 * c] = np.int8(blk[192 + 8 * h + 2 * c])
                        sc_w[i, b, 8 * h + 2 * c + 1] = np.int8(blk[192 + 8 * h + 2 * c + 1])
                        at = 64 * h + 32 * (c & 1)
                        e = o + 128 * h + 32 * c
                        f0, f1 = _factors(sc_w, i, b, 8 * h + 2 * c, times_scale)
                        for l in range(32):
                            low = I32((blk[at + l] >> (4 * (c >> 1))) & 15)
                            high = I32((blk[128 + 32 * h + l] >> (2 * c)) & 3)
                            c_w[i, e + l] = (low + 16 * high) * (f0 if l < 16 else f1)
                for m in range(16):
                    bw[i, b, m] = 32 * I32(np.int8(blk[192 + m]))
                d_w[i, b] = f16_to_f32(_u16(blk, 208))


@njit(cache=True)
def _decode_rows(blocks, code, start, stop, w, d_w, dmin_w, bw):
    """Rows start..stop-1 of a Q<code>_K matrix into w int16 [rows', k] (sc(e) * c(e)) and
    _decode_codes' scales."""
    sc_w = np.empty((stop - start, blocks.shape[1], 16), np.int16)
    _decode_codes(blocks, code, start, stop, w, sc_w, d_w, dmin_w, bw, True)


@njit(cache=True)
def kquant_matmul(blocks, code, q, d_a, bsums, tiled, across_rows, step, out):
    """out [n, rows] for weights blocks uint8 [rows, nb, block bytes] of type Q<code>_K and
    Q8_K activations (q int8 [n, k], d_a float32 [n, nb], bsums int16 [n, k/16]): tiled.cpp's
    arithmetic when `tiled`, else vec_dot's (see the reference's docstring). `step` rows are
    decoded at a time; `across_rows` picks the arrangement (module docstring)."""
    rows, nb, _ = blocks.shape
    k = 256 * nb
    if across_rows:
        # decoded straight into the transposed layout (the decoder writes through .T views;
        # whole contiguous arrays per chunk, so that the loops over rows vectorize)
        for start in range(0, rows, step):
            m = min(rows, start + step) - start
            w_t = np.empty((k, m), np.int16)
            d_t = np.empty((nb, m), np.float32)
            dmin_t = np.zeros((nb, m), np.float32)
            bw_t = np.zeros((nb, 16, m), np.int32)
            _decode_rows(blocks, code, start, start + m, w_t.T, d_t.T, dmin_t.T, bw_t.transpose(2, 0, 1))
            _sweep_across_rows(w_t, d_t, dmin_t, bw_t, code, q, d_a, bsums, tiled, out[:, start:start + m])
    else:
        w = np.empty((step, k), np.int16)
        d_w = np.empty((step, nb), np.float32)
        dmin_w = np.zeros((step, nb), np.float32)
        bw = np.zeros((step, nb, 16), np.int32)
        for start in range(0, rows, step):
            m = min(rows, start + step) - start
            _decode_rows(blocks, code, start, start + m, w, d_w, dmin_w, bw)
            _row_by_row(w, d_w, dmin_w, bw, m, code, q, d_a, bsums, tiled, out[:, start:start + m])


@njit(cache=True, parallel=True)
def kquant_matmul_few(blocks, code, q, d_a, bsums, tiled, step, vector, out, shared):
    """kquant_matmul row by row (a few tokens: the decode step), chunks of `step` rows, each
    decoded into its own scratch (shared among Numba's threads with shared); vector:
    _row_by_row's AVX2 lanes."""
    chunks = -(-blocks.shape[0] // step)
    if shared:
        for c in prange(chunks):
            _few_chunk(blocks, code, q, d_a, bsums, tiled, step, vector, out, c)
    else:
        for c in range(chunks):
            _few_chunk(blocks, code, q, d_a, bsums, tiled, step, vector, out, c)


@njit(cache=True)
def _few_chunk(blocks, code, q, d_a, bsums, tiled, step, vector, out, c):
    """kquant_matmul_few's chunk c: rows c step .. (c + 1) step - 1."""
    rows, nb, _ = blocks.shape
    k = 256 * nb
    start = c * step
    m = min(rows, start + step) - start
    w = np.empty((step, k), np.int16)
    d_w = np.empty((step, nb), np.float32)
    dmin_w = np.zeros((step, nb), np.float32)
    bw = np.zeros((step, nb, 16), np.int32)
    _decode_rows(blocks, code, start, start + m, w, d_w, dmin_w, bw)
    _row_by_row(w, d_w, dmin_w, bw, m, code, q, d_a, bsums, tiled, out[:, start:start + m], vector)


@njit(cache=True)
def _row_by_row(w, d_w, dmin_w, bw, n_rows, code, q, d_a, bsums, tiled, out, vector=False):
    """out [n, n_rows] from decoded rows w int16 [>= n_rows, k] (and their scales), one row
    and one token at a time; with vector (w and q C-contiguous, a machine with AVX2) each
    block's eight lanes by avx2.i16_block_lanes."""
    n = q.shape[0]
    nb = d_w.shape[1]
    k = w.shape[1]
    w_flat, q_flat = w.reshape(-1), q.reshape(-1)
    part = np.empty(32, np.int32)
    lanes = np.empty(8, np.int32)
    acc = np.empty(8, np.float32)
    acc_m = np.empty(4, np.float32)
    pairs = np.empty(8, np.int32)
    for r in range(n_rows):
        for t in range(n):
            acc[:] = 0
            acc_m[:] = 0
            summs = np.float32(0)
            y = np.float32(0)
            for b in range(nb):
                if vector:
                    avx2.i16_block_lanes(w_flat, r * k + 256 * b, q_flat, t * k + 256 * b, 8, lanes)
                else:
                    part[:] = 0
                    for run in range(8):
                        o = 256 * b + 32 * run
                        for j in range(32):
                            part[j] += I32(w[r, o + j]) * I32(q[t, o + j])
                    for l in range(8):
                        lanes[l] = part[4 * l] + part[4 * l + 1] + part[4 * l + 2] + part[4 * l + 3]
                if tiled:
                    s1 = I32(0)
                    for l in range(8):
                        s1 += lanes[l]
                    s2 = I32(0)
                    for m in range(16):
                        s2 += bw[r, b, m] * I32(bsums[t, 16 * b + m])
                    y = _tiled_block(code, s1, s2, d_w[r, b], dmin_w[r, b], d_a[t, b], y)
                else:
                    d = np.float32(d_a[t, b] * d_w[r, b])
                    dmin = np.float32(-np.float32(d_a[t, b] * dmin_w[r, b]))
                    s2 = I32(0)
                    for l in range(8):
                        pair = bw[r, b, 2 * l] * I32(bsums[t, 16 * b + 2 * l]) \
                            + bw[r, b, 2 * l + 1] * I32(bsums[t, 16 * b + 2 * l + 1])
                        s2 += pair
                        pairs[l] = pair
                        if code == 2:
                            acc[l] = fma32(dmin, np.float32(pair), acc[l])
                        elif code == 6:
                            lanes[l] -= pair
                    if code == 5:
                        summs = fma32(dmin, np.float32(s2), summs)
                    elif code == 4:
                        for i in range(4):
                            acc_m[i] = fma32(dmin, np.float32(pairs[2 * i] + pairs[2 * i + 1]), acc_m[i])
                    for l in range(8):
                        acc[l] = fma32(d, np.float32(lanes[l]), acc[l])
            if tiled:
                out[t, r] = y
            elif code == 5:
                out[t, r] = np.float32(hsum8(acc) + summs)
            elif code == 4:
                m = np.float32(np.float32(acc_m[0] + acc_m[2]) + np.float32(acc_m[1] + acc_m[3]))
                out[t, r] = np.float32(hsum8(acc) + m)
            else:
                out[t, r] = hsum8(acc)


@njit(inline="always")
def _tiled_block(code, s1, s2, d_w, dmin_w, d_a, y):
    """One K slab of tiled_run_microtile_avx2 for one output: s1 = sum sc c q (Q6_K: the
    bsum term s2 = sum 32 sc bs still to subtract), s2 = sum mins bs (Q2_K, Q4_K, Q5_K)."""
    if code == 6:
        s1 = s1 - s2
    res = np.float32(d_w * np.float32(s1))
    if code == 2 or code == 4 or code == 5:
        res = fma32(np.float32(-dmin_w), np.float32(s2), res)
    return fma32(res, d_a, y)


@njit(cache=True)
def _sweep_across_rows(w_t, d_w, dmin_w, bw, code, q, d_a, bsums, tiled, out):
    """out [n, rows'] from a decoded chunk transposed: w_t int16 [k, rows'], d_w and dmin_w
    float32 [nb, rows'], bw int32 [nb, 16, rows']; every loop over rows is innermost."""
    k, n_rows = w_t.shape
    nb = k // 256
    n = q.shape[0]
    lanes = np.empty((8, n_rows), np.int32)
    pair = np.empty(n_rows, np.int32)
    s2 = np.empty(n_rows, np.int32)
    acc = np.empty((8, n_rows), np.float32)
    acc_m = np.empty((4, n_rows), np.float32)
    summs = np.empty(n_rows, np.float32)
    y = np.empty(n_rows, np.float32)
    d = np.empty(n_rows, np.float32)
    dmin = np.empty(n_rows, np.float32)
    for t in range(n):
        acc[:, :] = 0
        acc_m[:, :] = 0
        summs[:] = 0
        y[:] = 0
        for b in range(nb):
            lanes[:, :] = 0
            for e in range(256):
                l = (e & 31) >> 2
                qv = I32(q[t, 256 * b + e])
                for r in range(n_rows):
                    lanes[l, r] += I32(w_t[256 * b + e, r]) * qv
            da = d_a[t, b]
            s2[:] = 0
            if tiled:
                for m in range(16):
                    bs = I32(bsums[t, 16 * b + m])
                    for r in range(n_rows):
                        s2[r] += bw[b, m, r] * bs
                for r in range(n_rows):
                    s1 = lanes[0, r] + lanes[1, r] + lanes[2, r] + lanes[3, r] \
                        + lanes[4, r] + lanes[5, r] + lanes[6, r] + lanes[7, r]
                    y[r] = _tiled_block(code, s1, s2[r], d_w[b, r], dmin_w[b, r], da, y[r])
            else:
                for r in range(n_rows):
                    d[r] = np.float32(da * d_w[b, r])
                    dmin[r] = np.float32(-np.float32(da * dmin_w[b, r]))
                if code != 3:
                    for l in range(8):
                        bs0, bs1 = I32(bsums[t, 16 * b + 2 * l]), I32(bsums[t, 16 * b + 2 * l + 1])
                        for r in range(n_rows):
                            pair[r] = bw[b, 2 * l, r] * bs0 + bw[b, 2 * l + 1, r] * bs1
                        if code == 2:
                            for r in range(n_rows):
                                acc[l, r] = fma32(dmin[r], np.float32(pair[r]), acc[l, r])
                        elif code == 6:
                            for r in range(n_rows):
                                lanes[l, r] -= pair[r]
                        elif code == 4:
                            # acc_m[l / 2] takes the pairs of lanes 2i, 2i + 1 as one int32
                            if l % 2 == 0:
                                for r in range(n_rows):
                                    s2[r] = pair[r]
                            else:
                                for r in range(n_rows):
                                    acc_m[l // 2, r] = fma32(dmin[r], np.float32(s2[r] + pair[r]), acc_m[l // 2, r])
                        else:
                            for r in range(n_rows):
                                s2[r] += pair[r]
                    if code == 5:
                        for r in range(n_rows):
                            summs[r] = fma32(dmin[r], np.float32(s2[r]), summs[r])
                for l in range(8):
                    for r in range(n_rows):
                        acc[l, r] = fma32(d[r], np.float32(lanes[l, r]), acc[l, r])
        if tiled:
            out[t, :] = y
        else:
            for r in range(n_rows):
                t0 = np.float32(acc[4, r] + acc[0, r])
                t1 = np.float32(acc[5, r] + acc[1, r])
                t2 = np.float32(acc[6, r] + acc[2, r])
                t3 = np.float32(acc[7, r] + acc[3, r])
                h = np.float32(np.float32(t0 + t2) + np.float32(t1 + t3))
                if code == 5:
                    h = np.float32(h + summs[r])
                elif code == 4:
                    h = np.float32(h + np.float32(np.float32(acc_m[0, r] + acc_m[2, r])
                                                  + np.float32(acc_m[1, r] + acc_m[3, r])))
                out[t, r] = h
