"""llama.cpp's CPU samplers (src/llama-sampler.cpp of the llama.cpp llama-cpp-python 0.3.36
vendors), step for step: the same candidates in the same order, the same float32 and float64
operations in the same order, the same random numbers.

    cur = Candidates.from_logits(logits)      # llama_token_data_array: every id, in id order
    penalties(cur, counts, 1.1, 0.0, 0.0)     # counts[id]: occurrences in the penalty window
    top_k(cur, 40)
    top_p(cur, 0.9, 0)
    min_p(cur, 0.05, 0)
    temp(cur, 0.8)
    token = cur.ids[dist(cur, rng)]           # rng: libstdcxx.MT19937

Each function is the `apply` of the llama.cpp sampler of the same name, and reads and writes
`cur` as it does: `sorted` says the candidates are in descending logit order, which lets a
later step skip its own sort (a step that reorders sets it; penalties clears it). What the
steps do that the order of candidates shows:

- top_k sorts only when the candidates are not sorted yet: k <= 128 by std::partial_sort over
  all of them, larger k by `bucket_partial_sort` (128 logit buckets over [-10, 10], std::sort
  inside each full bucket, std::partial_sort in the last one).
- top_p computes a softmax in the current order (a float32 running sum), then walks the
  candidates by descending logit adding up probabilities in float32 until the sum reaches p.
  Unsorted and more than 1024 candidates: it sorts only the best 256 first (bucket sort), and
  all of them if those 256 do not reach p.
- min_p on unsorted candidates keeps those with logit >= max + logf(p) in their current order
  (no sort); on sorted ones it cuts at the first that falls below.
- temp divides the logits in float32; temperature <= 0 keeps the first largest logit (in the
  current order) and sets every other one to -inf.
- dist draws one double from the generator (std::uniform_real_distribution<double>(0, 1)),
  computes expf(logit - max) in float32 and their float64 sum in the current order, and picks
  the first candidate whose float64 running sum reaches sum * the draw. One candidate: it still
  draws once.

The order of equal logits after a sort is libstdc++'s (libstdcxx.py reproduces its sort and
partial_sort): it decides ties at top_k's cut, greedy's pick among equal maxima, and where each
of two equal candidates sits in dist's running sum.

expf and logf are the C library's (Numba's math.exp and math.log of a float32 call them), as
llama.cpp, built by GCC without -ffast-math, calls them one value at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from refllm.ggml_cpu.libm import expf, logf
from refllm.ggml_cpu.libstdcxx import MT19937, generate_canonical, partial_sort, sort

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)

# llama_token_data_array_partial_sort's histogram: 128 buckets over logits in [-10, 10]
N_BUCKETS = 128
BUCKET_SCALE = F32(N_BUCKETS) / (F32(10.0) - F32(-10.0))      # 6.4f
BUCKET_INTER = -F32(-10.0) * BUCKET_SCALE                      # 64.0f
PARTIAL_SORT_HEAP_MAX = 128     # partial_sort_inplace: std::partial_sort up to this many, else buckets
TOP_P_BUCKET_FIRST = 256        # top_p on more than TOP_P_SORT_ALL unsorted candidates sorts these first
TOP_P_SORT_ALL = 1024


@dataclass
class Candidates:
    """llama_token_data_array: parallel arrays of the candidates' ids (int32), logits and
    probabilities (float32), in the array's current order, and whether that order is
    descending by logit. `size` is len(ids); shrinking the array keeps a prefix."""

    ids: np.ndarray
    logits: np.ndarray
    p: np.ndarray
    sorted: bool = False

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> Candidates:
        """Every token, id i with logits[i] and p 0, unsorted: what llama_sampler_sample builds."""
        logits = np.array(logits, dtype=F32)          # a copy: the steps write to it
        return cls(np.arange(len(logits), dtype=np.int32), logits, np.zeros(len(logits), F32))

    @property
    def size(self) -> int:
        return len(self.ids)

    def take(self, order: np.ndarray) -> None:
        """Keep the candidates at positions `order`, in that order (C++ copies the records)."""
        self.ids, self.logits, self.p = self.ids[order], self.logits[order], self.p[order]

    def keep_first(self, n: int) -> None:
        """cur_p->size = n."""
        self.ids, self.logits, self.p = self.ids[:n], self.logits[:n], self.p[:n]


# -- sorting ------------------------------------------------------------------------------------------

@numba.njit(inline="always")
def _bucket(x):
    """int(x) as x86's cvttss2si converts a float32: truncated, and INT_MIN (the "integer
    indefinite") for NaN and for anything outside the int32 range."""
    if x != x or x >= 2147483648.0 or x < -2147483648.0:
        return -2147483648
    return int(x)


