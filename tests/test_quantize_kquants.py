"""Quantizing to Q2_K..Q6_K: refllm writes the bytes of ggml's quantize_row_q*_K_ref.

The oracle is libggml itself (llama-cpp-python 0.3.36's libggml-base.so): its bytes for a fixed
input are stored in golden/quant_kernels by make_golden.py there, for every type refllm writes.
Here the NumPy and Numba quantizers must give exactly those bytes, for every stored row; the
K-quants are in this file's care, and the legacy and plain types (whose quantizers are also
checked against gguf-py in test_quantize_legacy.py) are checked against libggml here too.

Beyond the golden input: NumPy equals Numba on hypothesis arrays (any finite values), and the
round trip dequantize(quantize(x)) lands every value on the nearest point of its sub-block's
grid, within a per-type bound of the block's largest |x| (see test_round_trip).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refllm
from refllm.kernels.cpu import kquants_quant as cpu_kq
from refllm.kernels.quantize import quantizable_types
from refllm.kernels.reference import kquants_quant as ref_kq
from refllm.kernels.reference.fields import f16, nibbles
from refllm.kernels.reference.kquants import _planes, _scale_min_k4
from refllm.type_traits import ggml_type

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "quant_kernels"
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
OTHERS = [t for t in quantizable_types() if t not in KQUANTS]          # F16, BF16, Q4_0 .. Q8_0
F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- libggml's bytes from golden/quant_kernels ------------------------------------------------

def _golden(name: str) -> tuple[dict, dict]:
    inputs = np.load(GOLDEN / "inputs.npz")
    expected = np.load(GOLDEN / f"{name}.npz")
    return ({k: inputs[k] for k in inputs.files}, {k: expected[k] for k in expected.files})


def assert_same_blocks(actual, expected, name, what, labels=None):
    """Byte equality, reporting the first differing block (and its row's label) if any."""
    row = ggml_type(name)
    assert actual.dtype == np.uint8 and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    a = actual.reshape(-1, row.block_bytes)
    e = expected.reshape(-1, row.block_bytes)
    bad = np.flatnonzero((a != e).any(axis=1))
    if bad.size:
        i = int(bad[0])
        row_i = i // (a.shape[0] // actual.shape[0])
        label = f" ({labels[row_i]})" if labels is not None else ""
        at = np.flatnonzero(a[i] != e[i])
        raise AssertionError(f"{name} {what}: {bad.size} of {len(a)} blocks differ; first: block {i}, "
                             f"row {row_i}{label}, bytes {at.tolist()[:12]}:\n"
                             f"  refllm  {a[i].tobytes().hex()}\n  libggml {e[i].tobytes().hex()}")


def test_golden_files_are_the_recorded_ones():
    provenance = json.loads((GOLDEN / "provenance.json").read_text())
    assert set(provenance["types"]) == set(quantizable_types())
    for file, digest in provenance["sha256"].items():
        assert hashlib.sha256((GOLDEN / file).read_bytes()).hexdigest() == digest, file


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", KQUANTS + OTHERS)
def test_golden_bytes_from_libggml(name, backend):
    inputs, expected = _golden(name)
    for part, labels in (("edge", inputs["edge_names"]), ("normal", None)):
        actual = refllm.quantize(inputs[part], name, backend=backend)
        assert_same_blocks(actual, expected[part], name, f"{backend}, golden {part} rows", labels)


# ---- C's helpers ------------------------------------------------------------------------------

def test_nearest_int_is_cs_bit_trick():
    # |x| < 2**22: round half to even
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 7.5, 4194302.5, -4194302.5, -0.0],
                 F32)
    assert ref_kq.nearest_int(x).tolist() == [0, 2, 2, 0, -2, -2, 0, 8, 4194302, -4194302, 0]
    # beyond C's asserted range, the low 23 bits of x + 12582912.f (worked by hand):
    # 2**22 + 12582912 = 2**24: mantissa 0 -> -2**22. 2**23 + 12582912 = 2**24 + 2**22: the
    # mantissa counts steps of 2 above 2**24, 2**21 -> 2**21 - 2**22. 2**24 + 4 -> 2**24 +
    # 12582916, mantissa 6291458 -> 2097154. inf: mantissa 0. NaN (0x7FC00000): 0x400000 -> 0.
    big = np.array([2.0 ** 22, 2.0 ** 23, 2.0 ** 24 + 4.0, np.inf, -np.inf, np.nan], F32)
    assert ref_kq.nearest_int(big).tolist() == [-2 ** 22, -2 ** 21, 2097154, -2 ** 22, -2 ** 22, 0]
    rng = np.random.default_rng(1)
    wide = (rng.standard_normal(4000) * 10.0 ** rng.uniform(-3, 12, 4000)).astype(F32)
    wide = np.concatenate([wide, x, big])
    numba_values = np.array([cpu_kq.nearest_int(v) for v in wide])
    assert (numba_values == ref_kq.nearest_int(wide)).all()
    small = np.abs(wide) < 2 ** 22
    assert (ref_kq.nearest_int(wide[small]) == np.rint(wide[small])).all()


