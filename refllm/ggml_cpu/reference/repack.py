"""llama.cpp's x86 matmul for repacked Q4_0, IQ4_NL, MXFP4 and Q4_K weights, float operation for
float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/repack.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations.

On an AVX2 build, ggml-cpu loads every Q4_0, IQ4_NL, MXFP4 and Q4_K matrix whose row count is a
multiple of 8 into its CPU_REPACK buffer (repack.cpp ggml_repack_get_optimal_repack_type),
rearranged as q4_0_8x8 / iq4_nl_8x8 / mxfp4_8x8 / q4_K_8x8: eight weight rows interleaved 8
bytes at a time. Its MUL_MAT
(repack.cpp tensor_traits::forward_mul_mat, forward_mul_mat_one_chunk) then

  - quantizes the activations: rows 0 .. n - n%4 - 1 four at a time with
    ggml_quantize_mat_q8_0_4x8 / ggml_quantize_mat_q8_K_4x8, the last n % 4 rows one at a
    time with quantize_row_q8_0 / quantize_row_q8_K;
  - splits the weight rows into chunks (multiples of 8 rows) among the threads, and in each
    chunk multiplies the first n - n%4 activation rows with ggml_gemm_<w>_8x8_q8_<a> and the
    last n % 4 rows one at a time with ggml_gemv_<w>_8x8_q8_<a> (arch/x86/repack.cpp).

Every output y[t, r] is computed in one float32 SIMD lane that holds weight row r and
activation row t and nothing else, so neither the chunking nor the thread count changes a
bit; only whether row t went to gemm or to gemv does (for Q4_K).

Activations. ggml_quantize_mat_q8_0_4x8 (AVX) is quantize_row_q8_0's arithmetic, operation
for operation (amax by _mm256_max_ps, d = amax / 127 rounded to fp16, q = round(x * (127 /
amax))), only interleaved: the same d and q. ggml_quantize_mat_q8_K_4x8 (AVX2) differs from
quantize_row_q8_K_ref in one thing: when a block holds both +amax and -amax it always takes
iscale = -127 / amax (the reference takes the sign of the first), so q, bsums and d may all
come out negated. Every float operation below multiplies a d_a-carrying factor by a
q-carrying one (d_w * d_a by an integer sum of q), and IEEE rounding is symmetric, so the
negation cancels exactly: the products are the same bits. Hence `act` is refllm's
activations.q8_0 / q8_k of all n rows.

The integer parts are exact. The x86 kernels sum int8 products with maddubs/madd (no
saturation is reachable: |w| <= 8 against |a| <= 127 for Q4_0; q <= 15 against |a| <= 127,
16 products per int16 lane, for Q4_K), so they are written here as plain integer sums.

Q4_0, IQ4_NL, MXFP4 (gemv_q4_b32_8x8_q8_0_lut_avx and gemm_q4_b32_8x8_q8_0_lut_avx, one
template for the three, the same per lane):

    acc = 0
    for each block b of 32:
        isum = sum(w_i * a_i)                  int32; w = LUT[nibble]: Q4_0 q - 8 (the repack
                                               stores q ^ 0x88, read back through a
                                               sign-extending table), IQ4_NL kvalues_iq4nl,
                                               MXFP4 kvalues_mxfp4 (|w| <= 127, |a| <= 127:
                                               maddubs pairs cannot saturate)
        acc  = fma(float(isum), d_w * d_a, acc)    d_w: fp16 (Q4_0, IQ4_NL) or E8M0 / 2
                                               (MXFP4, GGML_CPU_E8M0_TO_FP32_HALF); d_a fp16
    y = acc

Q4_K, gemv (ggml_gemv_q4_K_8x8_q8_K, one activation row):

    acc = accm = 0
    for each super-block b of 256 (sub-blocks j = 0..7 of 32, scales sc_j, mins m_j):
        isum = sum_j sc_j * sum(q_i * a_i, i in j)          int32
        imin = sum_j m_j * bsum_j                           bsum_j: the sum of a over j
        acc  = fma(float(isum), d_w * d_a, acc)              d_a float32: a rounded product
        accm = fma(float(imin), dmin_w * d_a, accm)
    y = acc - accm

Q4_K, gemm (ggml_gemm_q4_K_8x8_q8_K, four activation rows at a time): the same, except that
the two fmas run once per pair of sub-blocks (j = 2p, 2p+1; p = 0..3), four times per
super-block, each on the pair's integer sums.
"""

from __future__ import annotations

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array
from refllm.kernels.reference.fields import f16, nibbles
from refllm.kernels.reference.fp4 import e8m0_half
from refllm.kernels.reference.kquants import _planes, _scale_min_k4
from refllm.kernels.tables import KVALUES_IQ4NL, KVALUES_MXFP4

F32 = np.float32

