"""The arithmetic of the forward pass, in one place so that it can be swapped.

The forward pass (transformer.py) does its matmuls, stores its keys and values, and applies its
activations only through a `Numerics`. Two rows of NUMERICS:

    f32    the readable reference: weights decoded exactly to float32, float32 activations and
           a float32 KV cache, NumPy's BLAS for the products.
    ggml   llama.cpp's CPU backend, rounding for rounding: before each matmul the activations
           are converted to the weight type's vec_dot_type (Q8_0, Q8_1, Q8_K with x86's
           rounding, or fp16/bf16; refllm.ggml_cpu.vec_dot), the KV cache is f16 (so q and the
           attention probabilities are rounded to f16 where they meet it, see
           transformer.attention), GELU goes through ggml's fp16 table, and every product,
           exp and SiLU is computed with the float32 operations of llama.cpp's x86 kernels, in
           their order (refllm.ggml_cpu.matmul, refllm.ggml_cpu.x86). The logits are then
           llama.cpp's bit for bit. The order matters: with quantized activations, a one-ulp
           difference now and then flips an activation's Q8 rounding, and the flips grow
           layer by layer into a mean KLD of about 5e-3 on SmolLM2, as large as leaving the
           roundings out altogether.

The steps that both modes share follow ggml's algorithm already (rms_norm's float64 sum,
rope's float32 angles): they cost nothing and leave one way to compute each. What only x86
does (the C library's cosf/sinf, the fused multiply-adds of rope's rotation) is ggml's alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from refllm.engine.config import ModelConfigError
from refllm.engine.weights import Matrix, ModelWeights
from refllm.ggml_cpu import matmul, one_token, vec_dot, x86
from refllm.ggml_cpu.reference import quantize_activations
from refllm.type_traits import type_name

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


def matmul_ggml_is_exact(w: Matrix) -> bool:
    """Whether matmul_ggml reproduces llama.cpp's kernel for w bit for bit (refllm.ggml_cpu.
    matmul has its family; a big-endian file's matrices are not reproduced). Every matrix
    the forward pass multiplies by is a MUL_MAT weight to llama.cpp, and may be repacked: a
    tied output too (llama.cpp loads a copy of token_embd for it)."""
    family = matmul.family(type_name(w.ggml_type), w.shape, mul_mat_weight=True)
    return family is not None and w.byteorder == "<"


def matmul_ggml(x: np.ndarray, w: Matrix) -> np.ndarray:
    """x [n, in] @ W.T -> [n, out] as llama.cpp's CPU backend computes it.

    Where matmul_ggml_is_exact(w), with llama.cpp's kernel for the type and batch size, bit
    for bit. Otherwise the same up to float32 summation order: x converted to W's
    vec_dot_type (quantized to Q8_0/Q8_1/Q8_K, or rounded to fp16/bf16), multiplied by W
    decoded exactly, and for Q4_1/Q5_1 weights the fp16 rounding of each activation block's sum
    s added through the weight blocks' minimums m."""
    weight_type = type_name(w.ggml_type)
    if matmul_ggml_is_exact(w):
        return matmul.mul_mat(x, w.raw, weight_type, w.shape, mul_mat_weight=True)
    converted, rows = vec_dot.converted_activations(x, weight_type)
    y = matmul_f32(converted, w)
    if vec_dot.vec_dot_type(weight_type) == "Q8_1":
        minimums = vec_dot.block_minimums(w.raw, weight_type, w.shape[0], w.byteorder)    # [out, blocks]
        y += vec_dot.q8_1_sum_correction(rows) @ minimums.T
    return y