def test_fp16_bits_round_to_nearest_even():
    # every float32 in the ranges where fp16 rounding is delicate: its subnormals, the normal
    # threshold 2**-14, and the overflow boundary 65504 .. 65520; plus random values
    starts = [0x33000000, 0x38800000 - 4096, 0x477FE000, 0x3F800000]
    bits = np.concatenate([np.arange(s, s + 8192, dtype=np.uint32) for s in starts]
                          + [np.random.default_rng(2).integers(0, 0x7F800000, 20000, dtype=np.uint32)])
    for sign in (0, 0x80000000):
        f = (bits | np.uint32(sign)).view(F32)
        with np.errstate(over="ignore"):
            expected = f.astype(np.float16).view(np.uint16)
        got = np.array([cpu_kq.fp16_bits(v) for v in f])
        bad = np.flatnonzero(got != expected)
        assert not bad.size, [(hex(int(bits[i])), hex(int(got[i])), hex(int(expected[i]))) for i in bad[:5]]


# ---- hypothesis data: rows of 256-value super-blocks ------------------------------------------

KINDS = ("zeros", "single", "normal", "wild", "heavy", "sparse", "constant", "negative", "ties",
         "minmax_ties", "huge", "tiny", "f16_edge", "bits")
SHAPED = ("single", "normal", "wild", "heavy", "sparse", "constant", "negative", "ties", "minmax_ties")


@st.composite
def super_block(draw, kinds=KINDS):
    """256 float64 values of one kind (made float32 by the caller)."""
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    sign = draw(st.sampled_from([1.0, -1.0]))
    scale = 2.0 ** draw(st.integers(-30, 20))
    x = np.zeros(256)
    if kind == "single":
        x[rng.integers(256)] = sign * scale
    elif kind == "normal":
        x = rng.standard_normal(256) * scale + draw(st.sampled_from([0.0, 0.0, 1.0, -2.0])) * scale
    elif kind == "wild":                                  # each sub-block of 16 its own scale
        x = rng.standard_normal(256) * np.repeat(10.0 ** rng.uniform(-6, 0, 16), 16) * scale
    elif kind == "heavy":
        x = rng.standard_t(draw(st.sampled_from([1, 2, 3])), 256) * scale
    elif kind == "sparse":
        x = rng.standard_normal(256) * (rng.random(256) < 0.1) * scale
    elif kind == "constant":
        x = np.full(256, sign * scale)
        if draw(st.booleans()):                           # constant per sub-block of 16 or 32
            x *= np.repeat(rng.uniform(-1, 1, 8), 32) if draw(st.booleans()) else np.repeat(rng.uniform(-1, 1, 16), 16)
    elif kind == "negative":                              # the min dominates
        x = (-np.abs(rng.standard_normal(256)) * 2 - 1 + 0.1 * (rng.random(256) < 0.05)) * scale
    elif kind == "ties":                                  # x*iscale on k or k + 0.5
        top = draw(st.sampled_from([3, 4, 8, 15, 31, 32, 63, 127]))
        x = rng.integers(-2 * top, 2 * top + 1, 256) / 2 * scale
        x[rng.integers(256)] = top * scale * sign
    elif kind == "minmax_ties":                           # (x - min)*iscale on k + 0.5
        levels = draw(st.sampled_from([3, 15, 31]))
        low = draw(st.sampled_from([0.0, -levels / 2, -levels]))
        x = (rng.integers(0, 2 * levels + 1, 256) / 2 + low) * scale
    elif kind == "huge":                                  # sums and products overflow
        top = draw(st.sampled_from([1e30, 1e36, 3e38, FLT_MAX]))
        x = (rng.random(256) * 2 - 1) * top
    elif kind == "tiny":                                  # subnormal; d underflows fp16
        x = rng.standard_normal(256) * 2.0 ** draw(st.integers(-152, -100))
    elif kind == "f16_edge":                              # d near fp16's 65504 and its overflow
        top = 65504.0 * draw(st.sampled_from([15.0, 31.0 * 63 / 2, 63 * 7.5, 128 * 32, 4 * 32, 1e3]))
        x = rng.standard_normal(256) * top * draw(st.sampled_from([0.25, 0.5, 1.0, 1.01]))
    elif kind == "bits":                                  # any finite float32
        bits = rng.integers(0, 2 ** 32, 256, dtype=np.uint64).astype(np.uint32)
        with np.errstate(invalid="ignore"):
            x = bits.view(F32).astype(np.float64)
        x[~np.isfinite(x)] = 0.0
    if kind != "zeros" and draw(st.integers(0, 3)) == 0:  # some sub-blocks all zero
        x.reshape(-1, 16)[rng.random(16) < 0.3] = 0.0
    return np.clip(x, -FLT_MAX, FLT_MAX)


