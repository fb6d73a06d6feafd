"""The iquants family of --numerics ggml (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M,
IQ4_XS, TQ1_0, TQ2_0): llama.cpp's x86 matmul bit for bit.

- The Numba kernels (refllm/ggml_cpu/cpu/iquants.py) give the NumPy reference's bits
  (refllm/ggml_cpu/reference/iquants.py) on random blocks, on both sides of llama.cpp's switch
  from vec_dot (fewer than 8 tokens) to tiled.cpp (8 or more), over several K blocks and row
  chunks.
- Both give llama.cpp's own products in golden/matmul_kernels/<T>.npz (llama.cpp's compiled
  kernels on random blocks), every batch size stored (1 to 33).
- The reference's decoded weights are refllm's dequantizers' (refllm.dequantize) up to the
  scale: the integers the kernels multiply are the weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_matmul_kernels_golden import assert_llama_cpp_bits

import refllm
from refllm.ggml_cpu import matmul as ggml_matmul
from refllm.ggml_cpu.cpu import iquants as numba_iquants
from refllm.ggml_cpu.reference import iquants as reference
from refllm.ggml_cpu.reference import quantize_activations as activations
from refllm.type_traits import ggml_type

TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0")
BACKENDS = ("numpy", "numba")
# where a block's fp16 d is (IQ1_M: spread over the top nibbles of its four scale words at 48)
D_AT = {"TQ1_0": 52, "TQ2_0": 64, "IQ1_M": None}


def random_blocks(weight_type: str, rows: int, nb: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, nb, block bytes]: random bytes (every index of these formats is valid) with
    small finite fp16 scales d of either sign."""
    size = reference.IQUANT_BLOCK_BYTES[weight_type]
    blocks = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    d = (rng.choice([-1, 1], (rows, nb)) * 10.0 ** rng.uniform(-3, -1.5, (rows, nb))).astype("<f2")
    at = D_AT.get(weight_type, 0)
    if at is None:
        bits_ = d.view("<u2").astype(np.uint16)
        words = blocks[:, :, 48:56].copy().view("<u2")
        for i in range(4):
            words[:, :, i] = (words[:, :, i] & 0x0FFF) | (((bits_ >> (4 * i)) & 0xF) << 12)
        blocks[:, :, 48:56] = words.view(np.uint8)
    else:
        blocks[:, :, at:at + 2] = d.view(np.uint8).reshape(rows, nb, 2)
    return blocks


def random_case(weight_type: str, rows: int, k: int, n: int, seed: int):
    """(raw uint8 [rows * row bytes], Q8_K activations of n rows): random blocks, heavy-tailed
    activations, one activation row all zeros and one the first weight row itself, scaled (large
    integer sums)."""
    rng = np.random.default_rng(seed)
    raw = random_blocks(weight_type, rows, k // 256, rng).reshape(-1)
    x = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, k)) ** 2).astype(np.float32)
    if n >= 2:
        x[1] = 0
    if n >= 3:
        w0 = refllm.dequantize(raw[:raw.size // rows], weight_type, (1, k))[0]
        x[2] = w0 / np.abs(w0).max() * np.float32(100)
    return raw, activations.q8_k(x)


@pytest.mark.parametrize("weight_type", TYPES)
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_numba_gives_the_reference_bits(weight_type, n, monkeypatch):
    # 3 K blocks; 37 rows in chunks of 16 (CHUNK_BYTES made small): several chunks, a ragged one
    monkeypatch.setattr(numba_iquants, "CHUNK_BYTES", 16 * 2 * 768)
    rows, k = 37, 768
    raw, act = random_case(weight_type, rows, k, n, seed=n * 31 + len(weight_type))
    expected = reference.mul_mat(raw, weight_type, (rows, k), act)
    got = numba_iquants.mul_mat(raw, weight_type, (rows, k), act)
    assert got.dtype == np.float32 and got.shape == (n, rows)
    assert np.all(np.isfinite(expected))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), \
        f"{weight_type} n={n}: {int(np.sum(got != expected))} of {got.size} outputs differ"


@pytest.mark.parametrize("weight_type", TYPES)
def test_decoded_integers_are_the_weights(weight_type):
    """w (and wd) times the block's float scales is refllm's dequantization: the kernels multiply
    the weights the file holds (TQ: t - 1; IQ1: grid + delta / 8; IQ2: grid / 8 with the 2 ls + 1
    scale, as ggml's 0.25 (0.5 + ls); IQ3_XXS: / 4)."""
    rng = np.random.default_rng(5)
    raw = random_blocks(weight_type, 3, 2, rng).reshape(-1)
    m = reference.iquant_rows(raw, weight_type, 3)
    w = m.w.astype(np.float64)
    if weight_type in reference.TERNARY:
        w = w - 1
    if m.wd is not None:
        w = w + m.wd / 8.0
    scale = {"IQ2_XXS": 8.0, "IQ2_XS": 8.0, "IQ2_S": 8.0, "IQ3_XXS": 4.0}.get(weight_type, 1.0)
    ours = (w * m.d[..., None] / scale).reshape(3, 512)
    theirs = refllm.dequantize(raw, weight_type, (3, 512)).astype(np.float64)
    assert np.allclose(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [7, 8])
def test_the_two_paths_differ(n):
    """vec_dot and tiled.cpp round differently, so picking the path by n is observable."""
    rows, k = 48, 512
    raw, act = random_case("IQ2_XS", rows, k, n, seed=100 + n)
    m = reference.iquant_rows(raw, "IQ2_XS", rows)
    tiled = reference.tiled_matmul("IQ2_XS", m, act.q, act.d)
    vec_dot = reference.vec_dot_matmul("IQ2_XS", m, act.q, act.d, act.bsums)
    chosen = reference.mul_mat(raw, "IQ2_XS", (rows, k), act)
    assert np.array_equal(chosen, tiled if n >= reference.TILED_MIN_BATCH else vec_dot)
    assert not np.array_equal(tiled, vec_dot)


def test_ternary_types_have_no_tiled_kernel():
    rows, k, n = 16, 256, 9
    for t in reference.TERNARY:
        raw, act = random_case(t, rows, k, n, seed=9)
        m = reference.iquant_rows(raw, t, rows)
        assert np.array_equal(reference.mul_mat(raw, t, (rows, k), act),
                              reference.vec_dot_matmul(t, m, act.q, act.d, act.bsums))


def test_the_family_is_registered():
    for t in TYPES:
        assert ggml_type(t).matmul == "iquants"
        assert ggml_matmul.family(t, (256, 256)) == "iquants"
        assert ggml_matmul.family(t, (256, 256), mul_mat_weight=False) == "iquants"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_type", TYPES)
def test_llama_cpp_products_bit_for_bit(weight_type, backend):
    """Every stored product of golden/matmul_kernels/<T>.npz: 40 rows of 768, batch sizes 1 to
    33 (vec_dot below 8, tiled.cpp's narrow path to 16, its standard path above)."""
    assert assert_llama_cpp_bits(weight_type, backend) == 11
