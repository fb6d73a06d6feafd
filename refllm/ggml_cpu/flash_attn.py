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

import numpy as np
from numba import njit, prange

from refllm.ggml_cpu import avx2
from refllm.ggml_cpu.libm import expf
from refllm.ggml_cpu.one_token import _vec_dot_f16, cached_value
from refllm.ggml_cpu.x86 import expf_scalar, f16_round, fma32, hsum8

F32 = np.float32
F64 = np.float64

Q_TILE = 64             # GGML_FA_TILE_Q: batches of this many tokens or more take the tiled kernel
KV_TILE = 64            # GGML_FA_TILE_KV: the tiled kernel's keys per step
SPLIT_MIN_VIEW = 512    # one token over a KV view this long or longer is split among the threads
VIEW_PAD = 256          # llama.cpp pads the KV view and the context to multiples of this
# one_chunk's scores by avx2.f16_row_dot where the machine has AVX2 (tests switch it off to
# check the portable loop; the same bits)
USE_AVX2 = avx2.AVAILABLE


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
    matter where kernel_name says "split"). shared: share the work among Numba's threads.
    Returns float32 [n, n_head * dv]."""
    n, n_head, _ = q.shape
    dv = values.shape[2]
    out = np.empty((n, n_head, dv), F32)
    q = np.ascontiguousarray(q, F32)
    keys, values = np.ascontiguousarray(keys), np.ascontiguousarray(values)
    positions = np.asarray(positions, np.int64)
    kernel = kernel_name(n, n_view)
    if kernel == "tiled":
        _tiled(q, keys, values, positions, first, window, F32(scale), out, shared)
    else:
        chunk = -(-n_view // n_threads) if kernel == "split" else 0
        vector = USE_AVX2 and keys.dtype == np.uint16
        _by_row(q, keys, values, positions, first, window, F32(scale), chunk, n_view, vector, out, shared)
    return out.reshape(n, n_head * dv)


@njit(inline="always", cache=True)
def _visible(positions, i, first, window):
    """The cells (lo, hi) query i sees: positions max(0, p - window + 1)..p, minus first."""
    pos = positions[i]
    lo = max(first, pos - window + 1) if window > 0 else first
    return lo - first, pos + 1 - first


# -- one_chunk and split: one query row at a time -------------------------------------------------

@njit(cache=True, parallel=True)
def _by_row(q, keys, values, positions, first, window, scale, chunk, n_view, vector, out, shared):
    """one_chunk (chunk 0) or split (chunks of `chunk` cells) for every (query row, head),
    shared among Numba's threads where `shared`."""
    jobs = q.shape[0] * q.shape[1]
    if shared:
        for job in prange(jobs):
            _row(q, keys, values, positions, first, window, scale, chunk, n_view, vector, out, job)
    else:
        for job in range(jobs):
            _row(q, keys, values, positions, first, window, scale, chunk, n_view, vector, out, job)


@njit(cache=True)
def _row(q, keys, values, positions, first, window, scale, chunk, n_view, vector, out, job):
    """Query row i and head h (job = i * n_head + h): out[i, h]."""
    n_head, d = q.shape[1], q.shape[2]
    i, h = job // n_head, job % n_head
    g = h // (n_head // keys.shape[0])
    lo, hi = _visible(positions, i, first, window)
    o = out[i, h]
    q16 = np.empty(d, F32)
    for e in range(d):
        q16[e] = f16_round(q[i, h, e])                               # q converted to K's type, f16
    if chunk == 0:
        m, s = _one_chunk(q16, keys, values, g, lo, hi, scale, vector, o)
        _divide(o, s)
        return
    # split: one chunk of the view per thread, each an online softmax of its own; then merged
    # in order (ggml_flash_attn_ext_reduce_partials). A chunk that sees no key has S = 0 and
    # is left out. The merge's a * b + c * d is one fused multiply-add and a product, as GCC
    # contracts it (the golden files tell the two roundings apart).
    part = np.empty_like(o)
    m_all, s_all = F32(-np.inf), F32(0)
    o[:] = 0
    for start in range(0, n_view, chunk):
        stop = min(start + chunk, n_view)
        a, b = max(lo, start - first), min(hi, stop - first)         # the chunk's visible cells
        m, s = _one_chunk(q16, keys, values, g, a, max(a, b), scale, vector, part)
        if s == 0:
            continue
        m_new = max(m_all, m)
        old, new = F32(expf(F32(m_all - m_new))), F32(expf(F32(m - m_new)))
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
def _one_chunk(q16, keys, values, g, a, b, scale, vector, vkq):
    """ggml's one_chunk loop over cells a..b-1 of KV head g for a query q16 (float32 [d], fp16
    values): returns (M, S) and leaves VKQ (fp16 values, as float32) in vkq [dv]. Every key is
    visible; expf is the C library's (math.exp on a float32)."""
    d, dv = q16.shape[0], vkq.shape[0]
    n_cells = keys.shape[1]
    keys_flat = keys.reshape(-1)
    lanes = np.empty(32, F32)
    m, s_sum = F32(-np.inf), F32(0)
    vkq[:] = 0
    for c in range(a, b):
        # the score: ggml_vec_dot_f16 of the key and q; scale; the mask's 0
        if vector:
            s = avx2.f16_row_dot(keys_flat, (g * n_cells + c) * d, q16, d)
        else:
            s = _vec_dot_f16(keys[g, c], q16, lanes)
        s = F32(F32(s * scale) + F32(0))
        ms, vs = F32(1), F32(1)
        if s > m:
            # a new maximum: rescale VKQ (ggml_vec_scale_f16) and S
            ms = F32(expf(F32(m - s)))
            m = s
            for e in range(dv):
                vkq[e] = f16_round(F32(vkq[e] * ms))
        else:
            vs = F32(expf(F32(s - m)))
        # VKQ += v * vs (ggml_vec_mad_f16: one fused multiply-add per element, rounded to f16)
        v_row = values[g, c]
        for e in range(dv):
            vkq[e] = f16_round(fma32(cached_value(v_row[e]), vs, vkq[e]))
        s_sum = fma32(s_sum, ms, vs)
    return m, s_sum


