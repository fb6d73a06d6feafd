"""llama.cpp's flash attention on the CPU, bit for bit (GGML_OP_FLASH_ATTN_EXT, ops.cpp).

llama.cpp's CPU default, `-fa auto`, turns flash attention on: llama-cli, llama-server and so
ollama compute attention with FLASH_ATTN_EXT, never forming the softmax's matrix. Its result is
the same attention, rounded differently. For every query row it keeps a running maximum M, a
running sum S and a running output VKQ, and visits the keys once ("online softmax"):

    s = q . k * scale                     a new maximum rescales what came before:
    M' = max(M, s)                        VKQ = VKQ * exp(M - M'),  S = S * exp(M - M')
    VKQ += v * exp(s - M'),  S += exp(s - M')
    out = VKQ / S

ggml has three kernels for it, and which one runs decides the roundings:

    tiled       a batch of Q_TILE (64) tokens or more. q stays float32; keys and values are
                decoded from f16; the keys are visited KV_TILE (64) cells at a time, counted
                from cell 0. Each tile's scores are fused multiply-add chains over the head
                dimension (simd_gemm), its maximum updates M (the C library's expf rescales),
                its probabilities are ggml's AVX2 expf of s - M summed in 8-lane groups in
                float64 (ggml_vec_soft_max_f32), and VKQ gets a fused multiply-add chain over
                the tile's cells (simd_gemm again).
    one_chunk   fewer tokens. q is rounded to f16 and each score is ggml_vec_dot_f16; the keys
                are visited one by one, with the C library's expf, and VKQ is an f16 vector:
                every rescale (ggml_vec_scale_f16) and every added value (ggml_vec_mad_f16,
                one fused multiply-add per element) is rounded to f16.
    split       one token over a KV view of 512 cells or more: the view is cut into one chunk
                per thread of llama.cpp's, each chunk runs one_chunk's loop, and the chunks'
                (M, S, VKQ) are merged in order.

"KV view" is llama.cpp's n_kv: the cells a batch's graph reads, the used cells rounded up to
256 (`llama_kv_cache::get_n_kv`), at most the cache's size (n_ctx rounded up to 256). It only
matters to split, whose chunk boundaries it sets, with the thread count: that is why the split
result depends on llama.cpp's --threads, and refllm must be told it.

Keys the mask hides are skipped by all three kernels, exactly: one_chunk and split `continue`
past them, and in tiled their probability is expf(-inf) = 0, which adds nothing to S and leaves
every fused multiply-add's sum as it was. So the kernels here visit only the visible keys, in
position order, which is llama.cpp's cell order in a cache that one sequence fills from cell 0
(llama-cpp-python's default swa_full cache; a ring that has wrapped would visit them in another
order).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from refllm.ggml_cpu.one_token import _reduce_lanes, cached_value
from refllm.ggml_cpu.x86 import expf_scalar, f16_round, fma32, hsum8

F32 = np.float32
F64 = np.float64

Q_TILE = 64             # GGML_FA_TILE_Q: batches of this many tokens or more take the tiled kernel
KV_TILE = 64            # GGML_FA_TILE_KV: the tiled kernel's keys per step
SPLIT_MIN_VIEW = 512    # one token over a KV view this long or longer is split among the threads
VIEW_PAD = 256          # llama.cpp pads the KV view and the context to multiples of this


def kernel_name(n_tokens: int, n_view: int) -> str:
    """Which of ggml's kernels a batch of n_tokens over a KV view of n_view cells takes."""
    if n_tokens >= Q_TILE:
        return "tiled"
    return "split" if n_tokens == 1 and n_view >= SPLIT_MIN_VIEW else "one_chunk"


