"""ggml's x86 float arithmetic (AVX2, FMA, F16C), reproduced operation for operation.

With quantized activations a forward pass is chaotic: a one-ulp difference in a matmul's
output flips, now and then, the rounding of an activation to Q8 or f16 one layer later, and
the flips grow (measured on SmolLM2: changing only the float32 summation order of the matmuls
moves the logits by a mean KLD of 6e-3, as much as leaving out every rounding). Reproducing
llama.cpp's logits therefore means reproducing its float32 operations in its order: the
8-lane accumulators of its SIMD loops, their fused multiply-adds, the way each kernel
reduces its lanes, and its polynomial exp. This module holds those pieces:

    fma32            _mm256_fmadd_ps on one lane: a * b + c rounded once
    hsum8            hsum_float_8 (and tinyBLAS's hsum): ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))
    expf             ggml_v_expf (vec.h), the AVX2 exp ggml's softmax and SiLU use (NumPy;
                     expf_scalar is its Numba twin)
    silu             ggml_v_silu: x / (1 + expf(-x))
    soft_max         ggml_compute_forward_soft_max_f32 on rows: scale, mask, exp, float64 sum
    tinyblas_lanes   tinyBLAS's AVX2 float kernel (8 FMA lanes over k, then hsum8);
    tinyblas_tiles   the same bits by refllm.ggml_cpu.avx2's register tiles, skipping
                     what attention's mask makes unread or zero
    f16_matmul       the dot products of an F16 mul_mat (the KV cache against q or the
                     probabilities): tinyBLAS for two or more columns, ggml_vec_dot_f16 for one
    round_to_f16     an activation rounded to fp16, as ggml converts it for an F16 mul_mat
    f16_bits,        F16C's conversion to fp16 (LLVM's fptrunc to half), in Numba;
    f16_round        fp16_table_lookup: ggml's fp16-table unary ops (GELU)
    cos_sin, rotate  rope: the C library's cosf/sinf, and the rotation's fused multiply-adds
    tanhf            the C library's tanhf (ggml's GELU table)

In Numba, fma32 is LLVM's llvm.fma.f32: one rounding, an FMA instruction on x86 (or the C
library's fmaf). NumPy has no fused multiply-add, so fma32_array, the references' version,
computes a * b exactly in float64 and rounds a * b + c to float64 and then to float32: the
same except when the float64 rounding lands exactly on a float32 tie, which needs c and a * b
about 2^29 apart.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from refllm.ggml_cpu import avx2

F32 = np.float32
U32 = np.uint32


@intrinsic
def _llvm_fma_f32(typingctx, a, b, c):
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fma, args)

    return sig, codegen


@intrinsic
def _llvm_f16_bits(typingctx, x):
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@intrinsic
def _llvm_f16_round(typingctx, x):
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@numba.njit(inline="always")
def f16_bits(x):
    """The fp16 nearest float32 x (ties to even), as its uint16 bits: LLVM's fptrunc to half,
    F16C's vcvtps2ph (rounding mode 0) where the machine has it, vectorized in loops."""
    return _llvm_f16_bits(np.float32(x))


@numba.njit(inline="always")
def f16_round(x):
    """float32 x rounded to the nearest fp16 (ties to even), as float32 (fptrunc, fpext)."""
    return _llvm_f16_round(np.float32(x))


@numba.njit(inline="always")
def fma32(a, b, c):
    """float32 a * b + c with one rounding (llvm.fma.f32)."""
    return _llvm_fma_f32(np.float32(a), np.float32(b), np.float32(c))


@numba.njit(inline="always")
def hsum8(acc):
    """The sum of 8 float32 lanes in hsum_float_8's order."""
    t0 = np.float32(acc[4] + acc[0])
    t1 = np.float32(acc[5] + acc[1])
    t2 = np.float32(acc[6] + acc[2])
    t3 = np.float32(acc[7] + acc[3])
    return np.float32(np.float32(t0 + t2) + np.float32(t1 + t3))


