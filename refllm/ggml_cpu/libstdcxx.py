"""The pieces of GCC's C++ standard library (libstdc++, GCC 12) that llama.cpp's sampler calls,
reproduced so that refllm's sampler draws exactly what llama.cpp's does:

    sort, partial_sort   std::sort (introsort, then insertion sort) and std::partial_sort (heap
                         select, then heap sort), on candidates ordered by a key, largest
                         first: llama.cpp's comparator `a.logit > b.logit`
    MT19937              std::mt19937: the 32-bit Mersenne Twister, seeded as its constructor
                         seeds it
    generate_canonical   std::generate_canonical<double, 53>, which
                         std::uniform_real_distribution<double> draws with: two 32-bit outputs
                         x1, x2 make (x1 + x2 * 2^32) / 2^64

Neither sort is stable, and which of two equal keys comes first is a consequence of each
algorithm's steps. Reproducing those steps exactly makes the order of ties llama.cpp's: it
decides which of two equally likely tokens top-k keeps at its cut, which one a greedy pick
returns, and which side of the draw's running sum each lands on. What happens at ties:

- std::sort of at most 16 keys is one insertion sort, which never moves a key past an equal
  one: ties keep their order. Longer ranges are partitioned around median-of-three pivots
  first (Hoare's scheme swaps equal keys across the pivot), so ties end in no simple order.
- std::partial_sort keeps its first `middle - first` keys as a heap (its top the smallest
  kept) and lets a later key in only if it compares strictly above the top, so a key equal to
  the smallest kept one stays out; which of several equal keys remain, and their order after
  the final heap sort, follow the heap's moves, not their positions.

golden/sampling/steps (llama.cpp's samplers on tie-heavy rows) checks these orders.

The sorts move integer positions (`order`, int64), and compare `keys[order[i]]`: the caller
gathers its records (id, logit, p) by the final order, as C++ would have moved them. They are
jitted (the sampler sorts up to 262,144 candidates per token); each helper is written as
libstdc++'s bits/stl_algo.h and bits/stl_heap.h write it, with its name.
"""

from __future__ import annotations

import numba
import numpy as np

S_THRESHOLD = 16            # _S_threshold: introsort leaves ranges this small to insertion sort


# -- comparisons: comp(a, b) = keys[a] > keys[b] ---------------------------------------------------

@numba.njit(inline="always")
def _comp_iter_iter(order, keys, i, j):
    return keys[order[i]] > keys[order[j]]


# -- bits/stl_heap.h ---------------------------------------------------------------------------------

@numba.njit(cache=True)
def _push_heap(order, keys, first, hole, top, value):
    """__push_heap: move `value` (a position) up from `hole` while its parent compares below it."""
    while hole > top:
        parent = (hole - 1) // 2            # hole >= 1 here, so // truncates as C++'s / does
        if not keys[order[first + parent]] > keys[value]:
            break
        order[first + hole] = order[first + parent]
        hole = parent
    order[first + hole] = value


@numba.njit(cache=True)
def _adjust_heap(order, keys, first, hole, length, value):
    """__adjust_heap: sift the hole at `hole` down to a leaf, taking the larger child (by comp,
    the right one unless it compares above the left), then push `value` up from there."""
    top = hole
    second = hole
    while second < (length - 1) // 2:
        second = 2 * (second + 1)
        if _comp_iter_iter(order, keys, first + second, first + second - 1):
            second -= 1
        order[first + hole] = order[first + second]
        hole = second
    if (length & 1) == 0 and second == (length - 2) // 2:
        second = 2 * (second + 1)
        order[first + hole] = order[first + second - 1]
        hole = second - 1
    _push_heap(order, keys, first, hole, top, value)


@numba.njit(cache=True)
def _pop_heap(order, keys, first, last, result):
    """__pop_heap: the top goes to `result`, result's element is re-inserted into [first, last)."""
    value = order[result]
    order[result] = order[first]
    _adjust_heap(order, keys, first, 0, last - first, value)