@st.composite
def rows(draw):
    """float32 [rows, 256*k] of super-blocks of any kinds, signed zeros sometimes."""
    n_rows, n_blocks = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    x = np.stack([draw(super_block()) for _ in range(n_rows * n_blocks)]).astype(F32)
    if draw(st.booleans()):
        zeros = x == 0
        x[zeros] = np.where(np.random.default_rng(draw(st.integers(0, 99))).random(int(zeros.sum())) < 0.5,
                            F32(0.0), F32(-0.0))
    return x.reshape(n_rows, -1)


@pytest.mark.parametrize("name", KQUANTS)
@SETTINGS
@given(x=rows())
def test_numpy_equals_numba(name, x):
    assert_same_blocks(refllm.quantize(x, name, backend="numba"),
                       refllm.quantize(x, name, backend="numpy"), name, "numba vs numpy")


# ---- round trip -------------------------------------------------------------------------------

# Each sub-block decodes as y = dl * q - ml (ml = 0 for the symmetric Q3_K and Q6_K), q in a
# range. The quantizer's last step is q = clamp(nearest_int((x + ml)/dl)): the nearest point of
# that grid to x. The grid itself comes from the search: its first candidate spans the
# sub-block with nmax steps, so a nominal step is 2A/nmax for the types with a min (values in
# [-A, A]) and A/nmax for the symmetric ones (the largest |x| lands on -nmax), A being the
# super-block's largest |x|. Half a step is the rounding error; the search may then trade the
# sub-block's extremes for a better weighted fit of the rest, and the 4/6/8-bit scales and the
# fp16 super-block scales move the grid a little: the bound allows 3/4 of a step for those.
# (Measured over 300k blocks of varied data: at most 1.01 steps.)
NOMINAL_STEP = {"Q2_K": 2 / 3, "Q3_K": 1 / 4, "Q4_K": 2 / 15, "Q5_K": 2 / 31, "Q6_K": 1 / 32}
BOUND_IN_STEPS = 1.25


def sub_block_grids(raw: np.ndarray, name: str):
    """(dl, ml, qs) of every sub-block, read with the decoders' layouts: y = dl*q - ml, q in qs.

    dl, ml: float32 (n_blocks, n_sub), as the decoder computes them; qs: the ints q may take.
    """
    b = raw.reshape(-1, ggml_type(name).block_bytes)
    if name == "Q2_K":
        sc = b[:, 0:16]
        return f16(b, 80) * (sc & 0xF).astype(F32), f16(b, 82) * (sc >> 4).astype(F32), np.arange(4)
    if name == "Q3_K":
        sc = nibbles(b[:, 96:104]) | (_planes(b[:, 104:108], 2, 4) << 4)
        dl = f16(b, 108) * (sc.astype(np.int8) - 32).astype(F32)
        return dl, np.zeros_like(dl), np.arange(-4, 4)
    if name in ("Q4_K", "Q5_K"):
        sc, m = _scale_min_k4(b[:, 4:16])
        qs = np.arange(16 if name == "Q4_K" else 32)
        return f16(b, 0) * sc.astype(F32), f16(b, 2) * m.astype(F32), qs
    dl = f16(b, 208) * b[:, 192:208].view(np.int8).astype(F32)
    return dl, np.zeros_like(dl), np.arange(-32, 32)