def kv_view(n_used: int, n_cells: int) -> int:
    """llama.cpp's n_kv (llama_kv_cache::get_n_kv): n_used cells rounded up to 256, at least
    256, at most the cache's n_cells (itself a multiple of 256)."""
    return min(n_cells, max(VIEW_PAD, -(-n_used // VIEW_PAD) * VIEW_PAD))


def flash_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray, first: int,
                    window: int, scale, n_view: int, n_threads: int, shared: bool = True) -> np.ndarray:
    """Attention of a batch of queries as llama.cpp's FLASH_ATTN_EXT computes it on the CPU.

    q float32 [n, n_head, d] at `positions` (int [n]); keys [n_kv, T, d] and values [n_kv, T, dv]
    for positions first..first+T-1 (fp16 bits as uint16, or float32), every position the
    batch sees among them. Query head h reads KV head h // (n_head / n_kv); a query at position
    p sees keys at positions k <= p, with a window w > 0 only those with p - k < w. n_view:
    llama.cpp's KV view for this batch (kv_view); n_threads: llama.cpp's thread count (both only
    matter where kernel_name says "split"). Returns float32 [n, n_head * dv]."""
    n, n_head, _ = q.shape
    dv = values.shape[2]
    out = np.empty((n, n_head, dv), F32)
    kernel = kernel_name(n, n_view)
    chunk = -(-n_view // n_threads) if kernel == "split" else 0
    _attend(np.ascontiguousarray(q, F32), keys, values, np.asarray(positions, np.int64), first, window, F32(scale),
            kernel == "tiled", chunk, n_view, out, shared)
    return out.reshape(n, n_head * dv)


@njit(cache=True, parallel=True)
def _attend(q, keys, values, positions, first, window, scale, tiled, chunk, n_view, out, shared):
    """flash_attention's work: every (query row, head), shared among Numba's threads where
    `shared`. tiled: the tiled kernel; else chunk > 0: split with that chunk size; else
    one_chunk."""
    n, n_head = q.shape[0], q.shape[1]
    if shared:
        for job in prange(n * n_head):
            _attend_row(q, keys, values, positions, first, window, scale, tiled, chunk, n_view, out, job)
    else:
        for job in range(n * n_head):
            _attend_row(q, keys, values, positions, first, window, scale, tiled, chunk, n_view, out, job)


@njit(cache=True)
def _attend_row(q, keys, values, positions, first, window, scale, tiled, chunk, n_view, out, job):
    """One query row i and head h (job = i * n_head + h): out[i, h]."""
    n_head = q.shape[1]
    i, h = job // n_head, job % n_head
    g = h // (n_head // keys.shape[0])
    pos = positions[i]
    lo = max(first, pos - window + 1) if window > 0 else first       # the visible positions: lo .. pos
    hi = pos + 1
    o = out[i, h]
    if tiled:
        _tiled(q[i, h], keys[g], values[g], lo - first, hi - first, first, scale, o)
        return
    q16 = np.empty(q.shape[2], F32)
    for e in range(q.shape[2]):
        q16[e] = f16_round(q[i, h, e])                               # q converted to K's type, f16
    if chunk == 0:
        m, s = _one_chunk(q16, keys[g], values[g], lo - first, hi - first, scale, o)
        _divide(o, s)
        return
    # split: one chunk of the view per thread, each an online softmax of its own; then merged
    # in order. A chunk that sees no key has S = 0 and is left out.
    part = np.empty_like(o)
    m_all, s_all = F32(-np.inf), F32(0)
    o[:] = 0
    for start in range(0, n_view, chunk):
        stop = min(start + chunk, n_view)
        a, b = max(lo, start + first), min(hi, stop + first)          # visible positions of the chunk
        m, s = _one_chunk(q16, keys[g], values[g], a - first, max(a, b) - first, scale, part)
        if s == 0:
            continue
        m_new = max(m_all, m)
        old, new = F32(math.exp(F32(m_all - m_new))), F32(math.exp(F32(m - m_new)))
        for e in range(o.shape[0]):
            o[e] = fma32(o[e], old, F32(part[e] * new))
        s_all = fma32(s_all, old, F32(s * new))
        m_all = m_new
    _divide(o, s_all)


@njit(inline="always", cache=True)
def _divide(o, s):
    """V /= S, as ggml: times float32(1 / S), or 0 where S is 0."""
    inverse = F32(0) if s == 0 else F32(F32(1) / s)
    for e in range(o.shape[0]):
        o[e] = F32(o[e] * inverse)


@njit(cache=True)
def _one_chunk(q16, k, v, a, b, scale, vkq):
    """ggml's one_chunk loop over cells a..b-1 of one KV head (k [T, d], v [T, dv]) for a
    query q16 (float32 [d], fp16 values): returns (M, S) and leaves VKQ (fp16 values, as
    float32) in vkq [dv]. Every key is visible; the C library's expf (math.exp on float32)."""
    d, dv = q16.shape[0], vkq.shape[0]
    lanes = np.empty(32, F32)
    m, s_sum = F32(-np.inf), F32(0)
    vkq[:] = 0
    for c in range(a, b):
        # the score: ggml_vec_dot_f16 of the key and q; scale; the mask's 0
        s = F32(_vec_dot_f16(k[c], q16, lanes, d) * scale)
        s = F32(s + F32(0))
        ms, vs = F32(1), F32(1)
        if s > m:
            # a new maximum: rescale VKQ (ggml_vec_scale_f16) and S
            ms = F32(math.exp(F32(m - s)))
            m = s
            for e in range(dv):
                vkq[e] = f16_round(F32(vkq[e] * ms))
        else:
            vs = F32(math.exp(F32(s - m)))
        # VKQ += v * vs (ggml_vec_mad_f16: one fused multiply-add per element, rounded to f16)
        for e in range(dv):
            vkq[e] = f16_round(fma32(cached_value(v[c, e]), vs, vkq[e]))
        s_sum = fma32(s_sum, ms, vs)
    return m, s_sum


@njit(inline="always", cache=True)
def _vec_dot_f16(a, b, acc, d):
    """ggml_vec_dot_f16 (AVX2) of a row of cache elements and b (float32, fp16 values) [d]:
    four 8-lane accumulators over each 32 elements, reduced as one_token's; the elements past
    the last whole 32 added in float64."""
    whole = d - d % 32
    acc[:] = 0
    for base in range(0, whole, 32):
        for e in range(32):
            acc[e] = fma32(cached_value(a[base + e]), b[base + e], acc[e])
    total = F64(_reduce_lanes(acc[0:8], acc[8:16], acc[16:24], acc[24:32]))
    for e in range(whole, d):
        total += F64(F32(cached_value(a[e]) * b[e]))
    return F32(total)


@njit(cache=True)
def _tiled(q, k, v, a, b, first, scale, vkq):
    """ggml's tiled kernel for one float32 query q [d] over the visible cells a..b-1 of one KV
    head (k [T, d], v [T, dv]; cell c holds position first + c, and the tiles start at the
    positions that are multiples of KV_TILE). Leaves the output in vkq [dv]."""
    d, dv = q.shape[0], vkq.shape[0]
    kq = np.empty(KV_TILE, F32)
    m, s_sum = F32(-np.inf), F32(0)
    vkq[:] = 0
    tile = (a + first) // KV_TILE * KV_TILE - first                     # first cell of a's tile
    while tile < b:
        lo, hi = max(a, tile), min(b, tile + KV_TILE)
        # the tile's scores: a fused multiply-add chain over d from 0 (simd_gemm), times scale;
        # hidden cells -inf (the mask's -inf added)
        top = F32(-np.inf)
        for t in range(KV_TILE):
            c = tile + t
            if c < lo or c >= hi:
                kq[t] = -np.inf
                continue
            acc = F32(0)
            for e in range(d):
                acc = fma32(q[e], cached_value(k[c, e]), acc)
            kq[t] = F32(F32(acc * scale) + F32(0))
            top = max(top, kq[t])
        # the running maximum; a larger one rescales VKQ and S (the C library's expf)
        m_new = max(m, top)
        if m_new > m:
            ms = F32(math.exp(F32(m - m_new)))
            for e in range(dv):
                vkq[e] = F32(vkq[e] * ms)
            s_sum = F32(s_sum * ms)
        m = m_new
        # probabilities: ggml's AVX2 expf of s - M; their sum in 8-lane groups, in float64
        total = 0.0
        for t in range(KV_TILE):
            kq[t] = expf_scalar(F32(kq[t] - m))
        for t in range(0, KV_TILE, 8):
            total += F64(hsum8((kq[t], kq[t + 1], kq[t + 2], kq[t + 3], kq[t + 4], kq[t + 5], kq[t + 6], kq[t + 7])))
        s_sum = F32(F64(s_sum) + total)
        # VKQ += p v: a fused multiply-add chain over the tile's cells (simd_gemm); the hidden
        # cells' p is 0 and adds nothing
        for c in range(lo, hi):
            p = kq[c - tile]
            for e in range(dv):
                vkq[e] = fma32(p, cached_value(v[c, e]), vkq[e])
        tile += KV_TILE
    _divide(vkq, s_sum)
