"""The first quantization formats: one fp16 scale (and maybe a min) per block of 32 or so.

Weights j and j + 16 of a 32-weight block share byte j of `qs` (low and high nibble).
"""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.fields import bits, f16, nibbles


def q4_0(blocks):
    """block_q4_0, 18 bytes, 32 weights:
        ggml_half d;         // scale
        uint8_t   qs[16];    // 4-bit quants, nibbles
    y = (q - 8) * d
    """
    d = f16(blocks, 0)                                       # (n, 1)
    q = nibbles(blocks[:, 2:18]).astype(np.int8) - 8         # (n, 32)
    return (q * d).astype(np.float32)


def q4_1(blocks):
    """block_q4_1, 20 bytes, 32 weights:
        ggml_half d;         // scale
        ggml_half m;         // min
        uint8_t   qs[16];    // 4-bit quants, nibbles
    y = q * d + m            (two roundings: ggml never fuses them)
    """
    d, m = f16(blocks, 0), f16(blocks, 2)                    # (n, 1) each
    q = nibbles(blocks[:, 4:20]).astype(np.float32)          # (n, 32)
    return d * q + m


def _fifth_bits(qh):
    """(n, 4) bytes of a little-endian uint32 -> (n, 32): bit j is the 5th bit of weight j."""
    return bits(qh, 1) << 4


def q5_0(blocks):
    """block_q5_0, 22 bytes, 32 weights:
        ggml_half d;         // scale
        uint8_t   qh[4];     // 5th bits, as a little-endian uint32 (bit j -> weight j)
        uint8_t   qs[16];    // low 4 bits, nibbles
    y = (q - 16) * d
    """
    d = f16(blocks, 0)
    q = nibbles(blocks[:, 6:22]) | _fifth_bits(blocks[:, 2:6])
    return (q.astype(np.int8) - 16) * d


def q5_1(blocks):
    """block_q5_1, 24 bytes, 32 weights:
        ggml_half d;         // scale
        ggml_half m;         // min
        uint8_t   qh[4];     // 5th bits, as a little-endian uint32
        uint8_t   qs[16];    // low 4 bits, nibbles
    y = q * d + m
    """
    d, m = f16(blocks, 0), f16(blocks, 2)
    q = nibbles(blocks[:, 8:24]) | _fifth_bits(blocks[:, 4:8])
    return d * q.astype(np.float32) + m


def q8_0(blocks):
    """block_q8_0, 34 bytes, 32 weights:
        ggml_half d;         // scale
        int8_t    qs[32];    // quants
    y = q * d
    """
    d = f16(blocks, 0)
    return blocks[:, 2:34].view(np.int8).astype(np.float32) * d


def q8_1(blocks):
    """block_q8_1, 36 bytes, 32 weights (an activation type: ggml quantizes matmul inputs to it):
        ggml_half d;         // scale
        ggml_half s;         // d * sum(qs), used by dot products; not needed to decode
        int8_t    qs[32];    // quants
    y = q * d
    """
    d = f16(blocks, 0)
    return blocks[:, 4:36].view(np.int8).astype(np.float32) * d


def q1_0(blocks):
    """block_q1_0, 18 bytes, 128 weights:
        ggml_half d;         // scale
        uint8_t   qs[16];    // 1 bit per weight, weight j = bit j%8 of byte j/8
    y = bit ? d : -d
    """
    d = f16(blocks, 0)
    return np.where(bits(blocks[:, 2:18], 1) == 1, d, -d).astype(np.float32)


def q2_0(blocks):
    """block_q2_0, 18 bytes, 64 weights:
        ggml_half d;         // scale
        uint8_t   qs[16];    // 2 bits per weight, weight j = bits 2(j%4).. of byte j/4
    y = (q - 1) * d          (q = 0, 1, 2, 3 -> -1, 0, +1, +2)
    """
    d = f16(blocks, 0)
    q = bits(blocks[:, 2:18], 2).astype(np.int8) - 1
    return (q * d).astype(np.float32)
