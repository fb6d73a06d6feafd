"""The KV cache: each layer's keys and values for the tokens seen so far, and those tokens.

`tokens[i]` is the token at position i, 0..n_past-1. Keeping the token list is what makes prefix
reuse possible: a new request whose tokens start with the same prefix reuses those positions.
Keys are stored after rope, as llama.cpp stores them.

Each layer has its own arrays, `k[il]` [n_kv, cells, head_dim] and `v[il]` [n_kv, cells,
head_dim_v]. A full layer has a cell for every position (cell p holds position p). A sliding-
window layer (Gemma-3's local layers) only ever attends to the last n_swa positions, so when the
context is much longer than its window it is a ring of `ring_cells` cells, position p in cell
p % ring_cells, as llama.cpp's SWA cache keeps only n_swa + n_ubatch cells. A ring holds the
positions `oldest`..n_past-1; the older ones were overwritten.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from refllm.engine.config import ModelConfig
from refllm.ggml_cpu import flash_attn

# Attention reads the cache in whole runs of this many cells, the ones past the last position
# masked out (llama.cpp pads to 256): whole 32s are what ggml's f16 kernels take without a tail.
CELL_PAD = 32


def as_stored(cells: np.ndarray) -> np.ndarray:
    """Cache cells as the compiled kernels read them: float16 as its bits (uint16), float32 as
    it is."""
    return cells.view(np.uint16) if cells.dtype == np.float16 else cells


def round_up(n: int) -> int:
    """n rounded up to whole CELL_PAD."""
    return -(-n // CELL_PAD) * CELL_PAD


def ring_size(n_batch: int, window: int) -> int:
    """The cells of a sliding-window ring for batches of up to n_batch tokens.

    A batch stores its n_batch positions before attending, and its first query still needs the
    window - 1 positions before it: a batch plus a window. Attention reads from the first needed
    position rounded down to CELL_PAD to the last one rounded up: CELL_PAD more. And at least two
    windows, so that Session's context shifts never need a position the rings dropped: it shifts
    a full context, of which the rings hold the last ring_size positions, keeping n_keep and
    moving half of the rest down; where the moved half is shorter than a window, the next token
    also sees kept positions, and those then lie within the last two windows (KVCache.discard
    refuses a shift that would need a dropped one)."""
    return round_up(max(n_batch, window) + window) + CELL_PAD


class KVCache:
    """Keys and values for `n_ctx` positions, written `n_batch` positions at a time at most.

    Full layers get n_ctx cells (rounded up to CELL_PAD, so that `attended` can round up).
    Sliding-window layers get a ring of ring_size(n_batch, n_swa) cells where that is fewer,
    unless swa_full (llama.cpp's --swa-full: every layer full-size).
    """

    def __init__(self, config: ModelConfig, n_ctx: int, n_batch: int, dtype=np.float32, swa_full: bool = False):
        if n_batch < 1:
            raise ValueError(f"n_batch must be at least 1, not {n_batch}")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.window = config.n_swa
        full = round_up(n_ctx)
        ring = ring_size(n_batch, config.n_swa) if config.n_swa > 0 else full
        # per layer: is it a ring (a sliding-window layer whose ring is smaller than the context)?
        self.is_ring = [swa and ring < full and not swa_full for swa in config.swa_layers]
        self.is_swa = [swa and not swa_full for swa in config.swa_layers]
        self.ring_cells = ring if any(self.is_ring) else 0
        # np.zeros maps fresh pages lazily: memory is only touched as positions fill
        cells = [ring if is_ring else full for is_ring in self.is_ring]
        self.k = [np.zeros((config.n_head_kv, c, config.head_dim), dtype) for c in cells]    # [n_kv, cells, head_dim]
        self.v = [np.zeros((config.n_head_kv, c, config.head_dim_v), dtype) for c in cells]  # [n_kv, cells, head_dim_v]
        self.tokens: list[int] = []
        self.oldest = 0            # the first position the rings still hold (0 without rings)

    @property
    def n_past(self) -> int:
        """How many positions hold valid keys and values."""
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    @property
    def nbytes(self) -> int:
        """The bytes the cache's arrays take once every cell has been written."""
        return sum(a.nbytes for a in self.k + self.v)

    def attended(self, end: int) -> int:
        """How many cells attention reads to see positions 0..end-1: end rounded up to whole
        CELL_PAD. The cells past end hold zeros or stale keys and values; attention masks them
        (their probabilities are exactly 0, so they add nothing)."""
        return round_up(end)

    def llama_view(self, layer: int, end: int) -> int:
        """llama.cpp's KV view (n_kv) for a batch whose last position is end - 1, in the cache
        llama.cpp would make for this context: n_ctx rounded up to 256 cells, a sliding-window
        layer's (unless swa_full) the window plus a batch, rounded up to 256, if that is fewer
        (llama_kv_cache_iswa). One sequence fills it from cell 0, so the used cells are the
        positions 0..end-1 (the view's length only steers flash attention's split kernel)."""
        cells = flash_attn.VIEW_PAD * -(-self.n_ctx // flash_attn.VIEW_PAD)
        if self.is_swa[layer]:
            cells = min(cells, flash_attn.VIEW_PAD * -(-(self.window + self.n_batch) // flash_attn.VIEW_PAD))
        return flash_attn.kv_view(min(end, cells), cells)

    def held_from(self, layer: int) -> int:
        """The first position whose keys and values the layer still holds."""
        return self.oldest if self.is_ring[layer] else 0

    # -- writing and reading ----------------------------------------------------------------------

    def _runs(self, layer: int, start: int, end: int) -> list[tuple[int, int]]:
        """The cells of positions start..end-1 of a layer, in position order, as one or two runs
        (first cell, count): two where a ring's positions wrap around its end."""
        cells = self.k[layer].shape[1]
        assert end - start <= cells, (start, end, cells)
        first = start % cells
        count = min(end - start, cells - first)
        return [(first, count)] + ([(0, end - start - count)] if count < end - start else [])

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write keys k [n, n_head_kv, head_dim] and values v [n, n_head_kv, head_dim_v] of the
        positions start..start+n-1 of one layer (rounded to the cache's element type). A ring
        overwrites the positions ring_cells before them."""
        n = k.shape[0]
        done = 0
        for cell, count in self._runs(layer, start, start + n):
            self.k[layer][:, cell:cell + count] = k[done:done + count].transpose(1, 0, 2)
            self.v[layer][:, cell:cell + count] = v[done:done + count].transpose(1, 0, 2)
            done += count
        if self.is_ring[layer]:
            self.oldest = max(self.oldest, start + n - self.ring_cells)

    def gather(self, layer: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """The keys [n_kv, end - start, head_dim] and values [n_kv, end - start, head_dim_v] of
        positions start..end-1 of a layer, in position order: views where their cells are one
        run, else copies. The positions must be ones the layer holds (or padding that attention
        masks)."""
        runs = self._runs(layer, start, end)
        keys = [self.k[layer][:, cell:cell + count] for cell, count in runs]
        values = [self.v[layer][:, cell:cell + count] for cell, count in runs]
        if len(runs) == 1:
            return keys[0], values[0]
        return np.concatenate(keys, axis=1), np.concatenate(values, axis=1)

    def keys_values(self, layer: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray, int]:
        """What a batch of queries at positions start..end-1 attends to in a layer: (keys
        [n_kv, T, head_dim], values [n_kv, T, head_dim_v], first), the cells of positions
        first..first+T-1 in position order, first + T = attended(end).

        A full layer gives every position from 0. A ring gives only those from the first query's
        window on, `first` = max(0, start - window + 1) rounded down to CELL_PAD: each position
        then stays at the same index mod 32 as in a full cache, in the same order, with only
        cells that attention masks left out in front (probability exactly 0), so that ggml's f16
        kernels, which sum in lanes by index mod 32 (GGML_F16_STEP) and tiles of 8 and 16, give
        the same bits. The cells before the window and past end are masked: in a ring they may
        hold other positions, whose finite values add exactly nothing.
        """
        first = 0
        if self.is_ring[layer]:
            first = max(0, start - self.window + 1) // CELL_PAD * CELL_PAD
        keys, values = self.gather(layer, first, self.attended(end))
        return keys, values, first

    # -- prefix reuse -----------------------------------------------------------------------------

    def can_resume_at(self, n: int) -> bool:
        """Whether evaluation can go on at position n with positions 0..n-1 kept: n is 0, or
        every ring still holds the positions the token at n attends to, n - window + 1 onward
        (later tokens need later positions, which the rings hold or are about to be given)."""
        return n == 0 or self.oldest <= max(0, n - self.window + 1)

    def common_prefix(self, tokens, at_most: int | None = None) -> int:
        """How many leading tokens of `tokens` the cache can reuse: the longest prefix it holds
        (at most `at_most`), or 0 when a sliding-window ring has already overwritten positions
        the next token needs (llama.cpp's server: "forcing full prompt re-processing due to lack
        of cache data (likely due to SWA)"). No prefix length in between would do: the rings hold
        a run of recent positions, and a shorter prefix needs older ones."""
        n = 0
        for cached, new in zip(self.tokens, tokens):
            if cached != new or n == at_most:
                break
            n += 1
        return n if self.can_resume_at(n) else 0

    def truncate(self, n: int) -> None:
        """Forget every position from n on (their cells are simply overwritten later). Raises
        ValueError where a ring no longer holds what position n attends to (can_resume_at)."""
        if not self.can_resume_at(n):
            raise ValueError(f"cannot resume at position {n}: the sliding-window layers hold positions "
                             f"{self.oldest} onward only")
        del self.tokens[n:]
        self.oldest = min(self.oldest, n)

    def copy_prefix(self, source: KVCache, n: int) -> None:
        """Hold `source`'s first n positions and nothing after them (llama.cpp's seq_cp; ollama
        forks a cached prefix into another slot so). Both caches must come from the same
        new_cache() arguments; ValueError where source can no longer resume at n."""
        if not source.can_resume_at(n) or n > source.n_past:
            raise ValueError(f"the source cache cannot give {n} positions (it holds {source.n_past}, "
                             f"from {source.oldest} in its rings)")
        for layer, ring in enumerate(self.is_ring):
            # a ring keeps positions modulo its size: all of it is copied
            cells = self.k[layer].shape[1] if ring else round_up(n)
            self.k[layer][:, :cells] = source.k[layer][:, :cells]
            self.v[layer][:, :cells] = source.v[layer][:, :cells]
        self.tokens = source.tokens[:n]
        self.oldest = min(source.oldest, n)

    def clear(self) -> None:
        self.tokens.clear()
        self.oldest = 0

    # -- context shift ----------------------------------------------------------------------------

    def discard(self, start: int, count: int,
                rekey: Callable[[int, np.ndarray], np.ndarray] | None = None) -> None:
        """Remove positions start..start+count-1 and move the later ones down by `count`.

        The moved keys still carry the rope rotation of their old positions: rekey(layer, keys)
        is given each layer's moved keys (float32 [n, n_head_kv, head_dim]) and returns them
        rotated back by `count` (Transformer.shift does), as llama.cpp's context shift does.

        A ring holds only positions `oldest` onward: it moves those it holds, and afterwards holds
        one run again, from `oldest` if that position was kept, else from where the first moved
        position it held lands. Raises ValueError, changing nothing, where that run lacks
        positions the token after the shift attends to: kept ones the rings had dropped. Session's
        shift of a full context never meets that (ring_size).
        """
        end = self.n_past
        oldest = self.oldest if self.oldest < start else max(self.oldest - count, start)
        if self.ring_cells and oldest > max(0, end - count - self.window + 1):
            raise ValueError(f"cannot shift: the sliding-window layers no longer hold positions "
                             f"{max(0, end - count - self.window + 1)}..{oldest - 1}, which the next token attends to")
        held = [self.held_from(layer) for layer in range(len(self.k))]
        for layer in range(len(self.k)):
            moved_from = max(start + count, held[layer])
            if moved_from >= end:
                continue
            keys, values = self.gather(layer, moved_from, end)                      # [n_kv, n, *]
            # copies: a ring's destination cells may overlap the source ones
            keys = keys.transpose(1, 0, 2).astype(np.float32)                      # [n, n_kv, head_dim]
            values = values.transpose(1, 0, 2).copy()
            if rekey is not None:
                keys = rekey(layer, keys)
            self.store(layer, moved_from - count, keys, values)
        self.oldest = oldest if self.ring_cells else 0
        del self.tokens[start:start + count]
