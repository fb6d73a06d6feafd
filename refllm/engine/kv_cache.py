"""The KV cache: each layer's keys and values for the tokens seen so far, and those tokens.

Cell i of every layer holds position i: the cache is always one contiguous run of positions
0..n-1, with `tokens[i]` the token at position i. Keeping the token list is what makes prefix
reuse possible: a new request whose tokens start with the same prefix reuses those cells.
Keys are stored after rope, as llama.cpp stores them.
"""

from __future__ import annotations

import numpy as np

from refllm.engine.config import ModelConfig

# Attention reads the cache in whole runs of this many cells, the ones past the last position
# masked out (llama.cpp pads to 256): whole 32s are what ggml's f16 kernels take without a tail.
CELL_PAD = 32


class KVCache:
    """Preallocated keys and values for `n_ctx` positions in every layer (and up to CELL_PAD - 1
    cells more, so that `attended` can round up)."""

    def __init__(self, config: ModelConfig, n_ctx: int, dtype=np.float32):
        self.n_ctx = n_ctx
        cells = -(-n_ctx // CELL_PAD) * CELL_PAD
        shape_k = (config.n_layer, config.n_head_kv, cells, config.head_dim)
        shape_v = (config.n_layer, config.n_head_kv, cells, config.head_dim_v)
        # np.zeros maps fresh pages lazily: memory is only touched as positions fill
        self.k = np.zeros(shape_k, dtype)          # [layer, kv_head, position, head_dim]
        self.v = np.zeros(shape_v, dtype)          # [layer, kv_head, position, head_dim_v]
        self.tokens: list[int] = []

    @property
    def n_past(self) -> int:
        """How many positions hold valid keys and values."""
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    def attended(self, end: int) -> int:
        """How many cells attention reads to see positions 0..end-1: end rounded up to whole
        CELL_PAD. The cells past end hold zeros or stale keys and values; attention masks them
        (their probabilities are exactly 0, so they add nothing)."""
        return -(-end // CELL_PAD) * CELL_PAD

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write keys k [n, n_head_kv, head_dim] and values v [n, n_head_kv, head_dim_v] of the
        positions start..start+n-1 of one layer (rounded to the cache's element type)."""
        n = k.shape[0]
        self.k[layer, :, start:start + n] = k.transpose(1, 0, 2)
        self.v[layer, :, start:start + n] = v.transpose(1, 0, 2)

    def common_prefix(self, tokens) -> int:
        """How many leading tokens of `tokens` the cache already holds."""
        n = 0
        for cached, new in zip(self.tokens, tokens):
            if cached != new:
                break
            n += 1
        return n

    def truncate(self, n: int) -> None:
        """Forget every position from n on (their cells are simply overwritten later)."""
        del self.tokens[n:]

    def clear(self) -> None:
        self.tokens.clear()

    def discard(self, start: int, count: int) -> None:
        """Remove positions start..start+count-1 and move the later ones down by `count`.

        The moved keys still carry the rope rotation of their old positions: the caller must
        rotate them back by `count` (Transformer.shift_keys), as llama.cpp's context shift does.
        """
        end = len(self.tokens)
        self.k[:, :, start:end - count] = self.k[:, :, start + count:end].copy()
        self.v[:, :, start:end - count] = self.v[:, :, start + count:end].copy()
        del self.tokens[start:start + count]
