"""The decode step's compiled pieces: one token through a layer's norms, rope and attention,
and f32's one-token products.

refllm.engine.decode runs a layer for one token as a handful of calls to these kernels and to
the weight products of refllm.ggml_cpu.matmul (ggml) or `gemv_f32` below (f32), into buffers
allocated once, where refllm.engine.transformer.block (the reference) makes a few dozen NumPy
calls. The kernels take `exact`:

    True    --numerics ggml: what block() computes under ggml, bit for bit (ggml's x86
            arithmetic, from refllm.ggml_cpu.x86: the fused multiply-adds of rope, q and the
            probabilities rounded to fp16, vec_dot_f16's lanes, the AVX2 expf, the float64 sum
            of the softmax)
    False   --numerics f32: the same formulas in float32, summed in loop order (block() under
            f32 sums in BLAS's and NumPy's orders: equal up to summation order)

The KV cache comes in as float32, or as uint16 holding fp16 bits (Numba has no float16): a
layer's whole arrays, position p in cell p % cells (refllm.engine.kv_cache).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from refllm.ggml_cpu import avx2
from refllm.ggml_cpu.cpu.legacy import TYPE_IDS
from refllm.ggml_cpu.reference.legacy import LEGACY_BLOCKS
from refllm.ggml_cpu.threads import shared
from refllm.ggml_cpu.x86 import expf_scalar, f16_bits, f16_round, fma32, hsum8
from refllm.kernels.cpu.fp import f16_to_f32

F32 = np.float32
F64 = np.float64
# attend_one's products and gemv_f32 through avx2's row kernels where the machine has AVX2 (tests
# switch it off to check the portable loops and the chunked f32 products)
USE_AVX2 = avx2.AVAILABLE


def cached_value(x):
    """A KV cache element as float32: fp16 bits (uint16) decoded, float32 as it is."""


@overload(cached_value)
def _cached_value(x):
    if isinstance(x, types.Integer):
        return lambda x: f16_to_f32(x)
    return lambda x: np.float32(x)


@njit(inline="always", cache=True)
def _rms_scale(x, eps):
    """1 / sqrt(mean(x^2) + eps) for one row, as transformer.rms_norm: the float32 squares
    summed in order in float64, the mean rounded to float32."""
    total = 0.0
    for i in range(x.shape[0]):
        total += F64(F32(x[i] * x[i]))
    mean = F32(total / x.shape[0])
    return F32(F32(1) / np.sqrt(F32(mean + eps)))


@njit(cache=True)
def rms_norm_into(x, weight, eps, out):
    """out [n] = (x * scale) * weight, scale = _rms_scale(x [n], eps): transformer.rms_norm
    for one row, bit for bit."""
    scale = _rms_scale(x, eps)
    for i in range(x.shape[0]):
        out[i] = F32(F32(x[i] * scale) * weight[i])


@njit(cache=True)
def add_rms_norm(x, y, post_weight, weight, eps, out):
    """x += y (after y = rms_norm(y) * post_weight when post_weight has elements: gemma3's
    post-norms), then out = rms_norm(x) * weight when weight has elements. x, y, out float32
    [n]; y is overwritten by its norm."""
    if post_weight.shape[0]:
        rms_norm_into(y, post_weight, eps, y)
    for i in range(x.shape[0]):
        x[i] = F32(x[i] + y[i])
    if weight.shape[0]:
        rms_norm_into(x, weight, eps, out)


@njit(cache=True)
def qk_norm_rope(x, norm_weight, eps, cos, sin, neox, exact):
    """Each head of x float32 [heads, d] in place: rms_norm by norm_weight [d] when it has
    elements (qwen3, gemma3), then rope's rotation of its first 2 len(cos) dimensions by
    (cos, sin) float32 [n_rot / 2]: pairs (2i, 2i + 1), or (i, i + n_rot / 2) with neox.
    exact: x86.rotate's fused multiply-adds; else rotate_f32's float32 products."""
    half = cos.shape[0]
    for h in range(x.shape[0]):
        row = x[h]
        if norm_weight.shape[0]:
            rms_norm_into(row, norm_weight, eps, row)
        for i in range(half):
            i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
            x0, x1, c, s = row[i0], row[i1], cos[i], sin[i]
            if exact:
                row[i0] = fma32(x0, c, -F32(x1 * s))
                row[i1] = fma32(x0, s, F32(x1 * c))
            else:
                row[i0] = F32(F32(x0 * c) - F32(x1 * s))
                row[i1] = F32(F32(x0 * s) + F32(x1 * c))


@njit(inline="always", cache=True)
def _vec_dot_f16(a, b, acc):
    """ggml_vec_dot_f16 (AVX2) of a (cache elements) and b (float32) [d]: four 8-lane
    accumulators (acc float32 [32] scratch) over each 32 elements, reduced as
    (x0 + x2) + (x1 + x3), then ((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7)); the elements past the
    last whole 32 added in float64 (x86.f16_dot_vec's order)."""
    d = b.shape[0]
    whole = d - d % 32
    acc[:] = 0
    for base in range(0, whole, 32):
        for e in range(32):
            acc[e] = fma32(cached_value(a[base + e]), b[base + e], acc[e])
    total = F64(_reduce_lanes(acc[0:8], acc[8:16], acc[16:24], acc[24:32]))
    for e in range(whole, d):
        total += F64(F32(cached_value(a[e]) * b[e]))
    return F32(total)


@njit(inline="always", cache=True)
def _reduce_lanes(x0, x1, x2, x3):
    """ggml_vec_dot_f16's reduction of its four 8-lane accumulators (float32 [8] each):
    x = (x0 + x2) + (x1 + x3) lane by lane, then ((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7))."""
    t0 = _lane(x0, x1, x2, x3, 0) + _lane(x0, x1, x2, x3, 4)
    t1 = _lane(x0, x1, x2, x3, 1) + _lane(x0, x1, x2, x3, 5)
    t2 = _lane(x0, x1, x2, x3, 2) + _lane(x0, x1, x2, x3, 6)
    t3 = _lane(x0, x1, x2, x3, 3) + _lane(x0, x1, x2, x3, 7)
    return F32(F32(t0 + t1) + F32(t2 + t3))


@njit(inline="always", cache=True)
def _lane(x0, x1, x2, x3, i):
    return F32(F32(x0[i] + x2[i]) + F32(x1[i] + x3[i]))


@njit(cache=True, parallel=True)
def attend_one(q, cache_k, cache_v, pos, window, scale, exact, vector, probs, out, shared):
    """Causal attention of one query token at position `pos`, as transformer.attention
    computes it for a batch of one. q float32 [n_head, d]; cache_k [n_kv, cells, d] and
    cache_v [n_kv, cells, dv]: one layer's KV cache, position p in cell p % cells (a ring, or a
    full layer where that is p). Query head h reads KV head h // (n_head / n_kv) and sees
    positions lo = max(0, pos - window + 1) .. pos (window 0: from 0). probs float32 [n_head,
    >= pos + 32 - lo // 32 * 32] scratch; out float32 [n_head, dv]. With shared, the heads are
    shared among Numba's threads.

    exact (ggml): q rounded to fp16; each visible key's score by vec_dot_f16; ggml's softmax
    (scores * scale, the AVX2 expf, the 8-lane sums added in float64, times float32(1 / sum));
    the probabilities rounded to fp16; each output element vec_dot_f16 of a value column with
    them, lane p % 32 taking position p as in a cache read from position 0. The positions no
    query sees are skipped: their probabilities are exactly 0, and 0 times a cached value adds
    exactly nothing to a lane, so the bits are those of the whole padded cache. Else (f32) the
    same without the fp16 roundings, with float32 exp.

    vector: the dot products and weighted sums by avx2.f16_row_dot and avx2.row_axpy (the
    caches C-contiguous, head widths whole 8s, a machine with AVX2), else by Numba loops; the
    same bits."""
    if shared:
        for h in prange(q.shape[0]):
            _attend_head(q, cache_k, cache_v, pos, window, scale, exact, vector, probs, out, h)
    else:
        for h in range(q.shape[0]):
            _attend_head(q, cache_k, cache_v, pos, window, scale, exact, vector, probs, out, h)


@njit(cache=True)
def _attend_head(q, cache_k, cache_v, pos, window, scale, exact, vector, probs, out, h):
    """attend_one for query head h."""
    n_head, d = q.shape
    n_kv, n_cells, dv = cache_v.shape
    lo = max(0, pos - window + 1) if window > 0 else 0      # the visible positions: lo .. pos
    hi = pos + 1
    base = lo // 32 * 32                                     # probs[h, i] is position base + i
    lo8, hi8, hi32 = lo // 8 * 8, -(-hi // 8) * 8, -(-hi // 32) * 32
    keys_flat, values_flat = cache_k.reshape(-1), cache_v.reshape(-1)
    g = h // (n_head // n_kv)
    p = probs[h]
    q_h = np.empty(d, F32)
    lanes = np.empty(32, F32)
    for e in range(d):
        q_h[e] = f16_round(q[h, e]) if exact else q[h, e]
    # the scores of the visible keys, and their maximum
    top = F32(-np.inf)
    for j in range(lo, hi):
        if vector:
            s = F32(avx2.f16_row_dot(keys_flat, ((g * n_cells) + j % n_cells) * d, q_h, d) * scale)
        else:
            s = F32(_vec_dot_f16(cache_k[g, j % n_cells], q_h, lanes) * scale)
        p[j - base] = s
        top = max(top, s)
    # softmax over them; the hidden positions of the 8s and 32s read below are 0
    for j in range(base, lo):
        p[j - base] = 0
    for j in range(hi, hi32):
        p[j - base] = 0
    for j in range(lo, hi):
        x = F32(p[j - base] - top)
        p[j - base] = expf_scalar(x) if exact else F32(np.exp(x))
    total = 0.0
    for j in range(lo8, hi8, 8):
        i = j - base
        total += F64(hsum8((p[i], p[i + 1], p[i + 2], p[i + 3], p[i + 4], p[i + 5], p[i + 6], p[i + 7])))
    inverse = F32(1.0 / total)
    for j in range(lo, hi):
        p[j - base] = F32(p[j - base] * inverse)
        if exact:
            p[j - base] = f16_round(p[j - base])
    # the values weighted by the probabilities: lane j % 32 of every column
    acc = np.zeros((32, dv), F32)
    acc_flat = acc.reshape(-1)
    for j in range(base, hi32):
        pj, slot, cell = p[j - base], j % 32, j % n_cells
        if vector:
            avx2.row_axpy(acc_flat, slot * dv, values_flat, (g * n_cells + cell) * dv, pj, dv)
        else:
            for c in range(dv):
                acc[slot, c] = fma32(cached_value(cache_v[g, cell, c]), pj, acc[slot, c])
    o = out[h]
    for c in range(dv):
        for t in range(32):
            lanes[t] = acc[t, c]
        o[c] = _reduce_lanes(lanes[0:8], lanes[8:16], lanes[16:24], lanes[24:32])


@njit(cache=True)
def silu_times(gate, up, exact, out):
    """out = silu(gate) * up, float32 [n]: x86.silu's expf (exact), else x / (1 + exp(-x))."""
    for i in range(gate.shape[0]):
        x = gate[i]
        e = expf_scalar(F32(F32(0) - x)) if exact else F32(np.exp(F32(-x)))
        out[i] = F32(F32(x / F32(F32(1) + e)) * up[i])


@njit(cache=True)
def table_gelu_times(gate, up, table, out):
    """out = gelu(gate) * up, float32 [n], gelu as numerics.gelu_tanh_ggml: 0 for x <= -10,
    x for x >= 10, else table[the fp16 bits of x]."""
    for i in range(gate.shape[0]):
        x = gate[i]
        y = F32(0) if x <= F32(-10) else (x if x >= F32(10) else table[f16_bits(x)])
        out[i] = F32(y * up[i])


@njit(cache=True)
def gelu_tanh_times(gate, up, out):
    """out = gelu(gate) * up, float32 [n], gelu as numerics.gelu_tanh_f32:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = F32(np.sqrt(2 / np.pi))
    for i in range(gate.shape[0]):
        x = gate[i]
        inner = F32(c * F32(x + F32(F32(F32(F32(0.044715) * x) * x) * x)))
        y = F32(F32(F32(0.5) * x) * F32(F32(1) + F32(np.tanh(inner))))
        out[i] = F32(y * up[i])


# -- f32's one-token products: each weight decoded exactly, in registers, and multiplied --------

# rows of a work item of the gemv kernels' parallel loops
GEMV_ROWS = 16


def gemv_f32(raw: np.ndarray, weight_type: str, shape: tuple[int, int], x: np.ndarray) -> np.ndarray | None:
    """W x for one token in float32, W the little-endian `weight_type` matrix `raw` (uint8,
    shape (rows, k)) and x float32 [k]: float32 [rows], every weight decoded exactly (as
    refllm.dequantize decodes it) and multiplied in registers, never written to memory; the
    rows shared among Numba's threads. None where there is no such kernel (a machine without
    AVX2, another type): the caller decodes rows a chunk at a time instead."""
    rows, k = shape
    if not USE_AVX2 or k % 32:
        return None
    out = np.empty(rows, F32)
    raw = raw.reshape(-1)
    share = shared(raw.nbytes)
    if weight_type in TYPE_IDS:
        legacy_gemv_f32(raw, TYPE_IDS[weight_type], k // 32, LEGACY_BLOCKS[weight_type][0], x, out, share)
    elif weight_type in ("F16", "F32"):
        plain_gemv_f32(raw.view(np.uint16 if weight_type == "F16" else F32), k, x, out, share)
    else:
        return None
    return out


@njit(cache=True, parallel=True)
def legacy_gemv_f32(raw, type_id, nb, block_bytes, x, out, shared):
    """out [rows] = the legacy-type rows of raw (cpu.legacy.TYPE_IDS) times x [32 nb], by
    avx2.legacy_row_dot_f32_*; with shared, groups of GEMV_ROWS rows shared among Numba's
    threads."""
    rows = out.shape[0]
    if shared:
        for c in prange(-(-rows // GEMV_ROWS)):
            _legacy_f32_rows(raw, type_id, nb, block_bytes, x, out, c * GEMV_ROWS, min(rows, (c + 1) * GEMV_ROWS))
    else:
        _legacy_f32_rows(raw, type_id, nb, block_bytes, x, out, 0, rows)


@njit(cache=True)
def _legacy_f32_rows(raw, type_id, nb, block_bytes, x, out, start, stop):
    """legacy_gemv_f32 for rows start..stop-1."""
    row_bytes = np.uint64(nb) * np.uint64(block_bytes)
    nbu = np.uint64(nb)
    for r in range(start, stop):
        at = np.uint64(r) * row_bytes
        if type_id == 0:
            out[r] = avx2.legacy_row_dot_f32_q4_0(raw, at, x, nbu)
        elif type_id == 1:
            out[r] = avx2.legacy_row_dot_f32_q4_1(raw, at, x, nbu)
        elif type_id == 2:
            out[r] = avx2.legacy_row_dot_f32_q5_0(raw, at, x, nbu)
        elif type_id == 3:
            out[r] = avx2.legacy_row_dot_f32_q5_1(raw, at, x, nbu)
        else:
            out[r] = avx2.legacy_row_dot_f32_q8_0(raw, at, x, nbu)


@njit(cache=True, parallel=True)
def plain_gemv_f32(w, k, x, out, shared):
    """out [rows] = the rows of w (fp16 bits as uint16, or float32; [rows * k]) times x [k], by
    avx2.f16_row_dot; with shared, groups of GEMV_ROWS rows shared among Numba's threads."""
    rows = out.shape[0]
    if shared:
        for c in prange(-(-rows // GEMV_ROWS)):
            for r in range(c * GEMV_ROWS, min(rows, (c + 1) * GEMV_ROWS)):
                out[r] = avx2.f16_row_dot(w, r * k, x, k)
    else:
        for r in range(rows):
            out[r] = avx2.f16_row_dot(w, r * k, x, k)