@numba.njit(cache=True)
def _make_heap(order, keys, first, last):
    """__make_heap: adjust every parent, from the last one up to the root."""
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(order, keys, first, parent, length, order[first + parent])
        if parent == 0:
            return
        parent -= 1


@numba.njit(cache=True)
def _sort_heap(order, keys, first, last):
    """__sort_heap: pop the top to the end, one at a time."""
    while last - first > 1:
        last -= 1
        _pop_heap(order, keys, first, last, last)


@numba.njit(cache=True)
def _heap_select(order, keys, first, middle, last):
    """__heap_select: a heap of [first, middle); every later element that compares above its
    top replaces the top."""
    _make_heap(order, keys, first, middle)
    for i in range(middle, last):
        if _comp_iter_iter(order, keys, i, first):
            _pop_heap(order, keys, first, middle, i)


@numba.njit(cache=True)
def _partial_sort(order, keys, first, middle, last):
    """__partial_sort: heap select, then heap sort of the selected."""
    _heap_select(order, keys, first, middle, last)
    _sort_heap(order, keys, first, middle)


# -- bits/stl_algo.h: std::sort ----------------------------------------------------------------------

@numba.njit(cache=True)
def _unguarded_linear_insert(order, keys, last):
    """__unguarded_linear_insert: shift `last`'s element left past every element it compares
    above (something at the left stops it: no bounds check)."""
    value = order[last]
    next_ = last - 1
    while keys[value] > keys[order[next_]]:
        order[last] = order[next_]
        last = next_
        next_ -= 1
    order[last] = value


@numba.njit(cache=True)
def _insertion_sort(order, keys, first, last):
    """__insertion_sort: an element above the first moves to the front in one block move;
    any other is inserted unguarded."""
    if first == last:
        return
    for i in range(first + 1, last):
        if _comp_iter_iter(order, keys, i, first):
            value = order[i]
            for j in range(i, first, -1):          # move_backward(first, i, i + 1)
                order[j] = order[j - 1]
            order[first] = value
        else:
            _unguarded_linear_insert(order, keys, i)


@numba.njit(cache=True)
def _final_insertion_sort(order, keys, first, last):
    """__final_insertion_sort: a guarded insertion sort of the first 16, unguarded after."""
    if last - first > S_THRESHOLD:
        _insertion_sort(order, keys, first, first + S_THRESHOLD)
        for i in range(first + S_THRESHOLD, last):  # __unguarded_insertion_sort
            _unguarded_linear_insert(order, keys, i)
    else:
        _insertion_sort(order, keys, first, last)


@numba.njit(inline="always")
def _swap(order, i, j):
    order[i], order[j] = order[j], order[i]


@numba.njit(cache=True)
def _move_median_to_first(order, keys, result, a, b, c):
    """__move_median_to_first: swap the median of a, b, c (by comp) into `result`."""
    if _comp_iter_iter(order, keys, a, b):
        if _comp_iter_iter(order, keys, b, c):
            _swap(order, result, b)
        elif _comp_iter_iter(order, keys, a, c):
            _swap(order, result, c)
        else:
            _swap(order, result, a)
    elif _comp_iter_iter(order, keys, a, c):
        _swap(order, result, a)
    elif _comp_iter_iter(order, keys, b, c):
        _swap(order, result, c)
    else:
        _swap(order, result, b)


@numba.njit(cache=True)
def _unguarded_partition(order, keys, first, last, pivot):
    """__unguarded_partition: Hoare's partition of [first, last) around the element at `pivot`."""
    while True:
        while _comp_iter_iter(order, keys, first, pivot):
            first += 1
        last -= 1
        while _comp_iter_iter(order, keys, pivot, last):
            last -= 1
        if not first < last:
            return first
        _swap(order, first, last)
        first += 1


@numba.njit(cache=True)
def _unguarded_partition_pivot(order, keys, first, last):
    """__unguarded_partition_pivot: the median of (first + 1, middle, last - 1) as the pivot,
    moved to `first`; returns the cut."""
    mid = first + (last - first) // 2
    _move_median_to_first(order, keys, first, first + 1, mid, last - 1)
    return _unguarded_partition(order, keys, first + 1, last, first)