# type -> (weights per block, bytes per block)
#   block_q4_0   { ggml_half d; uint8 qs[16]; }           byte j: weight j (low), j + 16 (high)
#   block_iq4_nl { ggml_half d; uint8 qs[16]; }           the same; nibble -> kvalues_iq4nl
#   block_mxfp4  { uint8 e; uint8 qs[16]; }               the same; nibble -> kvalues_mxfp4,
#                                                         scale E8M0 e: 2^(e-127) / 2
#   block_q4_K   { ggml_half d; ggml_half dmin; uint8 scales[12]; uint8 qs[128]; }
#              qs byte 32c + l: weight 64c + l (low), 64c + 32 + l (high); scales: 8 6-bit
#              scales and 8 6-bit mins (kquants._scale_min_k4)
REPACK_BLOCKS: dict[str, tuple[int, int]] = {"Q4_0": (32, 18), "IQ4_NL": (32, 18), "MXFP4": (32, 17),
                                             "Q4_K": (256, 144)}
# The 32-weight types of gemv/gemm_q4_b32_8x8_q8_0_lut_avx: type -> (offset of qs, nibble -> w)
LUT_TYPES: dict[str, tuple[int, np.ndarray]] = {
    "Q4_0": (2, np.arange(16, dtype=np.int8) - np.int8(8)),
    "IQ4_NL": (2, KVALUES_IQ4NL),
    "MXFP4": (1, KVALUES_MXFP4),
}
# The repacked layouts (repack.h), for reference; the arithmetic does not depend on them:
#   block_q4_0x8 { ggml_half d[8]; uint8 qs[128]; }   8 rows' blocks, 8 bytes of each in turn,
#                                                     nibbles xor 0x88 (so q - 8 sign-extends)
#   block_q4_Kx8 { ggml_half d[8]; ggml_half dmin[8]; uint8 scales[96]; uint8 qs[1024]; }
#   block_q8_0x4 { ggml_half d[4]; int8 qs[128]; }    4 activation rows, 8 bytes in turn
#   block_q8_Kx4 { float d[4]; int8 qs[1024]; int16 bsums[64]; }
# Rows per interleaved group: a matrix is repacked only if its row count is a multiple of this.
INTERLEAVED_ROWS = 8
# Activation rows per gemm call; the rest (n % 4) go through gemv.
GEMM_ROWS = 4


def check_shape(weight_type: str, shape: tuple[int, int]) -> None:
    """Raise ValueError unless llama.cpp's AVX2 build repacks a `weight_type` matrix of
    `shape` (rows, k): rows a multiple of 8, k whole blocks."""
    rows, k = shape
    block, _ = REPACK_BLOCKS[weight_type]
    if rows % INTERLEAVED_ROWS or k % block:
        raise ValueError(f"llama.cpp does not repack a {weight_type} matrix of {rows} rows of {k}: "
                         f"it needs rows a multiple of {INTERLEAVED_ROWS} and k of {block}")


def gemm_rows(n: int) -> int:
    """How many of n activation rows forward_mul_mat_one_chunk gives to gemm (the rest, n % 4,
    go one by one through gemv)."""
    return n - n % GEMM_ROWS


