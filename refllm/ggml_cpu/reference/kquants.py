"""llama.cpp's x86 matmul for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K, float operation for float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/kquants.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations (to Q8_K:
refllm.ggml_cpu.reference.quantize_activations.q8_k). (Q4_K is here only where llama.cpp does not repack
it: a matrix whose rows are not whole 8s (or one kept in a plain CPU buffer); the others go
to q4_K_8x8 and repack.cpp's kernels, refllm/ggml_cpu/reference/repack.py.)

On an AVX2 + FMA build (no AVX-512) ggml-cpu multiplies these types two ways
(ggml-cpu.c ggml_compute_forward_mul_mat, ggml-cpu/tiled/):

    n >= 8 tokens   tiled.cpp ggml_compute_forward_mul_mat_tiled (ggml_tiled_min_batch; on
                    unless GGML_CPU_TILED_MM=0) with tiled-kernel.cpp's
                    tiled_run_microtile_avx2
    n < 8           ggml_vec_dot_q<N>_K_q8_K, arch/x86/quants.c, the __AVX2__ branch

Both take the same integers from a weight block (256 weights) and an activation block
(block_q8_K: float d_a, int8 q[256], int16 bsums[16], the sums of q in 16s). Per block,
with sc(e) the sub-block scale of weight e and c(e) its code:

    type   c(e)                  sc(e)            min term           d_w, dmin_w (fp16)
    Q2_K   0..3                  scales[e/16]&15  (scales[m]>>4)*bs  d, dmin
    Q3_K   low2+4*high-4: -4..3  6-bit - 32       -                  d
    Q4_K   low4: 0..15           6-bit (k4)       6-bit m (k4)       d, dmin
    Q5_K   low4+16*high: 0..31   6-bit (k4)       6-bit m (k4)       d, dmin
    Q6_K   low4+16*high: 0..63   int8 scales      (32 sc subtracted) d

The integer sums are exact (no int16 saturation is reachable, every partial fits int32), so
only which integers are grouped before the float arithmetic matters:

vec_dot (one weight row, one token; `acc` 8 float32 lanes; lane l of a 32-weight run holds
weights 4l .. 4l+3: maddubs + madd):

    sumi[l] = sum over the block's 8 runs r of sum_{i<4} sc(e) c(e) q(e),   e = 32r + 4l + i
    Q2_K:  dmin = -(d_a * dmin_w);  acc[l] = fma(dmin, (float) sum_{m=2l,2l+1} mins[m] bs[m], acc[l])
    Q6_K:  sumi[l] -= 32 (sc[2l] bs[2l] + sc[2l+1] bs[2l+1])          (q8sclsub)
    Q5_K:  summs = fma(dmin, (float) sum_j m[j] (bs[2j] + bs[2j+1]), summs)    scalar C; GCC
           contracts `summs += dmin * x` into a fused multiply-add (-ffp-contract=fast)
    Q4_K:  acc_m[i] = fma(dmin, (float) (m[2i] bs32[2i] + m[2i+1] bs32[2i+1]), acc_m[i]),
           i < 4 (an SSE accumulator; bs32[j] = bs[2j] + bs[2j+1], _mm_hadd_epi16 +
           _mm_madd_epi16), summed at the end as (acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])
    all:   d = d_a * d_w;  acc[l] = fma(d, (float) sumi[l], acc[l])
    y = hsum8(acc)          (+ summs for Q5_K, + the acc_m sum for Q4_K)

tiled (per 256-wide K slab, in K order, into the float32 output buffer zeroed per window;
the narrow path for n <= 16 and the standard path run the same per-slab arithmetic):

    s1 = sum_e sc(e) c'(e) q(e)     c' = c, except Q6_K: c - 32 (the kernel biases the
                                     activation by +128 and subtracts 128 * the weight sums)
    s2 = sum_m mins[m] bs[m]        (Q2_K; Q4_K, Q5_K: mins[j] (bs[2j] + bs[2j+1]))
    r  = d_w * (float) s1
    r  = fma(-dmin_w, (float) s2, r)        (Q2_K, Q4_K, Q5_K: _mm256_fnmadd_ps)
    y  = fma(r, d_a, y)                     (_mm256_fmadd_ps into the buffer)

Note the tiled path multiplies d_w and d_a separately (d_a last), vec_dot multiplies d_a *
d_w first; the two paths differ in the last bits.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array, hsum8_array
from refllm.kernels.reference.fields import f16, nibbles
from refllm.kernels.reference.kquants import _planes, _scale_min_k4

F32 = np.float32
QK_K = 256

# type -> block bytes
KQUANT_BLOCK_BYTES: dict[str, int] = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}

# Below this many tokens ggml-cpu runs vec_dot; from it on, tiled.cpp (ggml_tiled_min_batch).
TILED_MIN_BATCH = 8


class KQuantRows(NamedTuple):
    """The integers and scales of a K-quant matrix as the x86 kernels multiply them.

    w:      int16 [rows, nb, 256]: sc(e) * c(e), the weight's sub-block scale times its code
            (Q6_K: the unsigned code 0..63; the -32 is applied through the bsums)
    d:      float32 [rows, nb]: the fp16 super-block scale
    dmin:   float32 [rows, nb] (Q2_K, Q4_K, Q5_K) or None: the fp16 scale of the mins
    bw:     int32 [rows, nb, 16] or None: what multiplies each of the activation block's 16
            bsums: Q2_K its mins, Q4_K and Q5_K the min of sub-block m/2, Q6_K 32 * sc[m];
            None for Q3_K
    """
    w: np.ndarray
    d: np.ndarray
    dmin: np.ndarray | None
    bw: np.ndarray | None


def kquant_rows(raw: np.ndarray, weight_type: str, rows: int) -> KQuantRows:
    """Decode `rows` rows of a little-endian Q2_K/Q3_K/Q4_K/Q5_K/Q6_K matrix (uint8) into the
    integers the kernels multiply (KQuantRows). Block layouts: refllm.kernels.reference.kquants."""
    blocks = np.asarray(raw, np.uint8).reshape(-1, KQUANT_BLOCK_BYTES[weight_type])
    nb = blocks.shape[0] // rows
    dmin = bw = None
    if weight_type == "Q2_K":
        # block_q2_K { scales[16] (lo: scale, hi: min); qs[64]; d; dmin }
        scales = blocks[:, 0:16]
        code = _planes(blocks[:, 16:80], 2, 32).astype(np.int16)                 # [B, 256] 0..3
        sc = (scales & 0x0F).astype(np.int16)                                     # [B, 16]
        d, dmin = f16(blocks, 80), f16(blocks, 82)
        bw = (scales >> 4).astype(np.int32)                                       # mins [B, 16]
    elif weight_type == "Q3_K":
        # block_q3_K { hmask[32]; qs[64]; scales[12]; d }
        high = _planes(blocks[:, 0:32], 1, 32).astype(np.int16)
        low = _planes(blocks[:, 32:96], 2, 32).astype(np.int16)
        code = low + 4 * high - 4                                                 # -4..3
        s = blocks[:, 96:108]
        sc = (nibbles(s[:, 0:8]) | (_planes(s[:, 8:12], 2, 4) << 4)).astype(np.int16) - 32
        d = f16(blocks, 108)
    elif weight_type == "Q4_K":
        # block_q4_K { d; dmin; scales[12] (6-bit sc, m); qs[128] }
        d, dmin = f16(blocks, 0), f16(blocks, 2)
        sc8, m8 = _scale_min_k4(blocks[:, 4:16])                                  # [B, 8] each
        code = _planes(blocks[:, 16:144], 4, 32).astype(np.int16)                 # 0..15
        sc = np.repeat(sc8.astype(np.int16), 2, axis=1)                           # per 16
        bw = np.repeat(m8.astype(np.int32), 2, axis=1)
    elif weight_type == "Q5_K":
        # block_q5_K { d; dmin; scales[12] (6-bit sc, m); qh[32]; qs[128] }
        d, dmin = f16(blocks, 0), f16(blocks, 2)
        sc8, m8 = _scale_min_k4(blocks[:, 4:16])                                  # [B, 8] each
        high = _planes(blocks[:, 16:48], 1, 32).astype(np.int16)
        code = _planes(blocks[:, 48:176], 4, 32).astype(np.int16) + 16 * high     # 0..31
        sc = np.repeat(sc8.astype(np.int16), 2, axis=1)                           # per 16
        bw = np.repeat(m8.astype(np.int32), 2, axis=1)
    elif weight_type == "Q6_K":
        # block_q6_K { ql[128]; qh[64]; int8 scales[16]; d }
        low = _planes(blocks[:, 0:128], 4, 64).astype(np.int16)
        high = _planes(blocks[:, 128:192], 2, 32).astype(np.int16)
        code = low + 16 * high                                                    # 0..63
        sc = blocks[:, 192:208].view(np.int8).astype(np.int16)
        d = f16(blocks, 208)
        bw = 32 * sc.astype(np.int32)
    else:
        raise KeyError(weight_type)
    w = (code.reshape(-1, 16, 16) * sc[:, :, None]).reshape(rows, nb, QK_K)
    return KQuantRows(w, d.reshape(rows, nb), None if dmin is None else dmin.reshape(rows, nb),
                      None if bw is None else bw.reshape(rows, nb, 16))


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian `weight_type` (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) matrix
    raw (uint8, shape (rows, k), k whole 256s) and Q8_K activations act (QuantizedRows with
    bsums), bit for bit as llama.cpp's AVX2 build: tiled.cpp for n >= 8, vec_dot below."""
    m = kquant_rows(raw, weight_type, shape[0])
    if act.q.shape[0] >= TILED_MIN_BATCH:
        return tiled_matmul(weight_type, m, act.q, act.d, act.bsums)
    return vec_dot_matmul(weight_type, m, act.q, act.d, act.bsums)


