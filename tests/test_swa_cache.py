"""Gemma-3's sliding-window layers as rings (refllm.engine.kv_cache): a local layer keeps only a
batch and a window of cells, and gives the logits of a full-size cache: bit for bit under
--numerics ggml, in batches and token by token, through context shifts and prefix reuse.

The model is a small synthetic Gemma-3 (window 16; layers 0 and 1 local, layer 2 global). A
cache made for batches of 16 tokens has rings of 64 cells; the reference is the same cache with
every layer full-size (swa_full), fed the same batches, so that the two differ only in the rings.

Under f32 the logits agree to float32 rounding, not bit for bit: OpenBLAS's sgemm sums q·k in
another order depending on how many keys there are (a ring reads 64 cells, a full-size layer up
to all of them), which moves a score by an ulp now and then. The f16 kernels of ggml do not.
"""

from __future__ import annotations

import numpy as np
import pytest

import refllm
from refllm.engine.kv_cache import CELL_PAD, ring_size
from refllm.engine.sampling import SamplingOptions
from refllm.engine.session import Session
from refllm.engine.transformer import Transformer
from refllm.tokenizer import Tokenizer
from refllm.tools.synth import DEFAULT_WEIGHT_TYPES, write_synthetic_model

WINDOW = 16
BATCH = 16                          # caches made for batches of 16 tokens ...
RING = 64                           # ... get rings of ring_size(16, 16) cells
N = 200                             # positions: the rings wrap around three times
KEY_ROUNDING = 4e-3                 # a key rotated back against its fresh value: 2 ulps of f16 at 2..4
BATCHES = {"batches of 16": [16], "uneven batches": [5, 16, 3, 11, 1, 16], "token by token": [1]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_synthetic_model(tmp_path_factory.mktemp("swa") / "gemma3.gguf", "gemma3", seed=11, n_layer=3,
                                 n_embd=64, n_head=2, n_head_kv=1, head_dim=32, n_ff=128, n_swa=WINDOW,
                                 swa_pattern=3, weight_types={name: "Q8_0" for name in DEFAULT_WEIGHT_TYPES})
    return refllm.open(path)


@pytest.fixture(scope="module", params=["f32", "ggml"])
def net(request, model):
    return Transformer(model, request.param, flash_attn=False)


@pytest.fixture(scope="module")
def ggml(model):
    return Transformer(model, "ggml", flash_attn=False)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(3).integers(0, 384, N).tolist()


def caches(net: Transformer, n_ctx: int) -> dict[str, object]:
    """A cache with rings and one with full-size layers, both for batches of BATCH tokens."""
    return {"rings": net.new_cache(n_ctx, n_batch=BATCH), "full": net.new_cache(n_ctx, n_batch=BATCH, swa_full=True)}


def feed(net: Transformer, cache, tokens, sizes) -> np.ndarray:
    """Evaluate tokens into the cache in batches of sizes[0], sizes[1], ... (cyclically): every
    row of logits, float32 [len(tokens), n_vocab]."""
    rows, start, i = [], 0, 0
    while start < len(tokens):
        size = sizes[i % len(sizes)]
        rows.append(net.forward(tokens[start:start + size], cache, all_logits=True))
        start, i = start + size, i + 1
    return np.concatenate(rows)


def assert_same_logits(net: Transformer, rings: np.ndarray, full: np.ndarray) -> None:
    """Bit for bit under ggml; under f32 up to the rounding of BLAS's sums (see the docstring)."""
    assert rings.shape == full.shape
    if net.numerics.name == "ggml":
        assert np.array_equal(rings, full)
    else:
        np.testing.assert_allclose(rings, full, rtol=0, atol=1e-5)


def test_local_layers_are_rings_of_a_batch_and_a_window(net):
    assert net.config.swa_layers == (True, True, False) and net.config.n_swa == WINDOW
    assert ring_size(BATCH, WINDOW) == RING
    cache, full = caches(net, N).values()
    n_kv, head_dim = net.config.n_head_kv, net.config.head_dim
    cells = -(-N // CELL_PAD) * CELL_PAD
    assert [k.shape for k in cache.k] == [(n_kv, RING, head_dim)] * 2 + [(n_kv, cells, head_dim)]
    assert [v.shape for v in cache.v] == [k.shape for k in cache.k]
    assert cache.k[0].dtype == cache.v[0].dtype == net.numerics.kv_dtype
    assert [k.shape for k in full.k] == [(n_kv, cells, head_dim)] * 3
    assert cache.nbytes * 3 * cells == full.nbytes * (2 * RING + cells)
    # a layer whose ring would be no smaller is simply full-size: a short context, or big batches
    assert [k.shape[1] for k in net.new_cache(RING, n_batch=BATCH).k] == [RING] * 3
    assert [k.shape[1] for k in net.new_cache(N).k] == [cells] * 3
    # a batch and a window, and at least two windows (so that context shifts keep what they need)
    assert ring_size(512, 512) == 1056 and ring_size(16, 100) == 256 and ring_size(100, 16) == 160


@pytest.mark.parametrize("sizes", BATCHES.values(), ids=BATCHES.keys())
def test_rings_give_the_logits_of_full_size_layers(net, tokens, sizes):
    cache = caches(net, N)
    logits = {name: feed(net, c, tokens, sizes) for name, c in cache.items()}
    assert cache["rings"].oldest == N - RING and cache["full"].oldest == 0       # the rings wrapped around
    assert_same_logits(net, logits["rings"], logits["full"])


def test_a_ring_reads_its_positions_in_order_from_a_multiple_of_32(ggml, tokens):
    cache = caches(ggml, N)
    for c in cache.values():
        feed(ggml, c, tokens[:150], [BATCH])
    for start, end in ((140, 150), (149, 150), (120, 136)):
        for il in (0, 1):
            keys, values, first = cache["rings"].keys_values(il, start, end)
            assert first == (start - WINDOW + 1) // 32 * 32 and first + keys.shape[1] == -(-end // 32) * 32
            # the cells of positions first..end-1 hold what a full-size layer holds there
            assert np.array_equal(keys[:, :end - first], cache["full"].k[il][:, first:end])
            assert np.array_equal(values[:, :end - first], cache["full"].v[il][:, first:end])
        keys, values, first = cache["rings"].keys_values(2, start, end)    # the global layer: all of them
        assert first == 0 and np.array_equal(keys, cache["full"].keys_values(2, start, end)[0])


# -- context shift --------------------------------------------------------------------------------

@pytest.mark.parametrize("n_keep, n_discard", [(4, 78), (90, 30), (120, 20)])
def test_context_shift_with_rings_equals_full_size_layers(net, tokens, n_keep, n_discard):
    """Shifting 160 positions while the rings hold 96..159: the rings then hold 18.. (the moved
    ones, some dropped), 90.. (all moved ones, no kept one) or 96.. (some kept ones, all
    moved ones)."""
    n_ctx = 160
    logits = {}
    for name, cache in caches(net, n_ctx).items():
        feed(net, cache, tokens[:n_ctx], [BATCH])
        net.shift(cache, n_keep, n_discard)
        assert cache.tokens == tokens[:n_keep] + tokens[n_keep + n_discard:n_ctx]
        # layer 0's keys depend only on the token and its position: the moved ones, rotated
        # back, are the keys of a fresh evaluation (to rounding: rope by -n_discard of rope by p)
        fresh = net.new_cache(n_ctx, n_batch=BATCH, swa_full=True)
        feed(net, fresh, cache.tokens, [BATCH])
        held = cache.held_from(0)
        keys, _ = cache.gather(0, held, cache.n_past)
        expected, _ = fresh.gather(0, held, cache.n_past)
        np.testing.assert_allclose(keys.astype(np.float32), expected.astype(np.float32), rtol=0, atol=KEY_ROUNDING)
        # then a batch, and token by token, as generation goes on
        logits[name] = feed(net, cache, tokens[n_ctx:n_ctx + 20], [13, 1])
    assert_same_logits(net, logits["rings"], logits["full"])


class NeverEnds:
    """A tokenizer for which no token ends generation (the random model often picks one)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def is_eog(self, token: int) -> bool:
        return False


def test_generation_past_the_context_with_rings_equals_full_size_layers(model, ggml):
    """Session's own shifts (keep 4, drop half of the rest), token by token."""
    tok = NeverEnds(Tokenizer.from_model(model))
    prompt = tok.tokenize("the cat sat on the mat and the dog sat on the log " * 3)       # 72 tokens
    options = SamplingOptions(temperature=0, num_predict=120)
    texts = {}
    for name in ("rings", "full"):
        session = Session(ggml, 8)
        session.cache = caches(ggml, 128)[name]
        texts[name] = "".join(session.generate(prompt, tok, options))
        assert session.stats.context_shifts >= 2 and session.stats.eval_count == 120
    assert texts["rings"] == texts["full"] and texts["rings"]


def test_a_shift_needing_positions_a_ring_dropped_is_refused(ggml, tokens):
    cache = caches(ggml, N)["rings"]
    feed(ggml, cache, tokens[:100], [BATCH])
    assert cache.oldest == 100 - RING                     # the rings hold positions 36..99
    # keep 40, move the last 10 down to 40..49: the next token, at 50, sees 35..50, but the
    # rings dropped 35 (a full-size cache has it)
    with pytest.raises(ValueError, match=r"35\.\.35"):
        ggml.shift(cache, 40, 50)
    assert cache.tokens == tokens[:100] and cache.oldest == 36                    # nothing changed
    # move 11 instead: the token at 51 sees 36..51, all there
    ggml.shift(cache, 40, 49)
    assert cache.tokens == tokens[:40] + tokens[89:100] and cache.oldest == 36


# -- prefix reuse ---------------------------------------------------------------------------------

def test_a_prefix_is_reused_only_where_the_rings_hold_its_window(ggml, tokens):
    cache = caches(ggml, N)
    for c in cache.values():
        feed(ggml, c, tokens[:150], [BATCH])
    oldest = 150 - RING
    other = (tokens[149] + 1) % 384
    # the token at n attends to n - 15..n: n tokens are reusable from n = oldest + 15 on
    for n, reusable in ((150, 150), (oldest + WINDOW - 1, oldest + WINDOW - 1), (oldest + WINDOW - 2, 0), (20, 0)):
        assert cache["rings"].common_prefix(tokens[:n] + [other]) == reusable
        assert cache["full"].common_prefix(tokens[:n] + [other]) == n
    assert cache["rings"].common_prefix(tokens[:150], at_most=149) == 149
    with pytest.raises(ValueError, match="sliding-window"):
        cache["rings"].truncate(oldest + WINDOW - 2)
    assert cache["rings"].n_past == 150
    cache["rings"].truncate(0)
    assert cache["rings"].n_past == 0 and cache["rings"].oldest == 0


@pytest.mark.parametrize("shared", [20, 140])
def test_prefix_reuse_with_rings_gives_a_fresh_caches_logits(ggml, tokens, shared):
    """After 150 tokens, a prompt sharing only the first 20 is evaluated from scratch (the rings
    dropped their window) and gives a fresh cache's logits; one sharing 140 reuses them and
    gives the logits of full-size layers after the same reuse."""
    prompt = tokens[:shared] + tokens[150:190]
    logits, reused = {}, {}
    for name in ("rings", "full"):
        session = Session(ggml, 8)
        session.cache = caches(ggml, N)[name]
        session.evaluate(tokens[:150])
        logits[name] = session.evaluate(prompt, all_logits=True)
        reused[name] = session.cached_tokens
    if shared == 20:
        assert reused == {"rings": 0, "full": 20}
        assert np.array_equal(logits["rings"], feed(ggml, caches(ggml, N)["full"], prompt, [BATCH]))
    else:
        assert reused == {"rings": 140, "full": 140}
        assert np.array_equal(logits["rings"], logits["full"])


@pytest.mark.parametrize("kind", ["rings", "full"])
@pytest.mark.parametrize("shared", [140, 110])      # the rings hold 86..149: 110 still sees its window
def test_a_copied_prefix_gives_the_logits_of_the_cache_it_came_from(ggml, tokens, kind, shared):
    """KVCache.copy_prefix (the server's fork of a cached prefix into another slot): going on
    from the copy gives, bit for bit, what going on from the source gives; a prefix the rings
    no longer hold cannot be copied."""
    source = caches(ggml, N)[kind]
    feed(ggml, source, tokens[:150], [BATCH])
    copy = caches(ggml, N)[kind]
    feed(ggml, copy, tokens[150:190], [BATCH])          # stale contents the copy must replace
    copy.copy_prefix(source, shared)
    assert copy.tokens == tokens[:shared] and copy.n_past == shared
    rest = tokens[shared:shared + 30]
    source.truncate(shared)
    assert np.array_equal(feed(ggml, copy, rest, [BATCH]), feed(ggml, source, rest, [BATCH]))
    if kind == "rings":
        with pytest.raises(ValueError, match="cannot give"):
            copy.copy_prefix(caches(ggml, N)[kind], 5)       # an empty source holds no 5 positions
        with pytest.raises(ValueError, match="cannot give"):
            copy.copy_prefix(source, 20)                     # overwritten in the source's rings
