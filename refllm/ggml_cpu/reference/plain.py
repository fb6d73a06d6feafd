"""llama.cpp's x86 matmul for float weights (F32, F16, BF16), float operation for float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/plain.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations (to f16 for F16
weights, to bf16 for BF16, not at all for F32), so both operands hold values that float32
represents exactly and every kernel below works on float32 [.., k] rows.

ggml_compute_forward_mul_mat (ggml-cpu.c) tries llamafile's tinyBLAS first (llamafile/sgemm.cpp);
on an AVX2 + FMA + F16C build without AVX512 it takes the product when

    n >= 2 tokens,  k % 8 == 0 (KN = 8),  rows % 4 == 0 (the AVX2 tiles are 4 rows high)

and otherwise every output is one ggml_vec_dot_<type> (vec.cpp) of a weight row and a token.

tinyBLAS (F32, F16 and BF16 alike: `load` widens f16/bf16 to float32, `madd` is _mm256_fmadd_ps):
    acc[8] = 0;  for l in 0, 8, 16, ..: acc[j] = fma(w[l + j], a[l + j], acc[j]);  y = hsum(acc)
    hsum = ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))        (hsum8 in refllm/ggml_cpu/x86.py)
The tiling (RM x RN blocks, threads) only decides which outputs are computed together.

ggml_vec_dot_f32 / _f16 / _bf16 (AVX2; the instructions checked in the build's disassembly):
    four 8-lane accumulators over each whole 32 elements: acc[r][j] = fma(w[32 b + 8 r + j], a[..], acc[r][j])
    c = (acc0 + acc2) + (acc1 + acc3)                                    8 lanes
    F32, F16:  t = c[0:4] + c[4:8];  s = (t0 + t1) + (t2 + t3)            (two hadds)
    BF16:      s = hsum8(c) = ((c0 + c4) + (c2 + c6)) + ((c1 + c5) + (c3 + c7))
    then the elements past the last whole 32 ("leftovers"), in order:
    F32:       float sumf = s;  sumf = sumf + w_i a_i (product rounded) for the first
               (leftovers & ~3) of them (GCC vectorized that loop into mulps + in-order addss),
               sumf = fma(w_i, a_i, sumf) for the last (leftovers & 3) (the scalar vfmadd231ss tail)
    F16, BF16: double sumf = s (BF16: 0.0 + s);  sumf += (double)(w_i * a_i)  (product rounded
               to float32);  y = (float) sumf
"""

from __future__ import annotations

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array, hsum8_array

F32 = np.float32
F64 = np.float64

WEIGHT_TYPES = ("F32", "F16", "BF16")


def uses_tinyblas(rows: int, n: int, k: int) -> bool:
    """Whether llama.cpp's AVX2 build multiplies a float (F32/F16/BF16) matrix of `rows` x `k`
    by n tokens with tinyBLAS (True) or with one vec_dot per output (False)."""
    return n >= 2 and k % 8 == 0 and rows % 4 == 0


def float_weights(raw: np.ndarray, weight_type: str, shape: tuple[int, int]) -> np.ndarray:
    """The float32 [rows, k] values of a little-endian F32, F16 or BF16 matrix raw (uint8),
    exactly (f16 and bf16 widen to float32 without rounding)."""
    rows, k = shape
    raw = np.ascontiguousarray(raw, np.uint8).reshape(-1)
    if weight_type == "F32":
        return raw.view("<f4").astype(F32).reshape(rows, k)
    if weight_type == "F16":
        return raw.view("<f2").astype(F32).reshape(rows, k)
    if weight_type == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(F32).reshape(rows, k)
    raise KeyError(weight_type)


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian `weight_type` (F32, F16 or BF16) matrix raw
    (uint8, shape (rows, k)) and the activations act, float32 [n, k] as
    converted_activations returns them (f16-rounded for F16, bf16-rounded for BF16), with
    the float32 operations of the kernel llama.cpp's AVX2 build picks (module docstring)."""
    w = float_weights(raw, weight_type, shape)
    a = np.asarray(act, F32)
    rows, k = shape
    if uses_tinyblas(rows, a.shape[0], k):
        return tinyblas(w, a)
    return vec_dot(w, a, weight_type)


def tinyblas(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    """y [n, rows] = a @ w.T as tinyBLAS computes it on AVX2: 8 lanes over k (k a multiple
    of 8) with fused multiply-adds, then hsum8. w [rows, k], a [n, k], float32."""
    rows, k = w.shape
    n = a.shape[0]
    acc = np.zeros((n, rows, 8), F32)
    for l in range(0, k, 8):
        acc = fma32_array(a[:, None, l:l + 8], w[None, :, l:l + 8], acc)
    return hsum8_array(acc)


def vec_dot(w: np.ndarray, a: np.ndarray, weight_type: str) -> np.ndarray:
    """y [n, rows]: ggml_vec_dot_<weight_type> (AVX2) of every weight row w [rows, k] with
    every token a [n, k] (float32), as the module docstring says."""
    rows, k = w.shape
    n = a.shape[0]
    whole = k - k % 32
    acc = np.zeros((n, rows, 4, 8), F32)
    for base in range(0, whole, 32):
        acc = fma32_array(a[:, None, base:base + 32].reshape(n, 1, 4, 8),
                          w[None, :, base:base + 32].reshape(1, rows, 4, 8), acc)
    c = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])        # [n, rows, 8]
    if weight_type == "BF16":
        s = hsum8_array(c)
    else:
        t = c[..., 0:4] + c[..., 4:8]
        s = (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])
    if weight_type == "F32":
        sumf = s
        plain = whole + ((k - whole) & ~3)
        for i in range(whole, plain):
            sumf = sumf + a[:, None, i] * w[None, :, i]                    # float32 product, then add
        for i in range(plain, k):
            sumf = fma32_array(a[:, None, i], w[None, :, i], sumf)
        return sumf.astype(F32)
    sumd = s.astype(F64)
    if weight_type == "BF16":
        sumd = 0.0 + sumd                                                   # sumf = 0; sumf += s
    for i in range(whole, k):
        sumd = sumd + (a[:, None, i] * w[None, :, i]).astype(F64)
    return sumd.astype(F32)