def q4_0_quants(raw: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 matrix's signed quants and scales: (w int8 [rows, k] = q - 8, d float32 [rows, nb])."""
    return lut_quants(raw, "Q4_0", rows)


def lut_scales(blocks: np.ndarray, weight_type: str) -> np.ndarray:
    """float32 [n_blocks] scales d_w of Q4_0 / IQ4_NL / MXFP4 blocks (uint8 [n_blocks, bytes]):
    the fp16 d, or MXFP4's E8M0 e as 2^(e-127) / 2."""
    if weight_type == "MXFP4":
        return e8m0_half(blocks[:, 0])
    return f16(blocks, 0)[:, 0]


def lut_quants(raw: np.ndarray, weight_type: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """A Q4_0 / IQ4_NL / MXFP4 matrix's signed weights and scales: (w int8 [rows, k] = LUT[nibble],
    d float32 [rows, nb])."""
    qs_at, lut = LUT_TYPES[weight_type]
    blocks = np.asarray(raw, np.uint8).reshape(-1, REPACK_BLOCKS[weight_type][1])
    w = lut[nibbles(blocks[:, qs_at:qs_at + 16])].reshape(rows, -1)
    return w, lut_scales(blocks, weight_type).reshape(rows, -1)


def q4_k_fields(raw: np.ndarray, rows: int):
    """A Q4_K matrix's fields: (q uint8 [rows, k] 0..15, sc and m uint8 [rows, nb, 8] (sub-block
    scales and mins), d and dmin float32 [rows, nb])."""
    blocks = raw.reshape(-1, 144)                                       # [rows * nb, 144]
    nb = blocks.shape[0] // rows
    sc, m = _scale_min_k4(blocks[:, 4:16])                              # [rows * nb, 8] each
    q = _planes(blocks[:, 16:144], 4, 32).reshape(rows, -1)
    return (q, sc.reshape(rows, nb, 8), m.reshape(rows, nb, 8),
            f16(blocks, 0).reshape(rows, nb), f16(blocks, 2).reshape(rows, nb))


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian `weight_type` ("Q4_0", "IQ4_NL", "MXFP4" or
    "Q4_K") matrix raw (uint8, shape (rows, k)) and activations act (activations.q8_0
    QuantizedRows for the first three, activations.q8_k for Q4_K), bit for bit as llama.cpp's
    AVX2 repack kernels: rows 0 .. n - n%4 - 1 as gemm, the last n % 4 as gemv (the module
    docstring).

    A matrix whose row count is not a multiple of 8 is not repacked by llama.cpp, and raises
    ValueError here: refllm/ggml_cpu/matmul.py sends it to its type's own family (legacy,
    lut4 or kquants)."""
    rows, k = shape
    raw = np.asarray(raw, np.uint8).reshape(-1)
    check_shape(weight_type, shape)
    n = act.q.shape[0]
    g = gemm_rows(n)
    out = np.empty((n, rows), F32)
    if weight_type in LUT_TYPES:
        w, d_w = lut_quants(raw, weight_type, rows)
        out[:] = q4_0_8x8_q8_0(w, d_w, act.q, act.d)        # gemm and gemv: the same lanes
        return out
    fields = q4_k_fields(raw, rows)
    if g:
        out[:g] = q4_k_8x8_q8_k(*fields, act.q[:g], act.d[:g], act.bsums[:g], sub_blocks_per_fma=2)
    if g < n:
        out[g:] = q4_k_8x8_q8_k(*fields, act.q[g:], act.d[g:], act.bsums[g:], sub_blocks_per_fma=8)
    return out


def q4_0_8x8_q8_0(w, d_w, a, d_a) -> np.ndarray:
    """ggml_gemv/gemm_{q4_0,iq4_nl,mxfp4}_8x8_q8_0 (AVX2): y [n, rows] for weights (w int8
    [rows, k], d_w [rows, nb]) and Q8_0 activations (a int8 [n, k], d_a [n, nb]): per block,
    acc = fma(float(isum), d_w * d_a, acc)."""
    rows, k = w.shape
    n, nb = a.shape[0], k // 32
    isum = np.einsum("rbi,tbi->trb", w.reshape(rows, nb, 32).astype(np.int32),
                     a.reshape(n, nb, 32).astype(np.int32))                    # [n, rows, nb]
    scale = d_w[None, :, :] * d_a[:, None, :]                                   # float32
    acc = np.zeros((n, rows), F32)
    for b in range(nb):
        acc = fma32_array(isum[:, :, b].astype(F32), scale[:, :, b], acc)
    return acc


def q4_k_8x8_q8_k(q, sc, m, d_w, dmin_w, a, d_a, bsums, sub_blocks_per_fma: int) -> np.ndarray:
    """ggml_gemv_q4_K_8x8_q8_K (sub_blocks_per_fma=8) or ggml_gemm_q4_K_8x8_q8_K (=2) (AVX2):
    y [n, rows] for Q4_K fields (q4_k_fields' order) and Q8_K activations (a int8 [n, k],
    d_a float32 [n, nb], bsums int16 [n, k/16]): per group of sub-blocks,
    acc = fma(float(sum sc * dot), d_w * d_a, acc), accm = fma(float(sum m * bsum), dmin_w * d_a,
    accm); y = acc - accm."""
    rows, k = q.shape
    n, nb = a.shape[0], k // 256
    groups = 8 // sub_blocks_per_fma
    dots = np.einsum("rsi,tsi->trs", q.reshape(rows, nb * 8, 32).astype(np.int32),
                     a.reshape(n, nb * 8, 32).astype(np.int32)).reshape(n, rows, nb, 8)
    isc = dots * sc[None].astype(np.int32)                                      # [n, rows, nb, 8]
    bsum = bsums.astype(np.int32).reshape(n, nb, 8, 2).sum(axis=-1)             # [n, nb, 8]: per 32
    imin = m[None].astype(np.int32) * bsum[:, None]                             # [n, rows, nb, 8]
    isum = isc.reshape(n, rows, nb, groups, sub_blocks_per_fma).sum(axis=-1)    # [n, rows, nb, groups]
    imin = imin.reshape(n, rows, nb, groups, sub_blocks_per_fma).sum(axis=-1)
    scale = (d_w[None] * d_a[:, None]).astype(F32)                             # [n, rows, nb] rounded
    scale_min = (dmin_w[None] * d_a[:, None]).astype(F32)
    acc = np.zeros((n, rows), F32)
    accm = np.zeros((n, rows), F32)
    for b in range(nb):
        for g in range(groups):
            acc = fma32_array(isum[:, :, b, g].astype(F32), scale[:, :, b], acc)
            accm = fma32_array(imin[:, :, b, g].astype(F32), scale_min[:, :, b], accm)
    return acc - accm