def vec_dot_matmul(weight_type: str, m: KQuantRows, q, d_a, bsums) -> np.ndarray:
    """y [n, rows] as ggml_vec_dot_<type>_q8_K (AVX2) computes each output (module docstring).
    q int8 [n, k], d_a float32 [n, nb], bsums int16 [n, k/16]."""
    rows, nb, _ = m.w.shape
    n = q.shape[0]
    acc = np.zeros((n, rows, 8), F32)
    summs = np.zeros((n, rows), F32)
    acc_m = np.zeros((n, rows, 4), F32)                                         # Q4_K
    for b in range(nb):
        wb = m.w[:, b].astype(np.int64).reshape(rows, 8, 8, 4)                 # [rows, run, lane, 4]
        qb = q[:, QK_K * b:QK_K * (b + 1)].astype(np.int64).reshape(n, 8, 8, 4)
        sumi = np.einsum("rcli,tcli->trl", wb, qb)                              # [n, rows, 8]
        d = d_a[:, b, None] * m.d[None, :, b]                                   # [n, rows] float32
        if m.bw is not None:
            bs = bsums[:, 16 * b:16 * (b + 1)].astype(np.int64).reshape(n, 8, 2)
            by_lane = np.einsum("rlm,tlm->trl", m.bw[:, b].astype(np.int64).reshape(rows, 8, 2), bs)
            if weight_type == "Q2_K":
                dmin = -(d_a[:, b, None] * m.dmin[None, :, b])
                acc = fma32_array(dmin[..., None], by_lane.astype(F32), acc)
            elif weight_type == "Q5_K":
                dmin = -(d_a[:, b, None] * m.dmin[None, :, b])
                summs = fma32_array(dmin, by_lane.sum(axis=-1).astype(F32), summs)
            elif weight_type == "Q4_K":
                dmin = -(d_a[:, b, None] * m.dmin[None, :, b])
                prod = by_lane.reshape(n, rows, 4, 2).sum(axis=-1)              # [n, rows, 4]
                acc_m = fma32_array(dmin[..., None], prod.astype(F32), acc_m)
            else:                                                               # Q6_K: q8sclsub
                sumi = sumi - by_lane
        acc = fma32_array(d[..., None], sumi.astype(np.int32).astype(F32), acc)
    y = hsum8_array(acc)
    if weight_type == "Q4_K":
        return y + ((acc_m[..., 0] + acc_m[..., 2]) + (acc_m[..., 1] + acc_m[..., 3]))
    return y + summs if weight_type == "Q5_K" else y


