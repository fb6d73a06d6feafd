"""Quantizing to F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: refllm writes ggml's bytes.

The oracle is gguf-py 0.19.0, whose quantizers for these types match libggml's
`quantize_row_*_ref` (and F16 is NumPy's correctly rounded astype(float16)), with one
exception found while writing these: signed zeros. ggml's Q4_0/Q5_0 loop starts from
max = +0.0, so an all-zero block stores d = -0.0 (0x8000) whatever the zeros' signs, and its
Q4_1/Q5_1 loop keeps the first of equal minimums, -0.0 or +0.0; gguf-py takes the first
element's sign in the first case and lets np.min pick in the second. So the comparison with
gguf-py feeds both sides +0.0 for -0.0, and test_signed_zeros_follow_ggml pins ggml's rule.

libggml's own bytes, from golden/quant_kernels (made with llama-cpp-python's libggml by its
script), are compared in test_quantize_kquants.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refllm
from refllm import QuantizeError
from refllm.kernels.cpu import plain_quant as cpu_plain
from refllm.kernels.reference import plain_quant as ref_plain
from refllm.type_traits import ggml_type

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize as gguf_quantize  # noqa: E402

TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
BLOCK_TYPES = [t for t in TYPES if t.startswith("Q")]
F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- data: rows of 32-value blocks, each block of one kind ----------------------------------

KINDS = ("zeros", "single", "normal", "huge", "f16_scale_edge", "tiny", "ties", "minmax_ties",
         "signed_max", "bits")


@st.composite
def block(draw, kinds=KINDS, limit=FLT_MAX):
    """One block of 32 finite float32 values of a chosen kind, all |x| <= limit."""
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    at = rng.permutation(32)                                       # distinct random positions
    sign = draw(st.sampled_from([1.0, -1.0]))
    x = np.zeros(32)
    if kind == "single":                                           # one nonzero value
        x[at[0]] = draw(st.floats(width=32, allow_nan=False, allow_infinity=False,
                                  min_value=-limit, max_value=limit))
    elif kind == "normal":
        x = rng.standard_normal(32) * 2.0 ** draw(st.integers(-30, 12))
    elif kind == "huge":                                           # the float32 range's top
        top = draw(st.sampled_from([3e38, FLT_MAX, 1e38]))
        x = (rng.random(32) * 2 - 1) * top
        x[at[0]], x[at[1]] = top * sign, -top * draw(st.sampled_from([1.0, 0.5]))
    elif kind == "f16_scale_edge":                                 # d near fp16's 65504 / overflow
        half = draw(st.sampled_from([65504.0, 65519.99, 65520.0, 65536.0, 60000.0]))
        top = half * draw(st.sampled_from([1.0, 8.0, 16.0, 127.0, 7.5, 15.5]))
        x = (rng.random(32) * 2 - 1) * top
        x[at[0]], x[at[1]] = top * sign, -top * draw(st.sampled_from([1.0, 0.25]))
    elif kind == "tiny":                                           # subnormal and near-subnormal
        x = rng.standard_normal(32) * 2.0 ** draw(st.integers(-152, -110))
    elif kind == "ties":                                           # x*id lands on k + 0.5 or k
        top = draw(st.sampled_from([8, 16, 127]))
        unit = 2.0 ** draw(st.integers(-24, 20))
        x = rng.integers(-2 * top, 2 * top + 1, 32) / 2 * unit
        x[at[0]] = top * unit * sign
    elif kind == "minmax_ties":                                    # (x - min)*id lands on k + 0.5
        levels = draw(st.sampled_from([15, 31]))
        unit = 2.0 ** draw(st.integers(-20, 12))
        low = draw(st.sampled_from([0.0, -levels / 2, -levels]))
        x = (rng.integers(0, 2 * levels + 1, 32) / 2 + low) * unit
        x[at[0]], x[at[1]] = low * unit, (low + levels) * unit
    elif kind == "signed_max":                                     # +m and -m: the first wins
        top = 2.0 ** draw(st.integers(-20, 20))
        x = (rng.random(32) * 2 - 1) * top * 0.99
        x[at[0]] = top * sign
        if draw(st.booleans()):
            x[at[1]] = -top * sign
    elif kind == "bits":                                           # any finite bit pattern,
        bits = rng.integers(0, 2 ** 32, 32, dtype=np.uint64).astype(np.uint32)
        tie = draw(st.sampled_from([0, 0x1000, 0x8000]))           # maybe a fp16/bf16 tie
        if tie:
            bits = (bits & ~np.uint32(2 * tie - 1)) | np.uint32(tie)
        with np.errstate(invalid="ignore"):                        # NaN patterns, zeroed below
            x = bits.view(np.float32).astype(np.float64)
        x[~np.isfinite(x)] = 0.0
    with np.errstate(over="ignore"):
        x = np.clip(x, -limit, limit).astype(np.float32)
    if draw(st.booleans()):                                        # signed zeros, sometimes
        x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, F32(0.0), F32(-0.0))
    return x


@st.composite
def rows(draw, limit=FLT_MAX, kinds=KINDS):
    """float32 [rows, 32*k]: a block-structured array, or any finite float32 elements."""
    n_rows = draw(st.integers(1, 3))
    n_blocks = draw(st.integers(1, 4))
    if draw(st.integers(0, 4)) == 0:
        return draw(hnp.arrays(np.float32, (n_rows, 32 * n_blocks),
                               elements=st.floats(width=32, allow_nan=False, allow_infinity=False,
                                                  min_value=-limit, max_value=limit)))
    blocks = [draw(block(kinds, limit)) for _ in range(n_rows * n_blocks)]
    return np.stack(blocks).reshape(n_rows, 32 * n_blocks)


def gguf_bytes(x, name):
    """What gguf-py writes for x: uint8 [rows, row_bytes]."""
    with np.errstate(all="ignore"):
        raw = gguf_quantize(x, gguf.GGMLQuantizationType[name])
    return np.ascontiguousarray(raw).view(np.uint8).reshape(x.shape[0], -1)


def assert_same_bytes(actual, expected, name, what):
    assert actual.dtype == np.uint8 and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    row = ggml_type(name)
    a = actual.reshape(-1, row.block_bytes)
    e = expected.reshape(-1, row.block_bytes)
    bad = np.flatnonzero((a != e).any(axis=1))
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{name} {what}: {bad.size} of {len(a)} blocks differ; first, block {i}: "
                             f"{a[i].tobytes().hex()} != {e[i].tobytes().hex()}")


# ---- against gguf-py, and NumPy against Numba ----------------------------------------------

@pytest.mark.parametrize("name", TYPES)
@SETTINGS
@given(x=rows())
def test_numpy_and_numba_match_gguf_py(name, x):
    if name in BLOCK_TYPES:
        x = x + F32(0.0)                         # -0.0 -> +0.0: gguf-py's signed zeros differ
    expected = gguf_bytes(x, name)
    for backend in ("numpy", "numba"):
        assert_same_bytes(refllm.quantize(x, name, backend=backend), expected, name, backend)


@pytest.mark.parametrize("name", TYPES)
@SETTINGS
@given(x=rows())
def test_numpy_equals_numba(name, x):
    assert_same_bytes(refllm.quantize(x, name, backend="numba"),
                      refllm.quantize(x, name, backend="numpy"), name, "numba vs numpy")


def _blocks_of(*values):
    """One 32-value block: the given leading values, then +0.0."""
    x = np.zeros((1, 32), np.float32)
    x[0, :len(values)] = values
    return x


# (name, block, the bytes ggml writes), derived from the C loops (see the module docstring).
SIGNED_ZEROS = [
    # Q4_0/Q5_0: max starts at +0.0, d = +0.0 / -8 = -0.0; id = 0, so every q = (int8)8.5 = 8.
    ("Q4_0", -np.zeros((1, 32), np.float32), "0080" + "88" * 16),
    ("Q4_0", _blocks_of(-0.0), "0080" + "88" * 16),
    ("Q5_0", -np.zeros((1, 32), np.float32), "0080" + "ffffffff" + "00" * 16),
    # Q4_1/Q5_1: min is the first of the equal minimums; d = max - min = 0 -> q = 0.
    ("Q4_1", _blocks_of(-0.0, 0.0), "0000" + "0080" + "00" * 16),
    ("Q4_1", _blocks_of(0.0, -0.0), "0000" + "0000" + "00" * 16),
    ("Q5_1", _blocks_of(-0.0), "0000" + "0080" + "00" * 20),
    # Q8_0 takes |x|: d = +0.0 for any zeros.
    ("Q8_0", -np.zeros((1, 32), np.float32), "0000" + "00" * 32),
]


@pytest.mark.parametrize("name, x, hex_bytes", SIGNED_ZEROS)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_signed_zeros_follow_ggml(name, x, hex_bytes, backend):
    assert refllm.quantize(x, name, backend=backend).tobytes().hex() == hex_bytes


def test_q4_1_minimum_is_the_first_of_equal_zeros():
    # one nonzero value, so d is not 0 and the min's sign is all that differs between the two
    for first, m_hex in ((-0.0, "0080"), (0.0, "0000")):
        x = _blocks_of(first, -first, 3.0)
        for backend in ("numpy", "numba"):
            raw = refllm.quantize(x, "Q4_1", backend=backend)
            assert raw[0, 2:4].tobytes().hex() == m_hex, (first, backend)


def test_q8_0_rounds_halves_away_from_zero():
    # max 127 -> d = 1, id = 1: x*id is x itself; roundf(2.5) = 3 and roundf(-2.5) = -3,
    # where round-half-even would give 2 and -2.
    x = _blocks_of(127.0, 2.5, -2.5, 0.5, -0.5, 0.49999997)
    for backend in ("numpy", "numba"):
        qs = refllm.quantize(x, "Q8_0", backend=backend)[0, 2:8].view(np.int8)
        assert qs.tolist() == [127, 3, -3, 1, -1, 0], backend


def test_q5_fifth_bits_are_a_little_endian_uint32():
    # Q5_0 with max = -16: d = 1, id = 1, q = trunc(x + 16.5): x = 15 -> q = 31 (5th bit set).
    # Put q >= 16 at weights 0, 9 and 31 only: qh = bit 0 | bit 9 | bit 31.
    x = np.full((1, 32), -1.0, np.float32)                     # q = 15: no 5th bit
    x[0, 5] = -16.0                                            # the max, q = 0
    x[0, [0, 9, 31]] = [0.0, 15.0, 3.0]                        # q = 16, 31, 19
    for backend in ("numpy", "numba"):
        raw = refllm.quantize(x, "Q5_0", backend=backend)
        assert raw[0, :2].view("<f2")[0] == 1.0
        assert raw[0, 2:6].tobytes() == (1 | 1 << 9 | 1 << 31).to_bytes(4, "little"), backend
        assert raw[0, 6 + 9] & 0x0F == 31 & 0x0F and raw[0, 6 + 15] >> 4 == 19 & 0x0F, backend


def test_tiny_scale_with_infinite_inverse():
    # max = -1e-40: d = 1.25e-41 is subnormal, 1/d overflows to inf, x*id is ±inf or NaN and
    # ggml's (int8_t) of those (cvttss2si: INT32_MIN) keeps the low byte, 0. d stores as fp16 0.
    x = _blocks_of(-1e-40, 5e-41, -3e-41)
    for backend in ("numpy", "numba"):
        assert refllm.quantize(x, "Q4_0", backend=backend).tobytes().hex() == "0000" + "00" * 16


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_f16_bf16_of_nan_and_inf_are_ggmls(backend):
    # The functions themselves (quantize refuses NaN): ggml makes any NaN sign | 0x7E00 in fp16,
    # and in bf16 keeps its top 16 bits with the quiet bit (0x40) set.
    bits = np.array([0x7F800001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x477FF000, 0x7F7FFFFF],
                    np.uint32)
    x = bits.view(np.float32).reshape(-1, 1)
    want_f16 = [0x7E00, 0xFE00, 0x7C00, 0xFC00, 0x7C00, 0x7C00]
    want_bf16 = [0x7FC0, 0xFFC1, 0x7F80, 0xFF80, 0x4780, 0x7F80]
    for fn_name, want in (("f16", want_f16), ("bf16", want_bf16)):
        if backend == "numpy":
            raw = getattr(ref_plain, fn_name)(x)
        else:
            raw = np.empty((len(x), 2), np.uint8)
            getattr(cpu_plain, fn_name)(x, raw)
        assert raw.view("<u2").reshape(-1).tolist() == want, fn_name


def test_f16_numba_matches_numpy_on_a_sweep_of_bit_patterns():
    # every exponent, with mantissas at and around fp16's rounding points (the Numba conversion
    # is integer code written from the IEEE rules; NumPy's astype is the independent answer)
    exps = np.arange(0, 255, dtype=np.uint32) << 23
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFFFF, 0x7FF000,
                    0x7FEFFF, 0x400000, 0x401000, 0x3FF000], np.uint32)
    bits = (exps[:, None] | low[None, :]).reshape(-1)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    x = bits.view(np.float32).reshape(-1, 1)
    got = np.empty((len(x), 2), np.uint8)
    cpu_plain.f16(x, got)
    with np.errstate(over="ignore"):
        want = x.astype("<f2").view(np.uint8).reshape(-1, 2)
    assert np.array_equal(got, want)


# ---- round trip -----------------------------------------------------------------------------

def _fp16_error(v):
    """The most fp16 rounding can move v (|v| <= 65504): half a unit in its last place."""
    return np.maximum(np.abs(v) * 2.0 ** -11, 2.0 ** -25)


def _round_trip_bound(name, x):
    """|dequantize(quantize(x)) - x| per element, from the formulas (all in float64).

    Symmetric types (Q4_0 levels -8..7, Q5_0 -16..15, Q8_0 -127..127): d = amax / L, and the
    level nearest x/d is at most d/2 away, except at the clamped end of Q4_0/Q5_0, where the
    value -max maps to L - 1 instead of L: d away. fp16 rounds d by at most e(d), times |q| <= L.
    Min types (Q4_1 levels 0..15, Q5_1 0..31): d = (max - min) / L, d/2, plus L*e(d) + e(min).
    Plus a little for float32's own roundings (x*id, q*d + m): 2^-20 of the block's magnitude.
    """
    rows = x.astype(np.float64).reshape(-1, 32 if name.startswith("Q") else 1)
    amax = np.abs(rows).max(axis=1, keepdims=True)
    slack = amax * 2.0 ** -20
    if name == "F16":
        return (_fp16_error(rows) + slack).reshape(x.shape)
    if name == "BF16":
        return (np.maximum(np.abs(rows) * 2.0 ** -8, 2.0 ** -134) + slack).reshape(x.shape)
    if name in ("Q4_0", "Q5_0", "Q8_0"):
        levels = {"Q4_0": 8, "Q5_0": 16, "Q8_0": 127}[name]
        d = amax / levels
        half = d / 2
        if name != "Q8_0":                       # -max/d = +L: clamped to L - 1
            signed_max = np.take_along_axis(rows, np.abs(rows).argmax(axis=1)[:, None], axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                scaled = np.where(d > 0, rows / np.where(d > 0, signed_max / -levels, 1), 0)   # x*id
            clamped = scaled > levels - 0.5 - 1e-5
            half = np.where(clamped, d, half)
        return np.broadcast_to(half + levels * _fp16_error(d) + slack, rows.shape).reshape(x.shape)
    levels = {"Q4_1": 15, "Q5_1": 31}[name]
    lo, hi = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    d = (hi - lo) / levels
    bound = d / 2 + levels * _fp16_error(d) + _fp16_error(lo) + slack
    return np.broadcast_to(bound, rows.shape).reshape(x.shape)


@pytest.mark.parametrize("name", TYPES)
@SETTINGS
@given(x=rows(limit=60000.0, kinds=tuple(k for k in KINDS if k not in ("huge", "f16_scale_edge"))))
def test_round_trip_within_the_derived_bound(name, x):
    raw = refllm.quantize(x, name, backend="numba")
    y = refllm.dequantize(raw, name, x.shape)
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    bound = _round_trip_bound(name, x)
    worst = np.unravel_index(np.argmax(err - bound), x.shape)
    assert (err <= bound).all(), (name, worst, x[worst], y[worst], bound[worst])


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_errors(backend):
    good = np.zeros((2, 64), np.float32)
    with pytest.raises(QuantizeError, match="Q9_9"):
        refllm.quantize(good, "Q9_9", backend=backend)
    with pytest.raises(QuantizeError, match="cannot write IQ2_XXS"):
        refllm.quantize(good, "IQ2_XXS", backend=backend)
    with pytest.raises(QuantizeError, match="not a whole number of Q4_0 blocks of 32"):
        refllm.quantize(np.zeros((2, 48), np.float32), "Q4_0", backend=backend)
    with pytest.raises(QuantizeError, match="float32 values, not float64"):
        refllm.quantize(good.astype(np.float64), "Q8_0", backend=backend)
    for bad in (np.nan, np.inf, -np.inf):
        x = good.copy()
        x[1, 7] = bad
        with pytest.raises(QuantizeError, match="row 1 holds NaN or infinite"):
            refllm.quantize(x, "Q5_1", backend=backend)
    # and the good input goes through, to the row layout of a GGUF tensor
    assert refllm.quantize(good, "q5_1", backend=backend).shape == (2, 48)
    assert refllm.quantize(good[0], "F16", backend=backend).shape == (1, 128)
