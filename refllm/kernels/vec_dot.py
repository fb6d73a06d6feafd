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

from refllm.kernels.reference import activations

# weight type -> the type its activations are converted to (type_traits_cpu[].vec_dot_type)
VEC_DOT_TYPE: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "IQ4_NL": "Q8_0", "MXFP4": "Q8_0", "NVFP4": "Q8_0",
    "Q1_0": "Q8_0", "Q2_0": "Q8_0",
    "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
    "IQ2_XXS": "Q8_K", "IQ2_XS": "Q8_K", "IQ2_S": "Q8_K", "IQ3_XXS": "Q8_K", "IQ3_S": "Q8_K",
    "IQ1_S": "Q8_K", "IQ1_M": "Q8_K", "IQ4_XS": "Q8_K", "TQ1_0": "Q8_K", "TQ2_0": "Q8_K",
}

# activation type -> its converter in reference/activations.py (float32 rows -> QuantizedRows
# or rounded float32 rows)
_CONVERTERS = {"Q8_0": activations.q8_0, "Q8_1": activations.q8_1, "Q8_K": activations.q8_k,
               "F16": activations.f16, "BF16": activations.bf16}

# Q4_1 and Q5_1 blocks both begin { ggml_half d; ggml_half m; ... }: (block bytes, offset of m)
_MIN_FIELD = {"Q4_1": (20, 2), "Q5_1": (24, 2)}


def vec_dot_type(weight_type: str) -> str:
    """The activation type a `weight_type` matmul converts its activations to. KeyError for a
    type llama.cpp's CPU backend cannot multiply."""
    return VEC_DOT_TYPE[weight_type]


def converted_activations(x: np.ndarray, weight_type: str):
    """x float32 [n, k] as a `weight_type` matmul sees it: (float32 [n, k], rows) where the
    first is what the dot products multiply the weights by (x itself for F32 weights) and
    `rows` is the QuantizedRows (None for the float types)."""
    act = vec_dot_type(weight_type)
    if act == "F32":
        return x, None
    converted = _CONVERTERS[act](x)
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


# ---- integer dot products: the weight types whose matmul refllm runs as ggml's vec_dot -------
# weight type -> the activation type its integer kernels take (reference/int_dot.py,
# cpu/int_dot.py, one function per type, named in lower case)
INTEGER_KERNELS: dict[str, str] = {
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
    "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
}
INTEGER_BACKENDS = ("numpy", "numba")


def integer_matmul(x: np.ndarray, raw, weight_type: str, shape, backend: str = "numba", *,
                   act: activations.QuantizedRows | None = None) -> np.ndarray:
    """y = x @ W.T as llama.cpp's CPU backend computes it, from the weights' raw bytes.

    x:           float32 [n, cols] activations
    raw:         the weight matrix's bytes as stored (bytes or a uint8 array, rows * row_bytes,
                 little-endian); never decoded to float32
    weight_type: a name of INTEGER_KERNELS ("Q4_K", ...)
    shape:       (rows, cols), numpy order: rows outputs, cols a whole number of blocks
    backend:     "numba" (fast, single loop over rows; runs on however many threads Numba
                 has, which is one: the kernels have no parallel loops) or "numpy" (the
                 readable reference, reference/int_dot.py)
    act:         optional: x already converted, `converted_activations(x, weight_type)[1]`;
                 it is used as given (x is then only checked for its shape), which saves the
                 conversion (about 0.1 ms in NumPy for one row) when several matrices of the
                 same vec_dot_type multiply the same x

    Returns float32 [n, rows]. x is first rounded to the type's vec_dot_type by
    `converted_activations`, exactly as ggml's x86 quantize_row_q8_* does; then every output
    is ggml's generic C vec_dot (`ggml_vec_dot_<w>_<a>_generic`) of one weight row with one
    activation row: integer sums of quants per block, combined by float32 scales in the C's
    order, bit for bit. Both backends give the same bits. The result equals, up to float32
    summation order,
        dequantized(activations) @ dequantize(W).T   (+ q8_1_sum_correction @ block_minimums.T
                                                       for Q4_1 and Q5_1)
    ggml's AVX2 kernels add the same terms in another order (and with fused multiply-adds),
    so they differ from this in the last bits. ValueError for another type, backend or shape.
    """
    from refllm.formats.ggml_types import ggml_type

    if weight_type not in INTEGER_KERNELS:
        raise ValueError(f"no integer dot product for {weight_type}; these have one: "
                         f"{', '.join(INTEGER_KERNELS)}")
    if backend not in INTEGER_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(INTEGER_BACKENDS)}")
    x = np.asarray(x, np.float32)
    rows, cols = (int(v) for v in shape)
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be float32 [n, {cols}], not {x.shape}")
    row = ggml_type(weight_type)
    if cols % row.block_elems:
        raise ValueError(f"rows of {cols} weights are not whole {weight_type} blocks of {row.block_elems}")
    nb = cols // row.block_elems
    flat = raw.reshape(-1).view(np.uint8) if isinstance(raw, np.ndarray) else np.frombuffer(raw, np.uint8)
    if flat.size != rows * nb * row.block_bytes:
        raise ValueError(f"{flat.size} bytes is not {rows} rows of {nb} {weight_type} blocks "
                         f"({row.block_bytes} bytes each)")
    act_type = INTEGER_KERNELS[weight_type]
    if act is None:
        _, act = converted_activations(x, weight_type)
    elif (act.q.shape != x.shape or act.d.shape != (x.shape[0], nb)
          or (act.s is None) != (act_type != "Q8_1") or (act.bsums is None) != (act_type != "Q8_K")):
        raise ValueError(f"act is not {act_type} activations of x's shape {x.shape}")
    n = x.shape[0]
    if backend == "numpy":
        from refllm.kernels.reference import int_dot as reference
        return getattr(reference, weight_type.lower())(flat, rows, cols, act)

    from refllm.kernels.cpu import int_dot as cpu
    kernel = getattr(cpu, weight_type.lower())
    w = np.ascontiguousarray(flat).reshape(rows, nb, row.block_bytes)
    if w.flags.writeable:            # always read-only, as an mmapped model's bytes are, so that
        w = w.view()                 # Numba compiles one version of each kernel, not two
        w.flags.writeable = False
    q = np.ascontiguousarray(act.q).reshape(n, nb, row.block_elems)
    d = np.ascontiguousarray(act.d, np.float32)
    out = np.empty((n, rows), np.float32)
    if rows == 0 or n == 0:
        return out
    if act_type == "Q8_1":
        kernel(w, q, d, np.ascontiguousarray(act.s, np.float32), out)
    elif act_type == "Q8_K":
        kernel(w, q, d, np.ascontiguousarray(act.bsums).reshape(n, nb, 16), out)
    else:
        kernel(w, q, d, out)
    return out
