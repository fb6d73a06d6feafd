"""Numba twin of refllm/ggml_cpu/reference/plain.py: the same float32 operations in the same
order, so the same bits, without ever widening the whole matrix to float32.

F16 goes through refllm/ggml_cpu/x86.py's f16_matmul (tinyBLAS F16 and ggml_vec_dot_f16, the
kernels of the KV-cache products), on the rows widened about 1 MiB at a time. F32 and BF16 go
through the kernels here, which read the weights' bytes: for vec_dot, and for tinyBLAS with
fewer than FEW_TOKENS tokens, one row is widened at a time and every token multiplied by it;
for tinyBLAS with more tokens, a chunk of rows is widened transposed, so that the inner loop
runs across rows and vectorizes. tinyBLAS is the same arithmetic for F32 and BF16 (8 lanes of
fused multiply-adds, hsum8); their vec_dots differ in the lane reduction and the leftovers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refllm.ggml_cpu.reference.plain import float_weights, uses_tinyblas
from refllm.ggml_cpu.x86 import f16_matmul, fma32, hsum8, tinyblas_lanes
from refllm.kernels.cpu.fp import bf16_to_f32, f32_from_bits, u16, u32

# Weight rows widened to float32 at a time (F16; F32 and BF16 with tinyBLAS): about 1 MiB.
CHUNK_BYTES = 1 << 20
# Below this many tokens, tinyBLAS's products are taken one weight row at a time (tinyblas_dot),
# from then on a chunk of rows at a time (tinyblas_dot_t).
FEW_TOKENS = 4

_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows], bit-identical to the reference's mul_mat (same arguments: the
    little-endian F32/F16/BF16 matrix raw, uint8 (rows, k), and act float32 [n, k] as
    converted_activations returns it)."""
    rows, k = shape
    item = _ITEM_BYTES[weight_type]
    flat = (raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, np.uint8)).reshape(-1).view(np.uint8)
    a = np.ascontiguousarray(act, np.float32)
    n = a.shape[0]
    out = np.empty((n, rows), np.float32)
    if n == 0 or rows == 0:
        return out
    tinyblas = uses_tinyblas(rows, n, k)
    if weight_type == "F16":
        step = max(1, CHUNK_BYTES // (4 * max(k, 1)))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            w = float_weights(flat[start * k * item:stop * k * item], weight_type, (stop - start, k))
            out[:, start:stop] = f16_matmul(w, a, tinyblas)
        return out
    by_row = flat[:rows * k * item].reshape(rows, k * item)
    bf16 = weight_type == "BF16"
    if not tinyblas:
        vec_dot(by_row, bf16, a, out)
    elif n < FEW_TOKENS:
        tinyblas_dot(by_row, bf16, a, out)
    else:
        step = max(8, CHUNK_BYTES // (4 * max(k, 1)))
        w_t = np.empty((k, min(step, rows)), np.float32)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            chunk = w_t[:, :stop - start] if stop - start < w_t.shape[1] else w_t
            tinyblas_dot_t(by_row, start, stop, bf16, chunk, a, out)
    return out


@njit(inline="always")
def _widen_row(raw, r, bf16, w):
    """Row r of an F32 (bf16 False) or BF16 (bf16 True) matrix's bytes raw [rows, row bytes],
    widened into the float32 buffer w [k]."""
    if bf16:
        for e in range(w.shape[0]):
            w[e] = bf16_to_f32(u16(raw, r, 2 * e))
    else:
        for e in range(w.shape[0]):
            w[e] = f32_from_bits(u32(raw, r, 4 * e))


@njit(cache=True)
def tinyblas_dot(raw, bf16, a, out):
    """out[t, r] = tinyBLAS's dot product (AVX2, F32 or BF16) of weight row r and token a[t]:
    lane l of 8 adds the products of elements l, l+8, ... with fused multiply-adds, then
    hsum8. raw uint8 [rows, row bytes] (F32, or BF16 when bf16), a float32 [n, k], k whole 8s."""
    n, k = a.shape
    w = np.empty(k, np.float32)
    acc = np.empty(8, np.float32)
    for r in range(raw.shape[0]):
        _widen_row(raw, r, bf16, w)
        for i in range(n):
            acc[:] = 0
            for l in range(0, k, 8):
                for t in range(8):
                    acc[t] = fma32(w[l + t], a[i, l + t], acc[t])
            out[i, r] = hsum8(acc)


@njit(cache=True)
def tinyblas_dot_t(raw, start, stop, bf16, w_t, a, out):
    """tinyblas_dot's products for the weight rows start..stop, arranged for many tokens: the
    rows are widened into w_t float32 [k, stop - start] (transposed, so that the inner loop
    runs across rows and vectorizes), then every token a[t] sweeps them into out[t, start:stop]."""
    n, k = a.shape
    m = stop - start
    w = np.empty(k, np.float32)
    for j in range(m):
        _widen_row(raw, start + j, bf16, w)
        for e in range(k):
            w_t[e, j] = w[e]
    tinyblas_lanes(w_t[:, :m], a, out[:, start:stop])


@njit(cache=True)
def vec_dot(raw, bf16, a, out):
    """out[t, r] = ggml_vec_dot_f32 (bf16 False) or ggml_vec_dot_bf16 (bf16 True) of weight
    row r and token a[t], as the reference's vec_dot computes it. raw uint8 [rows, row bytes],
    a float32 [n, k]."""
    n, k = a.shape
    whole = k - k % 32
    plain = whole + ((k - whole) & ~3)
    w = np.empty(k, np.float32)
    acc = np.empty((4, 8), np.float32)
    c = np.empty(8, np.float32)
    for r in range(raw.shape[0]):
        _widen_row(raw, r, bf16, w)
        for i in range(n):
            acc[:, :] = 0
            for base in range(0, whole, 32):
                for q in range(4):
                    for l in range(8):
                        e = base + 8 * q + l
                        acc[q, l] = fma32(w[e], a[i, e], acc[q, l])
            for l in range(8):
                c[l] = np.float32(np.float32(acc[0, l] + acc[2, l]) + np.float32(acc[1, l] + acc[3, l]))
            if bf16:
                total = 0.0 + np.float64(hsum8(c))
                for e in range(whole, k):
                    total += np.float64(np.float32(w[e] * a[i, e]))
                out[i, r] = np.float32(total)
            else:
                t0 = np.float32(c[0] + c[4])
                t1 = np.float32(c[1] + c[5])
                t2 = np.float32(c[2] + c[6])
                t3 = np.float32(c[3] + c[7])
                s = np.float32(np.float32(t0 + t1) + np.float32(t2 + t3))
                for e in range(whole, plain):
                    s = np.float32(s + np.float32(w[e] * a[i, e]))
                for e in range(plain, k):
                    s = fma32(w[e], a[i, e], s)
                out[i, r] = s
