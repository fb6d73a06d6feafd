"""Numba kernels for the K-quants (layouts in reference/kquants.py).

The loops walk a super-block like ggml's dequantize_row_*: the float scale (and min) of a
sub-block is made once, `d * sc`, then applied to each of its weights. Inner loop bounds come
from `out.shape[1]` (256) rather than literals, so that they vectorize: see cpu/__init__.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import f32_from_bits, load_f16, u32


@njit(parallel=True, cache=True)
def q2_k(blocks, out):
    sub = out.shape[1] // 16                         # 16 weights per sub-block
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 80)
        dmin = load_f16(blocks, i, 82)
        for h in range(2):                           # halves of 128 weights: qs[32h .. 32h+31]
            for s in range(4):                       # bits 2s..2s+1 of those bytes
                for k in range(2):                   # two sub-blocks of 16
                    sc = blocks[i, 8 * h + 2 * s + k]
                    dl = d * np.float32(sc & 0x0F)
                    ml = dmin * np.float32(sc >> 4)
                    at, e = 16 + 32 * h + 16 * k, 128 * h + 32 * s + 16 * k
                    for l in range(sub):
                        q = np.int32((blocks[i, at + l] >> (2 * s)) & 3)
                        out[i, e + l] = dl * np.float32(q) - ml


@njit(inline="always", cache=True)
def _q3_scale(b, i, k):
    """Q3_K's 6-bit scale k (0..15), unbiased: nibble k of scales[0..7], top bits from 8..11."""
    nib = np.int32(b[i, 96 + k % 8])
    low = (nib & 0x0F) if k < 8 else (nib >> 4)
    high = (np.int32(b[i, 104 + k % 4]) >> (2 * (k // 4))) & 3
    return (low | (high << 4)) - 32


@njit(parallel=True, cache=True)
def q3_k(blocks, out):
    sub = out.shape[1] // 16                         # 16 weights per sub-block
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 108)
        for h in range(2):                           # halves of 128 weights: qs[32h .. 32h+31]
            for s in range(4):                       # bits 2s..2s+1 of qs, bit 4h+s of hmask
                for k in range(2):                   # two sub-blocks of 16
                    dl = d * np.float32(_q3_scale(blocks, i, 8 * h + 2 * s + k))
                    at, e = 32 + 32 * h + 16 * k, 128 * h + 32 * s + 16 * k
                    for l in range(sub):
                        low = np.int32((blocks[i, at + l] >> (2 * s)) & 3)
                        high = (blocks[i, 16 * k + l] >> (4 * h + s)) & 1
                        out[i, e + l] = dl * np.float32(np.int32(low - (0 if high else 4)))


@njit(inline="always", cache=True)
def _scale_min_k4(b, i, j):
    """Q4_K/Q5_K's 6-bit scale and min of sub-block j (get_scale_min_k4); scales at byte 4."""
    if j < 4:
        return np.int32(b[i, 4 + j]) & 0x3F, np.int32(b[i, 8 + j]) & 0x3F
    low, sc_top, m_top = np.int32(b[i, 8 + j]), np.int32(b[i, j]), np.int32(b[i, 4 + j])
    return (low & 0x0F) | ((sc_top >> 6) << 4), (low >> 4) | ((m_top >> 6) << 4)


@njit(parallel=True, cache=True)
def q4_k(blocks, out):
    sub = out.shape[1] // 8                          # 32 weights per sub-block
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        dmin = load_f16(blocks, i, 2)
        for c in range(4):                           # chunks of 64 weights: qs[32c .. 32c+31]
            sc1, m1 = _scale_min_k4(blocks, i, 2 * c)
            sc2, m2 = _scale_min_k4(blocks, i, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            at, e = 16 + 32 * c, 64 * c
            for l in range(sub):                     # low nibbles: weights 64c + l
                out[i, e + l] = d1 * np.float32(np.int32(blocks[i, at + l] & 0x0F)) - dm1
            for l in range(sub):                     # high nibbles: weights 64c + 32 + l
                out[i, e + 32 + l] = d2 * np.float32(np.int32(blocks[i, at + l] >> 4)) - dm2


@njit(parallel=True, cache=True)
def q5_k(blocks, out):
    sub = out.shape[1] // 8                          # 32 weights per sub-block
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        dmin = load_f16(blocks, i, 2)
        for c in range(4):                           # chunks of 64 weights: qs[32c .. 32c+31]
            sc1, m1 = _scale_min_k4(blocks, i, 2 * c)
            sc2, m2 = _scale_min_k4(blocks, i, 2 * c + 1)
            d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
            d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
            at, e = 48 + 32 * c, 64 * c
            for l in range(sub):                     # 5th bit: bit 2c of qh[l]
                q = (blocks[i, at + l] & 0x0F) | (((blocks[i, 16 + l] >> (2 * c)) & 1) << 4)
                out[i, e + l] = d1 * np.float32(np.int32(q)) - dm1
            for l in range(sub):                     # 5th bit: bit 2c+1 of qh[l]
                q = (blocks[i, at + l] >> 4) | (((blocks[i, 16 + l] >> (2 * c + 1)) & 1) << 4)
                out[i, e + 32 + l] = d2 * np.float32(np.int32(q)) - dm2


@njit(parallel=True, cache=True)
def q6_k(blocks, out):
    # One loop per run of 32 outputs, each a single store stream: 2.5x faster than ggml's
    # shape (four interleaved streams of 16), which LLVM did not vectorize well.
    run = out.shape[1] // 8                          # 32 weights
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 208)
        for h in range(2):                           # halves of 128: ql[64h..], qh[32h..]
            for p in range(4):                       # run p: weights 128h + 32p + l
                ql = 64 * h + 32 * (p % 2)           # runs 0, 2 read ql[l]; 1, 3 ql[l + 32]
                shift = 4 * (p // 2)                 # runs 0, 1 the low nibble; 2, 3 the high
                for l in range(run):
                    low = (np.int32(blocks[i, ql + l]) >> shift) & 0x0F
                    high = (np.int32(blocks[i, 128 + 32 * h + l]) >> (2 * p)) & 3
                    sc = np.float32(np.int8(blocks[i, 192 + 8 * h + 2 * p + l // 16]))
                    out[i, 128 * h + 32 * p + l] = (d * sc) * np.float32((low | (high << 4)) - 32)


@njit(parallel=True, cache=True)
def q8_k(blocks, out):
    for i in prange(blocks.shape[0]):
        d = f32_from_bits(u32(blocks, i, 0))
        for j in range(out.shape[1]):                # 256
            out[i, j] = d * np.float32(np.int8(blocks[i, 4 + j]))