@numba.njit(cache=True)
def bucket_partial_sort(logits, npartial):
    """llama_token_data_array_partial_sort(cur, npartial, res): positions of the candidates
    (int64 [nhave]) whose first npartial hold the npartial largest logits in descending order.

    Each logit goes to bucket int(6.4f * logit + 64.0f) clamped to [0, 127] (float32 operations;
    a logit of +inf or above about 3e8 lands in bucket 0, as x86 converts it). From the top
    bucket down, whole buckets are taken until they hold at least npartial candidates; each is
    filled in id order, std::sort'ed, except the last, which is std::partial_sort'ed up to
    npartial. npartial must be between 1 and len(logits)."""
    n = logits.size
    bucket_of = np.empty(n, np.int64)
    histogram = np.zeros(N_BUCKETS, np.int64)
    for i in range(n):
        x = np.float32(np.float32(BUCKET_SCALE * logits[i]) + BUCKET_INTER)
        ib = max(0, min(N_BUCKETS - 1, _bucket(x)))
        bucket_of[i] = ib
        histogram[ib] += 1
    # the lowest bucket needed to hold npartial candidates
    n_have = 0
    ib = N_BUCKETS - 1
    while ib >= 0:
        n_have += histogram[ib]
        if n_have >= npartial:
            break
        ib -= 1
    # scatter the candidates of buckets ib..127 into res, the top bucket first, each in id order
    res = np.empty(n_have, np.int64)
    fill = np.zeros(N_BUCKETS, np.int64)
    at = 0
    for j in range(N_BUCKETS - 1, ib - 1, -1):
        fill[j] = at
        at += histogram[j]
    for i in range(n):
        j = bucket_of[i]
        if j >= ib:
            res[fill[j]] = i
            fill[j] += 1
    # sort each full bucket, and the last one as far as needed
    at = 0
    n_done = 0
    for j in range(N_BUCKETS - 1, ib, -1):
        sort(res, logits, at, at + histogram[j])
        at += histogram[j]
        n_done += histogram[j]
    partial_sort(res, logits, at, at + npartial - n_done, at + histogram[ib])
    return res


def partial_sort_inplace(cur: Candidates, npartial: int) -> None:
    """llama_token_data_array_partial_sort_inplace: keep the npartial largest, sorted."""
    if npartial <= PARTIAL_SORT_HEAP_MAX:
        order = np.arange(cur.size, dtype=np.int64)
        partial_sort(order, cur.logits, 0, npartial, cur.size)
    else:
        order = bucket_partial_sort(cur.logits, npartial)
    cur.take(order[:npartial])
    cur.sorted = True


# -- the samplers ---------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _softmax(logits, max_l, p):
    """p = expf(logit - max_l) / their float32 sum, the sum taken in order."""
    cum_sum = np.float32(0.0)
    for i in range(logits.size):
        e = expf(np.float32(logits[i] - max_l))
        p[i] = e
        cum_sum = np.float32(cum_sum + e)
    for i in range(logits.size):
        p[i] = np.float32(p[i] / cum_sum)


def softmax(cur: Candidates, do_sort: bool) -> None:
    """llama_sampler_softmax_impl: the candidates' probabilities, in float32 (sorted first if
    do_sort and not sorted yet)."""
    if do_sort and not cur.sorted:
        partial_sort_inplace(cur, cur.size)
    max_l = cur.logits[0] if cur.sorted else cur.logits.max()
    _softmax(cur.logits, F32(max_l), cur.p)


def penalties(cur: Candidates, counts: np.ndarray, penalty_repeat, penalty_freq, penalty_present) -> None:
    """llama_sampler_penalties_apply: every candidate whose id occurs count > 0 times in the
    window (counts[id], int, one per vocabulary entry) has its logit multiplied by
    penalty_repeat when <= 0, else divided by it, then count * freq + present subtracted
    (float32; freq and present as float32, like the C floats)."""
    repeat, freq, present = F32(penalty_repeat), F32(penalty_freq), F32(penalty_present)
    count = counts[cur.ids]
    seen = np.flatnonzero(count > 0)
    logits = cur.logits[seen]
    logits = np.where(logits <= 0, logits * repeat, logits / repeat)
    logits -= count[seen].astype(F32) * freq + present      # float(count > 0) * present == present
    cur.logits[seen] = logits
    cur.sorted = False


def top_k(cur: Candidates, k: int) -> None:
    """llama_sampler_top_k_impl: keep the k largest logits (k <= 0: all), sorted."""
    if k <= 0:
        return
    k = min(k, cur.size)
    if not cur.sorted:
        partial_sort_inplace(cur, k)
    cur.keep_first(k)


@numba.njit(cache=True)
def _top_p_walk(p_in_order, start, stop, cum_sum, p, min_keep):
    """top_p's loop over candidates start..stop-1 (probabilities in descending-logit order):
    (the number kept if the float32 running sum reaches p there, else -1; the running sum)."""
    for i in range(start, stop):
        cum_sum = np.float32(cum_sum + p_in_order[i])
        if cum_sum >= p and i + 1 >= min_keep:
            return i + 1, cum_sum
    return -1, cum_sum


