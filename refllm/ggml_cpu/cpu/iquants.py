"""Numba twin of refllm/ggml_cpu/reference/iquants.py: the same integers and the same float32
operations in the same order, so the same bits, for IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S,
IQ1_M, IQ4_XS, TQ1_0 and TQ2_0.

A chunk of weight rows (about 256 KiB of int16) is decoded from its bytes at a time into
w = sc(e) * v(e) and, for IQ1_S / IQ1_M, wd = sc(e) * delta(e) (int16), and the blocks' d
(`_decode_rows`); then each row meets each token, block by block. Below 8 tokens (vec_dot,
`iquant_matmul`): one pass over the 256 products into 32 int32 partial sums part[j] (weights j,
j + 32, ...), vec_dot's lane l being part[4l .. 4l+3]; from 8 on (tiled.cpp,
`iquant_tiled_tokens`): the activations transposed (tokens contiguous) and every slab sum
computed for all tokens at once (vectorized). The float32 operations follow, in the reference's
order. Which of llama.cpp's paths is reproduced (tiled.cpp for n >= 8, vec_dot
below; TQ always vec_dot) is decided as in the reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.ggml_cpu.reference.iquants import (
    IQUANT_BLOCK_BYTES,
    TILED_FACTOR,
    TILED_MIN_BATCH,
    TILED_TYPES,
    VEC_DOT_FACTOR,
)
from refllm.ggml_cpu.x86 import fma32, hsum8
from refllm.kernels.iq_grids import (
    IQ1S_GRID8,
    IQ2S_GRID8,
    IQ2XS_GRID8,
    IQ2XXS_GRID8,
    IQ3S_GRID8,
    IQ3XXS_GRID8,
    KSIGNS_IQ2XS,
)
from refllm.kernels.tables import KVALUES_IQ4NL

I32 = np.int32
F32 = np.float32

# type name -> the integer the kernels switch on
_TYPE_CODE = {"IQ2_XXS": 1, "IQ2_XS": 2, "IQ2_S": 3, "IQ3_XXS": 4, "IQ3_S": 5, "IQ1_S": 6, "IQ1_M": 7,
              "IQ4_XS": 8, "TQ1_0": 9, "TQ2_0": 10}
_IQ1_S, _IQ1_M, _TQ1_0, _TQ2_0 = 6, 7, 9, 10
# Bytes of decoded int16 weights per chunk.
CHUNK_BYTES = 1 << 18

# fp16 bits -> float32 for every half (exact); Numba freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)
_GRID2XXS = IQ2XXS_GRID8.astype(np.int32)
_GRID2XS = IQ2XS_GRID8.astype(np.int32)
_GRID2S = IQ2S_GRID8.astype(np.int32)
_GRID3XXS = IQ3XXS_GRID8.astype(np.int32)
_GRID3S = IQ3S_GRID8.astype(np.int32)
_GRID1S = IQ1S_GRID8.astype(np.int32)
_KSIGNS = KSIGNS_IQ2XS.astype(np.int32)
_KVALUES = KVALUES_IQ4NL.astype(np.int32)


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat (tiled.cpp's arithmetic for
    n >= 8 tokens, ggml_vec_dot_<type>_q8_K's below; TQ1_0 and TQ2_0 always vec_dot)."""
    rows, k = shape
    code = _TYPE_CODE[weight_type]
    blocks = np.asarray(raw, np.uint8).reshape(rows, k // 256, IQUANT_BLOCK_BYTES[weight_type])
    q = np.ascontiguousarray(act.q, np.int8)
    n = q.shape[0]
    out = np.empty((n, rows), F32)
    if n == 0 or rows == 0:
        return out
    tiled = weight_type in TILED_TYPES and n >= TILED_MIN_BATCH
    step = max(16, CHUNK_BYTES // (2 * k))
    if tiled:
        q_t = np.ascontiguousarray(q.T, dtype=I32)
        d_a_t = np.ascontiguousarray(np.asarray(act.d, F32).T)
        iquant_tiled_tokens(blocks, code, q_t, d_a_t, F32(TILED_FACTOR.get(weight_type, 1.0)), step, out)
        return out
    iquant_matmul(blocks, code, q, np.ascontiguousarray(act.d, F32), np.ascontiguousarray(act.bsums, np.int16),
                  F32(VEC_DOT_FACTOR.get(weight_type, 1.0)), step, out)
    return out


@njit(inline="always", cache=True)
def _u16(blk, at):
    """The little-endian uint16 at byte `at` of a block's bytes."""
    return I32(blk[at]) | (I32(blk[at + 1]) << 8)


@njit(inline="always", cache=True)
def _u32(blk, at):
    """The little-endian uint32 at byte `at` of a block's bytes (as int64, non-negative)."""
    return np.int64(blk[at]) | (np.int64(blk[at + 1]) << 8) | (np.int64(blk[at + 2]) << 16) \
        | (np.int64(blk[at + 3]) << 24)


@njit(inline="always", cache=True)
def _signed(v, signs, j):
    """v negated if bit j of the sign byte is set."""
    return -v if (signs >> j) & 1 else v


@njit(cache=True)
def _decode_rows(blocks, code, start, stop, w, wd, d_w):
    """Rows start..stop-1 of an IQ / TQ matrix (blocks uint8 [rows, nb, block bytes]) into w and
    wd int16 [rows', k] (sc v and sc delta; the reference's IQuantRows) and d_w float32
    [rows', nb]. Block layouts: refllm.ggml_cpu.reference.iquants.decode_blocks."""
    nb = blocks.shape[1]
    for i in range(stop - start):
        for b in range(nb):
            blk = blocks[start + i, b]
            o = 256 * b
            if code == 1:
                # IQ2_XXS: d; per 32: 4 grid indices, uint32 (4 x 7 sign bits, ls bits 28-31)
                for ib in range(8):
                    at = 2 + 8 * ib
                    aux = _u32(blk, at + 4)
                    sc = I32(2 * (aux >> 28) + 1)
                    for l in range(4):
                        idx = I32(blk[at + l])
                        signs = _KSIGNS[(aux >> (7 * l)) & 127]
                        for j in range(8):
                            w[i, o + 32 * ib + 8 * l + j] = np.int16(sc * _signed(_GRID2XXS[idx, j], signs, j))
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == 2:
                # IQ2_XS: d; uint16 qs[32] (index bits 0-8, sign index 9-15); scales[8] per 16
                for g in range(32):
                    qs = _u16(blk, 2 + 2 * g)
                    signs = _KSIGNS[qs >> 9]
                    sc = I32(2 * ((I32(blk[66 + g // 4]) >> (4 * ((g % 4) // 2))) & 15) + 1)
                    for j in range(8):
                        w[i, o + 8 * g + j] = np.int16(sc * _signed(_GRID2XS[qs & 511, j], signs, j))
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == 3:
                # IQ2_S: d; qs[32] index low bytes; signs[32]; qh[8] (2 index bits per group); scales[8]
                for g in range(32):
                    ib = g // 4
                    idx = I32(blk[2 + g]) | (((I32(blk[66 + ib]) >> (2 * (g % 4))) & 3) << 8)
                    signs = I32(blk[34 + g])
                    sc = I32(2 * ((I32(blk[74 + ib]) >> (4 * ((g % 4) // 2))) & 15) + 1)
                    for j in range(8):
                        w[i, o + 8 * g + j] = np.int16(sc * _signed(_GRID2S[idx, j], signs, j))
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == 4:
                # IQ3_XXS: d; qs[64] grid index per 4; 8 uint32 at 66 (4 x 7 sign bits, ls 28-31)
                for ib in range(8):
                    aux = _u32(blk, 66 + 4 * ib)
                    sc = I32(2 * (aux >> 28) + 1)
                    for l in range(4):
                        signs = _KSIGNS[(aux >> (7 * l)) & 127]
                        for h in range(2):
                            idx = I32(blk[2 + 8 * ib + 2 * l + h])
                            for j in range(4):
                                w[i, o + 32 * ib + 8 * l + 4 * h + j] = np.int16(
                                    sc * _signed(_GRID3XXS[idx, j], signs, 4 * h + j))
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == 5:
                # IQ3_S: d; qs[64]; qh[8] (bit 8 of index k: bit k%8 of qh[k/8]); signs[32]; scales[4]
                for kk in range(64):
                    idx = I32(blk[2 + kk]) | (((I32(blk[66 + kk // 8]) >> (kk % 8)) & 1) << 8)
                    for j in range(4):
                        e = 4 * kk + j
                        ib = e // 32
                        sc = I32(2 * ((I32(blk[106 + ib // 2]) >> (4 * (ib % 2))) & 15) + 1)
                        signs = I32(blk[74 + e // 8])
                        w[i, o + e] = np.int16(sc * _signed(_GRID3S[idx, j], signs, e % 8))
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == _IQ1_S:
                # IQ1_S: d; qs[32] index low bytes; uint16 qh[8] (index bits 3l, ls 12-14, delta sign 15)
                for ib in range(8):
                    qh = _u16(blk, 34 + 2 * ib)
                    sc = I32(2 * ((qh >> 12) & 7) + 1)
                    delta = I32(-1) if qh & 0x8000 else I32(1)
                    for l in range(4):
                        idx = I32(blk[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                        for j in range(8):
                            e = o + 32 * ib + 8 * l + j
                            w[i, e] = np.int16(sc * _GRID1S[idx, j])
                            wd[i, e] = np.int16(sc * delta)
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == _IQ1_M:
                # IQ1_M: qs[32]; qh[16] (a nibble per group: index bits 8-10, delta sign bit 3);
                # uint16 scales[4] (3-bit ls per 16 in bits 0-11, fp16 d in the top nibbles)
                for g in range(32):
                    nib = (I32(blk[32 + g // 2]) >> (4 * (g % 2))) & 15
                    idx = I32(blk[g]) | ((nib & 7) << 8)
                    delta = I32(-1) if nib & 8 else I32(1)
                    s16 = 2 * (g // 4) + (g % 4) // 2
                    sc = I32(2 * ((_u16(blk, 48 + 2 * (s16 // 4)) >> (3 * (s16 % 4))) & 7) + 1)
                    for j in range(8):
                        e = o + 8 * g + j
                        w[i, e] = np.int16(sc * _GRID1S[idx, j])
                        wd[i, e] = np.int16(sc * delta)
                d_bits = (_u16(blk, 48) >> 12) | ((_u16(blk, 50) >> 8) & 0x00F0) \
                    | ((_u16(blk, 52) >> 4) & 0x0F00) | (_u16(blk, 54) & 0xF000)
                d_w[i, b] = FP16_TO_F32[d_bits]
            elif code == 8:
                # IQ4_XS: d; uint16 scales_h at 2; scales_l[4] at 4; qs[128] at 8 (16 bytes per 32)
                scales_h = _u16(blk, 2)
                for ib in range(8):
                    ls = ((I32(blk[4 + ib // 2]) >> (4 * (ib % 2))) & 15) | (((scales_h >> (2 * ib)) & 3) << 4)
                    sc = I32(ls - 32)
                    for j in range(16):
                        byte = I32(blk[8 + 16 * ib + j])
                        w[i, o + 32 * ib + j] = np.int16(sc * _KVALUES[byte & 15])
                        w[i, o + 32 * ib + 16 + j] = np.int16(sc * _KVALUES[byte >> 4])
                d_w[i, b] = FP16_TO_F32[_u16(blk, 0)]
            elif code == _TQ1_0:
                # TQ1_0: qs[48] (5 base-3 digits a byte), qh[4] (4), d at 52; digit n of a byte:
                # ((byte * 3^n mod 256) * 3) >> 8; digit n of byte m of a run of c bytes -> n c + m
                for m in range(32):
                    _trits(blk[m], 5, w, i, o + m, 32)
                for m in range(16):
                    _trits(blk[32 + m], 5, w, i, o + 160 + m, 16)
                for m in range(4):
                    _trits(blk[48 + m], 4, w, i, o + 240 + m, 4)
                d_w[i, b] = FP16_TO_F32[_u16(blk, 52)]
            else:
                # TQ2_0: qs[64] (weight 128h + 32s + m: bits 2s of qs[32h + m]), d at 64
                for h in range(2):
                    for m in range(32):
                        byte = I32(blk[32 * h + m])
                        for s in range(4):
                            w[i, o + 128 * h + 32 * s + m] = np.int16((byte >> (2 * s)) & 3)
                d_w[i, b] = FP16_TO_F32[_u16(blk, 64)]


@njit(inline="always", cache=True)
def _trits(byte, digits, w, i, at, stride):
    """The base-3 digits of a TQ1_0 byte into w[i, at + n * stride], n < digits."""
    p = I32(1)
    for n in range(digits):
        shifted = (I32(byte) * p) & 255
        w[i, at + n * stride] = np.int16((shifted * 3) >> 8)
        p *= 3


@njit(cache=True)
def iquant_matmul(blocks, code, q, d_a, bsums, vec_factor, step, out):
    """out [n, rows] for weights blocks uint8 [rows, nb, block bytes] of the type `code` and Q8_K
    activations (q int8 [n, k], d_a float32 [n, nb], bsums int16 [n, k/16]) as
    ggml_vec_dot_<type>_q8_K computes them (the reference's docstring); vec_factor: vec_dot's
    final factor. `step` rows are decoded at a time."""
    rows, nb, _ = blocks.shape
    k = 256 * nb
    n = q.shape[0]
    delta = code == _IQ1_S or code == _IQ1_M
    ternary = code == _TQ1_0 or code == _TQ2_0
    w = np.empty((step, k), np.int16)
    wd = np.zeros((step, k), np.int16)
    d_w = np.empty((step, nb), F32)
    part = np.empty(32, I32)
    part_d = np.empty(32, I32)
    lanes = np.empty(8, I32)
    acc = np.empty(8, F32)
    acc2 = np.empty(8, F32)
    for start in range(0, rows, step):
        m = min(rows, start + step) - start
        _decode_rows(blocks, code, start, start + m, w, wd, d_w)
        for r in range(m):
            for t in range(n):
                acc[:] = 0
                acc2[:] = 0
                accum1 = F32(0)
                for b in range(nb):
                    part[:] = 0
                    part_d[:] = 0
                    for run in range(8):
                        o = 256 * b + 32 * run
                        for j in range(32):
                            part[j] += I32(w[r, o + j]) * I32(q[t, o + j])
                    if delta:
                        for run in range(8):
                            o = 256 * b + 32 * run
                            for j in range(32):
                                part_d[j] += I32(wd[r, o + j]) * I32(q[t, o + j])
                    d = F32(d_w[r, b] * d_a[t, b])
                    for l in range(8):
                        lanes[l] = part[4 * l] + part[4 * l + 1] + part[4 * l + 2] + part[4 * l + 3]
                        if ternary:
                            lanes[l] -= I32(bsums[t, 16 * b + 2 * l]) + I32(bsums[t, 16 * b + 2 * l + 1])
                        acc[l] = fma32(d, F32(lanes[l]), acc[l])
                    if code == _IQ1_M:
                        for l in range(8):
                            lane = part_d[4 * l] + part_d[4 * l + 1] + part_d[4 * l + 2] + part_d[4 * l + 3]
                            acc2[l] = fma32(d, F32(lane), acc2[l])
                    elif code == _IQ1_S:
                        sumi1 = I32(0)
                        for j in range(32):
                            sumi1 += part_d[j]
                        accum1 = fma32(d, F32(sumi1), accum1)
                if code == _IQ1_S:
                    out[t, start + r] = F32(hsum8(acc) + F32(F32(0.125) * accum1))
                elif code == _IQ1_M:
                    out[t, start + r] = F32(hsum8(acc) + F32(F32(0.125) * hsum8(acc2)))
                else:
                    out[t, start + r] = F32(vec_factor * hsum8(acc))


@njit(cache=True)
def iquant_tiled_tokens(blocks, code, q_t, d_a_t, tiled_factor, step, out):
    """out [n, rows] as tiled.cpp computes it (the reference's tiled_matmul), with every
    loop over tokens innermost so that LLVM vectorizes across them: per row and K slab, s1 of
    every token (exact int32), then r = (d_w * tiled_factor) * (float) s1 and y = fma(r, d_a, y).
    q_t int32 [k, n] (the Q8_K quants, tokens last); d_a_t float32 [nb, n]."""
    rows, nb, _ = blocks.shape
    k = 256 * nb
    n = q_t.shape[1]
    delta = code == _IQ1_S or code == _IQ1_M
    w = np.empty((step, k), np.int16)
    wd = np.zeros((step, k), np.int16)
    d_w = np.empty((step, nb), F32)
    s1 = np.empty(n, I32)
    sd = np.empty(n, I32)
    y = np.empty(n, F32)
    for start in range(0, rows, step):
        m = min(rows, start + step) - start
        _decode_rows(blocks, code, start, start + m, w, wd, d_w)
        for r in range(m):
            y[:] = 0
            for b in range(nb):
                s1[:] = 0
                sd[:] = 0
                for e in range(256 * b, 256 * (b + 1)):
                    wv = I32(w[r, e])
                    for t in range(n):
                        s1[t] = I32(s1[t] + I32(wv * q_t[e, t]))
                if delta:
                    for e in range(256 * b, 256 * (b + 1)):
                        wv = I32(wd[r, e])
                        for t in range(n):
                            sd[t] = I32(sd[t] + I32(wv * q_t[e, t]))
                    for t in range(n):
                        s1[t] = I32(I32(8) * s1[t] + sd[t])
                d_t = F32(d_w[r, b] * tiled_factor)
                for t in range(n):
                    y[t] = fma32(F32(d_t * F32(s1[t])), d_a_t[b, t], y[t])
            for t in range(n):
                out[t, start + r] = y[t]