@numba.njit(cache=True)
def _introsort_loop(order, keys, first, last, depth_limit):
    """__introsort_loop: partition until ranges are at most 16 long; a range still longer
    when depth_limit runs out is heap sorted. The right part is done first (recursively in
    C++, from a stack here: the two parts never share an element, so the order of doing
    them does not change the result)."""
    stack = [(first, last, depth_limit)]
    while stack:
        first, last, depth_limit = stack.pop()
        while last - first > S_THRESHOLD:
            if depth_limit == 0:
                _partial_sort(order, keys, first, last, last)
                break
            depth_limit -= 1
            cut = _unguarded_partition_pivot(order, keys, first, last)
            stack.append((cut, last, depth_limit))
            last = cut


# -- the two entry points ----------------------------------------------------------------------------

@numba.njit(cache=True)
def sort(order, keys, first, last):
    """std::sort(order + first, order + last, comp) with comp(a, b) = keys[a] > keys[b]: the
    positions in [first, last) ordered by key, largest first, ties as libstdc++ leaves them."""
    if first != last:
        n = last - first
        lg = 0                                      # std::__lg(n): floor(log2(n))
        while (n >> (lg + 1)) > 0:
            lg += 1
        _introsort_loop(order, keys, first, last, 2 * lg)
        _final_insertion_sort(order, keys, first, last)


@numba.njit(cache=True)
def partial_sort(order, keys, first, middle, last):
    """std::partial_sort(order + first, order + middle, order + last, comp), comp as in sort:
    the middle - first largest keys of [first, last), ordered, in [first, middle); the rest
    in [middle, last) in heap-select order."""
    _partial_sort(order, keys, first, middle, last)


# -- <random> ----------------------------------------------------------------------------------------

class MT19937:
    """std::mt19937: the 32-bit Mersenne Twister (Matsumoto and Nishimura, 1998), as the C++
    standard defines it, seeded with one 32-bit value as `std::mt19937(seed)` seeds it.
    (numpy's MT19937 with `_legacy_seeding(seed)` gives the same stream.)

        rng = MT19937(42)
        rng()        # 1608637542: the next 32-bit output
    """

    N, M = 624, 397
    MATRIX_A = 0x9908B0DF
    UPPER, LOWER = 0x80000000, 0x7FFFFFFF

    def __init__(self, seed: int):
        if not 0 <= seed < 2**32:
            raise ValueError(f"an mt19937 seed is a 32-bit unsigned integer, not {seed}")
        state = [seed]
        for i in range(1, self.N):
            previous = state[-1]
            state.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
        self.state = state
        self.index = self.N                 # the first call twists

    def _twist(self) -> None:
        """Regenerate all 624 words of state (each from itself, its successor and the word
        397 ahead, wrapping around)."""
        state, n, m = self.state, self.N, self.M
        for i in range(n):
            y = (state[i] & self.UPPER) | (state[(i + 1) % n] & self.LOWER)
            state[i] = state[(i + m) % n] ^ (y >> 1) ^ (self.MATRIX_A if y & 1 else 0)
        self.index = 0

    def __call__(self) -> int:
        """The next 32-bit output (the state word, tempered)."""
        if self.index >= self.N:
            self._twist()
        y = self.state[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y


def generate_canonical(rng: MT19937) -> float:
    """std::generate_canonical<double, 53>(rng), what `std::uniform_real_distribution<double>
    (0, 1)(rng)` returns (it multiplies by b - a = 1 and adds a = 0): a double in [0, 1).

    53 bits from a 32-bit generator take k = 2 calls; sum = x1 + x2 * 2^32 (one rounding, to
    double), divided by 2^64 (exact). A sum that rounds up to 2^64 gives 1.0, which is replaced
    by the largest double below 1."""
    total = float(rng())
    total += float(rng()) * 2.0**32
    result = total / 2.0**64
    if result >= 1.0:
        result = np.nextafter(1.0, 0.0)
    return float(result)
