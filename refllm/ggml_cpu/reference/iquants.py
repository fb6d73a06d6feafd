"""llama.cpp's x86 matmul for the IQ types with 256-weight blocks (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
IQ3_S, IQ1_S, IQ1_M, IQ4_XS) and the ternary TQ1_0, TQ2_0, float operation for float operation
(NumPy).

The Numba twin is refllm/ggml_cpu/cpu/iquants.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations (to Q8_K:
refllm.ggml_cpu.reference.quantize_activations.q8_k: q int8 in -127..127, float d_a, bsums).

On an AVX2 + FMA build ggml-cpu multiplies the IQ types as it does the K-quants (ggml-cpu.c
ggml_compute_forward_mul_mat): tiled.cpp's AVX2 microtiles for 8 or more tokens (tiled.cpp
ggml_tiled_matmul_type_dispatch: every IQ type above, with its own unpacker), and below that the
type's ggml_vec_dot_<type>_q8_K (arch/x86/quants.c, __AVX2__ branch). TQ1_0 and TQ2_0 have no
tiled kernel: vec_dot at every batch size.

A weight e of a block has a sub-block scale sc(e) (per 16 or 32 weights) and a signed integer
value v(e); the kernels multiply the integers w(e) = sc(e) v(e) by the activation quants q(e):

    type      v(e)                                    sc(e)                      vec_dot   tiled
                                                                                 factor    d factor
    IQ2_XXS   iq2xxs_grid byte * sign (8, 25, 43)     2 ls + 1, per 32           1/8       1/8
    IQ2_XS    iq2xs_grid byte * sign                  2 ls + 1, per 16           1/8       1/8
    IQ2_S     iq2s_grid byte * sign                   2 ls + 1, per 16           1/8       1/8
    IQ3_XXS   iq3xxs_grid byte * sign (4 .. 62)       2 ls + 1, per 32           1/4       1/4
    IQ3_S     iq3s_grid byte * sign (1 .. 15)         2 ls + 1, per 32           1         1
    IQ1_S     iq1s_grid byte (-1, 0, 1); delta +-1    2 ls + 1, per 32           1         1/8
    IQ1_M     iq1s_grid byte; delta +-1 per 8         2 ls + 1, per 16           1         1/8
    IQ4_XS    kvalues_iq4nl (-127 .. 113)             ls - 32, per 32            1         1
    TQ1_0     base-3 digit t (0, 1, 2): weight t - 1  -                          1         -
    TQ2_0     2-bit t (0 .. 3): weight t - 1          -                          1         -

with d_w the block's fp16 d (IQ1_M: the fp16 spread over the top nibbles of its scales). IQ1_S
and IQ1_M add delta(e) = -1 or +1 times 1/8 to every grid value: wd(e) = sc(e) delta(e) is kept
apart. All integer sums below are exact (no int16 saturation is reachable, every partial fits
int32), so only which integers are grouped before the float arithmetic matters.

vec_dot (one weight row, one token; 8 float32 lanes; lane l of a 32-weight run holds weights
4l .. 4l+3, maddubs + madd):

    L[l]  = sum of w(e) q(e) over the block's weights e with e % 32 in [4l, 4l+4)
    d     = d_w * d_a                                 float32
    acc[l] = fma(d, (float) L[l], acc[l])
    y = factor * hsum8(acc)
  IQ1_S:  a scalar sumi1 = sum_e wd(e) q(e) (from the bsums);
          accum1 = fma(d, (float) sumi1, accum1)   (C `accum1 += d * sumi1`, contracted by GCC)
          y = hsum8(acc) + 1/8 * accum1
  IQ1_M:  a second lane accumulator of wd: acc2[l] = fma(d, (float) L2[l], acc2[l])
          y = hsum8(acc) + 1/8 * hsum8(acc2)
  TQ1_0, TQ2_0:  w(e) = t(e) (unsigned); the kernel subtracts the bsums lane by lane, not per
          weight: L[l] = sum t(e) q(e) - (bs[2l] + bs[2l+1]) (int16 lanes, no overflow);
          acc[l] = fma((float) L[l], d, acc[l]): the source writes _mm256_add_ps(_mm256_mul_ps(
          ...), acc), but GCC's intrinsics are plain vector arithmetic and -ffp-contract=fast
          fuses them (golden/matmul_kernels tells the two apart)

tiled (per 256-wide K slab in K order, into the float32 output zeroed per window; the narrow
path for n <= 16 and the standard path run the same per-slab arithmetic):

    s1 = sum_e w_t(e) q(e)       w_t = w, except IQ1_S, IQ1_M: 8 w + wd (codes 8 grid + delta)
    r  = (d_w * tiled factor) * (float) s1          d_w * factor rounded to float32 first
    y  = fma(r, d_a, y)

(The kernels store IQ codes as value + 128 and take 128 * sum_s sc_s sum w out again; IQ4_XS
uses maddubs' sign trick instead. Both give the exact integer s1.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array, hsum8_array
from refllm.kernels.iq_grids import (
    IQ1S_GRID8,
    IQ2S_GRID8,
    IQ2XS_GRID8,
    IQ2XXS_GRID8,
    IQ3S_GRID8,
    IQ3XXS_GRID8,
    KSIGNS_IQ2XS,
)
from refllm.kernels.reference.fields import bits, f16, nibbles
from refllm.kernels.reference.ternary import _trits
from refllm.kernels.tables import KVALUES_IQ4NL

F32 = np.float32
QK_K = 256

# type -> block bytes (the layouts: refllm/kernels/reference/iquants.py, ternary.py, and the
# decoders below)
IQUANT_BLOCK_BYTES: dict[str, int] = {"IQ2_XXS": 66, "IQ2_XS": 74, "IQ2_S": 82, "IQ3_XXS": 98, "IQ3_S": 110,
                                      "IQ1_S": 50, "IQ1_M": 56, "IQ4_XS": 136, "TQ1_0": 54, "TQ2_0": 66}
# vec_dot's final factor, and the factor tiled.cpp's unpacker multiplies d_w by
VEC_DOT_FACTOR: dict[str, float] = {"IQ2_XXS": 0.125, "IQ2_XS": 0.125, "IQ2_S": 0.125, "IQ3_XXS": 0.25}
TILED_FACTOR: dict[str, float] = {"IQ2_XXS": 0.125, "IQ2_XS": 0.125, "IQ2_S": 0.125, "IQ3_XXS": 0.25,
                                  "IQ1_S": 0.125, "IQ1_M": 0.125}
# The types with a tiled.cpp kernel, and the batch size from which ggml-cpu takes it
TILED_TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS")
TILED_MIN_BATCH = 8
TERNARY = ("TQ1_0", "TQ2_0")
DELTA_TYPES = ("IQ1_S", "IQ1_M")


class IQuantRows(NamedTuple):
    """The integers and scales of an IQ / TQ matrix as the x86 kernels multiply them.

    w:   int16 [rows, nb, 256]: sc(e) * v(e) (TQ: the unsigned t(e))
    wd:  int16 [rows, nb, 256] or None: IQ1_S, IQ1_M: sc(e) * delta(e), delta = -1 or +1
    d:   float32 [rows, nb]: the block's fp16 d
    """
    w: np.ndarray
    wd: np.ndarray | None
    d: np.ndarray


def _u16(data):
    return np.ascontiguousarray(data).view("<u2")


def _u32(data):
    return np.ascontiguousarray(data).view("<u4")


def _sign(sign_bytes):
    """(B, m) sign bytes -> (B, 8m) int16 -1 / +1: bit j of byte i signs weight 8i + j."""
    return np.where(bits(sign_bytes, 1) == 1, np.int16(-1), np.int16(1))


def _ksigns(packed, n_groups):
    """(B, m) uint32, each holding n_groups 7-bit sign indices -> (B, m * n_groups) sign bytes
    (ksigns_iq2xs: the 8th bit makes the count even)."""
    shifts = np.arange(0, 7 * n_groups, 7, dtype=np.uint32)
    return KSIGNS_IQ2XS[(packed[:, :, None] >> shifts) & np.uint32(127)].reshape(packed.shape[0], -1)


def _per(scale, size):
    """(B, m) scales, one per `size` weights -> (B, 256) int16."""
    return np.repeat(scale.astype(np.int16), size, axis=1)


def decode_blocks(blocks: np.ndarray, weight_type: str):
    """uint8 [B, block bytes] -> (w int16 [B, 256], wd int16 [B, 256] or None, d float32 [B])
    (IQuantRows' fields, block by block)."""
    n = blocks.shape[0]
    wd = None
    if weight_type == "IQ2_XXS":
        # block_iq2_xxs { d; 8 x { uint8 grid index[4]; uint32 signs 4 x 7 bits, ls bits 28-31 } }
        groups = blocks[:, 2:66].reshape(n, 8, 8)
        v = IQ2XXS_GRID8[groups[:, :, 0:4].reshape(n, 32)].reshape(n, 256).astype(np.int16)
        aux = _u32(groups[:, :, 4:8])[:, :, 0]                                   # (n, 8)
        v = v * _sign(_ksigns(aux, 4))
        sc = _per(2 * (aux >> 28).astype(np.int32) + 1, 32)
    elif weight_type == "IQ2_XS":
        # block_iq2_xs { d; uint16 qs[32] (grid index bits 0-8, sign index 9-15); scales[8] (per 16) }
        qs = _u16(blocks[:, 2:66])
        v = IQ2XS_GRID8[qs & 511].reshape(n, 256).astype(np.int16) * _sign(KSIGNS_IQ2XS[qs >> 9])
        sc = _per(2 * bits(blocks[:, 66:74], 4).astype(np.int32) + 1, 16)
    elif weight_type == "IQ2_S":
        # block_iq2_s { d; qs[32] index low bytes, signs[32]; qh[8] (2 index bits per group); scales[8] }
        index = blocks[:, 2:34].astype(np.uint16) | (bits(blocks[:, 66:74], 2).astype(np.uint16) << 8)
        v = IQ2S_GRID8[index].reshape(n, 256).astype(np.int16) * _sign(blocks[:, 34:66])
        sc = _per(2 * bits(blocks[:, 74:82], 4).astype(np.int32) + 1, 16)
    elif weight_type == "IQ3_XXS":
        # block_iq3_xxs { d; qs[64] grid index per 4 weights; 8 uint32: 4 x 7 sign bits, ls 28-31 }
        v = IQ3XXS_GRID8[blocks[:, 2:66]].reshape(n, 256).astype(np.int16)
        aux = _u32(blocks[:, 66:98])                                             # (n, 8)
        v = v * _sign(_ksigns(aux, 4))
        sc = _per(2 * (aux >> 28).astype(np.int32) + 1, 32)
    elif weight_type == "IQ3_S":
        # block_iq3_s { d; qs[64]; qh[8] (index bit 8 of index k: bit k%8 of qh[k/8]); signs[32]; scales[4] }
        index = blocks[:, 2:66].astype(np.uint16) | (bits(blocks[:, 66:74], 1).astype(np.uint16) << 8)
        v = IQ3S_GRID8[index].reshape(n, 256).astype(np.int16) * _sign(blocks[:, 74:106])
        sc = _per(2 * bits(blocks[:, 106:110], 4).astype(np.int32) + 1, 32)
    elif weight_type == "IQ1_S":
        # block_iq1_s { d; qs[32] index low bytes; uint16 qh[8]: index bits 8-10 of group l at
        # bits 3l, ls bits 12-14, delta sign bit 15 }
        qh = _u16(blocks[:, 34:50])                                              # (n, 8)
        high = (qh[:, :, None] >> np.arange(0, 12, 3, dtype=np.uint16)) & 7      # (n, 8, 4)
        v = IQ1S_GRID8[blocks[:, 2:34].astype(np.uint16) | (high.reshape(n, 32) << 8)].reshape(n, 256)
        sc = _per(2 * ((qh >> 12) & 7).astype(np.int32) + 1, 32)
        wd = sc * _per(np.where(qh & 0x8000, -1, 1), 32)
    elif weight_type == "IQ1_M":
        # block_iq1_m { qs[32]; qh[16] (a nibble per group: index bits 8-10, delta sign bit 3);
        # uint16 scales[4]: 3-bit ls per 16 (bits 0-11), fp16 d in the top nibbles }
        qh = bits(blocks[:, 32:48], 4)                                           # (n, 32)
        sw = _u16(blocks[:, 48:56])                                              # (n, 4)
        v = IQ1S_GRID8[blocks[:, 0:32].astype(np.uint16) | ((qh & 7).astype(np.uint16) << 8)].reshape(n, 256)
        ls = (sw[:, :, None] >> np.arange(0, 12, 3, dtype=np.uint16)) & 7        # (n, 4, 4)
        sc = _per(2 * ls.reshape(n, 16).astype(np.int32) + 1, 16)
        wd = sc * _per(np.where(qh & 8, -1, 1), 8)
        d_bits = (sw[:, 0] >> 12) | ((sw[:, 1] >> 8) & 0x00F0) | ((sw[:, 2] >> 4) & 0x0F00) | (sw[:, 3] & 0xF000)
        d = d_bits.astype("<u2").view("<f2").astype(F32)
        return (sc * v).astype(np.int16), wd.astype(np.int16), d
    elif weight_type == "IQ4_XS":
        # block_iq4_xs { d; uint16 scales_h (2 bits per 32); scales_l[4] (4 bits per 32); qs[128] }
        ls = bits(blocks[:, 4:8], 4).astype(np.int32) | (bits(blocks[:, 2:4], 2).astype(np.int32) << 4)
        v = KVALUES_IQ4NL[nibbles(blocks[:, 8:136].reshape(n * 8, 16))].reshape(n, 256).astype(np.int16)
        sc = _per(ls - 32, 32)
    elif weight_type == "TQ1_0":
        # block_tq1_0 { qs[48] (5 trits a byte); qh[4] (4 trits a byte); d }
        t = np.concatenate([_trits(blocks[:, 0:32], 5), _trits(blocks[:, 32:48], 5), _trits(blocks[:, 48:52], 4)],
                           axis=1)
        return t.astype(np.int16), None, f16(blocks, 52)[:, 0]
    elif weight_type == "TQ2_0":
        # block_tq2_0 { qs[64]: weight 128h + 32s + m is bits 2s of qs[32h + m]; d }
        qs = blocks[:, 0:64].reshape(n, 2, 1, 32)
        t = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 3
        return t.reshape(n, 256).astype(np.int16), None, f16(blocks, 64)[:, 0]
    else:
        raise KeyError(weight_type)
    return (sc * v).astype(np.int16), None if wd is None else wd.astype(np.int16), f16(blocks, 0)[:, 0]


def iquant_rows(raw: np.ndarray, weight_type: str, rows: int) -> IQuantRows:
    """Decode `rows` rows of a little-endian `weight_type` matrix (uint8) into IQuantRows."""
    blocks = np.asarray(raw, np.uint8).reshape(-1, IQUANT_BLOCK_BYTES[weight_type])
    nb = blocks.shape[0] // rows
    w, wd, d = decode_blocks(blocks, weight_type)
    return IQuantRows(w.reshape(rows, nb, QK_K), None if wd is None else wd.reshape(rows, nb, QK_K),
                      d.reshape(rows, nb))


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian `weight_type` matrix raw (uint8, shape (rows, k),
    k whole 256s) and Q8_K activations act (QuantizedRows with bsums), bit for bit as llama.cpp's
    AVX2 build: tiled.cpp for n >= 8 (not TQ1_0, TQ2_0), vec_dot otherwise."""
    m = iquant_rows(raw, weight_type, shape[0])
    if weight_type in TILED_TYPES and act.q.shape[0] >= TILED_MIN_BATCH:
        return tiled_matmul(weight_type, m, act.q, act.d)
    return vec_dot_matmul(weight_type, m, act.q, act.d, act.bsums)


def _lanes(w_block, q_block):
    """[rows, 256] and [n, 256] -> int64 [n, rows, 8]: lane l sums the products of the weights
    e with e % 32 in [4l, 4l+4)."""
    rows, n = w_block.shape[0], q_block.shape[0]
    return np.einsum("rcli,tcli->trl", w_block.astype(np.int64).reshape(rows, 8, 8, 4),
                     q_block.astype(np.int64).reshape(n, 8, 8, 4))


def vec_dot_matmul(weight_type: str, m: IQuantRows, q, d_a, bsums) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_<type>_q8_K (AVX2) computes each output (module docstring).
    q int8 [n, k], d_a float32 [n, nb], bsums int16 [n, k/16]."""
    rows, nb, _ = m.w.shape
    n = q.shape[0]
    acc = np.zeros((n, rows, 8), F32)
    acc2 = np.zeros((n, rows, 8), F32)                                          # IQ1_M
    accum1 = np.zeros((n, rows), F32)                                           # IQ1_S
    for b in range(nb):
        qb = q[:, QK_K * b:QK_K * (b + 1)]
        lanes = _lanes(m.w[:, b], qb)                                           # [n, rows, 8]
        d = m.d[None, :, b] * d_a[:, b, None]                                   # [n, rows] float32
        if weight_type in TERNARY:
            bs = bsums[:, 16 * b:16 * (b + 1)].astype(np.int64).reshape(n, 8, 2).sum(axis=-1)   # [n, 8]
            lanes = lanes - bs[:, None, :]
            acc = fma32_array(lanes.astype(np.int32).astype(F32), d[..., None], acc)
            continue
        acc = fma32_array(d[..., None], lanes.astype(np.int32).astype(F32), acc)
        if weight_type == "IQ1_M":
            acc2 = fma32_array(d[..., None], _lanes(m.wd[:, b], qb).astype(np.int32).astype(F32), acc2)
        elif weight_type == "IQ1_S":
            sumi1 = qb.astype(np.int64) @ m.wd[:, b].astype(np.int64).T          # [n, rows]
            accum1 = fma32_array(d, sumi1.astype(np.int32).astype(F32), accum1)
    y = hsum8_array(acc)
    if weight_type == "IQ1_S":
        return y + F32(0.125) * accum1
    if weight_type == "IQ1_M":
        return y + F32(0.125) * hsum8_array(acc2)
    return F32(VEC_DOT_FACTOR.get(weight_type, 1.0)) * y


def tiled_matmul(weight_type: str, m: IQuantRows, q, d_a) -> np.ndarray:
    """y [n, rows] as tiled.cpp's AVX2 microtiles compute each output, one 256-wide K slab at a
    time in K order (module docstring). q int8 [n, k], d_a float32 [n, nb]."""
    rows, nb, _ = m.w.shape
    n = q.shape[0]
    w_t = m.w.astype(np.int64)
    if m.wd is not None:
        w_t = 8 * w_t + m.wd                                                   # codes 8 grid + delta
    d_t = (m.d * F32(TILED_FACTOR.get(weight_type, 1.0))).astype(F32)          # [rows, nb]
    y = np.zeros((n, rows), F32)
    for b in range(nb):
        s1 = q[:, QK_K * b:QK_K * (b + 1)].astype(np.int64) @ w_t[:, b].T       # [n, rows]
        r = d_t[None, :, b] * s1.astype(np.int32).astype(F32)
        y = fma32_array(r, d_a[:, b, None], y)
    return y
