"""The lowbit family of --numerics ggml (Q1_0 and Q2_0): llama.cpp's x86 matmul bit for bit.

- The Numba kernels (refllm/ggml_cpu/cpu/lowbit.py) give the NumPy reference's bits
  (refllm/ggml_cpu/reference/lowbit.py) on random blocks.
- Both give llama.cpp's own products in golden/matmul_kernels/<T>.npz (vec_dot at every batch
  size: no tinyBLAS, tiled or x86 repack kernel exists for these types), batch sizes 1 to 33.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_matmul_kernels_golden import assert_llama_cpp_bits

from refllm.ggml_cpu.cpu import lowbit as numba_lowbit
from refllm.ggml_cpu.reference import lowbit as reference
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.type_traits import ggml_type

TYPES = ("Q1_0", "Q2_0")
BACKENDS = ("numpy", "numba")


def random_case(weight_type: str, rows: int, k: int, n: int, seed: int):
    """(raw uint8 [rows * row bytes], Q8_0 activations of n rows): random bits with small fp16
    scales of either sign, heavy-tailed activations, one activation row all zeros."""
    rng = np.random.default_rng(seed)
    per, size = reference.LOWBIT_BLOCKS[weight_type]
    blocks = rng.integers(0, 256, (rows, k // per, size), dtype=np.uint8)
    d = (rng.choice([-1, 1], blocks.shape[:2]) * 10.0 ** rng.uniform(-3, -1, blocks.shape[:2])).astype("<f2")
    blocks[:, :, 0:2] = d.view(np.uint8).reshape(rows, k // per, 2)
    x = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, k)) ** 2).astype(np.float32)
    if n >= 2:
        x[1] = 0
    return blocks.reshape(-1), activations.q8_0(x)


@pytest.mark.parametrize("weight_type", TYPES)
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_numba_gives_the_reference_bits(weight_type, n):
    rows, k = 19, 640
    raw, act = random_case(weight_type, rows, k, n, seed=n + 3 * len(weight_type))
    expected = reference.mul_mat(raw, weight_type, (rows, k), act)
    got = numba_lowbit.mul_mat(raw, weight_type, (rows, k), act)
    assert got.dtype == np.float32 and got.shape == (n, rows) and np.all(np.isfinite(expected))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), \
        f"{weight_type} n={n}: {int(np.sum(got != expected))} of {got.size} outputs differ"


def test_weights():
    """Q1_0's bits are +-1, Q2_0's 2-bit fields t - 1, least significant first."""
    raw = np.zeros(18 * 2, np.uint8)
    raw[2], raw[20] = 0b00000101, 0b11100100                     # Q1_0: weights 0, 2 set; Q2_0: 0, 1, 2, 3
    w1, _ = reference.lowbit_quants(raw[:18], "Q1_0", 1)
    w2, _ = reference.lowbit_quants(raw[18:], "Q2_0", 1)
    assert list(w1[0, :4]) == [1, -1, 1, -1] and list(w2[0, :5]) == [-1, 0, 1, 2, -1]


def test_the_family_is_registered():
    for t in TYPES:
        assert ggml_type(t).matmul == "lowbit" and not ggml_type(t).repack_rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_type", TYPES)
def test_llama_cpp_products_bit_for_bit(weight_type, backend):
    assert assert_llama_cpp_bits(weight_type, backend) == 11
