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
from refllm.kernels.dequant import DequantError, dequantize, supported_types
from refllm.type_traits import GGML_TYPES, ggml_type

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
        with np.errstate(over="ignore"):          # float64 beyond float32's range -> inf
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
def blocks_of(draw, name: str):
    """1..6 random blocks of a type, with its float scale fields drawn from chosen values."""
    row = ggml_type(name)
    n = draw(st.integers(1, 6))
    raw = bytearray(draw(st.binary(min_size=n * row.block_bytes, max_size=n * row.block_bytes)))
    for block in range(n):
        for at, kind in SCALE_FIELDS.get(name, []):
            if kind == "f16":
                value = draw(any_f16)
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
    assert set(TYPES) == {t.name for t in GGML_TYPES.values() if not t.removed}
    assert len(TYPES) == 35


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


def test_cuda_source_compiles_with_nvcc(tmp_path):
    """Where the CUDA toolkit is installed, the source NVRTC will get compiles, has a kernel per
    type, and (compiled with the same --fmad=false) contains no fused multiply-add."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the CUDA source cannot be compiled here")
    import subprocess

    from refllm.kernels import cuda
    source = tmp_path / "dequant.cu"
    source.write_text(cuda.source())
    ptx = tmp_path / "dequant.ptx"
    done = subprocess.run([nvcc, "--ptx", "-arch=sm_80", *cuda.COMPILE_OPTIONS, "-o", str(ptx),
                           str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    text = ptx.read_text()
    for name in TYPES:
        assert f".entry {cuda.kernel_name(name)}(" in text, name
    assert "fma.rn.f32" not in text


# -- the GPU itself: skipped with the reason where CuPy or a CUDA device is missing -----------

def _gpu_or_skip():
    from refllm.kernels.cuda import gpu_status
    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no GPU: {why}")


@_per_type
def test_cuda_equals_reference_on_gpu(name):
    _gpu_or_skip()
    row = ggml_type(name)
    rng = np.random.default_rng(sum(name.encode()) + 1)
    raw = rng.integers(0, 256, size=row.block_bytes * 4099, dtype=np.uint8)
    got = dequantize(raw, name, backend="cuda").get()
    assert_bit_exact(got, dequantize(raw, name), name)


# -- the API: shapes, byte order, and bad input ------------------------------------------------

def test_shape_is_numpy_order_and_rows_decode_independently():
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, size=3 * 2 * 144, dtype=np.uint8)   # 3 rows of 2 Q4_K blocks
    whole = dequantize(raw, "Q4_K", shape=(3, 512))
    assert whole.shape == (3, 512)
    row1 = dequantize(raw[2 * 144:4 * 144], "Q4_K")
    assert_bit_exact(whole[1], row1, "row 1")


def test_type_may_be_a_name_in_any_case_or_an_id():
    raw = np.arange(34, dtype=np.uint8)
    assert_bit_exact(dequantize(raw, "q8_0"), dequantize(raw, 8), "Q8_0")


def test_accepts_bytes_memoryview_and_typed_arrays():
    values = np.array([1.5, -2.25, 3e-8], dtype=np.float16)
    expected = values.astype(np.float32)
    for raw in (values.tobytes(), memoryview(values.tobytes()), values, values.view(np.uint8)):
        assert_bit_exact(dequantize(raw, "F16"), expected, type(raw).__name__)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_big_endian_plain_types_are_byte_swapped(backend):
    values = np.array([1.0, -2.5, 65504.0], dtype=">f2")
    got = dequantize(values.view(np.uint8), "F16", backend=backend, byteorder=">")
    assert_bit_exact(got, values.astype(np.float32), "F16 big-endian")
    ints = np.array([1, -300, 2**40], dtype=">i8")
    got = dequantize(ints.view(np.uint8), "I64", backend=backend, byteorder=">")
    assert_bit_exact(got, ints.astype(np.float32), "I64 big-endian")


@_per_type
def test_empty_tensor_decodes_to_empty_array(name):
    block_elems = ggml_type(name).block_elems
    for backend in ("numpy", "numba"):
        got = dequantize(b"", name, shape=(0, block_elems), backend=backend)
        assert got.shape == (0, block_elems) and got.dtype == np.float32


@pytest.mark.parametrize("raw, gtype, shape, message", [
    (bytes(143), "Q4_K", None, "143 bytes is not a whole number of Q4_K blocks (144 bytes per block"),
    (bytes(144), "Q4_K", (2, 256), "shape (2, 256) does not match the data: 1 Q4_K blocks hold 256"),
    (bytes(288), "Q4_K", (4, 128), "the last dimension must be a multiple of the Q4_K block size 256"),
    (bytes(4), "F32", (-1, -1), "does not match"),
    (bytes(18), "Q9_9", None, "unknown ggml type name 'Q9_9'"),
    (bytes(18), 99, None, "unknown ggml type id 99; known ids are 0..42"),
    (bytes(18), 4, None, "ggml type Q4_2 (id 4) was removed from ggml"),
    (bytes(18), "Q4_0_4_4", None, "was removed from ggml"),
    ("not bytes", "Q4_0", None, "raw must be bytes or a uint8 array, not str"),
])
def test_bad_input_is_a_value_error_saying_what_was_expected(raw, gtype, shape, message):
    with pytest.raises(ValueError, match=None) as caught:
        dequantize(raw, gtype, shape)
    assert isinstance(caught.value, DequantError)
    assert message in str(caught.value)


def test_bad_backend_and_byteorder():
    with pytest.raises(DequantError, match="unknown backend 'gpu'; expected one of numpy, numba, cuda"):
        dequantize(bytes(4), "F32", backend="gpu")
    with pytest.raises(DequantError, match="byteorder must be"):
        dequantize(bytes(4), "F32", byteorder="big")


def test_cuda_backend_without_gpu_says_why():
    from refllm.kernels.cuda import CudaUnavailable, gpu_status
    if gpu_status()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(CudaUnavailable, match="CuPy|CUDA"):
        dequantize(bytes(18), "Q4_0", backend="cuda")


def test_public_api():
    import refllm
    assert refllm.dequantize is kernels.dequantize
    assert refllm.DequantError is DequantError


# -- every tensor of the real models -----------------------------------------------------------

def test_every_tensor_of_the_real_models_matches_gguf_py(real_model_path):
    import refllm
    model = refllm.open(real_model_path)
    seen = set()
    for info in model.tensors:
        raw = np.asarray(model.tensor_bytes(info.name))
        expected = oracle(info.type_name, raw) if info.type_name not in ("F32", "F16") else \
            np.asarray(gguf_dequantize(raw, gguf.GGMLQuantizationType[info.type_name]),
                       dtype=np.float32).reshape(-1)
        reference = dequantize(raw, info.ggml_type, info.shape)
        assert reference.shape == tuple(info.shape)
        assert_bit_exact(reference.reshape(-1), expected, f"{info.name} numpy")
        fast = dequantize(raw, info.ggml_type, info.shape, backend="numba")
        assert_bit_exact(fast, reference, f"{info.name} numba")
        seen.add(info.type_name)
    assert seen, "the model has tensors"


def test_real_model_tensors_through_the_emulated_cuda_source(real_model_path, emulator):
    """The first 64 blocks of every tensor (the emulator runs one thread at a time)."""
    import refllm
    model = refllm.open(real_model_path)
    for info in model.tensors:
        row = ggml_type(info.ggml_type)
        raw = np.asarray(model.tensor_bytes(info.name))[:64 * row.block_bytes]
        got = emulator.dequantize(info.type_name, raw.reshape(-1, row.block_bytes), row.block_elems)
        assert_bit_exact(got.reshape(-1), dequantize(raw, info.ggml_type), info.name)


# -- the CLI -----------------------------------------------------------------------------------

def _tiny_model(tmp_path):
    from refllm.formats.writer import GGUFWriter
    rng = np.random.default_rng(9)
    q4 = rng.integers(0, 256, size=2 * 3 * 18, dtype=np.uint8)       # (2, 96) as Q4_0
    writer = GGUFWriter()
    writer.add_kv("general.architecture", "llama")
    writer.add_tensor("blk.0.attn_q.weight", "Q4_0", (2, 96), q4)
    path = tmp_path / "tiny.gguf"
    writer.write(path)
    return path, q4


def test_cli_dequant_writes_exact_values_as_npy(tmp_path):
    from click.testing import CliRunner

    from refllm.cli import cli
    path, q4 = _tiny_model(tmp_path)
    out = tmp_path / "q.npy"
    for backend in ("numpy", "numba"):
        result = CliRunner().invoke(cli, ["dequant", str(path), "blk.0.attn_q.weight", "-o", str(out),
                                          "--backend", backend])
        assert result.exit_code == 0, result.output
        assert_bit_exact(np.load(out), dequantize(q4, "Q4_0", (2, 96)), backend)
        assert "Q4_0 (2, 96)" in result.output


def test_cli_dequant_unknown_tensor_is_one_line_exit_2(tmp_path, capsys):
    from refllm.cli import main
    path, _ = _tiny_model(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["dequant", str(path), "blk.0.attn_k.weight", "-o", str(tmp_path / "x.npy")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tensor 'blk.0.attn_k.weight'" in err
    assert "did you mean blk.0.attn_q.weight" in err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_out_is_filled_and_returned(backend):
    raw = np.random.default_rng(2).integers(0, 256, size=4 * 34, dtype=np.uint8)
    out = np.full(128, np.nan, dtype=np.float32)
    got = dequantize(raw, "Q8_0", (4, 32), backend, out=out)
    assert got.shape == (4, 32) and np.shares_memory(got, out)
    assert_bit_exact(out, dequantize(raw, "Q8_0"), "out")


@pytest.mark.parametrize("out, message", [
    (np.empty(64, np.float32), "out must be a C-contiguous float32 array of 128 elements, not float32 (64,)"),
    (np.empty(128, np.float64), "not float64 (128,)"),
    (np.empty((128, 2), np.float32)[:, 0], "C-contiguous"),
])
def test_bad_out_is_refused(out, message):
    with pytest.raises(DequantError, match=None) as caught:
        dequantize(bytes(4 * 34), "Q8_0", backend="numba", out=out)
    assert message in str(caught.value)


def test_cli_dequant_cuda_without_gpu_is_one_line_exit_2(tmp_path, capsys):
    from refllm.cli import main
    from refllm.kernels.cuda import gpu_status
    if gpu_status()[0]:
        pytest.skip("a GPU is present")
    path, _ = _tiny_model(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["dequant", str(path), "blk.0.attn_q.weight", "-o", str(tmp_path / "x.npy"),
              "--backend", "cuda"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the cuda backend needs CuPy" in err
