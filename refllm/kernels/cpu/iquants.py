"""Numba kernels for the IQ formats (see reference/iquants.py for the layouts).

The loops follow ggml's dequantize_row_iq*: per 32 weights a scale, then groups of 8 (or 4)
weights read from one grid row. The grids are module-level NumPy arrays, which Numba freezes
into the compiled code as constants. Inner loop bounds derive from out.shape[1] so that LLVM
vectorizes them rather than unrolling them (see cpu/__init__.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refllm.kernels.cpu.fp import f16_to_f32, load_f16, u16, u32
from refllm.kernels.iq_grids import (
    IQ1S_DELTA,
    IQ1S_GRID8,
    IQ2S_GRID8,
    IQ2XS_GRID8,
    IQ2XXS_GRID8,
    IQ3S_GRID8,
    IQ3XXS_GRID8,
    KSIGNS_IQ2XS,
)
from refllm.kernels.tables import KVALUES_IQ4NL


@njit(inline="always", cache=True)
def _sign(signs, j):
    """-1 or +1: bit j of a sign byte set means weight j of the group is negative."""
    return np.float32(-1.0) if (signs >> j) & 1 else np.float32(1.0)


@njit(parallel=True, cache=True)
def iq2_xxs(blocks, out):
    row_len = out.shape[1] // 32                            # 8 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            at = 2 + 8 * ib                                  # 4 grid indices, then aux
            aux = u32(blocks, i, at + 4)
            db = d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.25)
            for l in range(4):
                row = blocks[i, at + l]
                signs = KSIGNS_IQ2XS[(aux >> (7 * l)) & 127]
                for j in range(row_len):
                    out[i, 32 * ib + 8 * l + j] = db * np.float32(IQ2XXS_GRID8[row, j]) * _sign(signs, j)


@njit(parallel=True, cache=True)
def iq2_xs(blocks, out):
    row_len = out.shape[1] // 32                            # 8 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            sc = blocks[i, 66 + ib]
            db0 = d * (np.float32(0.5) + np.float32(sc & 0x0F)) * np.float32(0.25)
            db1 = d * (np.float32(0.5) + np.float32(sc >> 4)) * np.float32(0.25)
            for l in range(4):
                q = u16(blocks, i, 2 + 2 * (4 * ib + l))
                row = q & 511
                signs = KSIGNS_IQ2XS[q >> 9]
                db = db0 if l < 2 else db1
                for j in range(row_len):
                    out[i, 32 * ib + 8 * l + j] = db * np.float32(IQ2XS_GRID8[row, j]) * _sign(signs, j)


@njit(parallel=True, cache=True)
def iq2_s(blocks, out):
    row_len = out.shape[1] // 32                            # 8 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            sc = blocks[i, 74 + ib]
            qh = np.uint32(blocks[i, 66 + ib])
            db0 = d * (np.float32(0.5) + np.float32(sc & 0x0F)) * np.float32(0.25)
            db1 = d * (np.float32(0.5) + np.float32(sc >> 4)) * np.float32(0.25)
            for l in range(4):
                g = 4 * ib + l                               # group of 8
                row = np.uint32(blocks[i, 2 + g]) | (((qh >> (2 * l)) & 3) << 8)
                signs = blocks[i, 34 + g]
                db = db0 if l < 2 else db1
                for j in range(row_len):
                    out[i, 8 * g + j] = db * np.float32(IQ2S_GRID8[row, j]) * _sign(signs, j)


@njit(parallel=True, cache=True)
def iq3_xxs(blocks, out):
    row_len = out.shape[1] // 64                            # 4 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            aux = u32(blocks, i, 66 + 4 * ib)
            db = d * (np.float32(0.5) + np.float32(aux >> 28)) * np.float32(0.5)
            for l in range(4):
                signs = KSIGNS_IQ2XS[(aux >> (7 * l)) & 127]
                row1 = blocks[i, 2 + 8 * ib + 2 * l]
                row2 = blocks[i, 2 + 8 * ib + 2 * l + 1]
                e = 32 * ib + 8 * l
                for j in range(row_len):
                    out[i, e + j] = db * np.float32(IQ3XXS_GRID8[row1, j]) * _sign(signs, j)
                    out[i, e + j + 4] = db * np.float32(IQ3XXS_GRID8[row2, j]) * _sign(signs, j + 4)


@njit(parallel=True, cache=True)
def iq3_s(blocks, out):
    row_len = out.shape[1] // 64                            # 4 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            sc = blocks[i, 106 + ib // 2]
            ls = (sc & 0x0F) if ib % 2 == 0 else (sc >> 4)
            db = d * np.float32(1 + 2 * np.int32(ls))
            qh = np.uint32(blocks[i, 66 + ib])
            for l in range(4):
                k = 8 * ib + 2 * l                           # the group's two grid indices
                row1 = np.uint32(blocks[i, 2 + k]) | (((qh >> (2 * l)) & 1) << 8)
                row2 = np.uint32(blocks[i, 2 + k + 1]) | (((qh >> (2 * l + 1)) & 1) << 8)
                signs = blocks[i, 74 + 4 * ib + l]
                e = 32 * ib + 8 * l
                for j in range(row_len):
                    out[i, e + j] = db * np.float32(IQ3S_GRID8[row1, j]) * _sign(signs, j)
                    out[i, e + j + 4] = db * np.float32(IQ3S_GRID8[row2, j]) * _sign(signs, j + 4)


@njit(parallel=True, cache=True)
def iq1_s(blocks, out):
    row_len = out.shape[1] // 32                            # 8 weights per grid row
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for ib in range(8):
            qh = u16(blocks, i, 34 + 2 * ib)
            dl = d * np.float32(2 * np.int32((qh >> 12) & 7) + 1)
            delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
            for l in range(4):
                row = np.uint32(blocks[i, 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                for j in range(row_len):
                    out[i, 32 * ib + 8 * l + j] = dl * (np.float32(IQ1S_GRID8[row, j]) + delta)


@njit(parallel=True, cache=True)
def iq1_m(blocks, out):
    row_len = out.shape[1] // 32                            # 8 weights per grid row
    for i in prange(blocks.shape[0]):
        sc0, sc1 = u16(blocks, i, 48), u16(blocks, i, 50)
        sc2, sc3 = u16(blocks, i, 52), u16(blocks, i, 54)
        d = f16_to_f32((sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000))
        for ib in range(8):
            sc = u16(blocks, i, 48 + 2 * (ib // 2))
            shift = 6 * (ib % 2)
            dl1 = d * np.float32(2 * np.int32((sc >> shift) & 7) + 1)
            dl2 = d * np.float32(2 * np.int32((sc >> (shift + 3)) & 7) + 1)
            for l in range(4):
                nib = np.uint32(blocks[i, 32 + 2 * ib + l // 2]) >> (4 * (l % 2))
                row = np.uint32(blocks[i, 4 * ib + l]) | ((nib & 7) << 8)
                delta = -IQ1S_DELTA if nib & 8 else IQ1S_DELTA
                dl = dl1 if l < 2 else dl2
                for j in range(row_len):
                    out[i, 32 * ib + 8 * l + j] = dl * (np.float32(IQ1S_GRID8[row, j]) + delta)


@njit(parallel=True, cache=True)
def iq4_nl(blocks, out):
    half = out.shape[1] // 2                                # 16
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        for j in range(half):
            byte = blocks[i, 2 + j]
            out[i, j] = d * np.float32(KVALUES_IQ4NL[byte & 0x0F])
            out[i, j + half] = d * np.float32(KVALUES_IQ4NL[byte >> 4])


@njit(parallel=True, cache=True)
def iq4_xs(blocks, out):
    half = out.shape[1] // 16                               # 16 bytes per 32 weights
    for i in prange(blocks.shape[0]):
        d = load_f16(blocks, i, 0)
        scales_h = u16(blocks, i, 2)
        for ib in range(8):
            low = (blocks[i, 4 + ib // 2] >> (4 * (ib % 2))) & 0x0F
            ls = np.int32(low) | np.int32(((scales_h >> (2 * ib)) & 3) << 4)
            dl = d * np.float32(ls - 32)
            for j in range(half):
                byte = blocks[i, 8 + 16 * ib + j]
                out[i, 32 * ib + j] = dl * np.float32(KVALUES_IQ4NL[byte & 0x0F])
                out[i, 32 * ib + j + 16] = dl * np.float32(KVALUES_IQ4NL[byte >> 4])
