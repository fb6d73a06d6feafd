"""Microscaling fp4 formats: E2M1 nibbles (kvalues_mxfp4, doubled to integers) times a shared
power-of-two (MXFP4) or fp8 (NVFP4) scale, halved to undo the doubling."""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.fields import nibbles
from refllm.kernels.tables import KVALUES_MXFP4


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """E8M0 scale byte e -> 2^(e-127) / 2, as float32 (ggml_e8m0_to_fp32_half).

    2^(e-128) is a normal float32 for e >= 2 (exponent field e - 1); for e = 0, 1 it is the
    subnormal 2^-128 or 2^-127 (bit 21 or 22 set).
    """
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23)
    return bits.astype(np.uint32).view(np.float32)


def ue4m3_half(x: np.ndarray) -> np.ndarray:
    """Unsigned E4M3 scale byte -> value / 2, as float32 (ggml_ue4m3_to_fp32).

    eeee mmm (bias 7; the top bit is ignored): e = 0 -> m * 2^-9, else (1 + m/8) * 2^(e-7).
    0 and 0x7F (E4M3's NaN) decode to 0. Every value is exact in float32.
    """
    exp = ((x >> 3) & 0x0F).astype(np.int32)
    man = (x & 0x07).astype(np.float32)
    raw = np.where(exp == 0, np.ldexp(man, -9),
                   np.ldexp(np.float32(1) + man / np.float32(8), exp - 7)).astype(np.float32)
    return np.where((x == 0) | (x == 0x7F), np.float32(0), raw * np.float32(0.5))


def mxfp4(blocks):
    """block_mxfp4, 17 bytes, 32 weights:
        uint8_t e;          // E8M0 shared scale
        uint8_t qs[16];     // E2M1 nibbles: byte j -> weights j (low) and j + 16 (high)
    y = kvalues_mxfp4[q] * 2^(e-128)
    """
    d = e8m0_half(blocks[:, 0:1])                                    # (n, 1)
    q = KVALUES_MXFP4[nibbles(blocks[:, 1:17])]                      # (n, 32) int8
    return d * q.astype(np.float32)


def nvfp4(blocks):
    """block_nvfp4, 36 bytes, 64 weights in 4 sub-blocks of 16:
        uint8_t d[4];       // UE4M3 scale of each sub-block
        uint8_t qs[32];     // E2M1 nibbles: sub-block s uses qs[8s..8s+7], byte j -> weights
                            // 16s + j (low) and 16s + j + 8 (high)
    y = kvalues_mxfp4[q] * ue4m3(d[s]) / 2
    """
    d = ue4m3_half(blocks[:, 0:4]).reshape(-1, 4, 1)                 # (n, 4, 1)
    qs = blocks[:, 4:36].reshape(-1, 8)                              # (n*4, 8)
    q = KVALUES_MXFP4[nibbles(qs)].reshape(-1, 4, 16)                # (n, 4, 16) int8
    return (d * q.astype(np.float32)).reshape(-1, 64)
