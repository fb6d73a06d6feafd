"""The repack family (refllm/ggml_cpu/{reference,cpu}/repack.py): Q4_0, IQ4_NL, MXFP4 and Q4_K
as llama.cpp's AVX2 build multiplies them (q4_0_8x8 / iq4_nl_8x8 / mxfp4_8x8 / q4_K_8x8 gemv and
gemm).

(1) The Numba twin gives the reference's bits on random matrices, for batch sizes that exercise
    gemm only, gemv only and both (n % 4 rows go to gemv).
(2) Both give llama.cpp's own products bit for bit: golden/matmul/Q4_0.npz and Q4_K.npz, in one
    batch of 32 tokens (gemm) and token by token (gemv); golden/matmul_kernels/<T>.npz's repack
    cases (IQ4_NL, MXFP4, Q4_K; llama.cpp's CPU_REPACK buffer) for batch sizes 1 to 33.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_ggml_lut4 import random_case as random_lut4_case
from test_matmul_golden import load_matmul_golden, rebuild_model
from test_matmul_kernels_golden import assert_llama_cpp_bits

import refllm
from refllm.ggml_cpu import matmul as ggml_matmul
from refllm.ggml_cpu.cpu import repack as cpu
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.ggml_cpu.reference import repack as reference
from refllm.ggml_cpu.vec_dot import activation_rows

BACKENDS = {"numpy": reference, "numba": cpu}
CONVERT = {"Q4_0": activations.q8_0, "Q4_K": activations.q8_k}
BATCH_SIZES = (1, 2, 3, 4, 5, 8, 33)


def random_case(weight_type: str, rows: int, k: int, n: int, seed: int):
    """(raw weight bytes, activations): random rows quantized by refllm.quantize, and
    heavy-tailed activations (a zero row among them) converted as llama.cpp converts them."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    raw = refllm.quantize(w, weight_type).reshape(-1)
    x = (rng.standard_t(3, (n, k)) * rng.uniform(0.1, 10.0, (n, 1))).astype(np.float32)
    if n > 2:
        x[1] = 0
    return raw, activation_rows(x, weight_type, backend="numpy")


@pytest.mark.parametrize("weight_type, k", [("Q4_0", 96), ("Q4_0", 256), ("Q4_K", 256), ("Q4_K", 768)])
@pytest.mark.parametrize("n", BATCH_SIZES)
def test_numba_equals_numpy_bit_for_bit(weight_type, k, n, cpu_path):
    rows = 72 if n == 33 else 24                  # 72: two decoded chunks of AVX2_ROWS
    raw, act = random_case(weight_type, rows, k, n, seed=n * 1000 + k)
    expected = reference.mul_mat(raw, weight_type, (rows, k), act)
    got = cpu.mul_mat(raw, weight_type, (rows, k), act)
    assert expected.shape == got.shape == (n, rows) and expected.dtype == got.dtype == np.float32
    assert np.array_equal(expected.view(np.uint32), got.view(np.uint32))


