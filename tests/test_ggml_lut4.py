"""The lut4 family of --numerics ggml (IQ4_NL and MXFP4 where llama.cpp does not repack them; NVFP4).

- The Numba kernels (refllm/ggml_cpu/cpu/lut4.py) give the NumPy reference's bits
  (refllm/ggml_cpu/reference/lut4.py) on random matrices, on both sides of IQ4_NL's switch
  from vec_dot (one token) to tinyBLAS (two or more), with even and odd block counts.
- Both give llama.cpp's own products in golden/matmul_kernels/<T>.npz (its "cpu" cases: a plain
  CPU buffer, as for rows not whole 8s), every batch size stored.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_matmul_kernels_golden import assert_llama_cpp_bits

from refllm.ggml_cpu import matmul as ggml_matmul
from refllm.ggml_cpu.cpu import lut4 as numba_lut4
from refllm.ggml_cpu.reference import lut4 as reference
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.type_traits import ggml_type

TYPES = ("IQ4_NL", "MXFP4")                 # the two with a repacked layout
BACKENDS = ("numpy", "numba")
BLOCK_BYTES = {"IQ4_NL": 18, "MXFP4": 17, "NVFP4": 36}
BLOCK_WEIGHTS = {"IQ4_NL": 32, "MXFP4": 32, "NVFP4": 64}


def random_case(weight_type: str, rows: int, k: int, n: int, seed: int):
    """(raw uint8 [rows, row bytes], Q8_0 activations of n rows): random blocks with small scales
    (IQ4_NL fp16 d, MXFP4 E8M0 e; NVFP4's UE4M3 bytes are all finite), heavy-tailed activations,
    one activation row all zeros."""
    rng = np.random.default_rng(seed)
    nb = k // BLOCK_WEIGHTS[weight_type]
    blocks = rng.integers(0, 256, (rows, nb, BLOCK_BYTES[weight_type]), dtype=np.uint8)
    if weight_type == "MXFP4":
        blocks[:, :, 0] = rng.integers(110, 130, blocks.shape[:2])
    elif weight_type == "IQ4_NL":
        d = (rng.choice([-1, 1], blocks.shape[:2]) * 10.0 ** rng.uniform(-3, -1, blocks.shape[:2])).astype("<f2")
        blocks[:, :, 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
    x = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, k)) ** 2).astype(np.float32)
    if n >= 2:
        x[1] = 0
    return blocks.reshape(-1), activations.q8_0(x)


@pytest.mark.parametrize("weight_type, k", [(t, k) for t in TYPES for k in (224, 256)]   # 7 blocks: vec_dot's tail
                         + [("NVFP4", 192), ("NVFP4", 256)])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_numba_gives_the_reference_bits(weight_type, k, n):
    rows = 21
    raw, act = random_case(weight_type, rows, k, n, seed=n * 7 + k)
    expected = reference.mul_mat(raw, weight_type, (rows, k), act)
    got = numba_lut4.mul_mat(raw, weight_type, (rows, k), act)
    assert got.dtype == np.float32 and got.shape == (n, rows)
    assert np.all(np.isfinite(expected))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), \
        f"{weight_type} k={k} n={n}: {int(np.sum(got != expected))} of {got.size} outputs differ"


def test_iq4_nl_paths_differ():
    """vec_dot (two accumulators) and tinyBLAS (one) round differently: the path is observable."""
    rows, k = 32, 512
    raw, act = random_case("IQ4_NL", rows, k, 1, seed=3)
    from refllm.ggml_cpu.reference.legacy import legacy_matmul
    from refllm.ggml_cpu.reference.repack import lut_quants
    w, d_w = lut_quants(raw, "IQ4_NL", rows)
    vec_dot = reference.vec_dot_matmul(w, d_w, act.q, act.d)
    tinyblas = legacy_matmul(w, d_w, None, act.q, act.d, None)
    assert np.array_equal(reference.mul_mat(raw, "IQ4_NL", (rows, k), act), vec_dot)
    assert not np.array_equal(vec_dot, tinyblas)


def test_the_family_is_registered():
    for t in TYPES:
        assert ggml_type(t).matmul == "lut4"
        assert ggml_matmul.family(t, (36, 256)) == "lut4"                        # rows not whole 8s
        assert ggml_matmul.family(t, (40, 256), mul_mat_weight=False) == "lut4"  # a plain buffer
        assert ggml_matmul.family(t, (40, 256)) == "repack"
    assert ggml_type("NVFP4").matmul == "lut4" and not ggml_type("NVFP4").repack_rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_type", TYPES)
def test_llama_cpp_products_bit_for_bit(weight_type, backend):
    """Every stored product of a matrix llama.cpp kept in a plain CPU buffer (k = 288: an odd
    block count, vec_dot's scalar tail; k = 256), batch sizes 1 to 33."""
    assert assert_llama_cpp_bits(weight_type, backend, cases=("cpu-36x288", "cpu-36x256")) == 22


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4_llama_cpp_products_bit_for_bit(backend):
    """NVFP4: vec_dot at every batch size (no tinyBLAS, tiled or x86 repack kernel); 9 blocks."""
    assert assert_llama_cpp_bits("NVFP4", backend) == 11
