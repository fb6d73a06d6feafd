"""The C library's expf and a C loop's float64 sum: the arithmetic of llama.cpp's tools.

llama-perplexity (tools/perplexity/perplexity.cpp) scores logits with plain C++ compiled for
x86-64 without -mfma: every float operation rounds to float32 on its own, `exp` of a float
is the C library's expf, and a sum is a `double` that adds one term after another. NumPy's
elementwise float32 operations already round so; these two do not come with NumPy:

    expf, logf  the C library's expf and logf of one float32, in Numba code (Numba's math.exp
                and math.log on a float32 call them; NumPy's own float32 exp is a different
                polynomial and differs in the last bit for about a third of its inputs)
    expf_array  expf element by element, for NumPy code
    sum_f64     `double sum = 0; for (...) sum += term;` along each row, in order (NumPy's
                sum adds pairwise, which rounds differently)

On another C library, expf gives that library's bits, as llama.cpp's would there.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(inline="always", cache=True)
def expf(x):
    """The C library's expf of a float32."""
    return math.exp(np.float32(x))


@numba.njit(inline="always", cache=True)
def logf(x):
    """The C library's logf of a float32."""
    return math.log(np.float32(x))


@numba.njit(cache=True)
def _expf_array(x, out):
    for i in range(x.size):
        out[i] = expf(x[i])


def expf_array(x: np.ndarray) -> np.ndarray:
    """The C library's expf of float32 x (any shape), element by element, as float32."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _expf_array(x.reshape(-1), out.reshape(-1))
    return out


@numba.njit(cache=True)
def _sum_f64(rows, out):
    for r in range(rows.shape[0]):
        total = 0.0
        for i in range(rows.shape[1]):
            total += np.float64(rows[r, i])
        out[r] = total


def sum_f64(rows: np.ndarray) -> np.ndarray:
    """float32 rows [n, m] -> float64 [n]: each row's terms added one after another, left to
    right, into a double that starts at 0 (a C loop's `sum += term`)."""
    rows = np.ascontiguousarray(rows, np.float32)
    out = np.empty(rows.shape[0], np.float64)
    _sum_f64(rows, out)
    return out
