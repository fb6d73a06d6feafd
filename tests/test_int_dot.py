"""Integer dot products (refllm.kernels.vec_dot.integer_matmul): ggml's vec_dot on raw blocks.

Two properties, for every weight type with an integer kernel:

1. The Numba kernels (cpu/int_dot.py) give the NumPy reference's (reference/int_dot.py) float32
   results bit for bit.
2. The identity the engine relies on: with `rows` the activations as the weight type's
   vec_dot_type rounds them (`converted_activations`),

       integer_matmul(x, W) = activations.dequantized(rows) @ dequantize(W).T
                              + q8_1_sum_correction(rows) @ block_minimums(W).T   (Q4_1, Q5_1 only)

   up to float32 summation: each output within 1e-5 of its row's sum of |products| (the same
   identity computed in float64). The integer dot product only regroups exact integer sums and
   reorders float32 additions; Q4_1/Q5_1 add m * s per block, where s is Q8_1's fp16-rounded
   d * sum(q), not the d * sum(q) the dequantized product uses.
"""

from __future__ import annotations

import numpy as np
import pytest

from refllm.formats.ggml_types import ggml_type
from refllm.kernels import dequantize, quantize
from refllm.kernels.reference import activations
from refllm.kernels.vec_dot import (INTEGER_KERNELS, block_minimums, converted_activations,
                                    integer_matmul, q8_1_sum_correction)

TYPES = list(INTEGER_KERNELS)
# (rows, cols, n): rows not a multiple of 8, n > 1, cols of 1, 2 and 3 K-quant blocks
SHAPES = [(13, 256, 1), (37, 512, 3), (9, 768, 2)]
# Byte offsets of the fp16 scales, set to finite values in random-byte blocks
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def quantized_weights(weight_type, rows, cols, rng):
    """uint8 [rows, row_bytes]: N(0, 1) rows, a different scale each, as llama-quantize writes them."""
    scale = np.exp(rng.uniform(-3, 3, size=(rows, 1))).astype(np.float32)
    return quantize(rng.standard_normal((rows, cols), dtype=np.float32) * scale, weight_type)