def fma32_array(a, b, c):
    """fma32 element-wise on float32 arrays (NumPy)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def hsum8_array(acc):
    """hsum8 over the last axis (8 lanes) of a float32 array (NumPy)."""
    t = acc[..., 4:8] + acc[..., 0:4]                        # t_k = l_{k+4} + l_k
    return (t[..., 0] + t[..., 2]) + (t[..., 1] + t[..., 3])


# -- exp and SiLU -------------------------------------------------------------------------------

_EXP_CONSTANTS = {name: F32(float.fromhex(h)) for name, h in {
    "shift": "0x1.8p23", "log2e": "0x1.715476p+0", "ln2_hi": "0x1.62e4p-1", "ln2_lo": "0x1.7f7d1cp-20",
    "c5": "0x1.0e4020p-7", "c4": "0x1.573e2ep-5", "c3": "0x1.555e66p-3", "c2": "0x1.fffdb6p-2",
    "c1": "0x1.ffffecp-1"}.items()}


def expf(x: np.ndarray) -> np.ndarray:
    """exp of float32 x as ggml_v_expf computes it (AVX2 + FMA), element by element.

    n = round(x * log2(e)) by the shift trick; b = x - n ln2 in two fused steps; a degree-5
    polynomial j ~ e^b - 1; the result is k + k j with k = 2^n built from the exponent bits.
    For |n| > 126 the scale is split in two factors (s1 s2) so that it neither overflows nor
    underflows early, and for |n| > 192 the result is s1 * s1 (0 or inf).
    """
    c = _EXP_CONSTANTS
    x = np.asarray(x, F32)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        z = fma32_array(x, c["log2e"], c["shift"])
        n = z - c["shift"]
        b = fma32_array(-n, c["ln2_lo"], fma32_array(-n, c["ln2_hi"], x))        # fnmadd: -(a b) + c
        e = z.view(U32) << U32(23)
        k = (e + F32(1).view(U32)).view(F32)
        u = b * b
        j = fma32_array(fma32_array(fma32_array(c["c5"], b, c["c4"]), u, fma32_array(c["c3"], b, c["c2"])),
                        u, c["c1"] * b)
        normal = fma32_array(k, j, k)
        if not np.any(np.abs(n) > 126):
            return normal
        g = np.where(n <= 0, U32(0x82000000), U32(0))
        s1 = (g + U32(0x7F000000)).view(F32)
        s2 = (e - g).view(F32)
        scaled = fma32_array(s2, j, s2) * s1
        return np.where(np.abs(n) > 192, s1 * s1, np.where(np.abs(n) > 126, scaled, normal)).astype(F32)


_SHIFT, _LOG2E, _LN2_HI, _LN2_LO = (_EXP_CONSTANTS[k] for k in ("shift", "log2e", "ln2_hi", "ln2_lo"))
_C5, _C4, _C3, _C2, _C1 = (_EXP_CONSTANTS[k] for k in ("c5", "c4", "c3", "c2", "c1"))


@numba.njit(inline="always", error_model="numpy")
def expf_scalar(x):
    """expf's Numba twin, one float32 at a time: the same operations, the same bits."""
    z = fma32(x, _LOG2E, _SHIFT)
    n = np.float32(z - _SHIFT)
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = np.uint32(np.float32(z).view(np.uint32) << np.uint32(23))
    k = np.uint32(e + np.uint32(0x3F800000)).view(np.float32)
    u = np.float32(b * b)
    j = fma32(fma32(fma32(_C5, b, _C4), u, fma32(_C3, b, _C2)), u, np.float32(_C1 * b))
    # every case computed, then selected: no branches, so that loops over it vectorize
    normal = fma32(k, j, k)
    g = np.uint32(0x82000000) if n <= 0 else np.uint32(0)
    s1 = np.uint32(g + np.uint32(0x7F000000)).view(np.float32)
    s2 = np.uint32(e - g).view(np.float32)
    scaled = np.float32(fma32(s2, j, s2) * s1)
    extreme = np.float32(s1 * s1)
    size = abs(n)
    return normal if size <= 126 else (extreme if size > 192 else scaled)