def tiled_matmul(weight_type: str, m: KQuantRows, q, d_a, bsums) -> np.ndarray:
    """y [n, rows] as tiled.cpp's AVX2 microtiles compute each output, one 256-wide K slab at
    a time in K order (module docstring). Arguments as vec_dot_matmul's."""
    rows, nb, _ = m.w.shape
    n = q.shape[0]
    y = np.zeros((n, rows), F32)
    for b in range(nb):
        wb = m.w[:, b].astype(np.int64)                                         # [rows, 256]
        qb = q[:, QK_K * b:QK_K * (b + 1)].astype(np.int64)                     # [n, 256]
        s1 = qb @ wb.T                                                          # [n, rows]
        if m.bw is not None:
            s_bw = bsums[:, 16 * b:16 * (b + 1)].astype(np.int64) @ m.bw[:, b].astype(np.int64).T
            if weight_type == "Q6_K":
                s1 = s1 - s_bw                  # = sum sc (c - 32) q, what the act-bias MAC gives
        r = m.d[None, :, b] * s1.astype(np.int32).astype(F32)
        if m.dmin is not None:
            r = fma32_array(-m.dmin[None, :, b], s_bw.astype(np.int32).astype(F32), r)
        y = fma32_array(r, d_a[:, b, None], y)
    return y