def random_blocks(weight_type, rows, cols, rng):
    """uint8 [rows, row_bytes] of random bytes (every quant and sub-block scale a quantizer may
    not write), the fp16 scales made finite, of either sign."""
    row = ggml_type(weight_type)
    blocks = rng.integers(0, 256, size=(rows * cols // row.block_elems, row.block_bytes), dtype=np.uint8)
    for at in FP16_FIELDS[weight_type]:
        values = rng.uniform(-1, 1, size=blocks.shape[0]) * 10.0 ** rng.integers(-6, 2, size=blocks.shape[0])
        blocks[:, at:at + 2] = values.astype("<f2").view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def activations_for(rows, cols, rng):
    """float32 [n, cols]: N(0, 1) with outliers, and a row of zeros when n > 1."""
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    x[:, rng.integers(0, cols, size=3)] *= 40
    if rows > 1:
        x[-1] = 0
    return x


def assert_same_bits(actual, expected, what):
    assert actual.dtype == np.float32 and expected.dtype == np.float32, what
    assert actual.shape == expected.shape, what
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan), what
    bad = np.flatnonzero(actual[~nan].view(np.uint32) != expected[~nan].view(np.uint32))
    assert bad.size == 0, f"{what}: {bad.size} outputs differ, first {actual[~nan][bad[0]]!r} != {expected[~nan][bad[0]]!r}"


def identity(x, raw, weight_type, rows, cols):
    """(float64 [n, rows] the identity's value, float64 [n, rows] its sum of |products|)."""
    _, act = converted_activations(x, weight_type)
    a = activations.dequantized(act).astype(np.float64)
    w = dequantize(raw, weight_type, (rows, cols)).astype(np.float64)
    value, size = a @ w.T, np.abs(a) @ np.abs(w).T
    if weight_type in ("Q4_1", "Q5_1"):
        correction = q8_1_sum_correction(act).astype(np.float64)
        minimums = block_minimums(raw.reshape(-1), weight_type, rows).astype(np.float64)
        value += correction @ minimums.T
        size += np.abs(correction) @ np.abs(minimums).T
        size += np.abs(act.s.astype(np.float64)) @ np.abs(minimums).T    # the m * s terms it adds
    return value, size


@pytest.mark.parametrize("weight_type", TYPES)
@pytest.mark.parametrize("rows,cols,n", SHAPES)
def test_numba_equals_reference_and_the_identity(weight_type, rows, cols, n):
    rng = np.random.default_rng([rows, cols, n, TYPES.index(weight_type)])
    raw = quantized_weights(weight_type, rows, cols, rng)
    x = activations_for(n, cols, rng)
    fast = integer_matmul(x, raw, weight_type, (rows, cols))
    reference = integer_matmul(x, raw, weight_type, (rows, cols), backend="numpy")
    assert fast.shape == (n, rows)
    assert_same_bits(fast, reference, f"{weight_type} {rows}x{cols} n={n}")
    value, size = identity(x, raw, weight_type, rows, cols)
    assert np.all(np.abs(fast - value) <= 1e-5 * size + 1e-30), \
        f"{weight_type}: worst {np.max(np.abs(fast - value) / (size + 1e-30)):.2e} of the sum of |products|"


@pytest.mark.parametrize("weight_type", TYPES)
def test_random_blocks(weight_type):
    """Every bit pattern of quants, sub-block scales and mins, and signed fp16 scales."""
    rng = np.random.default_rng(100 + TYPES.index(weight_type))
    rows, cols, n = 11, 512, 2
    raw = random_blocks(weight_type, rows, cols, rng)
    x = activations_for(n, cols, rng)
    fast = integer_matmul(x, raw, weight_type, (rows, cols))
    assert_same_bits(fast, integer_matmul(x, raw, weight_type, (rows, cols), backend="numpy"), weight_type)
    value, size = identity(x, raw, weight_type, rows, cols)
    assert np.all(np.abs(fast - value) <= 1e-5 * size + 1e-30)


def test_matches_a_scalar_transcription_of_the_c():
    """Q4_0 and Q4_K against a line-by-line Python transcription of ggml's generic C, one
    output at a time: the float32 order, not only the value."""
    f32 = np.float32
    rng = np.random.default_rng(7)
    x = activations_for(1, 512, rng)

    raw = quantized_weights("Q4_0", 3, 512, rng)
    _, act = converted_activations(x, "Q4_0")
    got = integer_matmul(x, raw, "Q4_0", (3, 512), act=act)
    for r in range(3):
        sumf = f32(0)
        for ib in range(16):                   # ggml_vec_dot_q4_0_q8_0_generic
            block = raw[r, 18 * ib:18 * ib + 18]
            qs, y = block[2:].astype(np.int32), act.q[0, 32 * ib:32 * ib + 32].astype(np.int32)
            sumi = int(((qs & 15) - 8) @ y[:16] + ((qs >> 4) - 8) @ y[16:])
            sumf = f32(sumf + f32(f32(f32(sumi) * block[:2].view("<f2")[0].astype(f32)) * act.d[0, ib]))
        assert got[0, r].view(np.uint32) == sumf.view(np.uint32)

    raw = quantized_weights("Q4_K", 2, 512, rng)
    _, act = converted_activations(x, "Q4_K")
    got = integer_matmul(x, raw, "Q4_K", (2, 512), act=act)
    for r in range(2):
        sums, sumf = [f32(0)] * 8, f32(0)
        for i in range(2):                     # ggml_vec_dot_q4_K_q8_K_generic
            block = raw[r, 144 * i:144 * i + 144]
            sc, m = block[4:16], block[4:16]
            scales = [sc[j] & 63 if j < 4 else (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4) for j in range(8)]
            mins = [m[j + 4] & 63 if j < 4 else (m[j + 4] >> 4) | ((m[j] >> 6) << 4) for j in range(8)]
            a = np.concatenate([np.concatenate([block[16 + 32 * c:48 + 32 * c] & 15, block[16 + 32 * c:48 + 32 * c] >> 4])
                                for c in range(4)]).astype(np.int64)
            q8 = act.q[0, 256 * i:256 * i + 256].astype(np.int64)
            aux32 = [0] * 8
            for p in range(256):
                aux32[p % 8] += int(scales[p // 32]) * int(q8[p] * a[p])
            sumi = sum(int(act.bsums[0, 16 * i + j]) * int(mins[j // 2]) for j in range(16))
            d = f32(block[0:2].view("<f2")[0].astype(f32) * act.d[0, i])
            sums = [f32(sums[lane] + f32(d * f32(aux32[lane]))) for lane in range(8)]
            dmin = f32(block[2:4].view("<f2")[0].astype(f32) * act.d[0, i])
            sumf = f32(sumf - f32(dmin * f32(sumi)))
        for lane in range(8):
            sumf = f32(sumf + sums[lane])
        assert got[0, r].view(np.uint32) == sumf.view(np.uint32)


def test_the_act_argument_and_errors():
    rng = np.random.default_rng(3)
    raw = quantized_weights("Q4_1", 5, 256, rng)
    x = activations_for(2, 256, rng)
    _, act = converted_activations(x, "Q4_1")
    assert_same_bits(integer_matmul(x, raw, "Q4_1", (5, 256), act=act),
                     integer_matmul(x, raw.tobytes(), "Q4_1", (5, 256)), "act= and bytes")
    with pytest.raises(ValueError, match="no integer dot product"):
        integer_matmul(x, raw, "IQ4_XS", (5, 256))
    with pytest.raises(ValueError, match="backend"):
        integer_matmul(x, raw, "Q4_1", (5, 256), backend="cuda")
    with pytest.raises(ValueError, match="bytes"):
        integer_matmul(x, raw[:4], "Q4_1", (5, 256))
    with pytest.raises(ValueError, match=r"\[n, 512\]"):
        integer_matmul(x, raw, "Q4_1", (5, 512))
    _, q8_0_rows = converted_activations(x, "Q4_0")
    with pytest.raises(ValueError, match="Q8_1 activations"):
        integer_matmul(x, raw, "Q4_1", (5, 256), act=q8_0_rows)
