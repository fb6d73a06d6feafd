"""The kquants family of --numerics ggml (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): llama.cpp's x86 matmul bit for bit.

- The Numba kernels (refllm/ggml_cpu/cpu/kquants.py) give the NumPy reference's bits
  (refllm/ggml_cpu/reference/kquants.py) on random matrices, on both sides of llama.cpp's
  switch from vec_dot (fewer than 8 tokens) to tiled.cpp (8 or more), and of the Numba
  kernels' own switch of arrangement (FEW_TOKENS), over several K blocks and row chunks.
- Both give llama.cpp's own products in golden/matmul/<T>.npz: nb512 (32 tokens in one batch:
  tiled.cpp) and nb1 (token by token: ggml_vec_dot_q<N>_K_q8_K), every stored product. Q4_K's
  matrices there are repacked (tests/test_ggml_repack.py); its kquants kernels (a matrix
  llama.cpp does not repack) are checked against golden/matmul_kernels/Q4_K.npz's cpu case,
  batch sizes 1 to 33.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_matmul_golden import MODES, load_matmul_golden, rebuild_model, weight_type
from test_matmul_kernels_golden import assert_llama_cpp_bits

import refllm
from refllm.ggml_cpu import matmul as ggml_matmul
from refllm.ggml_cpu.cpu import kquants as numba_kquants
from refllm.ggml_cpu.reference import kquants as reference
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.type_traits import ggml_type

KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# golden/matmul's models whose layer matrices llama.cpp multiplies with these kernels (its Q4_K
# matrices are repacked)
GOLDEN_MATMUL_KQUANTS = ("Q2_K", "Q3_K", "Q5_K", "Q6_K")
BACKENDS = ("numpy", "numba")


def random_case(weight_type_: str, rows: int, k: int, n: int, seed: int):
    """(raw uint8 [rows, row bytes], Q8_K activations of n rows): Gaussian weights quantized by
    refllm, heavy-tailed activations; one activation row is all zeros and one is a weight row
    itself (large integer sums, past float32's exact integers)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    raw = refllm.quantize(w, weight_type_)
    x = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, k)) ** 2).astype(np.float32)
    if n >= 2:
        x[1] = 0
    if n >= 3:
        x[2] = w[0] * np.float32(50)
    return raw, activations.q8_k(x)


@pytest.mark.parametrize("weight_type_", KQUANTS)
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_numba_gives_the_reference_bits(weight_type_, n, cpu_path):
    # 3 K blocks; 200 rows: more than one decoded chunk (step 170 at k 768; AVX2_ROWS 64),
    # not whole 16s (AVX2 tiles: whole 4s)
    rows, k = 200, 768
    raw, act = random_case(weight_type_, rows, k, n, seed=n)
    expected = reference.mul_mat(raw, weight_type_, (rows, k), act)
    got = numba_kquants.mul_mat(raw, weight_type_, (rows, k), act)
    assert got.dtype == np.float32 and got.shape == (n, rows)
    assert np.all(np.isfinite(expected))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), \
        f"{weight_type_} n={n}: {int(np.sum(got != expected))} of {got.size} outputs differ"


@pytest.mark.parametrize("n", [7, 8])
def test_the_two_paths_differ(n):
    """vec_dot and tiled.cpp round differently, so picking the path by n is observable: the
    reference's other path gives other bits on the same inputs."""
    rows, k = 64, 512
    raw, act = random_case("Q6_K", rows, k, n, seed=100 + n)
    m = reference.kquant_rows(raw, "Q6_K", rows)
    tiled = reference.tiled_matmul("Q6_K", m, act.q, act.d, act.bsums)
    vec_dot = reference.vec_dot_matmul("Q6_K", m, act.q, act.d, act.bsums)
    chosen = reference.mul_mat(raw, "Q6_K", (rows, k), act)
    assert np.array_equal(chosen, tiled if n >= reference.TILED_MIN_BATCH else vec_dot)
    assert not np.array_equal(tiled, vec_dot)


def test_the_family_is_registered():
    for t in KQUANTS:
        assert ggml_type(t).matmul == "kquants"
        assert ggml_matmul.family(t, (256, 256), mul_mat_weight=t != "Q4_K") == "kquants"
    assert ggml_matmul.family("Q4_K", (255, 256)) == "kquants"


@pytest.mark.parametrize("backend", BACKENDS)
def test_q4_k_not_repacked_bit_for_bit(backend):
    """golden/matmul_kernels/Q4_K.npz's cpu case: a plain CPU buffer, batch sizes 1 to 33
    (ggml_vec_dot_q4_K_q8_K below 8 tokens, tiled.cpp from 8)."""
    assert assert_llama_cpp_bits("Q4_K", backend, cases=("cpu-40x768",)) == 11


@pytest.fixture(scope="module")
def golden_models(tmp_path_factory):
    """The golden/matmul models of the kquants types, rebuilt by refllm (their sha256 is
    tests/test_matmul_golden.py's to check)."""
    root = tmp_path_factory.mktemp("kquants-golden")
    return {kind: refllm.open(rebuild_model(kind, root)) for kind in GOLDEN_MATMUL_KQUANTS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", GOLDEN_MATMUL_KQUANTS)
def test_llama_cpp_products_bit_for_bit(golden_models, kind, mode, backend):
    """Every stored product of a <kind> weight, from llama.cpp's own float32 input: nb512 is
    one batch of 32 tokens (tiled.cpp), nb1 one token at a time (vec_dot)."""
    golden = load_matmul_golden(kind)
    model = golden_models[kind]
    checked = 0
    for key, arrays in golden.runs[mode].items():
        if weight_type(kind, key) != kind:
            continue
        raw = np.frombuffer(model.tensor_bytes(key), np.uint8)
        src1, dst = arrays["src1"], arrays["dst"]
        shape = (dst.shape[1], src1.shape[1])
        if mode == "nb1":
            ours = np.concatenate([ggml_matmul.mul_mat(src1[i:i + 1], raw, kind, shape, backend=backend)
                                   for i in range(src1.shape[0])])
        else:
            ours = ggml_matmul.mul_mat(src1, raw, kind, shape, backend=backend)
        assert np.array_equal(ours.view(np.uint32), dst.view(np.uint32)), \
            f"{kind} {mode} {key} ({backend}): {int(np.sum(ours != dst))} of {dst.size} outputs differ"
        checked += 1
    assert checked == 4
