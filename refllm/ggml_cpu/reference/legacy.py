"""llama.cpp's x86 matmul for the legacy types, float operation for float operation (NumPy).

The Numba twin is refllm/ggml_cpu/cpu/legacy.py and must give the same bits;
refllm/ggml_cpu/matmul.py picks the family and converts the activations.

The legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) share one structure in every x86 path that
multiplies them by Q8_0/Q8_1 activations: ggml_vec_dot_<type>_q8_<0|1> (AVX2) and
llamafile's tinyBLAS_Q0_AVX. For one weight row w and one activation row a:

    acc[8] = 0                                   eight float32 lanes
    summs  = 0                                   (Q4_1, Q5_1 only)
    for each block b of 32:
        lane[j] = sum(w_i * a_i, i = 4j .. 4j+3)     int32: maddubs + madd, elements in order
        acc[j]  = fma(d_w * d_a, lane[j], acc[j])     d_w * d_a rounded to float32 first
        summs  += m_w * s_a                           (Q4_1, Q5_1; an exact product of fp16s)
    y = hsum8(acc) + summs

where w_i are the block's signed quants (q - 8 for Q4_0, q - 16 for Q5_0, q for Q8_0) or its
unsigned ones (Q4_1, Q5_1), and a_i, d_a, s_a come from refllm.ggml_cpu.reference.quantize_activations.
"""

from __future__ import annotations

import numpy as np

from refllm.ggml_cpu.x86 import fma32_array, hsum8_array
from refllm.kernels.reference.fields import bits, f16, nibbles

F32 = np.float32

# type -> (block bytes, offset of qs, offset of qh or None, has a min m, quant offset)
#   block_q4_0 { d; qs[16] }          block_q4_1 { d; m; qs[16] }
#   block_q5_0 { d; qh[4]; qs[16] }   block_q5_1 { d; m; qh[4]; qs[16] }
#   block_q8_0 { d; qs[32] (int8) }
LEGACY_BLOCKS: dict[str, tuple[int, int, int | None, bool, int]] = {
    "Q4_0": (18, 2, None, False, 8),
    "Q4_1": (20, 4, None, True, 0),
    "Q5_0": (22, 6, 2, False, 16),
    "Q5_1": (24, 8, 4, True, 0),
    "Q8_0": (34, 2, None, False, 0),
}


def legacy_quants(raw: np.ndarray, weight_type: str, rows: int):
    """The integer quants and scales of a legacy-type matrix's rows:
    (w int8 [rows, k], d float32 [rows, nb], m float32 [rows, nb] or None)."""
    block_bytes, qs_at, qh_at, has_min, offset = LEGACY_BLOCKS[weight_type]
    blocks = raw.reshape(-1, block_bytes)                               # [rows * nb, block_bytes]
    if weight_type == "Q8_0":
        q = blocks[:, 2:34].view(np.int8).astype(np.int16)
    else:
        q = nibbles(blocks[:, qs_at:qs_at + 16]).astype(np.int16)     # [rows * nb, 32]
        if qh_at is not None:
            q |= bits(blocks[:, qh_at:qh_at + 4], 1).astype(np.int16) << 4
    w = (q - offset).astype(np.int8).reshape(rows, -1)
    d = f16(blocks, 0).reshape(rows, -1)
    m = f16(blocks, 2).reshape(rows, -1) if has_min else None
    return w, d, m


def mul_mat(raw: np.ndarray, weight_type: str, shape: tuple[int, int], act) -> np.ndarray:
    """y float32 [n, rows] for the little-endian `weight_type` matrix raw (uint8, shape (rows,
    k)) and activations act (QuantizedRows: Q8_0, or Q8_1 for Q4_1/Q5_1)."""
    w, d_w, m_w = legacy_quants(raw, weight_type, shape[0])
    return legacy_matmul(w, d_w, m_w, act.q, act.d, act.s)


def legacy_matmul(w, d_w, m_w, a, d_a, s_a) -> np.ndarray:
    """y [n, rows] for weights (w int8 [rows, k], d_w [rows, nb], m_w [rows, nb] or None) and
    activations (a int8 [n, k], d_a [n, nb], s_a [n, nb] or None), as the module docstring
    says."""
    rows, k = w.shape
    n = a.shape[0]
    nb = k // 32
    acc = np.zeros((n, rows, 8), F32)
    summs = np.zeros((n, rows), F32)
    for b in range(nb):
        wb = w[:, 32 * b:32 * b + 32].astype(np.int32).reshape(rows, 8, 4)          # [rows, lane, 4]
        ab = a[:, 32 * b:32 * b + 32].astype(np.int32).reshape(n, 8, 4)             # [n, lane, 4]
        lanes = np.einsum("rjk,tjk->trj", wb, ab).astype(F32)                      # [n, rows, 8]
        scale = (d_w[None, :, b] * d_a[:, b, None]).astype(F32)                     # [n, rows]
        acc = fma32_array(scale[..., None], lanes, acc)
        if m_w is not None:
            summs = summs + m_w[None, :, b] * s_a[:, b, None]
    return hsum8_array(acc) + summs