def top_p(cur: Candidates, p, min_keep: int = 0) -> None:
    """llama_sampler_top_p_apply: keep the most likely candidates until their probabilities
    (softmax over the candidates) add up to p (float32), and at least min_keep; all when the
    sum never gets there. p >= 1 keeps all. Leaves them sorted."""
    p = F32(p)
    if p >= 1:
        return
    softmax(cur, False)
    if not cur.sorted and cur.size > TOP_P_SORT_ALL:
        # adaptive: sort the best 256; if they do not reach p, sort everything and go on
        order = bucket_partial_sort(cur.logits, min(TOP_P_BUCKET_FIRST, cur.size))
        k = min(TOP_P_BUCKET_FIRST, cur.size)
        last_idx, cum_sum = _top_p_walk(cur.p[order], 0, k, F32(0.0), p, min_keep)
        if last_idx < 0:
            order = bucket_partial_sort(cur.logits, cur.size)
            last_idx, cum_sum = _top_p_walk(cur.p[order], k, cur.size, cum_sum, p, min_keep)
        last_idx = cur.size if last_idx < 0 else last_idx
        cur.take(order[:last_idx])
        cur.sorted = True
        return
    if not cur.sorted:
        partial_sort_inplace(cur, cur.size)
    last_idx, _ = _top_p_walk(cur.p, 0, cur.size, F32(0.0), p, min_keep)
    cur.keep_first(cur.size if last_idx < 0 else last_idx)


def min_p(cur: Candidates, p, min_keep: int = 0) -> None:
    """llama_sampler_min_p_apply: keep the candidates with logit >= max logit + logf(p)
    (float32), i.e. probability >= p * the largest; p <= 0 keeps all. Unsorted candidates keep
    their order; sorted ones are cut at the first below the bound (but not before min_keep)."""
    p = F32(p)
    if p <= 0 or cur.size == 0:
        return
    if not cur.sorted:
        max_logit = max(-FLT_MAX, cur.logits.max())               # std::max from -FLT_MAX
        min_logit = F32(max_logit) + F32(logf(p))                  # float32 + float32
        kept = np.flatnonzero(cur.logits >= min_logit)
        if kept.size > 0 and kept.size >= min_keep:
            cur.take(kept)
            return
        partial_sort_inplace(cur, cur.size)
    min_logit = cur.logits[0] + F32(logf(p))
    below = np.flatnonzero(cur.logits[1:] < min_logit) + 1          # the first always stays
    below = below[below >= min_keep]
    cur.keep_first(int(below[0]) if below.size else cur.size)


def temp(cur: Candidates, t) -> None:
    """llama_sampler_temp_impl: logits divided by t (float32); t <= 0 keeps only the first
    largest logit (in the current order) and sets every other to -inf."""
    t = F32(t)
    if cur.size == 0:
        return
    if t <= 0:
        keep = int(np.argmax(cur.logits))          # the first maximum, as the C loop's strict >
        kept = cur.logits[keep]
        cur.logits[:] = -np.inf
        cur.logits[keep] = kept
        return
    cur.logits /= t


@numba.njit(cache=True)
def _dist(logits, max_l, rnd, p):
    """dist's single pass: p = expf(logit - max_l) in float32, their float64 sum; the first
    candidate whose float64 running sum reaches sum * rnd (-1 if none does); p normalized."""
    sum_cum = 0.0
    for i in range(logits.size):
        e = expf(np.float32(logits[i] - max_l))
        p[i] = e
        sum_cum += np.float64(e)
    sum_tgt = sum_cum * rnd
    sum_run = 0.0
    selected = -1
    for i in range(logits.size):
        if selected < 0:
            sum_run += np.float64(p[i])
            if sum_run >= sum_tgt:
                selected = i
        p[i] = np.float32(np.float64(p[i]) / sum_cum)
    return selected


def dist(cur: Candidates, rng: MT19937) -> int:
    """llama_sampler_dist_apply: the position (in cur) of the candidate drawn, with exactly one
    std::uniform_real_distribution<double>(0, 1) draw from rng (also for a single candidate);
    sets cur.p to the probabilities. -1 if there are no candidates (llama.cpp then fails)."""
    if cur.size == 0:
        return -1
    rnd = generate_canonical(rng)
    if cur.size == 1:
        cur.p[0] = 1.0
        return 0
    max_l = cur.logits[0] if cur.sorted else cur.logits.max()
    selected = _dist(cur.logits, F32(max_l), rnd, cur.p)
    return cur.size - 1 if selected < 0 else selected      # "don't think this can happen"
