"""The "legacy" family of refllm.ggml_cpu.matmul (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights):
llama.cpp's x86 matmul bit for bit.

The NumPy reference (refllm/ggml_cpu/reference/legacy.py) and its Numba twin
(refllm/ggml_cpu/cpu/legacy.py: a row-by-row kernel for few tokens, and for batches a
kernel vectorized over the tokens) give the same bits on random matrices, and both give
exactly llama.cpp's products stored in golden/matmul/<T>.npz: one batch of 32 tokens
(tinyBLAS, or vec_dot for Q4_1/Q5_1, which tinyBLAS does not take) and token by token
(vec_dot). Q4_0's golden products ran through repack.cpp (llama.cpp repacks its matrices),
so they are test_ggml_repack's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_ggml_repack import random_case
from test_matmul_golden import load_matmul_golden, rebuild_model

import refllm
from refllm.ggml_cpu.cpu import legacy as cpu
from refllm.ggml_cpu.reference import legacy as reference
from refllm.ggml_cpu.vec_dot import converted_activations

BACKENDS = {"numpy": reference, "numba": cpu}
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
GOLDEN_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q8_0")


@pytest.mark.parametrize("weight_type", LEGACY_TYPES)
def test_numba_gives_the_reference_bits(weight_type, monkeypatch, cpu_path):
    """The Numba kernels against the reference: row by row (n < FEW_TOKENS, here 4) and for
    batches, by the AVX2 tiles (rows padded to whole 4s, tokens to whole 2s; 70 rows: two
    decoded chunks of AVX2_ROWS; 300 tokens: three passes of AVX2_TOKENS) or by the portable
    kernel (here over chunks of 4 rows, the last one short, and tiles of 8 tokens, the last
    ones padding)."""
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1)
    monkeypatch.setattr(cpu, "FEW_TOKENS", 4)
    monkeypatch.setattr(cpu, "TILE_BYTES", 1)
    for seed, (rows, k) in enumerate(((8, 32), (13, 96), (40, 256), (70, 64))):
        for n in (1, 2, 3, 4, 5, 9, 17) + ((300,) if rows == 70 else ()):
            raw, act = random_case(weight_type, rows, k, n, seed)
            expected = reference.mul_mat(raw, weight_type, (rows, k), act)
            got = cpu.mul_mat(raw, weight_type, (rows, k), act)
            assert expected.shape == (n, rows)
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), (rows, k, n)


@pytest.mark.parametrize("few_tokens", (1, 1000))
@pytest.mark.parametrize("weight_type", LEGACY_TYPES)
def test_every_token_is_its_own_dot_product(weight_type, few_tokens, monkeypatch, cpu_path):
    """vec_dot and tinyBLAS do the same float operations per output: a batch gives each
    token's one-token result (in either Numba kernel)."""
    monkeypatch.setattr(cpu, "FEW_TOKENS", few_tokens)
    raw, act = random_case(weight_type, 16, 128, 6, 11)
    batch = cpu.mul_mat(raw, weight_type, (16, 128), act)
    for t in range(6):
        one = type(act)(*(None if f is None else f[t:t + 1] for f in act))
        assert np.array_equal(cpu.mul_mat(raw, weight_type, (16, 128), one), batch[t:t + 1])


def test_one_activation_layout_serves_every_matrix(cpu_path):
    """The AVX2 path lays out a QuantizedRows once for the tiles and reuses it for the next
    matrix that multiplies the same rows (q, k, v): each product still has the reference's
    bits, whatever the type, and fresh rows get a fresh layout."""
    raw_q8, act = random_case("Q8_0", 12, 96, 20, 21)
    raw_q5, _ = random_case("Q5_0", 12, 96, 20, 22)
    raw_q4, _ = random_case("Q4_0", 12, 96, 20, 23)
    for raw, weight_type in ((raw_q8, "Q8_0"), (raw_q5, "Q5_0"), (raw_q4, "Q4_0"), (raw_q8, "Q8_0")):
        expected = reference.mul_mat(raw, weight_type, (12, 96), act)
        assert np.array_equal(cpu.mul_mat(raw, weight_type, (12, 96), act).view(np.uint32), expected.view(np.uint32))
    _, other = random_case("Q8_0", 12, 96, 20, 24)
    expected = reference.mul_mat(raw_q8, "Q8_0", (12, 96), other)
    assert np.array_equal(cpu.mul_mat(raw_q8, "Q8_0", (12, 96), other), expected)
    assert not np.array_equal(expected, reference.mul_mat(raw_q8, "Q8_0", (12, 96), act))


@pytest.fixture(scope="module")
def golden_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy-golden")
    return {kind: refllm.open(rebuild_model(kind, root)) for kind in GOLDEN_TYPES}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", GOLDEN_TYPES)
def test_bit_exact_against_llama_cpp(golden_models, kind, backend):
    """Every stored product of golden/matmul/<kind>.npz (and the Q8_0 output matrix), batched
    and token by token, on llama.cpp's own input, equals llama.cpp's output."""
    module = BACKENDS[backend]
    golden = load_matmul_golden(kind)
    model = golden_models[kind]
    checked = 0
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            if key.startswith("kq"):
                continue
            raw = np.asarray(model.tensor_bytes(key))
            src1, dst = arrays["src1"], arrays["dst"]
            shape = (dst.shape[1], src1.shape[1])
            weight_type = kind if key != "output.weight" else "Q8_0"
            def convert(x, weight_type=weight_type):
                return converted_activations(x, weight_type)[1]
            if mode == "nb1":
                y = np.concatenate([module.mul_mat(raw, weight_type, shape, convert(src1[t:t + 1]))
                                    for t in range(len(src1))])
            else:
                y = module.mul_mat(raw, weight_type, shape, convert(src1))
            assert np.array_equal(y.view(np.uint32), dst.view(np.uint32)), (mode, key, int((y != dst).sum()))
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("weight_type", ["Q4_1", "Q5_1"])
def test_the_fallback_identity_adds_the_q8_1_block_sum_rounding(weight_type):
    """What numerics.matmul_ggml falls back on for a matrix it cannot reproduce (a big-endian
    file): dequantized(x) @ dequantized(W).T plus q8_1_sum_correction @ block_minimums.T. For
    Q4_1/Q5_1 that equals llama.cpp's kernel up to float32 summation order; without the
    correction (the fp16 rounding of each activation block's sum s) it is visibly off."""
    from refllm.ggml_cpu.vec_dot import block_minimums, q8_1_sum_correction
    from refllm.kernels import dequantize
    rows, k, n = 24, 256, 5
    raw, act = random_case(weight_type, rows, k, n, seed=21)
    exact = cpu.mul_mat(raw, weight_type, (rows, k), act).astype(np.float64)
    w = dequantize(raw, weight_type, (rows, k)).astype(np.float64)
    x_q = (act.q.reshape(n, -1, 32) * act.d[..., None].astype(np.float64)).reshape(n, k)
    plain = x_q @ w.T
    corrected = plain + q8_1_sum_correction(act).astype(np.float64) @ block_minimums(raw, weight_type, rows).T
    scale = np.maximum(np.abs(x_q) @ np.abs(w).T, 1e-30)          # the all-zero row: all terms 0
    assert np.max(np.abs(corrected - exact) / scale) < 1e-6
    assert np.max(np.abs(plain - exact) / scale) > 1e-5
