"""The IQ ("importance-matrix") formats: weights in groups of 8 (or 4) that are points of a grid.

Instead of one small integer per weight, most IQ types store per group of 8 weights the index of
a row of a fixed grid (refllm/kernels/iq_grids.py) and 8 sign bits; a 4-bit scale per 16 or 32
weights and one fp16 `d` per 256 scale the grid values. IQ4_NL and IQ4_XS are simpler: a 4-bit
index per weight into 16 non-uniform levels (kvalues_iq4nl).

Signs: IQ2_XXS, IQ2_XS and IQ3_XXS store 7 sign bits per group of 8 and look up the 8th (an even
number of minus signs) in ksigns_iq2xs; IQ2_S and IQ3_S store all 8. Bit j -> weight j negative.

Arithmetic is float32, in ggml's order (dequantize_row_iq* of ggml-quants.c, which gguf-py follows):
the scale first, then `scale * grid * sign` from left to right.
"""

from __future__ import annotations

import numpy as np

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
from refllm.kernels.reference.fields import bits, f16, nibbles
from refllm.kernels.tables import KVALUES_IQ4NL


def _u16(data):
    """(n, 2k) bytes -> (n, k) little-endian uint16."""
    return np.ascontiguousarray(data).view("<u2")


def _u32(data):
    """(..., 4k) bytes -> (..., k) little-endian uint32."""
    return np.ascontiguousarray(data).view("<u4")


def _signs(sign_bytes):
    """(n, k) sign bytes -> (n, 8k) float32 factors: bit j of byte i -> -1 or +1 for weight 8i + j."""
    return np.where(bits(sign_bytes, 1) == 1, np.float32(-1), np.float32(1))


def _ksigns(packed, n_groups):
    """Each uint32 of `packed` (n, m) holds n_groups 7-bit sign indices (bits 0-6, 7-13, ...):
    -> the (n, m * n_groups) full sign bytes from ksigns_iq2xs."""
    shifts = np.arange(0, 7 * n_groups, 7, dtype=np.uint32)                 # (n_groups,)
    index = (packed[:, :, None] >> shifts) & np.uint32(127)                 # (n, m, n_groups)
    return KSIGNS_IQ2XS[index].reshape(packed.shape[0], -1)


def _grid(grid8, index):
    """Grid rows for (n, k) indices -> (n, k * per_row) float32 weights, row after row."""
    return grid8[index].reshape(index.shape[0], -1).astype(np.float32)


def iq2_xxs(blocks):
    """block_iq2_xxs, 66 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint16_t  qs[32];     // 8 groups of 32 weights, 8 bytes each:
                              //   4 bytes: indices into iq2xxs_grid (8 weights each)
                              //   a little-endian uint32: four 7-bit sign indices (bits 0-27)
                              //   and a 4-bit scale ls (bits 28-31)
    db = d * (0.5 + ls) * 0.25;   y = db * grid * sign
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    groups = blocks[:, 2:66].reshape(n, 8, 8)                               # (n, 8, 8)
    index = groups[:, :, 0:4].reshape(n, 32)                                # (n, 32)
    aux = _u32(groups[:, :, 4:8])[:, :, 0]                                  # (n, 8)
    db = d * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.25)   # (n, 8)
    grid = _grid(IQ2XXS_GRID8, index).reshape(n, 8, 32)                     # (n, 8, 32)
    sign = _signs(_ksigns(aux, 4)).reshape(n, 8, 32)                        # (n, 8, 32)
    return (db[:, :, None] * grid * sign).reshape(n, 256)


def iq2_xs(blocks):
    """block_iq2_xs, 74 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint16_t  qs[32];     // one per group of 8: 9-bit index into iq2xs_grid (bits 0-8),
                              //   7-bit sign index (bits 9-15)
        uint8_t   scales[8];  // 4-bit scales ls, one per 16 weights (low nibble first)
    db = d * (0.5 + ls) * 0.25;   y = db * grid * sign
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    qs = _u16(blocks[:, 2:66])                                              # (n, 32)
    ls = bits(blocks[:, 66:74], 4)                                          # (n, 16)
    db = d * (np.float32(0.5) + ls.astype(np.float32)) * np.float32(0.25)   # (n, 16)
    grid = _grid(IQ2XS_GRID8, qs & 511).reshape(n, 16, 16)                  # (n, 16, 16)
    sign = _signs(KSIGNS_IQ2XS[qs >> 9]).reshape(n, 16, 16)                 # (n, 16, 16)
    return (db[:, :, None] * grid * sign).reshape(n, 256)


