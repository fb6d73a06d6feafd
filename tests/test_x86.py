"""refllm.ggml_cpu.x86: ggml's x86 float arithmetic. Each Numba kernel equals its NumPy reference
bit for bit; the pieces that llama.cpp's data cannot reach (ggml_v_expf's overflow and underflow
branches, leftovers past whole 32s) are checked here on purpose-built inputs. That the kernels
are llama.cpp's is shown on its own outputs: tests/test_matmul_golden.py (kq, kqv) and
tests/test_engine_golden.py (whole models)."""

from __future__ import annotations

import numpy as np
import pytest

from refllm.ggml_cpu import x86

F32 = np.float32


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def exp_inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1e-30, -1e-30, 87.0, 88.0, 88.7, 89.0, 100.0, 130.0, 134.0, -87.0, -88.0,
             -88.8, -89.0, -100.0, -103.0, -104.0, -130.0, -134.0, -150.0, -200.0, np.inf, -np.inf]
    return np.concatenate([np.array(edges, F32), (rng.standard_normal(200_000) * 60).astype(F32),
                           rng.uniform(-1, 1, 10_000).astype(F32)])


def test_expf_is_close_to_exp_everywhere_and_exact_at_the_edges():
    x = exp_inputs()
    ours = x86.expf(x)
    finite = np.isfinite(x) & (np.abs(x) < 87)
    np.testing.assert_allclose(ours[finite], np.exp(x[finite].astype(np.float64)), rtol=4e-7)
    assert x86.expf(np.array([-np.inf, np.inf, 0.0, -200.0, 200.0], F32)).tolist() == [0.0, np.inf, 1.0, 0.0, np.inf]


def test_numba_expf_silu_and_softmax_equal_their_references():
    x = exp_inputs()
    scalar = np.array([x86.expf_scalar(v) for v in x[:3000]], F32)
    assert same_bits(scalar, x86.expf(x[:3000]))
    assert np.array_equal(x86.silu(x), x86.silu_reference(x), equal_nan=True)
    rng = np.random.default_rng(1)
    for n_keys in (1, 7, 8, 37, 256):
        scores = (rng.standard_normal((3, 5, n_keys)) * 30).astype(F32)
        hidden = rng.random((5, n_keys)) < 0.4
        hidden[:, 0] = False
        numba = x86.soft_max(scores, 0.125, hidden)
        assert same_bits(numba, x86.soft_max(scores, 0.125, hidden, backend="numpy"))
        np.testing.assert_allclose(numba.sum(axis=-1), 1, rtol=1e-5)
        assert np.all(numba[..., hidden] == 0)


@pytest.mark.parametrize("tinyblas", [True, False])
@pytest.mark.parametrize("k", [8, 32, 40, 64, 70, 256])
def test_f16_matmul_equals_its_reference(k, tinyblas, cpu_path):
    rng = np.random.default_rng(k)
    a = (rng.standard_normal((19, k)) * 10.0 ** rng.uniform(-2, 2, (19, k))).astype(np.float16).astype(F32)
    b = (rng.standard_normal((5, k)) * 10.0 ** rng.uniform(-2, 2, (5, k))).astype(np.float16).astype(F32)
    ours = x86.f16_matmul(a, b, tinyblas=tinyblas)
    assert same_bits(ours, x86.f16_matmul_reference(a, b, tinyblas=tinyblas))
    np.testing.assert_allclose(ours, b.astype(np.float64) @ a.T.astype(np.float64),
                               rtol=0, atol=1e-5 * np.abs(b).max() * np.abs(a).max() * k)


