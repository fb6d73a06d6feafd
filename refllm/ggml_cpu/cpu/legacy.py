"""Numba twin of refllm/ggml_cpu/reference/legacy.py: the same float32 operations in the
same order, so the same bits. Per weight row and token, llama.cpp computes for each block of
32 the eight int32 lane sums of four products, folds them into eight float32 accumulators
with fused multiply-adds by d_w * d_a, adds m_w * s_a to a running sum (Q4_1, Q5_1), and at
the end reduces the lanes with hsum8. The integer sums are exact, so any arrangement of them
gives the same bits; the float32 steps are kept as they are, one chain per (row, token).

Four arrangements, all reading the weight bytes directly (no NumPy decoding, no copy of the
matrix; only a chunk of rows is ever decoded):

    one token, AVX2               `legacy_gemv_avx2`: llama.cpp's vec_dot row by row, each
                                  row's blocks unpacked in registers (avx2.legacy_row_dot_*),
                                  groups of rows shared among the threads (the decode step)
    few tokens without AVX2       `legacy_matmul_rows`: row by row, the row's quants are
    (n < FEW_TOKENS)              decoded to int16, multiplied by each token's in pairs
                                  (vpmaddwd), paired up into the lanes, and the lanes folded
                                  into eight scalar accumulators
    batches, AVX2                 `legacy_matmul_avx2`: a chunk of rows decoded to int8, then
                                  refllm.ggml_cpu.avx2's register tiles (4 rows x 2 tokens,
                                  vpmaddubsw lanes, the accumulators in registers), after the
                                  tile's scales d_w * d_a (`_tokens_for_tiles` lays out the
                                  activations once per input, for every matrix it meets)
    batches, elsewhere            `legacy_matmul_tokens`: a chunk of rows is decoded to
                                  float32, the tokens are transposed (tokens contiguous) and
                                  every lane is computed for many tokens at once: the four
                                  products and their sum in float32 (exact: integers below
                                  2^17) and the accumulator's fma, as vector operations over
                                  the tokens, four weight rows per pass over the activations

What makes the Numba code fast (besides ggml_repack.py's int32 casts and trip counts from
arrays): array indices are unsigned (np.uint64). With a signed index Numba adds a wraparound
select for negative values, which LLVM cannot remove when the index is not a plain loop
counter (a block's byte offset), and that turns every load of a vectorized loop into a
scalar one. The block size 32 is not a constant either (it is k // nb): a constant trip
count makes LLVM unroll a block's loops into scalar code before its loop vectorizer (the
only one Numba enables) sees them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.ggml_cpu import avx2
from refllm.ggml_cpu.reference.legacy import LEGACY_BLOCKS
from refllm.ggml_cpu.threads import shared
from refllm.ggml_cpu.x86 import fma32, hsum8

I16 = np.int16
I32 = np.int32
U32 = np.uint32
U64 = np.uint64
F32 = np.float32

# fp16 bits -> float32 for every half (exact); Numba freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)

# Weight rows decoded (to float32) at a time, for batches: about 256 KiB.
CHUNK_BYTES = 1 << 18
# Without AVX2, below this many tokens each row is multiplied token by token (legacy_matmul_rows):
# measured faster than the portable batch kernel up to 12-16 tokens (which pads the tokens to
# whole 8s). With AVX2 the tiles are faster from two tokens on.
FEW_TOKENS = 16
# Batches: tokens are padded to whole vectors of 8 and swept in tiles of at most about this
# many bytes of (transposed, float32) activations. A long tile amortizes the set-up of each
# vectorized loop (LLVM's run-time alias checks, the weights' broadcasts); 2 MiB (one tile up
# to 900 tokens for k = 576) measured faster than tiles that fit the 512 KiB L2 cache.
TILE_BYTES = 1 << 21
# Batches go to the AVX2 kernel where the machine has AVX2 (tests switch it off to check the
# portable kernel).
USE_AVX2 = avx2.AVAILABLE
# AVX2 batches: weight rows decoded (to int8) at a time, and tokens per pass over four rows
# (whose scales are computed first).
AVX2_ROWS = 64
AVX2_TOKENS = 128


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat."""
    rows, k = shape
    nb = k // 32
    block_bytes, qs_at, qh_at, has_min, offset = LEGACY_BLOCKS[weight_type]
    raw = np.ascontiguousarray(np.asarray(raw, np.uint8).reshape(-1))
    layout = (nb, block_bytes, qs_at, -1 if qh_at is None else qh_at, has_min, I32(offset), weight_type == "Q8_0")
    s_a = act.s if act.s is not None else act.d
    n = act.q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    if n == 1 and USE_AVX2:
        legacy_gemv_avx2(raw, TYPE_IDS[weight_type], nb, block_bytes, np.ascontiguousarray(act.q[0], np.int8),
                         np.ascontiguousarray(act.d[0], F32), np.ascontiguousarray(s_a[0], F32), out[0],
                         shared(raw.nbytes))
        return out
    if n < FEW_TOKENS and not USE_AVX2:
        legacy_matmul_rows(raw, *layout, np.ascontiguousarray(act.q, np.int16),
                           np.ascontiguousarray(act.d, F32), np.ascontiguousarray(s_a, F32), out)
        return out
    if USE_AVX2:
        _mul_mat_avx2(raw, weight_type, layout, act, out)
        return out
    # the tokens transposed, padded with zeros to whole tiles of whole 8s
    n8 = -(-n // 8) * 8
    tiles = -(-n8 // max(8, TILE_BYTES // (4 * k) // 8 * 8))
    tile = -(-n8 // (8 * tiles)) * 8
    n_pad = tile * tiles
    a_t = np.zeros((k, n_pad), F32)
    a_t[:, :n] = act.q.T
    d_t = np.zeros((2, nb, n_pad), F32)
    d_t[0, :, :n] = act.d.T
    d_t[1, :, :n] = s_a.T
    step = max(4, CHUNK_BYTES // (4 * k))
    w = np.empty((min(step, rows), k), F32)
    dm = np.empty((2, min(step, rows), nb), F32)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        legacy_matmul_tokens(raw, *layout, start, stop, a_t, d_t, tile, w, dm, out)
    return out


# legacy_gemv_avx2's specializations
TYPE_IDS = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4}
# one token: rows per work item of the parallel loop (a few KiB of weights)
GEMV_ROWS = 16


@njit(cache=True, parallel=True)
def legacy_gemv_avx2(raw, type_id, nb, block_bytes, a, d_a, s_a, out, shared):
    """out [rows] = one token's products (a int8 [k], d_a and s_a float32 [nb]) with every
    weight row of raw, by avx2's legacy_row_dot for the type (TYPE_IDS): llama.cpp's vec_dot,
    row by row, straight from the blocks. With shared, groups of GEMV_ROWS rows are shared
    among Numba's threads (refllm.ggml_cpu.threads)."""
    rows = out.shape[0]
    if shared:
        for c in prange(-(-rows // GEMV_ROWS)):
            _legacy_gemv_rows(raw, type_id, nb, block_bytes, a, d_a, s_a, out, c * GEMV_ROWS,
                              min(rows, (c + 1) * GEMV_ROWS))
    else:
        _legacy_gemv_rows(raw, type_id, nb, block_bytes, a, d_a, s_a, out, 0, rows)


@njit(cache=True)
def _legacy_gemv_rows(raw, type_id, nb, block_bytes, a, d_a, s_a, out, start, stop):
    """legacy_gemv_avx2 for rows start..stop-1."""
    row_bytes = U64(nb) * U64(block_bytes)
    nbu = U64(nb)
    for r in range(start, stop):
        at = U64(r) * row_bytes
        if type_id == 0:
            out[r] = avx2.legacy_row_dot_q4_0(raw, at, a, d_a, s_a, nbu)
        elif type_id == 1:
            out[r] = avx2.legacy_row_dot_q4_1(raw, at, a, d_a, s_a, nbu)
        elif type_id == 2:
            out[r] = avx2.legacy_row_dot_q5_0(raw, at, a, d_a, s_a, nbu)
        elif type_id == 3:
            out[r] = avx2.legacy_row_dot_q5_1(raw, at, a, d_a, s_a, nbu)
        else:
            out[r] = avx2.legacy_row_dot_q8_0(raw, at, a, d_a, s_a, nbu)


@njit(inline="always", cache=True)
def _f16(raw, at):
    """The little-endian fp16 at byte `at` (unsigned) of raw, as float32."""
    return FP16_TO_F32[I32(raw[at]) | I32(I32(raw[at + U64(1)]) << I32(8))]


@njit(inline="always", cache=True)
def _decode_block(raw, at, qs_at, qh_at, offset, is_q8_0, half, w, o):
    """The 2 * half (32) quants of the block at byte `at` (unsigned) of raw, minus offset, into
    w[o:o + 2 * half] (int16 or float32, exact either way): qs holds int8 quants (Q8_0) or
    nibbles (byte i: quant i low, quant i + half high), and qh the 5th bits when qh_at >= 0."""
    qs = at + U64(qs_at)
    if is_q8_0:
        for i in range(half + half):
            w[o + i] = I32(np.int8(raw[qs + i]))
    elif qh_at < 0:
        for i in range(half):
            byte = I32(raw[qs + i])
            w[o + i] = I32(I32(byte & I32(0x0F)) - offset)
            w[o + half + i] = I32(I32(byte >> I32(4)) - offset)
    else:
        h = at + U64(qh_at)
        qh = (U32(raw[h]) | (U32(raw[h + U64(1)]) << U32(8))
              | (U32(raw[h + U64(2)]) << U32(16)) | (U32(raw[h + U64(3)]) << U32(24)))
        for i in range(half):
            byte = I32(raw[qs + i])
            high = I32((qh >> U32(i)) & U32(1)) << I32(4)
            w[o + i] = I32(I32(I32(byte & I32(0x0F)) | high) - offset)
            high = I32((qh >> U32(i + half)) & U32(1)) << I32(4)
            w[o + half + i] = I32(I32(I32(byte >> I32(4)) | high) - offset)


@njit(cache=True)
def legacy_matmul_rows(raw, nb, block_bytes, qs_at, qh_at, has_min, offset, is_q8_0, a, d_a, s_a, out):
    """out [n, rows] = the legacy-type products, one weight row at a time (for a few tokens).

    raw uint8 [rows * nb * block_bytes]: the blocks, d (fp16) at byte 0 and m at byte 2 when
    has_min, then the quants as _decode_block reads them; a int16 [n, k] (the Q8 quants),
    d_a and s_a float32 [n, nb]. Per row: its quants to int16 (w), then per token the
    products summed in pairs (pairs[p] = w[2p] a[2p] + w[2p+1] a[2p+1], which LLVM turns into
    vpmaddwd), two pairs to a lane (lanes[8b + j], float32, exact), and the lanes folded block
    by block into eight scalar accumulators in llama.cpp's order."""
    rows = U64(out.shape[1])
    n = U64(a.shape[0])
    k = U64(a.shape[1])
    nbu = U64(nb)
    half = k // nbu // U64(2)                 # 16, unknown to LLVM: see the module docstring
    bb = U64(block_bytes)
    w = np.empty(k, I16)
    pairs = np.empty(k // U64(2), I32)
    lanes = np.empty(k // U64(4), F32)
    d_w = np.empty(nb, F32)
    m_w = np.empty(nb, F32)
    scale = np.empty(nb, F32)
    for r in range(rows):
        row = r * nbu * bb
        for b in range(nbu):
            _decode_block(raw, row + b * bb, qs_at, qh_at, offset, is_q8_0, half, w, b * (half + half))
            d_w[b] = _f16(raw, row + b * bb)
            if has_min:
                m_w[b] = _f16(raw, row + b * bb + U64(2))
        for t in range(n):
            for p in range(pairs.shape[0]):
                pairs[p] = I32(I32(I32(w[2 * p]) * I32(a[t, 2 * p])) + I32(I32(w[2 * p + 1]) * I32(a[t, 2 * p + 1])))
            for j in range(lanes.shape[0]):
                lanes[j] = F32(I32(pairs[2 * j] + pairs[2 * j + 1]))
            for b in range(nbu):
                scale[b] = F32(d_w[b] * d_a[t, b])
            z = F32(0)
            acc = (z, z, z, z, z, z, z, z)
            for b in range(nbu):
                s = scale[b]
                l = U64(8) * b
                acc = (fma32(s, lanes[l], acc[0]), fma32(s, lanes[l + U64(1)], acc[1]),
                       fma32(s, lanes[l + U64(2)], acc[2]), fma32(s, lanes[l + U64(3)], acc[3]),
                       fma32(s, lanes[l + U64(4)], acc[4]), fma32(s, lanes[l + U64(5)], acc[5]),
                       fma32(s, lanes[l + U64(6)], acc[6]), fma32(s, lanes[l + U64(7)], acc[7]))
            summs = F32(0)
            if has_min:
                for b in range(nbu):
                    summs = F32(summs + m_w[b] * s_a[t, b])
            out[t, r] = F32(hsum8(acc) + summs)


@njit(inline="always", cache=True)
def _lane(w, x0, x1, x2, x3):
    """w[0] x0 + w[1] x1 + w[2] x2 + w[3] x3 in float32: exact, since every partial sum is an
    integer below 2^17 (|w| <= 128, |x| <= 127), so it equals llama.cpp's int32 lane."""
    return fma32(w[3], x3, fma32(w[2], x2, fma32(w[1], x1, F32(w[0] * x0))))


@njit(cache=True)
def legacy_matmul_tokens(raw, nb, block_bytes, qs_at, qh_at, has_min, offset, is_q8_0, start, stop,
                         a_t, d_t, tile, w, dm, out):
    """out[:, start:stop] = the legacy-type products of rows start..stop-1, vectorized over the
    tokens (for a batch).

    raw and the layout arguments as legacy_matmul_rows; a_t float32 [k, n_pad] (the Q8 quants
    transposed, zero past the n tokens), d_t float32 [2, nb, n_pad] (d_a and s_a
    transposed); n_pad a multiple of `tile`, itself a multiple of 8; w float32 [>= stop -
    start, k] and dm float32 [2, >= stop - start, nb] scratch for the decoded rows and their d
    and m. Rows go four at a time (the last ones repeated when their count is not a multiple
    of 4), so that the activations loaded for a lane serve four rows. For each lane j of block
    b the inner loop runs over a tile of tokens t:

        lane(t) = w0 a0(t) + w1 a1(t) + w2 a2(t) + w3 a3(t)      float32, exact (_lane)
        acc[q, j, t] = fma(d_w * d_a(t), lane(t), acc[q, j, t])    for the four rows q

    with the rows' quants w0..w3 as scalars: vector code over 8 tokens (the loop's trip count
    is not known to LLVM, so it vectorizes the loop rather than unrolling it)."""
    k = U64(a_t.shape[0])
    n = U64(out.shape[0])
    nbu = U64(nb)
    qk = k // nbu                             # 32, unknown to LLVM: see the module docstring
    bb = U64(block_bytes)
    count = U64(stop - start)
    w_flat = w.reshape(-1)
    for rr in range(count):
        row = (U64(start) + rr) * nbu * bb
        for b in range(nbu):
            _decode_block(raw, row + b * bb, qs_at, qh_at, offset, is_q8_0, qk // U64(2), w_flat, rr * k + b * qk)
            dm[0, rr, b] = _f16(raw, row + b * bb)
            if has_min:
                dm[1, rr, b] = _f16(raw, row + b * bb + U64(2))
    tile_u = U64(tile)
    acc = np.empty((4, 8, tile), F32)
    scale = np.empty((4, tile), F32)
    summs = np.empty((4, tile), F32)
    last = count - U64(1)
    for t0 in range(U64(0), U64(a_t.shape[1]), tile_u):
        for r_a in range(U64(0), count, U64(4)):
            r_b, r_c, r_d = min(r_a + U64(1), last), min(r_a + U64(2), last), min(r_a + U64(3), last)
            quad = (r_a, r_b, r_c, r_d)
            acc[:, :, :] = 0
            summs[:, :] = 0
            for b in range(nbu):
                for q in range(U64(4)):
                    r = quad[q]
                    d = dm[0, r, b]
                    for t in range(tile_u):
                        scale[q, t] = F32(d * d_t[0, b, t0 + t])
                    if has_min:
                        m = dm[1, r, b]
                        for t in range(tile_u):
                            summs[q, t] = F32(summs[q, t] + m * d_t[1, b, t0 + t])
                # the inner loop over the tile's tokens is the vectorized one; its four rows'
                # quants are loop invariants, broadcast once per lane
                for j in range(U64(acc.shape[1])):
                    e0 = b * qk + U64(4) * j
                    e1, e2, e3 = e0 + U64(1), e0 + U64(2), e0 + U64(3)
                    w_a = (w[r_a, e0], w[r_a, e1], w[r_a, e2], w[r_a, e3])
                    w_b = (w[r_b, e0], w[r_b, e1], w[r_b, e2], w[r_b, e3])
                    w_c = (w[r_c, e0], w[r_c, e1], w[r_c, e2], w[r_c, e3])
                    w_d = (w[r_d, e0], w[r_d, e1], w[r_d, e2], w[r_d, e3])
                    for t in range(tile_u):
                        x0, x1, x2, x3 = a_t[e0, t0 + t], a_t[e1, t0 + t], a_t[e2, t0 + t], a_t[e3, t0 + t]
                        acc[0, j, t] = fma32(scale[0, t], _lane(w_a, x0, x1, x2, x3), acc[0, j, t])
                        acc[1, j, t] = fma32(scale[1, t], _lane(w_b, x0, x1, x2, x3), acc[1, j, t])
                        acc[2, j, t] = fma32(scale[2, t], _lane(w_c, x0, x1, x2, x3), acc[2, j, t])
                        acc[3, j, t] = fma32(scale[3, t], _lane(w_d, x0, x1, x2, x3), acc[3, j, t])
            for q in range(U64(4)):
                r = U64(start) + quad[q]
                for t in range(min(tile_u, n - min(n, t0))):
                    lanes = (acc[q, 0, t], acc[q, 1, t], acc[q, 2, t], acc[q, 3, t],
                             acc[q, 4, t], acc[q, 5, t], acc[q, 6, t], acc[q, 7, t])
                    out[t0 + t, r] = F32(hsum8(lanes) + summs[q, t])


def _mul_mat_avx2(raw, weight_type, layout, act, out):
    """out [n, rows] through avx2's q8_dot tiles, on the activations as _tokens_for_tiles lays
    them out; the products padded to whole tiles."""
    rows = out.shape[1]
    n2 = out.shape[0] + out.shape[0] % 2
    offset = LEGACY_BLOCKS[weight_type][4]
    kind = avx2.SIGNED if weight_type == "Q8_0" else avx2.OFFSET if offset else avx2.UNSIGNED
    a, d_pairs, s_pairs = _laid_out_for_tiles(act)
    padded = out if (n2, -(-rows // 4) * 4) == out.shape else np.empty((n2, -(-rows // 4) * 4), F32)
    legacy_matmul_avx2(raw, *layout[:5], kind, offset, a, d_pairs, s_pairs, padded)
    if padded is not out:
        out[:] = padded[:act.q.shape[0], :rows]


# The last activations laid out for the tiles, and that layout: q, k and v (gate and up) multiply
# one QuantizedRows, which is then laid out once.
_LAST_LAYOUT: list = [None, None]


def _laid_out_for_tiles(act):
    """(a, d_pairs, s_pairs) of _tokens_for_tiles for the QuantizedRows act (Q8_0 or Q8_1)."""
    if _LAST_LAYOUT[0] is act:
        return _LAST_LAYOUT[1]
    n, k = act.q.shape
    nb = k // 32
    n2 = n + n % 2
    a = np.zeros((n2, k), np.int8)
    d_pairs = np.zeros((n2 // 2, -(-nb * 8 // 32) * 32), F32)
    s_pairs = np.zeros((n2 // 2, nb, 8), F32)
    s_a = act.d if act.s is None else act.s
    _tokens_for_tiles(np.ascontiguousarray(act.q, np.int8), np.ascontiguousarray(act.d, F32),
                      np.ascontiguousarray(s_a, F32), a, d_pairs, s_pairs)
    _LAST_LAYOUT[:] = [act, (a, d_pairs, s_pairs)]
    return _LAST_LAYOUT[1]


@njit(cache=True)
def _tokens_for_tiles(q, d_a, s_a, a, d_pairs, s_pairs):
    """The activations (q int8 [n, k], d_a and s_a float32 [n, nb]) as the tiles read them,
    into zeroed arrays padded to an even number of tokens n2: a int8 [n2, k] = q;
    d_pairs[p, 8 b + 2 r + t] = d_a[2 p + t, b] and s_pairs[p, b, 2 r + t] = s_a[2 p + t, b]
    for each of a tile's four rows r (d_pairs' rows padded to whole 32s, so that the loop
    computing a tile's scales has no remainder)."""
    n, k = q.shape
    nb = k // 32
    for t in range(n):
        a[t, :] = q[t, :]
        p, u = t // 2, t % 2
        for b in range(nb):
            for r in range(4):
                d_pairs[p, 8 * b + 2 * r + u] = d_a[t, b]
                s_pairs[p, b, 2 * r + u] = s_a[t, b]


@njit(cache=True, parallel=True)
def legacy_matmul_avx2(raw, nb, block_bytes, qs_at, qh_at, has_min, kind, offset, a, d_pairs, s_pairs, out):
    """out [n2, rows4] = the legacy-type products by avx2's q8_dot tiles (batches), for the
    rows of raw (rows4 = rows rounded up to whole 4s; the padding is garbage): chunks of
    AVX2_ROWS rows (_legacy_rows_avx2) shared among Numba's threads.

    raw and the layout arguments as legacy_matmul_rows; kind avx2.UNSIGNED, OFFSET (with the
    type's quant offset) or SIGNED; a int8 [n2, k] (the Q8 quants, n2 even), d_pairs float32
    [n2 / 2, >= 8 nb] (d_a per tile, padded) and s_pairs float32 [n2 / 2, nb, 8] (s_a per
    tile)."""
    rows = raw.shape[0] // (nb * block_bytes)
    for c in prange(-(-rows // AVX2_ROWS)):
        start = c * AVX2_ROWS
        _legacy_rows_avx2(raw, nb, block_bytes, qs_at, qh_at, has_min, kind, offset, a, d_pairs, s_pairs, out,
                          start, min(AVX2_ROWS, rows - start))


@njit(cache=True)
def _legacy_rows_avx2(raw, nb, block_bytes, qs_at, qh_at, has_min, kind, offset, a, d_pairs, s_pairs, out,
                      start, count):
    """legacy_matmul_avx2 for rows start..start+count-1 (count <= AVX2_ROWS): decoded to int8
    (unsigned but for Q8_0), then swept four at a time over AVX2_TOKENS tokens at a time, after
    the scales d_w * d_a of every tile of those four rows and tokens."""
    n2 = U64(a.shape[0])
    k = U64(a.shape[1])
    nbu = U64(nb)
    bb = U64(block_bytes)
    lanes = U64(d_pairs.shape[1])
    half = k // nbu // U64(2)                 # 16, unknown to LLVM: see the module docstring
    chunk = AVX2_ROWS
    w = np.zeros((chunk, k), np.int8)
    w_abs = np.zeros((chunk, k), np.int8)
    d_w = np.zeros((chunk, nb), F32)
    m_w = np.zeros((chunk, nb), F32)
    d_rows = np.zeros(lanes, F32)
    m_rows = np.zeros(nb * 8, F32)
    scale = np.empty(AVX2_TOKENS // 2 * lanes, F32)
    a_flat, w_flat, w_abs_flat, out_flat = a.reshape(-1), w.reshape(-1), w_abs.reshape(-1), out.reshape(-1)
    d_flat, s_flat = d_pairs.reshape(-1), s_pairs.reshape(-1)
    stride = U64(out.shape[1])
    for rr in range(count):
        row = U64(start + rr) * nbu * bb
        for b in range(nbu):
            at = row + b * bb
            if kind == avx2.SIGNED:
                _decode_block(raw, at, qs_at, qh_at, I32(0), True, half, w[rr], b * (half + half))
            else:
                avx2.unpack_nibbles16(w_flat, U64(rr) * k + b * (half + half), raw, at + U64(qs_at),
                                      at + U64(max(qh_at, 0)), qh_at >= 0)
            d_w[rr, b] = _f16(raw, at)
            if has_min:
                m_w[rr, b] = _f16(raw, at + U64(2))
        if kind == avx2.SIGNED:
            for i in range(k):
                w_abs[rr, i] = abs(np.int16(w[rr, i]))
    for rr in range(count, -(-count // 4) * 4):
        w[rr, :] = 0
        d_w[rr, :] = 0
        m_w[rr, :] = 0
    for p0 in range(U64(0), n2 // U64(2), U64(AVX2_TOKENS // 2)):
        p1 = min(n2 // U64(2), p0 + U64(AVX2_TOKENS // 2))
        for r0 in range(U64(0), U64(count), U64(4)):
            for b in range(nbu):
                for i in range(U64(8)):
                    d_rows[b * U64(8) + i] = d_w[r0 + i // U64(2), b]
                    m_rows[b * U64(8) + i] = m_w[r0 + i // U64(2), b]
            w_at = r0 * k
            # scale[p - p0, 8 b + 2 r + t] = d_w[r, b] * d_a[2 p + t, b]
            for p in range(p0, p1):
                s_at = (p - p0) * lanes
                d_at = p * lanes
                for j in range(lanes):            # vectorized: the trip count is unknown
                    scale[s_at + j] = F32(d_rows[j] * d_flat[d_at + j])
            o_at = U64(2) * p0 * stride + U64(start) + r0
            for p in range(p0, p1):
                s_at = (p - p0) * lanes
                if kind == avx2.UNSIGNED:
                    avx2.q8_dot_unsigned(out_flat, o_at, stride, w_flat, w_flat, w_at, a_flat, offset, scale, s_at,
                                         m_rows, s_flat, p, nbu)
                elif kind == avx2.OFFSET:
                    avx2.q8_dot_offset(out_flat, o_at, stride, w_flat, w_flat, w_at, a_flat, offset, scale, s_at,
                                       m_rows, s_flat, p, nbu)
                else:
                    avx2.q8_dot_signed(out_flat, o_at, stride, w_flat, w_abs_flat, w_at, a_flat, offset, scale, s_at,
                                       m_rows, s_flat, p, nbu)
                o_at += U64(2) * stride
