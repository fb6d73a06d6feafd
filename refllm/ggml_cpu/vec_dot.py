"""What llama.cpp's CPU backend multiplies a weight matrix by: activations in its vec_dot_type.

A CPU MUL_MAT converts its float32 activations to the weight type's `vec_dot_type`
(ggml-cpu.c, type_traits_cpu) and takes dot products of the weight blocks with that. Every
x86 kernel path (vec_dot, llamafile's tinyBLAS, the repacked gemv/gemm, tiled.cpp) reads
the same converted activations, and for all but two weight types what it computes is, up to
float32 summation order, exactly

    y = dequantized(activations) @ dequantized(W).T

because the dot products are linear in the integer quants and their scales. The two
exceptions are Q4_1 and Q5_1, whose Q8_1 activations carry a precomputed block sum
s = fp16(d * sum(q)); their dot product adds m * s for each block (m: the weight block's
minimum), so the fp16 rounding of s is part of the result (`q8_1_sum_correction`).
"""

from __future__ import annotations

import numpy as np

from refllm import type_traits
from refllm.ggml_cpu.cpu import quantize_activations as cpu_activations
from refllm.ggml_cpu.reference import quantize_activations as activations

# activation type -> its converter in reference/quantize_activations.py (float32 rows -> QuantizedRows
# or rounded float32 rows)
_CONVERTERS = {"Q8_0": activations.q8_0, "Q8_1": activations.q8_1, "Q8_K": activations.q8_k,
               "F16": activations.f16, "BF16": activations.bf16}

_FAST_CONVERTERS = {"Q8_0": cpu_activations.q8_0, "Q8_1": cpu_activations.q8_1, "Q8_K": cpu_activations.q8_k}

# Q4_1 and Q5_1 blocks both begin { ggml_half d; ggml_half m; ... }: (block bytes, offset of m)
_MIN_FIELD = {"Q4_1": (20, 2), "Q5_1": (24, 2)}


def vec_dot_type(weight_type: str) -> str:
    """The activation type a `weight_type` matmul converts its activations to (the type's
    vec_dot_type in refllm/type_traits.py). KeyError for a type llama.cpp's CPU backend cannot
    multiply."""
    act = type_traits.ggml_type(weight_type).vec_dot_type
    if act is None:
        raise KeyError(weight_type)
    return act


def activation_rows(x: np.ndarray, weight_type: str, backend: str = "numba"):
    """x float32 [n, k] converted for a `weight_type` matmul, as the kernels take it:
    QuantizedRows for the Q8 types (backend "numba": refllm/ggml_cpu/cpu/quantize_activations.py, or
    "numpy": the reference; the same bits), float32 rows rounded to fp16/bf16 for F16/BF16
    weights, x itself for F32."""
    act = vec_dot_type(weight_type)
    if act == "F32":
        return x
    if backend == "numba" and act in _FAST_CONVERTERS:
        return _FAST_CONVERTERS[act](x)
    return _CONVERTERS[act](x)


def converted_activations(x: np.ndarray, weight_type: str):
    """x float32 [n, k] as a `weight_type` matmul sees it: (float32 [n, k], rows) where the
    first is what the dot products multiply the weights by (x itself for F32 weights) and
    `rows` is the QuantizedRows (None for the float types)."""
    converted = activation_rows(x, weight_type, backend="numpy")
    if isinstance(converted, activations.QuantizedRows):
        return activations.dequantized(converted), converted
    return converted, None


def block_minimums(raw: np.ndarray, weight_type: str, rows: int, byteorder: str = "<") -> np.ndarray:
    """The m field of every block of a Q4_1 or Q5_1 matrix: float32 [rows, blocks per row]."""
    block_bytes, offset = _MIN_FIELD[weight_type]
    blocks = raw.reshape(rows, -1, block_bytes)
    return np.ascontiguousarray(blocks[:, :, offset:offset + 2]).view(byteorder + "f2")[..., 0].astype(np.float32)


def q8_1_sum_correction(rows: activations.QuantizedRows) -> np.ndarray:
    """float32 [n, blocks]: s - d * sum(q) of each Q8_1 block, what the fp16 rounding of s
    adds to a Q4_1/Q5_1 dot product per unit of the weight block's m. The matmul is then
        y = dequantized(x) @ dequantized(W).T + correction @ minimums(W).T"""
    n, nb = rows.d.shape
    sums = rows.q.reshape(n, nb, -1).sum(axis=-1, dtype=np.int32).astype(np.float64)
    return (rows.s.astype(np.float64) - rows.d.astype(np.float64) * sums).astype(np.float32)