@numba.njit(cache=True, error_model="numpy")
def _silu(x, out):
    flat_x, flat_out = x.ravel(), out.ravel()
    for i in range(flat_x.size):
        v = flat_x[i]
        flat_out[i] = np.float32(v / np.float32(np.float32(1) + expf_scalar(np.float32(np.float32(0) - v))))


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU of float32 x as ggml_v_silu computes it: x / (1 + expf(-x)) (Numba)."""
    x = np.ascontiguousarray(x, F32)
    out = np.empty_like(x)
    _silu(x, out)
    return out


def silu_reference(x: np.ndarray) -> np.ndarray:
    """silu in NumPy, on expf: the reference the Numba silu must equal."""
    x = np.asarray(x, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        return x / (F32(1) + expf(F32(0) - x))


@numba.njit(cache=True, error_model="numpy")
def _soft_max_rows(scores, scale, hidden, out):
    """out float32 [rows, T8] (T8: T rounded up to whole 8s) = ggml_vec_soft_max_f32 of
    w = scores * scale, -inf where hidden, then the scale by float32(1 / sum). scores float32
    [rows, T]; hidden bool [n, T] masks row r with its row r % n; the columns past T count as
    -inf (llama.cpp's padded KV length). A hidden score is never read."""
    n, t_len = hidden.shape
    for r in range(scores.shape[0]):
        row, mask, p = scores[r], hidden[r % n], out[r]
        for i in range(t_len):
            p[i] = -np.inf if mask[i] else np.float32(row[i] * scale)
        for i in range(t_len, p.shape[0]):
            p[i] = -np.inf
        top = p[0]
        for i in range(1, p.shape[0]):
            if p[i] > top:
                top = p[i]
        for i in range(p.shape[0]):                          # vectorized
            p[i] = expf_scalar(np.float32(p[i] - top))
        total = 0.0
        for base in range(0, p.shape[0], 8):
            total += np.float64(hsum8((p[base], p[base + 1], p[base + 2], p[base + 3],
                                       p[base + 4], p[base + 5], p[base + 6], p[base + 7])))
        inverse = np.float32(1.0 / total)
        for i in range(p.shape[0]):
            p[i] = np.float32(p[i] * inverse)


def soft_max(scores: np.ndarray, scale, hidden: np.ndarray, backend: str = "numba") -> np.ndarray:
    """ggml_soft_max_ext on float32 rows (last axis): w = scores * scale, -inf where `hidden`
    (broadcast against scores), then expf(w - max) times float32(1 / sum). The sum adds each
    8 lanes with hsum8 and the 8-lane sums in float64 (ggml_vec_soft_max_f32); the rows are
    padded with -inf to whole 8s, as llama.cpp's padded KV length makes them. backend "numpy"
    is the readable reference the Numba kernel must equal (the Numba kernel takes hidden of
    the shape of scores' last two axes, and never reads a hidden score)."""
    t_len = scores.shape[-1]
    if backend == "numba":
        rows = np.ascontiguousarray(scores, F32).reshape(-1, t_len)
        mask = np.ascontiguousarray(np.broadcast_to(hidden, scores.shape[-2:]))
        p = np.empty((rows.shape[0], -(-t_len // 8) * 8), F32)
        _soft_max_rows(rows, F32(scale), mask, p)
        return p[:, :t_len].reshape(scores.shape)
    w = scores * F32(scale)
    w = np.where(hidden, F32(-np.inf), w).astype(F32)
    pad = -w.shape[-1] % 8
    if pad:
        w = np.concatenate([w, np.full(w.shape[:-1] + (pad,), -np.inf, F32)], axis=-1)
    e = expf(w - w.max(axis=-1, keepdims=True))
    lanes = e.reshape(e.shape[:-1] + (-1, 8))
    total = hsum8_array(lanes).astype(np.float64).sum(axis=-1, keepdims=True)
    p = e * (1.0 / total).astype(F32)
    return p[..., :scores.shape[-1]] if pad else p


# -- F16 mul_mat: the KV cache against q or the probabilities -----------------------------------

@numba.njit(cache=True)
def tinyblas_lanes(a_t, b, out):
    """out[i, j] = b[i] . a[j] as tinyBLAS's AVX2 float kernels compute it (F32, and F16 or BF16
    widened to float32): lane l of 8 adds the products of elements l, l+8, l+16, ... with fused
    multiply-adds, then hsum8. a_t float32 [K, M] (a transposed, so that the loop over M
    vectorizes), b float32 [N, K]; K is a multiple of 8; out [N, M]."""
    k, m = a_t.shape
    acc = np.empty((8, m), np.float32)
    for i in range(b.shape[0]):
        acc[:, :] = 0
        for l in range(0, k, 8):
            for t in range(8):
                bv = b[i, l + t]
                for j in range(m):
                    acc[t, j] = fma32(a_t[l + t, j], bv, acc[t, j])
        for j in range(m):
            t0 = np.float32(acc[4, j] + acc[0, j])
            t1 = np.float32(acc[5, j] + acc[1, j])
            t2 = np.float32(acc[6, j] + acc[2, j])
            t3 = np.float32(acc[7, j] + acc[3, j])
            out[i, j] = np.float32(np.float32(t0 + t2) + np.float32(t1 + t3))


# tinyBLAS products through avx2.f32_dot_tile where the machine has AVX2 (tests switch it off
# to check the portable tinyblas_lanes)
USE_AVX2 = avx2.AVAILABLE


def tinyblas_tiles(a: np.ndarray, b: np.ndarray, needed=None, nonzero=None) -> np.ndarray:
    """b @ a.T [N, M] with tinyblas_lanes' bits, by avx2.f32_dot_tile: a [M, K] and b [N, K]
    float32 (K whole 8s) padded with zero rows to whole tiles. Work that cannot change what
    the caller reads is skipped: with needed (int [N]) only out[i, :needed[i]] is computed
    (the rest is garbage), and nonzero (int [N]) says b[i, nonzero[i]:] is zero."""
    (m, k), n = a.shape, b.shape[0]
    m4, n2 = -(-m // avx2.ROWS) * avx2.ROWS, -(-n // avx2.TOKENS) * avx2.TOKENS
    if (m4, n2) != (m, n):
        a = np.concatenate([a, np.zeros((m4 - m, k), F32)])
        b = np.concatenate([b, np.zeros((n2 - n, k), F32)])
    limits = np.empty((2, n2), np.int64)
    limits[0, :n] = m if needed is None else needed
    limits[1, :n] = k if nonzero is None else -(-np.asarray(nonzero) // 8) * 8
    limits[:, n:] = 0
    out = np.empty((n2, m4), F32)
    _tinyblas_tiles(a.reshape(-1), b.reshape(-1), k, limits, out)
    return out[:n, :m] if (m4, n2) != (m, n) else out


@numba.njit(cache=True, parallel=True)
def _tinyblas_tiles(a, b, k, limits, out):
    """out [n2, m4]: the tiles of rows r0.. of a and t0, t0 + 1 of b, skipping those whose
    rows of a are all past limits[0] of both rows of b, and multiplying the first
    max(limits[1]) elements; the pairs of b's rows shared among Numba's threads."""
    n2, m4 = out.shape
    out_flat = out.reshape(-1)
    for pair in numba.prange(n2 // avx2.TOKENS):
        t0 = pair * avx2.TOKENS
        rows = max(limits[0, t0], limits[0, t0 + 1])
        k_used = max(limits[1, t0], limits[1, t0 + 1])
        for r0 in range(0, min(m4, rows), avx2.ROWS):
            avx2.f32_dot_tile(out_flat, t0 * m4 + r0, m4, a, r0 * k, b, t0 * k, k, k_used)


@numba.njit(cache=True)
def f16_dot_vec(a, b, out):
    """out[i, j] = b[i] . a[j] as ggml_vec_dot_f16 computes it (AVX2): four 8-lane
    accumulators over each 32 elements, reduced as (x0 + x2) + (x1 + x3), lanes summed as
    ((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7)); elements past the last whole 32 are added in
    float64. a float32 [M, K] and b float32 [N, K] hold fp16 values; out [N, M]."""
    n_rows, k = a.shape
    whole = k - k % 32
    acc = np.zeros((4, 8), np.float32)
    for i in range(b.shape[0]):
        for j in range(n_rows):
            acc[:, :] = 0
            for base in range(0, whole, 32):
                for r in range(4):
                    for t in range(8):
                        e = base + 8 * r + t
                        acc[r, t] = fma32(a[j, e], b[i, e], acc[r, t])
            for t in range(8):
                acc[0, t] = np.float32(acc[0, t] + acc[2, t])
                acc[1, t] = np.float32(acc[1, t] + acc[3, t])
                acc[0, t] = np.float32(acc[0, t] + acc[1, t])
            t0 = np.float32(acc[0, 0] + acc[0, 4])
            t1 = np.float32(acc[0, 1] + acc[0, 5])
            t2 = np.float32(acc[0, 2] + acc[0, 6])
            t3 = np.float32(acc[0, 3] + acc[0, 7])
            total = np.float64(np.float32(np.float32(t0 + t1) + np.float32(t2 + t3)))
            for e in range(whole, k):
                total += np.float64(np.float32(a[j, e] * b[i, e]))
            out[i, j] = np.float32(total)


def f16_matmul_reference(a: np.ndarray, b: np.ndarray, tinyblas: bool) -> np.ndarray:
    """f16_matmul in NumPy, lane by lane as the two kernels' docstrings say: the reference the
    Numba kernels must equal."""
    a = np.asarray(a, F32)
    b = np.asarray(b, F32)
    k = a.shape[1]
    if tinyblas and k % 8 == 0:
        acc = np.zeros((b.shape[0], a.shape[0], 8), F32)                 # [N, M, lane]
        for l in range(0, k, 8):
            acc = fma32_array(a[None, :, l:l + 8], b[:, None, l:l + 8], acc)
        return hsum8_array(acc)
    whole = k - k % 32
    acc = np.zeros((b.shape[0], a.shape[0], 4, 8), F32)                  # [N, M, accumulator, lane]
    for base in range(0, whole, 32):
        a_step = a[:, base:base + 32].reshape(1, a.shape[0], 4, 8)
        b_step = b[:, base:base + 32].reshape(b.shape[0], 1, 4, 8)
        acc = fma32_array(a_step, b_step, acc)
    x0 = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])   # (x0 + x2) + (x1 + x3)
    t = x0[..., 0:4] + x0[..., 4:8]
    total = ((t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])).astype(np.float64)
    for e in range(whole, k):
        total += (a[None, :, e] * b[:, None, e]).astype(np.float64)
    return total.astype(F32)


def f16_matmul(a: np.ndarray, b: np.ndarray, tinyblas: bool, needed=None, nonzero=None) -> np.ndarray:
    """b @ a.T for an F16 mul_mat whose src0 rows are a [M, K] and whose src1 columns are
    b [N, K] (float32 arrays holding fp16 values), by tinyBLAS (ggml-cpu takes it when the
    batch has two or more tokens and K is whole 8s) or else by vec_dot_f16. Returns float32
    [N, M]. needed and nonzero, hints that let tinyblas_tiles skip work, change no bit the
    caller reads."""
    a = np.ascontiguousarray(a, F32)
    b = np.ascontiguousarray(b, F32)
    out = np.empty((b.shape[0], a.shape[0]), F32)
    if tinyblas and a.shape[1] % 8 == 0 and USE_AVX2:
        return tinyblas_tiles(a, b, needed, nonzero)
    if tinyblas and a.shape[1] % 8 == 0:
        tinyblas_lanes(np.ascontiguousarray(a.T), b, out)
    else:
        f16_dot_vec(a, b, out)
    return out


# -- fp16 rounding -------------------------------------------------------------------------------

@numba.njit(cache=True)
def _round_to_f16(x, out):
    for i in range(x.size):
        out[i] = f16_round(x[i])


@numba.njit(cache=True)
def _fp16_table_lookup(x, table, low, high, out):
    for i in range(x.size):
        v = x[i]
        y = table[f16_bits(v)]
        out[i] = np.float32(0) if v <= low else (v if v >= high else y)


def fp16_table_lookup(x: np.ndarray, table: np.ndarray, low, high) -> np.ndarray:
    """table[the fp16 bits of x] for float32 x (any shape), but 0 where x <= low and x itself
    where x >= high: ggml's unary ops through an fp16 table (ggml_vec_gelu_f32 with
    GGML_GELU_FP16). table float32 [65536]."""
    x = np.ascontiguousarray(x, F32)
    out = np.empty_like(x)
    _fp16_table_lookup(x.reshape(-1), np.ascontiguousarray(table, F32), F32(low), F32(high), out.reshape(-1))
    return out


def round_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 x (any shape) rounded to the nearest fp16 (ties to even, as F16C's vcvtps2ph),
    returned as float32: what ggml's conversion of an activation to an F16 matmul's
    vec_dot_type keeps. The same values as NumPy's astype(float16), several times faster."""
    x = np.ascontiguousarray(x, F32)
    out = np.empty_like(x)
    _round_to_f16(x.reshape(-1), out.reshape(-1))
    return out


# -- rope ---------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _cos_sin(angles, cos, sin):
    for i in range(angles.shape[0]):
        for j in range(angles.shape[1]):
            cos[i, j] = math.cos(angles[i, j])          # float32: the C library's cosf and sinf
            sin[i, j] = math.sin(angles[i, j])


@numba.njit(cache=True)
def _tanhf(x, out):
    for i in range(x.size):
        out[i] = math.tanh(x[i])                        # float32: the C library's tanhf


def tanhf(x: np.ndarray) -> np.ndarray:
    """The C library's tanhf of float32 x (any shape), as ggml_gelu_f32 calls it."""
    x = np.ascontiguousarray(x, F32)
    out = np.empty_like(x)
    _tanhf(x.reshape(-1), out.reshape(-1))
    return out


def cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cosf and sinf of float32 angles [n, m], from the C library as ggml's rope cache calls
    them (they are not always correctly rounded, so float64 cos rounded to float32 differs)."""
    angles = np.ascontiguousarray(angles, F32)
    cos, sin = np.empty_like(angles), np.empty_like(angles)
    _cos_sin(angles, cos, sin)
    return cos, sin


def rotate(x0: np.ndarray, x1: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One rope rotation of the pairs (x0, x1) as ggml's rotate_pairs compiles on x86 (GCC
    contracts each a*b -/+ c*d into a fused multiply-add):
        x0 cos - x1 sin = fma(x0, cos, -(x1 sin)),   x0 sin + x1 cos = fma(x0, sin, x1 cos)"""
    return fma32_array(x0, cos, -(x1 * sin)), fma32_array(x0, sin, x1 * cos)
