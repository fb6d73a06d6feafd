"""Slicing the fields of a block: the helpers every reference decoder uses."""

from __future__ import annotations

import numpy as np


def f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 field at byte `at` of every block, as float32: (n_blocks, 1)."""
    return blocks[:, at:at + 2].view("<f2").astype(np.float32)


def f32(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float32 field at byte `at` of every block: (n_blocks, 1)."""
    return blocks[:, at:at + 4].view("<f4").astype(np.float32)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) 4-bit values: all low nibbles first, then all high nibbles.

    This is ggml's order for a 32-weight block: byte j holds weight j (low) and j + 16 (high).
    """
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def bits(data: np.ndarray, width: int) -> np.ndarray:
    """(n, k) bytes -> (n, k*8/width) fields of `width` bits, least significant first per byte.

    Byte i's fields land at i*(8/width) ... ; the same order as ggml's 1- and 2-bit types.
    """
    per_byte = 8 // width
    shifts = np.arange(0, 8, width, dtype=np.uint8)                 # (per_byte,)
    fields = (data[:, :, None] >> shifts) & np.uint8((1 << width) - 1)
    return fields.reshape(data.shape[0], data.shape[1] * per_byte)