def iq2_s(blocks):
    """block_iq2_s, 82 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint8_t   qs[64];     // 32 low bytes of the 10-bit indices into iq2s_grid, one per
                              //   group of 8; then 32 sign bytes, one per group of 8
        uint8_t   qh[8];      // index bits 8-9: 2 bits per group, 4 groups per byte
        uint8_t   scales[8];  // 4-bit scales ls, one per 16 weights (low nibble first)
    db = d * (0.5 + ls) * 0.25;   y = db * grid * sign
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    low = blocks[:, 2:34].astype(np.uint16)                                 # (n, 32)
    sign = _signs(blocks[:, 34:66]).reshape(n, 16, 16)                      # (n, 16, 16)
    high = bits(blocks[:, 66:74], 2).astype(np.uint16)                      # (n, 32)
    ls = bits(blocks[:, 74:82], 4)                                          # (n, 16)
    db = d * (np.float32(0.5) + ls.astype(np.float32)) * np.float32(0.25)   # (n, 16)
    grid = _grid(IQ2S_GRID8, low | (high << 8)).reshape(n, 16, 16)          # (n, 16, 16)
    return (db[:, :, None] * grid * sign).reshape(n, 256)


def iq3_xxs(blocks):
    """block_iq3_xxs, 98 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint8_t   qs[96];     // 64 indices into iq3xxs_grid, one per 4 weights; then 8
                              //   little-endian uint32, one per 32 weights: four 7-bit sign
                              //   indices (bits 0-27) and a 4-bit scale ls (bits 28-31)
    db = d * (0.5 + ls) * 0.5;   y = db * grid * sign
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    index = blocks[:, 2:66]                                                 # (n, 64)
    aux = _u32(blocks[:, 66:98])                                            # (n, 8)
    db = d * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.5)    # (n, 8)
    grid = _grid(IQ3XXS_GRID8, index).reshape(n, 8, 32)                     # (n, 8, 32)
    sign = _signs(_ksigns(aux, 4)).reshape(n, 8, 32)                        # (n, 8, 32)
    return (db[:, :, None] * grid * sign).reshape(n, 256)


def iq3_s(blocks):
    """block_iq3_s, 110 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint8_t   qs[64];     // low bytes of the 9-bit indices into iq3s_grid, one per 4 weights
        uint8_t   qh[8];      // index bit 8: bit k%8 of qh[k/8] for index k
        uint8_t   signs[32];  // one sign byte per group of 8
        uint8_t   scales[4];  // 4-bit scales sc, one per 32 weights (low nibble first)
    db = d * (1 + 2*sc);   y = db * grid * sign
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    low = blocks[:, 2:66].astype(np.uint16)                                 # (n, 64)
    high = bits(blocks[:, 66:74], 1).astype(np.uint16)                      # (n, 64)
    sign = _signs(blocks[:, 74:106]).reshape(n, 8, 32)                      # (n, 8, 32)
    sc = bits(blocks[:, 106:110], 4).astype(np.int32)                       # (n, 8)
    db = d * (1 + 2 * sc).astype(np.float32)                                # (n, 8)
    grid = _grid(IQ3S_GRID8, low | (high << 8)).reshape(n, 8, 32)           # (n, 8, 32)
    return (db[:, :, None] * grid * sign).reshape(n, 256)


def iq1_s(blocks):
    """block_iq1_s, 50 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint8_t   qs[32];     // low bytes of the 11-bit indices into iq1s_grid, one per group of 8
        uint16_t  qh[8];      // one per 32 weights: index bits 8-10 of its 4 groups (3 bits
                              //   each, bits 0-11), a 3-bit scale ls (bits 12-14), the sign
                              //   of delta (bit 15)
    dl = d * (2*ls + 1);   y = dl * (grid + delta),   delta = -0.125 if bit 15 else 0.125
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    low = blocks[:, 2:34].astype(np.uint16)                                 # (n, 32)
    qh = _u16(blocks[:, 34:50])                                             # (n, 8)
    high = (qh[:, :, None] >> np.arange(0, 12, 3, dtype=np.uint16)) & 7     # (n, 8, 4)
    dl = d * (2 * ((qh >> 12) & 7).astype(np.int32) + 1).astype(np.float32)  # (n, 8)
    delta = np.where(qh & 0x8000, -IQ1S_DELTA, IQ1S_DELTA)                 # (n, 8)
    grid = _grid(IQ1S_GRID8, low | (high.reshape(n, 32) << 8)).reshape(n, 8, 32)   # (n, 8, 32)
    return (dl[:, :, None] * (grid + delta[:, :, None])).reshape(n, 256)


