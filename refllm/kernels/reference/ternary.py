"""Ternary formats (BitNet b1.58 style): every weight is -1, 0 or +1 times one fp16 scale."""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.fields import f16

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _trits(packed: np.ndarray, digits: int) -> np.ndarray:
    """(n, k) bytes each holding `digits` base-3 digits -> (n, digits*k) values 0..2.

    A byte stores its digits as a fixed-point fraction: q = ceil(value * 256 / 243). Digit n
    is read by multiplying by 3^n (mod 256, which drops the digits above it) and taking the
    top bits of (byte * 3), i.e. ((uint8)(q * 3^n) * 3) >> 8. Digit n of byte m lands at
    n*k + m: the digits of a run of bytes come out one digit-plane at a time.
    """
    planes = packed[:, None, :] * _POW3[:digits, None]             # (n, digits, k) uint8, wraps
    return ((planes.astype(np.uint16) * 3) >> 8).reshape(packed.shape[0], -1)


def tq1_0(blocks):
    """block_tq1_0, 54 bytes, 256 weights:
        uint8_t   qs[48];   // 5 trits per byte: bytes 0..31 -> weights 0..159, 32..47 -> 160..239
        uint8_t   qh[4];    // 4 trits per byte: weights 240..255
        ggml_half d;        // scale (last)
    y = (t - 1) * d
    """
    d = f16(blocks, 52)                                              # (n, 1)
    t = np.concatenate([_trits(blocks[:, 0:32], 5),                  # (n, 160)
                        _trits(blocks[:, 32:48], 5),                 # (n, 80)
                        _trits(blocks[:, 48:52], 4)], axis=1)        # (n, 16)
    return (t.astype(np.int8) - 1) * d


def tq2_0(blocks):
    """block_tq2_0, 66 bytes, 256 weights:
        uint8_t   qs[64];   // 2 bits per weight, in two 32-byte halves; weight 128h + 32s + m
                            // is bits 2s..2s+1 of qs[32h + m]
        ggml_half d;        // scale (last)
    y = (q - 1) * d
    """
    d = f16(blocks, 64)                                              # (n, 1)
    qs = blocks[:, 0:64].reshape(-1, 2, 1, 32)                       # (n, half, 1, m)
    q = (qs >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 3  # (n, half, s, m)
    return (q.reshape(-1, 256).astype(np.int8) - 1) * d