def test_the_two_f16_kernels_sum_in_different_orders():
    """tinyBLAS and vec_dot_f16 differ in the last bits on some outputs: which one runs matters."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((64, 256)) * 10.0 ** rng.uniform(-3, 3, (64, 256))).astype(np.float16).astype(F32)
    b = (rng.standard_normal((4, 256)) * 10.0 ** rng.uniform(-3, 3, (4, 256))).astype(np.float16).astype(F32)
    assert not same_bits(x86.f16_matmul(a, b, tinyblas=True), x86.f16_matmul(a, b, tinyblas=False))


def test_fma32_rounds_once():
    """a * b + c with one rounding: for a = b = 1 + 2^-12 and c = -(1 + 2^-11), the exact
    result 2^-24 survives a fused multiply-add; a float32 multiply first would round it away."""
    a = F32(1 + 2.0 ** -12)
    c = F32(-(1 + 2.0 ** -11))
    assert F32(a * a) + c == 0
    assert x86.fma32_array(a, a, c) == F32(2.0 ** -24)
    from numba import njit

    @njit
    def fused(x, y, z):
        return x86.fma32(x, y, z)

    assert fused(a, a, c) == F32(2.0 ** -24)


def test_rotate_contracts_like_gcc_and_cos_sin_are_the_c_librarys():
    x0, x1 = np.array([1.5, -2.25], F32), np.array([0.75, 3.0], F32)
    cos, sin = x86.cos_sin(np.array([[0.3, 1234.5]], F32))
    np.testing.assert_allclose(cos[0], np.cos([0.3, np.float64(F32(1234.5))]), rtol=1e-6)
    r0, r1 = x86.rotate(x0, x1, cos[0], sin[0])
    assert same_bits(r0, x86.fma32_array(x0, cos[0], -(x1 * sin[0])))
    assert same_bits(r1, x86.fma32_array(x0, sin[0], x1 * cos[0]))
    np.testing.assert_allclose(x86.tanhf(np.array([0.5, -3.0], F32)), np.tanh([0.5, -3.0]), rtol=1e-6)


def test_numba_activation_converters_give_the_reference_bits():
    """refllm/ggml_cpu/cpu/quantize_activations.py against reference/activations.py: zeros, ties of
    |max| with both signs, heavy tails, tiny and huge rows."""
    from refllm.ggml_cpu.cpu import quantize_activations as fast
    from refllm.ggml_cpu.reference import quantize_activations as reference
    rng = np.random.default_rng(4)
    for n, k in ((1, 256), (5, 512), (3, 2048)):
        x = (rng.standard_t(3, (n, k)) * 10.0 ** rng.uniform(-6, 6, (n, 1))).astype(F32)
        x[0, :32] = 0
        x[-1, 3], x[-1, 9] = 7.5, -7.5                                   # |max| twice, both signs
        x[-1, :256] = np.clip(x[-1, :256], -7.5, 7.5)
        for name in ("q8_0", "q8_1", "q8_k"):
            a, b = getattr(reference, name)(x), getattr(fast, name)(x)
            for field, u, v in zip(a._fields, a, b):
                assert (u is None) == (v is None), (name, field)
                if u is not None:
                    assert u.dtype == v.dtype and np.array_equal(u.view(np.uint8), v.view(np.uint8)), (name, field)


def test_round_to_f16_is_numpys_float16_rounding():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-9, 6, 200_000)).astype(F32)
    x[:7] = [np.inf, -np.inf, 65519.99, 65520.0, 2.0 ** -25, -(2.0 ** -25) * 1.5, 0.0]
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(F32)
    assert same_bits(x86.round_to_f16(x), expected)
    assert np.isnan(x86.round_to_f16(np.array([np.nan], F32))[0])


def test_the_numba_softmax_never_reads_a_hidden_score():
    """The kernel masks before it scales: a hidden score may be anything, even NaN (the
    tinyBLAS tiles leave the scores a query cannot see uncomputed)."""
    rng = np.random.default_rng(7)
    scores = (rng.standard_normal((2, 6, 40)) * 20).astype(F32)
    hidden = np.triu(np.ones((6, 40), bool), 35)
    garbage = scores.copy()
    garbage[:, hidden] = np.nan
    with np.errstate(all="raise"):
        assert same_bits(x86.soft_max(garbage, 0.125, hidden), x86.soft_max(scores, 0.125, hidden, backend="numpy"))


def test_tinyblas_hints_skip_only_what_the_caller_does_not_read(cpu_path):
    """needed: out[i, :needed[i]] is computed (the rest is not read); nonzero: b[i] is zero
    from nonzero[i] on, and stopping the lanes there changes no bit (0 * a adds nothing)."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((37, 64)).astype(np.float16).astype(F32)
    b = rng.standard_normal((9, 64)).astype(np.float16).astype(F32)
    full = x86.f16_matmul(a, b, tinyblas=True)
    needed = rng.integers(1, 38, 9)
    partial = x86.f16_matmul(a, b, tinyblas=True, needed=needed)
    for i, m in enumerate(needed):
        assert same_bits(partial[i, :m], full[i, :m])
    nonzero = rng.integers(1, 65, 9)
    b[np.arange(64)[None, :] >= nonzero[:, None]] = 0
    assert same_bits(x86.f16_matmul(a, b, tinyblas=True, nonzero=nonzero), x86.f16_matmul(a, b, tinyblas=True))


def test_fp16_table_lookup_takes_the_fp16_bits_and_the_bounds():
    rng = np.random.default_rng(9)
    table = rng.standard_normal(1 << 16).astype(F32)
    x = (rng.standard_normal(50_000) * 8).astype(F32)
    x[:6] = [-10, 10, -10.001, 10.001, 65520.0, -np.inf]
    with np.errstate(over="ignore"):
        looked_up = table[x.astype(np.float16).view(np.uint16)]
    expected = np.where(x <= -10, F32(0), np.where(x >= 10, x, looked_up))
    assert same_bits(x86.fp16_table_lookup(x, table, -10, 10), expected)
