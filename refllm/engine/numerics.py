"""The arithmetic of the forward pass, in one place so that it can be swapped.

The forward pass (transformer.py) does its matmuls, stores its keys and values, and applies its
activations only through a `Numerics`. The default, "f32", is the readable reference: weights
decoded exactly to float32, float32 activations and a float32 KV cache, NumPy's BLAS for the
products. A mode that reproduces llama.cpp's own roundings (quantized activations, an f16 KV
cache, the fp16 GELU table) is another row of NUMERICS, not a change to the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refllm.engine.weights import Matrix

# Rows of a weight matrix decoded at a time: about 1 MiB of float32, so the chunk stays in
# cache while it is multiplied and no float32 copy of a whole matrix is ever made.
CHUNK_ELEMENTS = 1 << 18


def matmul_f32(x: np.ndarray, w: Matrix) -> np.ndarray:
    """x [n, in] @ W.T -> [n, out] in float32, W decoded exactly, a chunk of rows at a time."""
    n, n_in = x.shape
    n_out = w.shape[0]
    y = np.empty((n, n_out), np.float32)
    rows = max(1, CHUNK_ELEMENTS // n_in)
    scratch = np.empty((min(rows, n_out), n_in), np.float32)
    for start in range(0, n_out, rows):
        stop = min(start + rows, n_out)
        chunk = w.dequantize_rows(start, stop, scratch[:stop - start])    # [stop - start, in]
        y[:, start:stop] = x @ chunk.T
    return y


def silu_f32(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), float32."""
    with np.errstate(over="ignore"):        # exp(-x) overflows to inf for x < -88: sigmoid is 0
        return x / (np.float32(1) + np.exp(-x))


SQRT_2_OVER_PI = np.float32(math.sqrt(2 / math.pi))


def gelu_tanh_f32(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), float32."""
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


@dataclass(frozen=True)
class Numerics:
    """How the forward pass computes: its matmul, its KV cache element type, its activations."""
    name: str
    matmul: Callable[[np.ndarray, Matrix], np.ndarray]    # (x [n, in], W [out, in]) -> [n, out]
    kv_dtype: type                                         # keys and values are stored as this
    activations: dict[str, Callable[[np.ndarray], np.ndarray]]


NUMERICS: dict[str, Numerics] = {
    "f32": Numerics("f32", matmul_f32, np.float32, {"silu": silu_f32, "gelu_tanh": gelu_tanh_f32}),
}
