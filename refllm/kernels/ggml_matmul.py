"""`mul_mat`: a weight matrix times activations, bit for bit as llama.cpp's x86 CPU backend.

ggml-cpu picks a kernel by weight type and batch size (ggml-cpu.c ggml_compute_forward_mul_mat:
weights in the repack buffer go to repack.cpp's gemv/gemm; otherwise tiled.cpp for K-quants at
8 or more tokens, then llamafile's tinyBLAS, then vec_dot). Each kernel sums in its own order,
and with quantized activations that order shows in the logits (see refllm/kernels/x86.py).

A family of types shares its kernels. Each family has two modules that must give the same bits,
found by convention as for the quantizers (quantize.py):

    backend   module                                       what it is for
    numpy     refllm/kernels/reference/ggml_<family>.py    readable, naming the C it follows
    numba     refllm/kernels/cpu/ggml_<family>.py          fast

Both have `mul_mat(raw, weight_type, shape, act) -> float32 [n, rows]`, where act is what
refllm.kernels.vec_dot.converted_activations returns for the type (QuantizedRows for the
quantized types, rounded float32 rows for F16/BF16, x itself for F32).

    family   types                       x86 paths reproduced
    legacy   Q4_1, Q5_0, Q5_1, Q8_0      vec_dot (one token) and tinyBLAS (two or more): the
                                         same float operations
    float    F32, F16, BF16              tinyBLAS (two or more tokens, k whole 8s, rows whole
                                         4s) and ggml_vec_dot_f32/_f16/_bf16 otherwise
    repack   Q4_0, Q4_K                  repack.cpp's q4_0_8x8 / q4_K_8x8 gemm (rows 0 .. n - n%4) and
                                         gemv (the last n % 4); rows not whole 8s: Q4_0 as legacy,
                                         Q4_K ValueError

For any other type `mul_mat` raises KeyError, and the caller falls back on the float32
identity of refllm/kernels/vec_dot.py (right up to summation order).
"""

from __future__ import annotations

import importlib

import numpy as np

from refllm.kernels import vec_dot

# weight type -> family. (Q4_0 is repack's: on AVX2 llama.cpp repacks it to q4_0_8x8 and
# multiplies it with repack.cpp's kernels.)
FAMILY: dict[str, str] = {"Q4_1": "legacy", "Q5_0": "legacy", "Q5_1": "legacy", "Q8_0": "legacy"}
FAMILY.update({"F32": "float", "F16": "float", "BF16": "float"})
FAMILY.update({"Q4_0": "repack", "Q4_K": "repack"})

_BACKEND_PACKAGE = {"numpy": "reference", "numba": "cpu"}


def exact_types() -> tuple[str, ...]:
    """The weight types `mul_mat` reproduces bit for bit."""
    return tuple(FAMILY)


def mul_mat(x: np.ndarray, raw: np.ndarray, weight_type: str, shape: tuple[int, int],
            backend: str = "numba") -> np.ndarray:
    """x float32 [n, k] times the little-endian `weight_type` matrix `raw` (uint8, shape
    (rows, k)) -> float32 [n, rows], with llama.cpp's activation rounding and its kernels'
    float32 operations. KeyError for a type not in exact_types()."""
    family = FAMILY[weight_type]
    module = importlib.import_module(f"refllm.kernels.{_BACKEND_PACKAGE[backend]}.ggml_{family}")
    converted, rows = vec_dot.converted_activations(np.ascontiguousarray(x, np.float32), weight_type)
    return module.mul_mat(raw, weight_type, shape, converted if rows is None else rows)