@contextlib.contextmanager
def one_numba_thread() -> Iterator[None]:
    """Numba's kernels run on one thread inside the block (its thread count is restored after)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def matmuls_f32(x: np.ndarray, ws: Sequence[Matrix]) -> list[np.ndarray]:
    """matmul_f32 of x by each of ws. For one token, the fused products of
    refllm.ggml_cpu.one_token.gemv_f32 where the type has one (the weights decoded in registers,
    the rows shared among Numba's threads). Otherwise the weights are decoded on one thread:
    ~1 MiB at a time is too little for Numba's parallel loops to pay off (measured: two threads
    decode SmolLM2 40% slower than one, and they fight BLAS's threads); the products use BLAS's
    threads."""
    ys: list[np.ndarray | None] = [None] * len(ws)
    if x.shape[0] == 1:
        row = np.ascontiguousarray(x[0], np.float32)
        for i, w in enumerate(ws):
            if w.byteorder == "<":
                y = one_token.gemv_f32(w.raw, type_name(w.ggml_type), w.shape, row)
                ys[i] = None if y is None else y[None, :]
    with one_numba_thread():
        return [matmul_f32(x, w) if y is None else y for y, w in zip(ys, ws)]


def matmuls_ggml(x: np.ndarray, ws: Sequence[Matrix]) -> list[np.ndarray]:
    """matmul_ggml of x by each of ws, with x converted once per vec_dot_type: the same rows
    each matmul would convert (llama.cpp converts them once per matmul, to the same bits)."""
    converted = {}
    ys = []
    for w in ws:
        weight_type = type_name(w.ggml_type)
        if not matmul_ggml_is_exact(w):
            ys.append(matmul_ggml(x, w))
            continue
        key = vec_dot.vec_dot_type(weight_type)
        if key not in converted:
            converted[key] = vec_dot.activation_rows(np.ascontiguousarray(x, np.float32), weight_type)
        ys.append(matmul.mul_mat(x, w.raw, weight_type, w.shape, mul_mat_weight=True, act=converted[key]))
    return ys


def _all_matrices(weights: ModelWeights) -> list[Matrix]:
    """Every matrix the forward pass multiplies by (the output matrix once, even when tied)."""
    return [weights.output] + [m for layer in weights.layers for m in layer.matrices.values()]


def no_inexact_matrices(weights: ModelWeights) -> list[str]:
    """f32 makes no claim to reproduce llama.cpp's kernels: nothing to report."""
    return []


def ggml_inexact_matrices(weights: ModelWeights) -> list[str]:
    """The matrices ("name (TYPE)") whose products matmul_ggml computes only up to float32
    summation order, not bit for bit. ModelConfigError for a type llama.cpp's CPU backend has
    no matmul for."""
    inexact = []
    for w in _all_matrices(weights):
        name = type_name(w.ggml_type)
        try:
            vec_dot.vec_dot_type(name)
        except KeyError:
            raise ModelConfigError(f"{w.name}: llama.cpp's CPU backend has no matrix product for {name} weights") \
                from None
        if not matmul_ggml_is_exact(w):
            inexact.append(f"{w.name} ({name})")
    return inexact


def silu_f32(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), float32."""
    with np.errstate(over="ignore"):        # exp(-x) overflows to inf for x < -88: sigmoid is 0
        return x / (np.float32(1) + np.exp(-x))


SQRT_2_OVER_PI = np.float32(math.sqrt(2 / math.pi))


def gelu_tanh_f32(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), float32."""
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def gelu_tanh_fp16_table() -> np.ndarray:
    """ggml_table_gelu_f16 as float32 [65536]: for every fp16 bit pattern h, GELU of its value
    rounded to fp16. ggml_gelu_f32 in float32, in C's order as GCC compiles it for x86 (the
    inner 1 + a x^2 contracted into a fused multiply-add), with the C library's tanhf:
        0.5 x (1 + tanhf(sqrt(2/pi) x fma(0.044715 x, x, 1)))"""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = x86.fma32_array(np.float32(0.044715) * x, x, np.float32(1))
        t = x86.tanhf(SQRT_2_OVER_PI * x * inner)
        gelu = np.float32(0.5) * x * (np.float32(1) + t)
    return quantize_activations.f16(gelu[None, :])[0]


_GELU_TABLE: list[np.ndarray] = []


def gelu_table() -> np.ndarray:
    """gelu_tanh_fp16_table(), made on first use and kept."""
    if not _GELU_TABLE:
        _GELU_TABLE.append(gelu_tanh_fp16_table())
    return _GELU_TABLE[0]


def gelu_tanh_ggml(x: np.ndarray) -> np.ndarray:
    """GELU as ggml_vec_gelu_f32 computes it with GGML_GELU_FP16: 0 for x <= -10, x for
    x >= 10, else the table entry of x rounded to fp16."""
    return x86.fp16_table_lookup(x, gelu_table(), np.float32(-10), np.float32(10))


def cache_matmul_f32(rows: np.ndarray, columns: np.ndarray, n_tokens: int, needed=None, nonzero=None) -> np.ndarray:
    """columns [N, K] @ rows [M, K].T -> [N, M], float32 BLAS (the hints are not used)."""
    return columns @ rows.T


def cache_matmul_ggml(rows: np.ndarray, columns: np.ndarray, n_tokens: int, needed=None, nonzero=None) -> np.ndarray:
    """columns [N, K] @ rows [M, K].T -> [N, M] as ggml multiplies an F16 KV cache: tinyBLAS
    when the batch has two or more tokens, vec_dot_f16 for one. K (a head's width, or the
    cells attended) is whole 32s (kv_cache.CELL_PAD), as in llama.cpp, whose padded cache length
    decides which kernel runs and where its lanes fall. Hints that let the kernel skip work
    without changing a bit the caller reads: needed[i] (only out[i, :needed[i]] is read) and
    nonzero[i] (columns[i, nonzero[i]:] is zero)."""
    assert rows.shape[1] % 32 == 0, rows.shape
    return x86.f16_matmul(rows, columns, tinyblas=n_tokens >= 2, needed=needed, nonzero=nonzero)


def cos_sin_f32(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of float32 angles, NumPy's."""
    return np.cos(angles), np.sin(angles)


def rotate_f32(x0: np.ndarray, x1: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (x0, x1) turned by the angle of (cos, sin), float32."""
    return x0 * cos - x1 * sin, x0 * sin + x1 * cos


def unchanged(x: np.ndarray) -> np.ndarray:
    """x as float32, unchanged: what a float32 KV cache does to its operands."""
    return np.asarray(x, np.float32)


def soft_max_f32(scores: np.ndarray, scale, hidden: np.ndarray) -> np.ndarray:
    """softmax(scores * scale, -inf where hidden) over the last axis, float32 NumPy."""
    w = np.where(hidden, np.float32(-np.inf), scores * np.float32(scale))
    w -= w.max(axis=-1, keepdims=True)
    p = np.exp(w)
    return p / p.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Numerics:
    """How the forward pass computes: its matmuls, its KV cache element type, what an operand of
    a product with the cache is rounded to, and those products, its softmax, its activations,
    and rope's trigonometry and rotation."""
    name: str
    matmuls: Callable[[np.ndarray, Sequence[Matrix]], list[np.ndarray]]   # (x [n, in], [W [out, in]]) -> [[n, out]]
    kv_dtype: type                                         # keys and values are stored as this
    to_kv_type: Callable[[np.ndarray], np.ndarray]         # float32 x rounded to kv_dtype, as float32
    cache_matmul: Callable[..., np.ndarray]                # (rows, columns, n_tokens, needed=, nonzero=)
    soft_max: Callable[[np.ndarray, np.float32, np.ndarray], np.ndarray]  # (scores, scale, hidden)
    activations: dict[str, Callable[[np.ndarray], np.ndarray]]            # SiLU, GELU
    cos_sin: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]        # float32 angles -> (cos, sin)
    rotate: Callable[..., tuple[np.ndarray, np.ndarray]]                  # (x0, x1, cos, sin) -> rotated pair
    inexact_matrices: Callable[[ModelWeights], list[str]]  # what it does not reproduce bit for bit


NUMERICS: dict[str, Numerics] = {
    "f32": Numerics("f32", matmuls_f32, np.float32, unchanged, cache_matmul_f32, soft_max_f32,
                    {"silu": silu_f32, "gelu_tanh": gelu_tanh_f32}, cos_sin_f32, rotate_f32,
                    no_inexact_matrices),
    "ggml": Numerics("ggml", matmuls_ggml, np.float16, x86.round_to_f16, cache_matmul_ggml, x86.soft_max,
                     {"silu": x86.silu, "gelu_tanh": gelu_tanh_ggml}, x86.cos_sin, x86.rotate,
                     ggml_inexact_matrices),
}
