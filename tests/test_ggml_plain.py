"""The "float" family of refllm.ggml_cpu.matmul (F32, F16, BF16 weights): llama.cpp's x86
matmul bit for bit.

The NumPy reference (refllm/ggml_cpu/reference/plain.py) and its Numba twin
(refllm/ggml_cpu/cpu/plain.py) give the same bits on random matrices, in every path
(tinyBLAS, each type's vec_dot with and without leftovers past the last whole 32), and both
give exactly llama.cpp's products stored in golden/matmul/F32.npz, F16.npz and BF16.npz, one
batch of 32 tokens (tinyBLAS) and token by token (vec_dot). F16.npz also holds attention's
two products with the f16 KV cache, which refllm.ggml_cpu.x86.f16_matmul reproduces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_matmul_golden import load_matmul_golden, rebuild_model

import refllm
from refllm.ggml_cpu import matmul as ggml_matmul
from refllm.ggml_cpu.cpu import plain as cpu
from refllm.ggml_cpu.reference import plain as reference
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.ggml_cpu.vec_dot import converted_activations
from refllm.ggml_cpu.x86 import f16_matmul

FLOAT_TYPES = ("F32", "F16", "BF16")


def raw_matrix(w: np.ndarray, weight_type: str) -> np.ndarray:
    """float32 w [rows, k] stored as a little-endian `weight_type` matrix (uint8; F16 rounds to
    nearest, BF16 truncates: any bf16 values will do)."""
    if weight_type == "F32":
        return w.astype("<f4").view(np.uint8).reshape(-1)
    if weight_type == "F16":
        return w.astype("<f2").view(np.uint8).reshape(-1)
    return (w.astype(np.float32).view(np.uint32) >> 16).astype("<u2").view(np.uint8).reshape(-1)


def random_case(rng, weight_type: str, rows: int, k: int, n: int):
    """(raw weights, activations as converted_activations gives them) with values spread over
    six decades, so that summation order shows in the last bits."""
    w = (rng.standard_normal((rows, k)) * 10.0 ** rng.uniform(-3, 3, (rows, k))).astype(np.float32)
    x = (rng.standard_normal((n, k)) * 10.0 ** rng.uniform(-1, 1, (n, k))).astype(np.float32)
    act, _ = converted_activations(x, weight_type)
    return raw_matrix(w, weight_type), act


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float32 arrays are equal bit for bit (the sign of zero included)."""
    return (a.shape == b.shape and a.dtype == b.dtype == np.float32
            and np.array_equal(a.view(np.uint32), b.view(np.uint32)))


@pytest.mark.parametrize("weight_type", FLOAT_TYPES)
@pytest.mark.parametrize("k", [5, 8, 31, 32, 40, 67, 96, 260])
def test_numba_gives_the_reference_bits(weight_type, k):
    rng = np.random.default_rng([FLOAT_TYPES.index(weight_type), k])
    for rows in (1, 3, 4, 12, 37, 64):
        for n in (1, 2, 3, 8, 33):
            raw, act = random_case(rng, weight_type, rows, k, n)
            expected = reference.mul_mat(raw, weight_type, (rows, k), act)
            assert expected.shape == (n, rows)
            assert same_bits(cpu.mul_mat(raw, weight_type, (rows, k), act), expected), (rows, k, n)


@pytest.mark.parametrize("weight_type", FLOAT_TYPES)
def test_numba_gives_the_reference_bits_across_chunks(monkeypatch, weight_type):
    """With the smallest chunks (8 rows, or 1 for F16), a matrix spans several, the last one
    short."""
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(5)
    for rows, k in ((36, 40), (13, 64)):
        for n in (1, 2, 5, 9):
            raw, act = random_case(rng, weight_type, rows, k, n)
            assert same_bits(cpu.mul_mat(raw, weight_type, (rows, k), act),
                             reference.mul_mat(raw, weight_type, (rows, k), act)), (rows, k, n)


def test_tinyblas_takes_batches_with_whole_8s_and_row_tiles_of_4():
    assert reference.uses_tinyblas(rows=4, n=2, k=8)
    assert not reference.uses_tinyblas(rows=4, n=1, k=8)         # one token: vec_dot
    assert not reference.uses_tinyblas(rows=4, n=2, k=12)        # k % KN
    assert not reference.uses_tinyblas(rows=6, n=2, k=8)         # no AVX2 tile fits 6 rows


