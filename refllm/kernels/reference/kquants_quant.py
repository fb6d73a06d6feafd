"""K-quant quantizers: float32 super-blocks of 256 -> the bytes of ggml's quantize_row_q*_K_ref.

Each function follows one C function of ggml/src/ggml-quants.c (llama.cpp@0c1e57098), the one
llama-quantize calls when there is no importance matrix, and writes exactly its bytes. The
layouts are those of reference/kquants.py, which decodes them; `_pack_planes` is the inverse of
its `_planes`.

Every K-quant works in two steps. First each sub-block (16 or 32 weights) gets its own float
scale (and min) from an iterative search: `_make_qx_quants`, `_make_q3_quants` or
`_make_qkx2_quants`. Then the sub-block scales are themselves quantized to 4, 6 or 8 bits
against one or two fp16 super-block scales, and the weights are quantized again against the
scales as they will be decoded: the fp16-rounded super-block scale times the small integer.

Bit-exactness needs C's float32 semantics, so every array here is float32 and every operation
is one float32 operation in C's order:

- sums are sequential, in C's loop order (a loop over the elements of a sub-block, each step
  one float32 add for all sub-blocks at once), never np.sum's pairwise order;
- `a*b*c` is `(a*b)*c`; an int in a float expression is converted to float32 first; there is no
  FMA (libggml-base is built without it);
- nearest_int is C's `fval + 12582912.f` trick: round half to even for |x| < 2**22, and the same
  bit-level result beyond that range, where C only asserts (see `nearest_int`);
- running maxima and minima use C's strict comparisons in C's order, so the first of equal
  values wins (and a -0.0 is kept or not as C keeps it);
- integers stored in uint8_t / int8_t fields wrap modulo 256, as C's conversions do;
- fp16 is IEEE round-to-nearest-even (GGML_FP32_TO_FP16; overflow gives inf), and where C reads
  the stored scale back (GGML_FP16_TO_FP32(y[i].d)) the rounded value is used.

Inputs are finite (quantize() checks), but intermediate values may overflow (rows of 1e30):
inf and NaN then flow through the same IEEE operations as in C, with numpy's warnings off.
The iterative searches run on all sub-blocks of all blocks at once: the loops below are over
the elements of a sub-block and over the search steps, as in C, never over blocks.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)          # ggml-quants.c: a group with max |x| below this is all zero


# ---------------------------------------------------------------------------- C's helpers

def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int on float32 values -> int64, bit for bit.

    C adds 12582912.f (1.5 * 2**23) in float32 and reads the low 23 bits of the sum, minus 2**22.
    For |f| <= 4194303 (C asserts that range) the sum's last mantissa bit is worth 1, so the
    float32 addition rounds f to the nearest integer, ties to even. Outside that range the same
    bits give a wrapped value, and inf and NaN give -2**22 and 0 (NaN's payload is 0).
    """
    val = (np.asarray(f, F32) + F32(12582912.0)).astype(F32)
    bits = val.view(np.int32).astype(np.int64)
    return (bits & 0x007FFFFF) - 0x00400000