@pytest.mark.parametrize("weight_type", ["IQ4_NL", "MXFP4"])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_lut_types_numba_equals_numpy_bit_for_bit(weight_type, n):
    rows, k = 24, 288
    raw, act = random_lut4_case(weight_type, rows, k, n, seed=n + 50)
    expected = reference.mul_mat(raw, weight_type, (rows, k), act)
    got = cpu.mul_mat(raw, weight_type, (rows, k), act)
    assert expected.shape == got.shape == (n, rows) and np.all(np.isfinite(expected))
    assert np.array_equal(expected.view(np.uint32), got.view(np.uint32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_type", ["IQ4_NL", "MXFP4", "Q4_K"])
def test_repacked_products_of_llama_cpp_kernels_bit_for_bit(weight_type, backend):
    """golden/matmul_kernels' repack cases: random blocks in llama.cpp's CPU_REPACK buffer,
    batch sizes 1 to 33 (gemv only, gemm only, both)."""
    case = "repack-40x768" if weight_type == "Q4_K" else "repack-40x288"
    assert assert_llama_cpp_bits(weight_type, backend, cases=(case,)) == 11


@pytest.mark.parametrize("backend", BACKENDS)
def test_q4_k_gemm_and_gemv_rows(backend, cpu_path):
    """Rows past the last multiple of 4 are gemv's: each gives what it gives alone (n = 1), and
    the first multiple of 4 rows what they give as a batch of their own."""
    module = BACKENDS[backend]
    rows, k, n = 16, 512, 7
    raw, act = random_case("Q4_K", rows, k, n, seed=7)
    y = module.mul_mat(raw, "Q4_K", (rows, k), act)

    def take(sel):
        return activations.QuantizedRows(act.q[sel], act.d[sel], bsums=act.bsums[sel])

    assert np.array_equal(y[:4], module.mul_mat(raw, "Q4_K", (rows, k), take(slice(0, 4))))
    for t in range(4, n):
        assert np.array_equal(y[t:t + 1], module.mul_mat(raw, "Q4_K", (rows, k), take(slice(t, t + 1))))
    # ... and the two kernels do differ in their last bits (one fma per super-block vs four)
    fields = reference.q4_k_fields(raw, rows)
    gemv = reference.q4_k_8x8_q8_k(*fields, act.q[:4], act.d[:4], act.bsums[:4], sub_blocks_per_fma=8)
    assert not np.array_equal(gemv, y[:4])
    assert np.abs(gemv - y[:4]).max() <= 1e-5 * np.abs(y[:4]).max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_q4_k_products_do_not_see_the_sign_of_q8_k_blocks(backend):
    """ggml_quantize_mat_q8_K_4x8 (AVX2) negates a block's q, bsums and d where
    quantize_row_q8_K_ref would not (a block holding -amax before +amax): the products are the
    same bits, so refllm's quantize_row_q8_K activations stand for both."""
    module = BACKENDS[backend]
    rows, k, n = 16, 512, 6
    raw, _ = random_case("Q4_K", rows, k, n, seed=11)
    x = np.random.default_rng(12).standard_normal((n, k)).astype(np.float32)
    x[:, 3], x[:, 200] = -4.0, 4.0                       # first super-block: -amax first
    act = activations.q8_k(x)
    assert np.all(act.d[:, 0] > 0)
    flip = np.ones(k // 256, np.int8)
    flip[0] = -1
    q = (act.q.reshape(n, -1, 256) * flip[:, None]).reshape(n, k)
    bsums = (act.bsums.reshape(n, -1, 16) * flip[:, None]).reshape(n, -1)
    negated = activations.QuantizedRows(q, act.d * flip, bsums=bsums)
    y = module.mul_mat(raw, "Q4_K", (rows, k), act)
    assert np.array_equal(y.view(np.uint32), module.mul_mat(raw, "Q4_K", (rows, k), negated).view(np.uint32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_type", ["Q4_0", "Q4_K"])
def test_shapes_llama_cpp_does_not_repack_are_refused(backend, weight_type):
    """Rows not whole 8s stay in llama.cpp's plain buffer: the repack kernels refuse them
    (refllm.ggml_cpu.matmul sends them to the type's own family:
    test_only_mul_mat_weights_with_rows_in_eights_are_repacked)."""
    raw, act = random_case(weight_type, 8, 256, 1, seed=1)
    with pytest.raises(ValueError, match="does not repack"):
        BACKENDS[backend].mul_mat(raw[:raw.size * 7 // 8], weight_type, (7, 256), act)


@pytest.fixture(scope="module")
def golden_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("repack-golden")
    return {kind: refllm.open(rebuild_model(kind, root)) for kind in CONVERT}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(CONVERT))
def test_bit_exact_against_llama_cpp(golden_models, kind, backend):
    """Every stored product of golden/matmul/<kind>.npz: nb512 (32 tokens in one batch: gemm)
    and nb1 (token by token: gemv), on llama.cpp's own input, equals llama.cpp's output."""
    module = BACKENDS[backend]
    golden = load_matmul_golden(kind)
    model = golden_models[kind]
    checked = 0
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            raw = np.asarray(model.tensor_bytes(key))
            src1, dst = arrays["src1"], arrays["dst"]
            shape = (dst.shape[1], src1.shape[1])
            assert tuple(model.tensor(key).shape) == shape
            if mode == "nb1":
                y = np.concatenate([module.mul_mat(raw, kind, shape, CONVERT[kind](src1[t:t + 1]))
                                    for t in range(len(src1))])
            else:
                y = module.mul_mat(raw, kind, shape, CONVERT[kind](src1))
            assert np.array_equal(y.view(np.uint32), dst.view(np.uint32)), (mode, key, int((y != dst).sum()))
            checked += 1
    assert checked == 8


def test_only_mul_mat_weights_with_rows_in_eights_are_repacked():
    """llama.cpp repacks Q4_0/IQ4_NL/MXFP4/Q4_K matrices loaded for MUL_MAT whose rows are whole
    8s (the tied output too: llama.cpp loads a second copy of token_embd for it); others (odd
    row counts, or mul_mat_weight=False: a matrix kept in the plain CPU buffer) keep their layout
    and go to vec_dot/tinyBLAS (legacy, lut4) or vec_dot/tiled.cpp (kquants)."""
    assert ggml_matmul.family("Q4_0", (16, 64)) == "repack"
    assert ggml_matmul.family("Q4_0", (12, 64)) == "legacy"
    assert ggml_matmul.family("Q4_0", (16, 64), mul_mat_weight=False) == "legacy"
    assert ggml_matmul.family("Q4_K", (16, 256)) == "repack"
    assert ggml_matmul.family("Q4_K", (12, 256)) == "kquants"
    assert ggml_matmul.family("Q4_K", (16, 256), mul_mat_weight=False) == "kquants"
    for t in ("IQ4_NL", "MXFP4"):
        assert ggml_matmul.family(t, (16, 64)) == "repack"
        assert ggml_matmul.family(t, (12, 64)) == "lut4"