@pytest.mark.parametrize("weight_type", FLOAT_TYPES)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_outside_tinyblas_every_token_is_its_own_vec_dot(weight_type, backend):
    """Where tinyBLAS declines a batch, each output is the one-token product (vec_dot)."""
    module = reference if backend == "numpy" else cpu
    rng = np.random.default_rng(9)
    for rows, k in ((6, 64), (8, 44)):
        raw, act = random_case(rng, weight_type, rows, k, 5)
        batch = module.mul_mat(raw, weight_type, (rows, k), act)
        for t in range(5):
            assert same_bits(batch[t:t + 1], module.mul_mat(raw, weight_type, (rows, k), act[t:t + 1]))


def test_float_types_are_registered_exact():
    assert all(ggml_matmul.family(t, (8, 64)) == "plain" for t in FLOAT_TYPES)


def test_an_unknown_type_is_a_key_error():
    with pytest.raises(KeyError):
        reference.float_weights(np.zeros(8, np.uint8), "Q8_0", (1, 8))
    with pytest.raises(KeyError):
        cpu.mul_mat(np.zeros(8, np.uint8), "Q8_0", (1, 8), np.zeros((1, 8), np.float32))


# -- golden/matmul: llama.cpp's own products ------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The F32, F16 and BF16 models of golden/matmul, rebuilt once for this module."""
    root = tmp_path_factory.mktemp("ggml-float")
    return {kind: rebuild_model(kind, root) for kind in FLOAT_TYPES}


@pytest.mark.parametrize("kind", FLOAT_TYPES)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_weight_products_are_llama_cpps_bit_for_bit(models, kind, backend):
    """Every stored weight product of golden/matmul/<kind>.npz: nb512 multiplies the 32 tokens
    in one product (tinyBLAS), nb1 one token at a time (vec_dot)."""
    golden = load_matmul_golden(kind)
    model = refllm.open(models[kind])
    checked = 0
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            if not key.endswith(".weight"):
                continue
            t = model.tensor(key)
            assert t.type_name == kind
            raw = np.frombuffer(model.tensor_bytes(key), np.uint8)
            shape = tuple(int(v) for v in t.shape)
            src1 = arrays["src1"]
            if mode == "nb512":
                y = ggml_matmul.mul_mat(src1, raw, kind, shape, backend)
            else:
                y = np.concatenate([ggml_matmul.mul_mat(src1[i:i + 1], raw, kind, shape, backend)
                                    for i in range(len(src1))])
            assert np.array_equal(y, arrays["dst"]), (mode, key, int(np.sum(y != arrays["dst"])))
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("mode", ["nb512", "nb1"])
@pytest.mark.parametrize("key", ["kq-0", "kqv-0"])
def test_attention_products_with_the_f16_cache_are_llama_cpps_bit_for_bit(mode, key):
    """kq = K q and kqv = V^T p per head (head h reads KV head h // (n_head / n_head_kv)), q and
    p rounded to f16. nb512: one product of 32 tokens (tinyBLAS). nb1: token t alone (vec_dot),
    against the cache as step t read it: cells past t were still zeros (the stored cache is the
    last step's)."""
    arrays = load_matmul_golden("F16").runs[mode][key]
    src0, src1, dst = arrays["src0"].astype(np.float32), arrays["src1"], arrays["dst"]
    repeat = src1.shape[0] // src0.shape[0]
    y = np.empty_like(dst)
    for h in range(src1.shape[0]):
        cache, b = src0[h // repeat], activations.f16(src1[h])
        if mode == "nb512":
            y[h] = f16_matmul(cache, b, True)
            continue
        for t in range(len(b)):
            seen = cache.copy()
            if key == "kq-0":
                seen[t + 1:] = 0                 # K [cells, head_dim]
            else:
                seen[:, t + 1:] = 0              # V [head_dim, cells]
            y[h, t] = f16_matmul(seen, b[t:t + 1], False)[0]
    assert np.array_equal(y, dst), int(np.sum(y != dst))
