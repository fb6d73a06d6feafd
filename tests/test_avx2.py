"""refllm.ggml_cpu.avx2: the AVX2 register tiles' helpers. The tiles themselves are checked
bit for bit against the NumPy references through every family's tests (the cpu_path fixture
runs them on the AVX2 and the portable paths) and against llama.cpp's own products
(tests/test_matmul_golden.py, tests/test_engine_golden.py)."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from numba import njit

from refllm.ggml_cpu import avx2
from refllm.kernels.reference.fields import nibbles


def test_available_only_on_x86_with_avx2_and_fma():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert not avx2.AVAILABLE
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    assert avx2.AVAILABLE == (platform.machine().lower() in ("x86_64", "amd64")
                              and bool(features.get("avx2")) and bool(features.get("fma")))


def test_pair_lanes_puts_token_2i_plus_t_at_lane_2r_plus_t():
    x = np.arange(6 * 3, dtype=np.int32).reshape(6, 3)                 # 6 tokens, 3 values each
    lanes = avx2.pair_lanes(x)
    assert lanes.shape == (3, 3, 8) and lanes.dtype == np.int32
    for i in range(3):
        for r in range(avx2.ROWS):
            for t in range(avx2.TOKENS):
                assert np.array_equal(lanes[i, :, 2 * r + t], x[2 * i + t])


@njit
def _unpack(out, raw, count, with_high):
    if count == 16:
        avx2.unpack_nibbles16(out, 0, raw, 4, 0, with_high)
    else:
        avx2.unpack_nibbles32(out, 0, raw, 4, 0, with_high)


@pytest.mark.parametrize("count, with_high", [(16, False), (16, True), (32, False)])
def test_unpack_nibbles_gives_the_reference_quants(count, with_high):
    raw = np.random.default_rng(count + with_high).integers(0, 256, 4 + count, dtype=np.uint8)
    out = np.zeros(2 * count, np.uint8)
    _unpack(out, raw, count, with_high)
    expected = nibbles(raw[None, 4:4 + count])[0].astype(np.uint8)      # low nibbles, then high
    if with_high:
        qh = int(raw[:4].view("<u4")[0])
        expected |= np.array([(qh >> i & 1) << 4 for i in range(32)], np.uint8)
    assert np.array_equal(out, expected)