@st.composite
def scaled_rows(draw):
    """float32 [rows, 256] whose every super-block has max |x| = 2**k exactly, k in 0..12, so
    that the fp16 super-block scales are normal numbers (neither overflow nor underflow)."""
    n = draw(st.integers(1, 3))
    out = []
    for _ in range(n):
        x = draw(super_block(SHAPED))
        top = int(np.argmax(np.abs(x)))
        if x[top] == 0:
            x[top] = 1.0
        k = draw(st.integers(0, 12))
        x = x / abs(x[top]) * 2.0 ** k
        x[top] = np.sign(x[top]) * 2.0 ** k
        out.append(x)
    return np.stack(out).astype(F32)


@pytest.mark.parametrize("name", KQUANTS)
@SETTINGS
@given(x=scaled_rows())
def test_round_trip(name, x):
    raw = refllm.quantize(x, name, backend="numba")
    y = refllm.dequantize(raw, name, shape=x.shape, backend="numpy").astype(np.float64)
    dl, ml, qs = sub_block_grids(raw, name)
    n_sub = dl.shape[1]
    # every value's grid, computed as the decoder does: float32 (dl*q) - ml
    grid = (dl[:, :, None] * qs.astype(F32) - ml[:, :, None]).astype(np.float64)   # (nb, n_sub, nq)
    xs = x.reshape(x.shape[0], n_sub, -1).astype(np.float64)                          # (nb, n_sub, sub)
    ys = y.reshape(xs.shape)
    on_grid = np.abs(ys[..., None] - grid[:, :, None, :]).min(axis=-1)
    assert (on_grid == 0).all(), f"{name}: a decoded value is off its sub-block's grid"
    nearest = np.abs(xs[..., None] - grid[:, :, None, :]).min(axis=-1)
    # float32 rounding of (x + ml)/dl may pick the neighbour of a near-midpoint value
    slack = 2.0 ** -20 * (np.abs(xs) + np.abs(ml)[..., None] + np.abs(dl)[..., None] * np.abs(qs).max())
    far = np.abs(ys - xs) > nearest + slack
    assert not far.any(), (f"{name}: value not on the nearest grid point: x={xs[far][:3]}, "
                           f"y={ys[far][:3]}, nearest distance {nearest[far][:3]}")
    amax = np.abs(x).max(axis=1)                                                       # 2**k
    err = np.abs(y - x).max(axis=1)
    bound = BOUND_IN_STEPS * NOMINAL_STEP[name] * amax
    assert (err <= bound).all(), f"{name}: max error {err} > bound {bound} (max |x| {amax})"


def test_round_trip_bound_can_fail():
    # the bound is not vacuous: bytes decoding to zeros, or to another block's values, break it
    x = np.random.default_rng(3).standard_normal((2, 256)).astype(F32)
    for name in KQUANTS:
        bound = BOUND_IN_STEPS * NOMINAL_STEP[name] * np.abs(x).max(axis=1)
        y_other = refllm.dequantize(refllm.quantize(x[::-1].copy(), name), name, shape=x.shape)
        assert (np.abs(y_other - x).max(axis=1) > bound).any(), name
        assert (np.abs(x).max(axis=1) > bound).all(), name             # zeros would fail


# ---- the convention quantize() relies on ------------------------------------------------------

@pytest.mark.parametrize("name", KQUANTS)
def test_quantizers_follow_the_convention(name):
    x = np.random.default_rng(4).standard_normal((3, 256)).astype(F32)
    ref = importlib.import_module("refllm.kernels.reference.kquants_quant")
    out = getattr(ref, name.lower())(x)
    assert out.dtype == np.uint8 and out.shape == (3, ggml_type(name).block_bytes)
    filled = np.full((3, ggml_type(name).block_bytes), 0xA5, np.uint8)
    getattr(cpu_kq, name.lower())(x, filled)
    assert (filled == out).all()