# -- tiled: a block of query rows against KV_TILE keys at a time -----------------------------------

@njit(cache=True, parallel=True)
def _tiled(q, keys, values, positions, first, window, scale, out, shared):
    """The tiled kernel for every (KV head, block of Q_TILE query rows), shared among Numba's
    threads where `shared`."""
    blocks = -(-q.shape[0] // Q_TILE)
    jobs = keys.shape[0] * blocks
    if shared:
        for job in prange(jobs):
            _tiled_block(q, keys, values, positions, first, window, scale, out, job // blocks, job % blocks)
    else:
        for job in range(jobs):
            _tiled_block(q, keys, values, positions, first, window, scale, out, job // blocks, job % blocks)


@njit(cache=True)
def _tiled_block(q, keys, values, positions, first, window, scale, out, g, block):
    """ggml's tiled kernel for the query heads of KV head g and query rows block * Q_TILE ..:
    q stays float32; the keys and values are decoded KV_TILE cells at a time (the tiles start
    at positions that are multiples of KV_TILE); every visible score is a fused multiply-add
    chain over d from 0 (simd_gemm), times scale; the running maximum rescales VKQ and S with
    the C library's expf; the probabilities are ggml's AVX2 expf of s - M, summed in 8-lane
    groups in float64 (ggml_vec_soft_max_f32); VKQ gets a fused multiply-add chain over the
    tile's cells (simd_gemm again). Hidden cells take no part: their probability is exactly 0."""
    n, n_head, d = q.shape
    dv = values.shape[2]
    n_cells = keys.shape[1]
    group = n_head // keys.shape[0]
    r0, r1 = block * Q_TILE, min(n, block * Q_TILE + Q_TILE)
    m = np.full((r1 - r0, group), -np.inf, F32)
    s_sum = np.zeros((r1 - r0, group), F32)
    vkq = np.zeros((r1 - r0, group, dv), F32)
    k_tile = np.empty((d, KV_TILE), F32)                     # transposed, as ggml packs it
    v_tile = np.empty((KV_TILE, dv), F32)
    kq = np.empty(KV_TILE, F32)
    lo_all, _ = _visible(positions, r0, first, window)
    _, hi_all = _visible(positions, r1 - 1, first, window)
    tile = (lo_all + first) // KV_TILE * KV_TILE - first      # the cell where lo_all's tile starts
    while tile < hi_all:
        for t in range(KV_TILE):
            c = tile + t
            inside = 0 <= c < n_cells
            for e in range(d):
                k_tile[e, t] = cached_value(keys[g, c, e]) if inside else F32(0)
            for e in range(dv):
                v_tile[t, e] = cached_value(values[g, c, e]) if inside else F32(0)
        for r in range(r0, r1):
            lo, hi = _visible(positions, r, first, window)
            a, b = max(lo, tile), min(hi, tile + KV_TILE)
            if a >= b:
                continue                                     # no visible key in this tile
            for j in range(group):
                h = g * group + j
                # the tile's scores; hidden cells -inf (the mask's -inf added)
                kq[:] = 0
                for e in range(d):
                    qe = q[r, h, e]
                    for t in range(KV_TILE):
                        kq[t] = fma32(qe, k_tile[e, t], kq[t])
                top = F32(-np.inf)
                for t in range(KV_TILE):
                    visible = a <= tile + t < b
                    kq[t] = F32(F32(kq[t] * scale) + F32(0)) if visible else F32(-np.inf)
                    top = max(top, kq[t])
                # the running maximum; a larger one rescales VKQ and S (the C library's expf)
                row, acc = r - r0, vkq[r - r0, j]
                m_new = max(m[row, j], top)
                if m_new > m[row, j]:
                    ms = F32(expf(F32(m[row, j] - m_new)))
                    for e in range(dv):
                        acc[e] = F32(acc[e] * ms)
                    s_sum[row, j] = F32(s_sum[row, j] * ms)
                m[row, j] = m_new
                # probabilities: ggml's AVX2 expf of s - M; their sum in 8-lane groups, in float64
                total = 0.0
                for t in range(KV_TILE):
                    kq[t] = expf_scalar(F32(kq[t] - m_new))
                for t in range(0, KV_TILE, 8):
                    total += F64(hsum8((kq[t], kq[t + 1], kq[t + 2], kq[t + 3],
                                        kq[t + 4], kq[t + 5], kq[t + 6], kq[t + 7])))
                s_sum[row, j] = F32(F64(s_sum[row, j]) + total)
                # VKQ += p v over the visible cells (the hidden ones' p is 0 and adds nothing)
                for c in range(a, b):
                    p = kq[c - tile]
                    for e in range(dv):
                        acc[e] = fma32(p, v_tile[c - tile, e], acc[e])
        tile += KV_TILE
    for r in range(r0, r1):
        for j in range(group):
            o = out[r, g * group + j]
            o[:] = vkq[r - r0, j]
            _divide(o, s_sum[r - r0, j])