def fp16_round(f: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(f)): f rounded to fp16 (nearest, ties to even)."""
    with np.errstate(over="ignore"):                     # beyond 65504: inf, as in C
        return np.asarray(f, F32).astype(np.float16).astype(F32)


def fp16_bytes(f: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8: the little-endian fp16 of each value."""
    with np.errstate(over="ignore"):
        return np.asarray(f, F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def wrap_u8(v: np.ndarray) -> np.ndarray:
    """An int stored in a uint8_t: modulo 256."""
    return np.asarray(v, np.int64) & 0xFF


def wrap_i8(v: np.ndarray) -> np.ndarray:
    """An int stored in an int8_t: modulo 256, as -128..127."""
    return ((np.asarray(v, np.int64) + 128) & 0xFF) - 128


def _clamp(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """MAX(lo, MIN(hi, v)) on ints."""
    return np.maximum(lo, np.minimum(hi, v))


def _f(v) -> np.ndarray:
    """An int (or int array) used in a float expression: converted to float32, as C does."""
    return np.asarray(v).astype(F32)


def _max_abs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }` over the columns of
    x (m, n), from amax = max = 0: (amax, max), each (m,). The first of equal |x| wins."""
    amax = np.zeros(x.shape[0], F32)
    vmax = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):
        ax = np.abs(x[:, i])
        bigger = ax > amax
        amax = np.where(bigger, ax, amax)
        vmax = np.where(bigger, x[:, i], vmax)
    return amax, vmax


def _running_max(v: np.ndarray) -> np.ndarray:
    """C's `if (v[j] > m) m = v[j];` over the columns of v (m, n), from m = 0."""
    m = np.zeros(v.shape[0], F32)
    for j in range(v.shape[1]):
        m = np.where(v[:, j] > m, v[:, j], m)
    return m


def _pack_planes(fields: np.ndarray, width: int, run: int) -> np.ndarray:
    """(n, k) fields of `width` bits -> (n, k*width/8) bytes: the inverse of kquants._planes.

    Field (r * 8/width + p) * run + l goes to bits p*width.. of byte r*run + l.
    """
    per_byte = 8 // width
    runs = fields.astype(np.uint8).reshape(fields.shape[0], -1, per_byte, run)    # (n, runs, planes, run)
    shifts = (np.arange(per_byte, dtype=np.uint8) * width)[:, None]               # (planes, 1)
    packed = np.bitwise_or.reduce(runs << shifts, axis=2)                         # (n, runs, run)
    return packed.reshape(fields.shape[0], -1)


# ---------------------------------------------------------------------------- the searches

def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) on every row of x (m, n) at once.

    A symmetric scale for the ints -nmax..nmax-1, fitted by weighted least squares with weights
    x**2. It starts from iscale = -nmax/max (max: the value of largest |x|, sign included, so
    the largest weight lands on -nmax) and tries iscale = -(nmax + 0.1*is)/max for is = -9..9
    (not 0); a try replaces the best when sumlx**2 > best*suml2 (strictly), and the scale is
    sumlx/suml2 of the best try. A row with max|x| < GROUP_MAX_EPS is all zero: scale 0, L 0.

    Returns (scale (m,) float32, L (m, n) int64 in 0..2*nmax-1, the int plus nmax).
    """
    m, n = x.shape
    amax, vmax = _max_abs(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x                                                              # rmse_type 1: x**2

    def fit(iscale):
        """(l, sumlx, suml2) of one try: l = clamp(nearest_int(iscale*x)), sums in C's order."""
        l = _clamp(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = _f(l)
        sumlx = np.zeros(m, F32)
        suml2 = np.zeros(m, F32)
        for i in range(n):
            sumlx = sumlx + w[:, i] * x[:, i] * lf[:, i]
            suml2 = suml2 + w[:, i] * lf[:, i] * lf[:, i]
        return l, sumlx, suml2

    iscale = F32(-nmax) / vmax
    l, sumlx, suml2 = fit(iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(is_)) / vmax
        l_try, sumlx, suml2 = fit(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l = np.where(better[:, None], l_try, l)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    L = np.where(zero[:, None], 0, l + nmax)
    return np.where(zero, F32(0), scale), L


def _make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on every row of x (m, n) at once.

    Starts like make_qx_quants (l = clamp(nearest_int(-nmax/max * x)), weights x**2), then makes
    up to 5 greedy passes over the elements: for element i, with its own term taken out of the
    sums (slx, sl2), if slx > 0 the best int for it alone is nearest_int(x_i*sl2/slx); it is
    taken when it differs and (slx'**2)*suml2 > (sumlx**2)*sl2' (the fit improves, strictly).
    C stops after a pass that changes nothing; a further pass would change nothing either (the
    state is the same), so running all 5 passes gives the same result. Scale: sumlx/suml2.
    A row with max|x| < GROUP_MAX_EPS is all zero: scale 0, L 0.

    Returns (scale (m,) float32, L (m, n) int64 in 0..2*nmax-1, the int plus nmax).
    """
    m, n = x.shape
    amax, vmax = _max_abs(x)
    zero = amax < GROUP_MAX_EPS
    iscale = F32(-nmax) / vmax
    L = _clamp(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    w = x * x
    sumlx = np.zeros(m, F32)
    suml2 = np.zeros(m, F32)
    for i in range(n):
        li = _f(L[:, i])
        sumlx = sumlx + w[:, i] * x[:, i] * li
        suml2 = suml2 + w[:, i] * li * li
    for _ in range(5):
        for i in range(n):
            xi, wi, li = x[:, i], w[:, i], _f(L[:, i])
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new_l = _clamp(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
            nl = _f(new_l)
            slx_new = slx + wi * xi * nl
            sl2_new = sl2 + wi * nl * nl
            take = ((slx > 0) & (new_l != L[:, i]) & (sl2_new > 0)
                    & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            L[:, i] = np.where(take, new_l, L[:, i])
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero[:, None], 0, L + nmax)


def _make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                      nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)
    on every row of x (m, n) at once.

    An asymmetric fit x ~ scale * l + min, l in 0..nmax, min <= 0. It starts from the row's
    range (min clamped to <= 0; a row with max == min gives L 0, scale 0) with
    l = nearest_int(nmax/(max - min) * (x - min)), and scores it by the weighted error (sum of
    w*|diff| for use_mad, w*diff**2 otherwise). Then for is = 0..nstep it quantizes with
    iscale = (rmin + rdelta*is + nmax)/(max - min), solves the weighted least squares for
    (scale, min) in closed form (when the determinant D > 0; a positive min is replaced by 0 and
    the scale refitted), and keeps the try if its error is strictly smaller. `min` in these
    formulas is the best min so far: C updates the variable it quantizes with.

    Returns (scale (m,), the_min = -min (m,), L (m, n) int64 in 0..nmax).
    """
    m, n = x.shape
    w = weights
    vmin = x[:, 0].copy()
    vmax = x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        vmin = np.where(x[:, i] < vmin, x[:, i], vmin)
        vmax = np.where(x[:, i] > vmax, x[:, i], vmax)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    vmin = np.where(vmin > 0, F32(0), vmin)
    flat = vmax == vmin                                   # C returns here: L 0, scale 0, -min
    flat_min = -vmin

    def error(scale, mn, lf):
        """Sum over the row, in order, of w * |diff| or w * diff**2, diff = scale*l + min - x."""
        total = np.zeros(m, F32)
        for i in range(n):
            diff = scale * lf[:, i] + mn - x[:, i]
            diff = np.abs(diff) if use_mad else diff * diff
            total = total + w[:, i] * diff
        return total

    iscale = F32(nmax) / (vmax - vmin)
    scale = F32(1) / iscale
    L = _clamp(nearest_int(iscale[:, None] * (x - vmin[:, None])), 0, nmax)
    best_error = error(scale, vmin, _f(L))
    for is_ in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(is_) + F32(nmax)) / (vmax - vmin)
        laux = _clamp(nearest_int(iscale[:, None] * (x - vmin[:, None])), 0, nmax)
        lf = _f(laux)
        sum_l = np.zeros(m, F32)
        sum_l2 = np.zeros(m, F32)
        sum_xl = np.zeros(m, F32)
        for i in range(n):
            sum_l = sum_l + w[:, i] * lf[:, i]
            sum_l2 = sum_l2 + w[:, i] * lf[:, i] * lf[:, i]
            sum_xl = sum_xl + w[:, i] * lf[:, i] * x[:, i]
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0
        this_min = np.where(positive, F32(0), this_min)
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        cur_error = error(this_scale, this_min, lf)
        better = (D > 0) & (cur_error < best_error)
        best_error = np.where(better, cur_error, best_error)
        L = np.where(better[:, None], laux, L)
        scale = np.where(better, this_scale, scale)
        vmin = np.where(better, this_min, vmin)
    return (np.where(flat, F32(0), scale), np.where(flat, flat_min, -vmin),
            np.where(flat[:, None], 0, L))


def _quantize_against(x: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int,
                      L: np.ndarray) -> np.ndarray:
    """The final pass of every K-quant: per sub-block (rows of x), with its decoded scale d
    (and min dm), L = clamp(nearest_int((x + dm)/d), lo, hi) - lo (or x/d without a min).
    Sub-blocks whose d is 0 keep the L the search gave them (C's `if (!d) continue;`); a NaN d
    (inf * 0) is not 0, and quantizes (to nearest_int(NaN) = 0)."""
    num = x if dm is None else x + dm[:, None]
    l = _clamp(nearest_int(num / d[:, None]), lo, hi) - lo
    return np.where((d == 0)[:, None], L, l)


def _sub_blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(nb, 256) -> (nb * 256/size, size): one row per sub-block, block by block."""
    return np.ascontiguousarray(x, F32).reshape(-1, size)


# ---------------------------------------------------------------------------- the quantizers

def q2_k(x):
    """quantize_row_q2_K_ref: float32 (nb, 256) -> block_q2_K bytes (nb, 84).

    16 sub-blocks of 16, each fitted by make_qkx2_quants(nmax=3, weights |x|, rmin=-0.5,
    rdelta=0.1, nstep=15, use_mad) to scale * l - min. The scales and mins are quantized to 4
    bits: nearest_int(15/max_scale * scale) (and the same for the mins, against max_min), with
    d = fp16(max_scale/15) and dmin = fp16(max_min/15) (0 when the max is not > 0). Then each
    weight is quantized again against the decoded scale and min:
    l = clamp(nearest_int((x + dmin*m)/(d*sc)), 0, 3).
    """
    nb = x.shape[0]
    xs = _sub_blocks(x, 16)                                                # (nb*16, 16)
    with np.errstate(all="ignore"):
        scales, mins, L = _make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        has_scale, has_min = max_scale > 0, max_min > 0
        ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
        lm = nearest_int((F32(15) / max_min)[:, None] * mins)
        packed = np.where(has_scale[:, None], wrap_u8(ls), 0)
        packed = np.where(has_min[:, None], wrap_u8(packed | (lm << 4)), packed)       # (nb, 16)
        d = np.where(has_scale, max_scale / F32(15), F32(0))
        dmin = np.where(has_min, max_min / F32(15), F32(0))
        dl = (fp16_round(d)[:, None] * _f(packed & 0xF)).reshape(-1)                   # (nb*16,)
        ml = (fp16_round(dmin)[:, None] * _f(packed >> 4)).reshape(-1)
        L = _quantize_against(xs, dl, ml, 0, 3, L).reshape(nb, 256)
    return np.concatenate([packed.astype(np.uint8), _pack_planes(L, 2, 32),
                           fp16_bytes(d), fp16_bytes(dmin)], axis=1)


def q3_k(x):
    """quantize_row_q3_K_ref: float32 (nb, 256) -> block_q3_K bytes (nb, 110).

    16 sub-blocks of 16, each fitted by make_q3_quants(nmax=4, do_rmse) to a signed scale and
    ints -4..3. The scale of largest |scale| (sign included, first wins) sets
    iscale = -32/max_scale; each scale is stored as the 6-bit clamp(int8(nearest_int(iscale *
    scale)), -32, 31) + 32 and d = fp16(1/iscale) (all zero when max_scale is 0). Then each
    weight is quantized again: l = clamp(nearest_int(x/(d*(sc - 32))), -4, 3) + 4, its bit 2 in
    hmask and its low 2 bits in qs. (C re-reads sc from the packed bytes; packing 6-bit values
    loses nothing, so the value before packing is the same.)
    """
    nb = x.shape[0]
    xs = _sub_blocks(x, 16)
    with np.errstate(all="ignore"):
        scales, L = _make_q3_quants(xs, 4)
        scales = scales.reshape(nb, 16)
        amax, max_scale = _max_abs(scales)
        has = max_scale != 0
        iscale = F32(-32) / max_scale
        ls = _clamp(wrap_i8(nearest_int(iscale[:, None] * scales)), -32, 31) + 32
        ls = np.where(has[:, None], ls, 0)                                 # (nb, 16) 0..63
        d = np.where(has, F32(1) / iscale, F32(0))
        dl = (fp16_round(d)[:, None] * _f(ls - 32)).reshape(-1)
        L = _quantize_against(xs, dl, None, -4, 3, L).reshape(nb, 256)
    scale_bytes = np.concatenate([(ls[:, 0:8] & 0xF) | ((ls[:, 8:16] & 0xF) << 4),
                                  _pack_planes(ls >> 4, 2, 4)], axis=1)
    return np.concatenate([_pack_planes(L >> 2, 1, 32), _pack_planes(L & 3, 2, 32),
                           scale_bytes.astype(np.uint8), fp16_bytes(d)], axis=1)


def _pack_scale_min_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(n, 8) 6-bit scales and mins -> Q4_K/Q5_K's 12 bytes (the inverse of kquants._scale_min_k4)."""
    a = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    b = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    c = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return np.concatenate([a, b, c], axis=1).astype(np.uint8)


def _q45_k(x, nmax: int, rmin: float, nstep: int):
    """The part quantize_row_q4_K_ref and quantize_row_q5_K_ref share.

    8 sub-blocks of 32, each fitted by make_qkx2_quants(nmax, weights av_x + |x| with
    av_x = sqrtf(sum(x**2)/32), rmin, rdelta=0.1, nstep, no mad). Scales and mins are quantized
    to 6 bits: MIN(63, uint8(nearest_int(63/max_scale * scale))) (and the mins against max_min;
    the inverse is 0 when the max is not > 0), d = fp16(max_scale/63), dmin = fp16(max_min/63).
    Then l = clamp(nearest_int((x + dmin*m)/(d*sc)), 0, nmax).

    Returns (d, dmin, 12 scale bytes, L (nb, 256)).
    """
    nb = x.shape[0]
    xs = _sub_blocks(x, 32)
    with np.errstate(all="ignore"):
        sum_x2 = np.zeros(xs.shape[0], F32)
        for i in range(32):
            sum_x2 = sum_x2 + xs[:, i] * xs[:, i]
        av_x = np.sqrt(sum_x2 / F32(32))
        weights = av_x[:, None] + np.abs(xs)
        scales, mins, L = _make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep, False)
        scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(63, wrap_u8(nearest_int(inv_scale[:, None] * scales)))
        lm = np.minimum(63, wrap_u8(nearest_int(inv_min[:, None] * mins)))
        d, dmin = max_scale / F32(63), max_min / F32(63)
        dl = (fp16_round(d)[:, None] * _f(ls)).reshape(-1)
        ml = (fp16_round(dmin)[:, None] * _f(lm)).reshape(-1)
        L = _quantize_against(xs, dl, ml, 0, nmax, L).reshape(nb, 256)
    return d, dmin, _pack_scale_min_k4(ls, lm), L


def q4_k(x):
    """quantize_row_q4_K_ref: float32 (nb, 256) -> block_q4_K bytes (nb, 144).

    8 sub-blocks of 32, make_qkx2_quants(nmax=15, rmin=-1, rdelta=0.1, nstep=20): see _q45_k.
    """
    d, dmin, scale_bytes, L = _q45_k(x, 15, -1.0, 20)
    return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), scale_bytes, _pack_planes(L, 4, 32)], axis=1)


def q5_k(x):
    """quantize_row_q5_K_ref: float32 (nb, 256) -> block_q5_K bytes (nb, 176).

    8 sub-blocks of 32, make_qkx2_quants(nmax=31, rmin=-0.5, rdelta=0.1, nstep=15): see _q45_k.
    The 5th bit of each int goes to qh, the low 4 bits to qs.
    """
    d, dmin, scale_bytes, L = _q45_k(x, 31, -0.5, 15)
    return np.concatenate([fp16_bytes(d), fp16_bytes(dmin), scale_bytes,
                           _pack_planes(L >> 4, 1, 32), _pack_planes(L & 0xF, 4, 32)], axis=1)


def q6_k(x):
    """quantize_row_q6_K_ref: float32 (nb, 256) -> block_q6_K bytes (nb, 210).

    16 sub-blocks of 16, each fitted by make_qx_quants(nmax=32, rmse_type=1) to a signed scale
    and ints -32..31. If the largest |scale| is below GROUP_MAX_EPS the block is all zero bytes.
    Otherwise, with max_scale the scale of largest |scale| (sign included, first wins),
    iscale = -128/max_scale, each scale is stored as int8(MIN(127, nearest_int(iscale*scale))),
    d = fp16(1/iscale), and each weight is quantized again:
    l = clamp(nearest_int(x/(d*sc)), -32, 31) + 32, low 4 bits in ql, high 2 bits in qh.
    """
    nb = x.shape[0]
    xs = _sub_blocks(x, 16)
    with np.errstate(all="ignore"):
        scales, L = _make_qx_quants(xs, 32)
        scales = scales.reshape(nb, 16)
        max_abs_scale, max_scale = _max_abs(scales)
        iscale = F32(-128) / max_scale
        sc = wrap_i8(np.minimum(127, nearest_int(iscale[:, None] * scales)))     # (nb, 16)
        d = F32(1) / iscale
        dl = (fp16_round(d)[:, None] * _f(sc)).reshape(-1)
        L = _quantize_against(xs, dl, None, -32, 31, L).reshape(nb, 256)
    out = np.concatenate([_pack_planes(L & 0xF, 4, 64), _pack_planes(L >> 4, 2, 32),
                          wrap_u8(sc).astype(np.uint8), fp16_bytes(d)], axis=1)
    out[max_abs_scale < GROUP_MAX_EPS] = 0
    return out