def _iq1m_scale(sc):
    """(n, 4) uint16 scales words -> (n, 1) float32 d: the fp16 whose 4 nibbles are their top
    nibbles, sc[0]'s the lowest."""
    d_bits = ((sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0)
              | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000))          # (n,)
    return d_bits.astype("<u2").view("<f2").astype(np.float32)[:, None]


def iq1_m(blocks):
    """block_iq1_m, 56 bytes, 256 weights (no d field):
        uint8_t qs[32];       // low bytes of the 11-bit indices into iq1s_grid, one per group of 8
        uint8_t qh[16];       // a nibble per group (low first): index bits 8-10 (bits 0-2),
                              //   the sign of delta (bit 3)
        uint8_t scales[8];    // 4 little-endian uint16: bits 0-11 hold four 3-bit scales ls,
                              //   one per 16 weights; bits 12-15 of the four together are the
                              //   fp16 d (scales[0]'s top nibble lowest)
    dl = d * (2*ls + 1);   y = dl * (grid + delta),   delta = -0.125 if bit 3 else 0.125
    """
    n = blocks.shape[0]
    low = blocks[:, 0:32].astype(np.uint16)                                 # (n, 32)
    qh = bits(blocks[:, 32:48], 4)                                          # (n, 32)
    sc = _u16(blocks[:, 48:56])                                             # (n, 4)
    d = _iq1m_scale(sc)                                                     # (n, 1)
    ls = (sc[:, :, None] >> np.arange(0, 12, 3, dtype=np.uint16)) & 7       # (n, 4, 4)
    dl = d * (2 * ls.reshape(n, 16).astype(np.int32) + 1).astype(np.float32)  # (n, 16)
    delta = np.where(qh & 8, -IQ1S_DELTA, IQ1S_DELTA)                       # (n, 32)
    grid = _grid(IQ1S_GRID8, low | ((qh & 7).astype(np.uint16) << 8))      # (n, 256)
    y = grid.reshape(n, 32, 8) + delta[:, :, None]                          # (n, 32, 8)
    return (dl[:, :, None] * y.reshape(n, 16, 16)).reshape(n, 256)


def iq4_nl(blocks):
    """block_iq4_nl, 18 bytes, 32 weights:
        ggml_half d;          // scale
        uint8_t   qs[16];     // 4-bit indices into kvalues_iq4nl, nibbles (byte j: j, j + 16)
    y = d * kvalues_iq4nl[q]
    """
    d = f16(blocks, 0)                                                      # (n, 1)
    q = nibbles(blocks[:, 2:18])                                            # (n, 32)
    return d * KVALUES_IQ4NL[q].astype(np.float32)


def iq4_xs(blocks):
    """block_iq4_xs, 136 bytes, 256 weights:
        ggml_half d;          // super-block scale
        uint16_t  scales_h;   // bits 4-5 of the 8 scales, 2 bits each (scale 0 lowest)
        uint8_t   scales_l[4];// bits 0-3 of the 8 scales, low nibble first
        uint8_t   qs[128];    // 8 groups of 32 weights, 16 bytes each, nibbles like IQ4_NL
    dl = d * (ls - 32);   y = dl * kvalues_iq4nl[q]
    """
    n = blocks.shape[0]
    d = f16(blocks, 0)                                                      # (n, 1)
    ls_high = bits(blocks[:, 2:4], 2)                                       # (n, 8)
    ls_low = bits(blocks[:, 4:8], 4)                                        # (n, 8)
    ls = (ls_low | (ls_high << 4)).astype(np.int32)                         # (n, 8)
    dl = d * (ls - 32).astype(np.float32)                                   # (n, 8)
    q = nibbles(blocks[:, 8:136].reshape(n * 8, 16)).reshape(n, 8, 32)      # (n, 8, 32)
    return (dl[:, :, None] * KVALUES_IQ4NL[q].astype(np.float32)).reshape(n, 256)
