"""`mul_mat`: a weight matrix times activations, bit for bit as llama.cpp's x86 CPU backend.

ggml-cpu picks a kernel by weight type and batch size (ggml-cpu.c ggml_compute_forward_mul_mat:
weights in the repack buffer go to repack.cpp's gemv/gemm; otherwise tiled.cpp for K-quants at
8 or more tokens, then llamafile's tinyBLAS, then vec_dot). Each kernel sums in its own order,
and with quantized activations that order shows in the logits (see refllm/ggml_cpu/x86.py).

A family of types shares its kernels; a type's family is its `matmul` column in
refllm/type_traits.py, or "repack" when llama.cpp repacks the matrix (`repack_rows`). Each
family has two modules that must give the same bits (FAMILIES below):

    backend   module                                  what it is for
    numpy     refllm/ggml_cpu/reference/<family>.py   readable, naming the C it follows
    numba     refllm/ggml_cpu/cpu/<family>.py         fast

Both have `mul_mat(raw, weight_type, shape, act) -> float32 [n, rows]`, where act is what
refllm.ggml_cpu.vec_dot.activation_rows returns for the type (QuantizedRows for the quantized
types, rounded float32 rows for F16/BF16, x itself for F32).

    family   types                       x86 paths reproduced
    legacy   Q4_0, Q4_1, Q5_0, Q5_1,     vec_dot (one token) and tinyBLAS (two or more): the
             Q8_0                        same float operations
    plain    F32, F16, BF16              tinyBLAS (two or more tokens, k whole 8s, rows whole
                                         4s) and ggml_vec_dot_f32/_f16/_bf16 otherwise
    repack   Q4_0, IQ4_NL, MXFP4, Q4_K   repack.cpp's q4_0_8x8 / iq4_nl_8x8 / mxfp4_8x8 / q4_K_8x8
             in the repack buffer        gemm (rows 0 .. n - n%4) and gemv (the last n % 4)
    kquants  Q2_K, Q3_K, Q5_K, Q6_K,     tiled.cpp's AVX2 microtiles (8 or more tokens) and
             Q4_K not repacked           ggml_vec_dot_q<N>_K_q8_K (fewer)
    lut4     IQ4_NL, MXFP4 not           IQ4_NL: tinyBLAS (two or more tokens), vec_dot (one);
             repacked; NVFP4             MXFP4, NVFP4: ggml_vec_dot_<type>_q8_0 (every batch size)
    lowbit   Q1_0, Q2_0                  ggml_vec_dot_q1_0_q8_0 (AVX2), ggml_vec_dot_q2_0_q8_0
                                         (generic C) at every batch size
    iquants  IQ2_XXS, IQ2_XS, IQ2_S,     tiled.cpp's AVX2 microtiles (8 or more tokens; not TQ)
             IQ3_XXS, IQ3_S, IQ1_S,      and ggml_vec_dot_<type>_q8_K (fewer; TQ: always)
             IQ1_M, IQ4_XS, TQ1_0, TQ2_0

llama.cpp repacks a Q4_0, IQ4_NL, MXFP4 or Q4_K matrix at load (the CPU_REPACK buffer) when its
rows are whole 8s and it is a MUL_MAT weight; `family` decides. token_embd, read by GET_ROWS, is
not repacked; but where it is also the output matrix (no output.weight), llama.cpp loads a second
copy of it for the output's MUL_MAT (llama_model_loader: TENSOR_DUPLICATED, placed with the
output layer's buffer types), and that copy is repacked like any weight: the tied output is a
MUL_MAT weight (checked end to end: tied synthetic Q4_0, Q4_K, IQ4_NL, MXFP4 models give
llama.cpp's logits bit for bit only so).

Every family is checked bit for bit against llama.cpp's own products: golden/matmul (a real
run of synthetic models) and golden/matmul_kernels (its compiled kernels on random blocks of the
types refllm cannot quantize). For any other type `mul_mat` raises KeyError, and the caller
falls back on the float32 identity of refllm/ggml_cpu/vec_dot.py (right up to summation order).
"""

from __future__ import annotations

import numpy as np

from refllm import type_traits
from refllm.ggml_cpu import vec_dot
from refllm.ggml_cpu.cpu import iquants as iquants_numba
from refllm.ggml_cpu.cpu import kquants as kquants_numba
from refllm.ggml_cpu.cpu import legacy as legacy_numba
from refllm.ggml_cpu.cpu import lowbit as lowbit_numba
from refllm.ggml_cpu.cpu import lut4 as lut4_numba
from refllm.ggml_cpu.cpu import plain as plain_numba
from refllm.ggml_cpu.cpu import repack as repack_numba
from refllm.ggml_cpu.reference import iquants, kquants, legacy, lowbit, lut4, plain, repack

# matmul family -> its kernels: (NumPy module, Numba module)
FAMILIES = {
    "legacy": (legacy, legacy_numba),
    "plain": (plain, plain_numba),
    "kquants": (kquants, kquants_numba),
    "lut4": (lut4, lut4_numba),
    "lowbit": (lowbit, lowbit_numba),
    "iquants": (iquants, iquants_numba),
    "repack": (repack, repack_numba),
}


def family(weight_type: str, shape: tuple[int, int], mul_mat_weight: bool = True) -> str | None:
    """The family whose kernels llama.cpp runs for a `weight_type` matrix of `shape` (rows, k),
    or None when refllm does not reproduce them. mul_mat_weight: the matrix is loaded as a
    MUL_MAT weight, so it may be repacked (every matrix llama.cpp multiplies, the tied output
    included: see the module docstring); False: kept in the plain CPU buffer."""
    traits = type_traits.ggml_type(weight_type)
    if mul_mat_weight and traits.repack_rows and shape[0] % traits.repack_rows == 0:
        return "repack"
    return traits.matmul


def mul_mat(x: np.ndarray, raw: np.ndarray, weight_type: str, shape: tuple[int, int],
            backend: str = "numba", mul_mat_weight: bool = True, act=None) -> np.ndarray:
    """x float32 [n, k] times the little-endian `weight_type` matrix `raw` (uint8, shape
    (rows, k)) -> float32 [n, rows], with llama.cpp's activation rounding and its kernels'
    float32 operations (see `family` for mul_mat_weight). KeyError when `family` is None.
    act: x already converted (vec_dot.activation_rows for this weight type), when several
    matrices multiply the same x."""
    family_name = family(weight_type, shape, mul_mat_weight)
    if family_name is None:
        raise KeyError(weight_type)
    numpy_module, numba_module = FAMILIES[family_name]
    module = numpy_module if backend == "numpy" else numba_module
    if act is None:
        act = vec_dot.activation_rows(np.ascontiguousarray(x, np.float32), weight_type, backend)
    return module.mul_mat(raw, weight_type, shape, act)
