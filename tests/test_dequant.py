"""Dequantization: every backend equals the NumPy reference, and the reference equals gguf-py
(gguf==0.19.0), bit for bit. "Bit for bit" means the float32 bit patterns are equal (so -0.0
is not 0.0) and NaNs sit in the same places (NaN payloads are not compared: x86 and numpy
make different ones for inf * 0)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refllm import kernels
from refllm.formats.ggml_types import GGML_TYPES, ggml_type
from refllm.kernels.dequant import DequantError, FAMILY, dequantize, supported_types

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

TYPES = supported_types()

# Types gguf-py 0.19.0 has no decoder for: checked against our own reference only.
NO_GGUF_PY = {"Q8_1", "Q8_K", "Q1_0", "Q2_0"}
# Types gguf-py's reader returns as typed arrays; "dequantizing" them is NumPy's astype.
ASTYPE = {"F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}

# Byte offsets of the float scales in each block: hypothesis writes chosen values there
# (zero, subnormals, inf, NaN) instead of leaving them to random bytes. Formats whose scale is
# not a plain float (IQ1_M, MXFP4, NVFP4) get only random bytes, which cover every value.
SCALE_FIELDS: dict[str, list[tuple[int, str]]] = {
    "F16": [(0, "f16")], "F32": [(0, "f32")],
    "Q4_0": [(0, "f16")], "Q4_1": [(0, "f16"), (2, "f16")], "Q5_0": [(0, "f16")],
    "Q5_1": [(0, "f16"), (2, "f16")], "Q8_0": [(0, "f16")], "Q8_1": [(0, "f16"), (2, "f16")],
    "Q1_0": [(0, "f16")], "Q2_0": [(0, "f16")],
    "Q2_K": [(80, "f16"), (82, "f16")], "Q3_K": [(108, "f16")], "Q4_K": [(0, "f16"), (2, "f16")],
    "Q5_K": [(0, "f16"), (2, "f16")], "Q6_K": [(208, "f16")], "Q8_K": [(0, "f32")],
    "IQ2_XXS": [(0, "f16")], "IQ2_XS": [(0, "f16")], "IQ2_S": [(0, "f16")],
    "IQ3_XXS": [(0, "f16")], "IQ3_S": [(0, "f16")], "IQ1_S": [(0, "f16")],
    "IQ4_NL": [(0, "f16")], "IQ4_XS": [(0, "f16")],
    "TQ1_0": [(52, "f16")], "TQ2_0": [(64, "f16")],
}


def assert_bit_exact(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == np.float32 and expected.dtype == np.float32, what
    assert actual.shape == expected.shape, what
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if not np.array_equal(nan_a, nan_e):
        at = np.flatnonzero(nan_a.reshape(-1) != nan_e.reshape(-1))[0]
        raise AssertionError(f"{what}: NaN differs at flat index {at}")
    bits_a = actual[~nan_a].view(np.uint32)
    bits_e = expected[~nan_e].view(np.uint32)
    bad = np.flatnonzero(bits_a != bits_e)
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{what}: {bad.size} values differ; first: {actual[~nan_a][i]!r} "
                             f"(0x{bits_a[i]:08x}) != {expected[~nan_e][i]!r} (0x{bits_e[i]:08x})")


def oracle(name: str, raw: np.ndarray) -> np.ndarray:
    """What gguf-py (or, for its typed-array types, NumPy) decodes these bytes to, as 1-D."""
    if name in ASTYPE:
        return raw.view(ASTYPE[name]).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[name]
    row = ggml_type(name)
    with np.errstate(all="ignore"):
        values = gguf_dequantize(raw.reshape(-1, row.block_bytes), qtype)
    return np.asarray(values, dtype=np.float32).reshape(-1)


# Finite halves (zero, subnormal, normal, both signs) and, separately, inf and NaN.
finite_f16 = st.floats(width=16, allow_nan=False, allow_infinity=False, allow_subnormal=True)
any_f16 = st.one_of(finite_f16, st.sampled_from([np.inf, -np.inf, np.nan]))
any_f32 = st.one_of(st.floats(width=32, allow_subnormal=True), st.sampled_from([np.inf, np.nan]))


@st.composite
def blocks_of(draw, name: str, allow_nonfinite: bool = True):
    """1..6 random blocks of a type, with its float scale fields drawn from chosen values."""
    row = ggml_type(name)
    n = draw(st.integers(1, 6))
    raw = bytearray(draw(st.binary(min_size=n * row.block_bytes, max_size=n * row.block_bytes)))
    for block in range(n):
        for at, kind in SCALE_FIELDS.get(name, []):
            if kind == "f16":
                value = draw(any_f16 if allow_nonfinite else finite_f16)
                field = np.float16(value).tobytes()
            else:
                field = np.float32(draw(any_f32)).tobytes()
            start = block * row.block_bytes + at
            raw[start:start + len(field)] = field
    return np.frombuffer(bytes(raw), dtype=np.uint8)


def _per_type(test):
    return pytest.mark.parametrize("name", TYPES)(test)


@_per_type
def test_every_type_has_a_decoder_on_every_backend(name):
    from refllm.kernels import cuda
    from refllm.kernels.dequant import decoder
    assert callable(decoder("numpy", name)) and callable(decoder("numba", name))
    assert f"DEQUANT_KERNEL({name.lower()}," in cuda.source()


def test_supported_types_are_every_type_that_is_not_removed():
    assert set(TYPES) == {t.name for t in GGML_TYPES.values() if not t.removed} == set(FAMILY)


@_per_type
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reference_equals_gguf_py(name, data):
    if name in NO_GGUF_PY:
        pytest.skip(f"gguf-py 0.19.0 has no decoder for {name}")
    raw = data.draw(blocks_of(name))
    assert_bit_exact(dequantize(raw, name), oracle(name, raw), name)


@_per_type
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numba_equals_reference(name, data):
    raw = data.draw(blocks_of(name))
    assert_bit_exact(dequantize(raw, name, backend="numba"), dequantize(raw, name), name)


@pytest.fixture(scope="module")
def emulator():
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the CUDA source cannot be emulated on the CPU")
    from cuda_emulator import Emulator
    return Emulator(TYPES)


@_per_type
def test_cuda_source_emulated_on_cpu_equals_reference(name, emulator):
    row = ggml_type(name)
    rng = np.random.default_rng(sum(name.encode()))
    raw = rng.integers(0, 256, size=row.block_bytes * 97, dtype=np.uint8)
    got = emulator.dequantize(name, raw.reshape(-1, row.block_bytes), row.block_elems)
    assert_bit_exact(got.reshape(-1), dequantize(raw, name), name)
