"""refllm.engine.sampling and the pieces under it (refllm.ggml_cpu.sampler, libstdcxx): std::mt19937
against numpy's MT19937, generate_canonical and the C library's expf on hand-checked values, each
step of llama.cpp's chain on hand-computed examples, the chain's order, seeded determinism (also
across processes), the drawn distribution, option validation, and stop strings over streamed
chunks. tests/test_sampling_golden.py checks all of it against llama.cpp itself."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refllm.cli import main
from refllm.engine.sampling import LLAMA_DEFAULT_SEED, Sampler, SamplingError, SamplingOptions, StopStrings
from refllm.errors import RefllmError
from refllm.ggml_cpu import libstdcxx
from refllm.ggml_cpu import sampler as steps
from refllm.ggml_cpu.libstdcxx import MT19937, generate_canonical

REPO_ROOT = Path(__file__).resolve().parent.parent
# Options that let every token through, so a test can switch on one step at a time.
NEUTRAL = dict(top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, temperature=1.0)


def f32(values):
    return np.asarray(values, dtype=np.float32)


def log_probs(probs):
    """Logits whose softmax is `probs`."""
    return f32(np.log(probs))


def candidates(logits):
    return steps.Candidates.from_logits(f32(logits))


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------

def test_defaults_are_the_documented_ones():
    # ollama's api.DefaultOptions, except repeat_penalty: llama.cpp's 1.0 (ollama: 1.1)
    o = SamplingOptions()
    assert (o.temperature, o.top_k, o.top_p, o.min_p) == (0.8, 40, 0.9, 0.0)
    assert (o.repeat_last_n, o.repeat_penalty, o.presence_penalty, o.frequency_penalty) == (64, 1.0, 0.0, 0.0)
    assert (o.seed, o.num_predict, o.stop, o.num_keep) == (-1, -1, (), 4)


def test_options_are_frozen_and_stop_list_becomes_tuple():
    o = SamplingOptions(stop=["</s>", "\n\n"])
    assert o.stop == ("</s>", "\n\n")
    hash(o)  # hashable only if every field is, i.e. stop is a tuple
    with pytest.raises(AttributeError):
        o.temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("name, value", [
    ("temperature", -0.1),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("top_k", -1),
    ("top_k", 2.5),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("min_p", -0.01),
    ("min_p", 1.01),
    ("repeat_last_n", -2),
    ("repeat_penalty", 0.0),
    ("repeat_penalty", -1.0),
    ("presence_penalty", float("nan")),
    ("frequency_penalty", "high"),
    ("seed", -2),
    ("seed", LLAMA_DEFAULT_SEED),       # llama.cpp's "random seed", not a seed
    ("seed", 2**32),                    # not a 32-bit seed
    ("num_predict", -3),
    ("num_keep", -2),
    ("stop", ("ok", "")),
    ("stop", "</s>"),
    ("stop", ("ok", 3)),
])
def test_impossible_options_are_named(name, value):
    with pytest.raises(SamplingError) as caught:
        SamplingOptions(**{name: value})
    message = str(caught.value)
    assert message.startswith(name), message
    assert "\n" not in message
    assert isinstance(caught.value, RefllmError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("name, value", [
    ("temperature", 0.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0), ("min_p", 1.0),
    ("repeat_last_n", -1), ("repeat_last_n", 0), ("seed", 0), ("seed", LLAMA_DEFAULT_SEED - 1),
    ("num_predict", 0), ("num_keep", -1), ("presence_penalty", -1.5), ("frequency_penalty", 2.0),
])
def test_edge_values_are_allowed(name, value):
    assert getattr(SamplingOptions(**{name: value}), name) == value


def test_cli_names_a_seed_out_of_range(capsys):
    # the options are checked before the model is opened: no model needed
    with pytest.raises(SystemExit) as e:
        main(["generate", "no-such-model.gguf", "Hello", "--seed", str(LLAMA_DEFAULT_SEED)])
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == "" and out.err.count("\n") == 1
    assert "--seed must be between 0 and 4294967294" in out.err


# ------------------------------------------------------------------------------------------
# The C++ library and the C library
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 42, 5489, 2**31, LLAMA_DEFAULT_SEED - 1])
def test_mt19937_is_numpys_legacy_seeded_stream(seed):
    reference = np.random.MT19937()
    reference._legacy_seeding(seed)                  # init_genrand(seed), as std::mt19937(seed)
    expected = reference.random_raw(1500).tolist()   # past two regenerations of the state
    rng = MT19937(seed)
    assert [rng() for _ in range(1500)] == expected


def test_mt19937_hand_checked_outputs():
    # std::mt19937's defining check (C++ [rand.predef]): the 10000th output of the default
    # seed 5489 is 4123659995
    rng = MT19937(5489)
    for _ in range(9999):
        rng()
    assert rng() == 4123659995
    with pytest.raises(ValueError, match="32-bit"):
        MT19937(2**32)


class FixedOutputs:
    """A generator that returns given 32-bit outputs."""

    def __init__(self, *outputs):
        self.outputs = list(outputs)

    def __call__(self):
        return self.outputs.pop(0)


def test_generate_canonical_hand_checked_values():
    # (x1 + x2 * 2^32) / 2^64, the sum rounded once to double
    assert generate_canonical(FixedOutputs(0, 0)) == 0.0
    assert generate_canonical(FixedOutputs(0, 2**31)) == 0.5
    assert generate_canonical(FixedOutputs(2**32 - 1, 0)) == (2**32 - 1) / 2**64
    # 2^64 - 1 rounds up to 2^64: 1.0 is replaced by the largest double below it
    assert generate_canonical(FixedOutputs(2**32 - 1, 2**32 - 1)) == 1 - 2**-53
    # x1 = 1 is below half an ulp of x2 * 2^32 = 2^63: lost in the rounding
    assert generate_canonical(FixedOutputs(1, 2**31)) == 0.5
    # std::mt19937(0)'s first two outputs 2357136044, 2546248239 (what g++ 12's
    # uniform_real_distribution<double>(0, 1) printed: 0.59284461651668263)
    assert generate_canonical(MT19937(0)) == 0.59284461651668263


def libm_function(name):
    path = ctypes.util.find_library("m")
    if path is None:
        pytest.skip("no C math library to compare with")
    function = getattr(ctypes.CDLL(path), name)
    function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
    return function


def test_expf_and_logf_are_the_c_librarys():
    rng = np.random.default_rng(5)
    x = f32(np.concatenate([rng.standard_normal(20000) * 30, [0.0, -0.0, 88.7, 89.0, -103.0, -np.inf]]))
    libm_expf = libm_function("expf")
    expected = f32([libm_expf(float(v)) for v in x])
    ours = np.array([steps.expf(v) for v in x], np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), expected.view(np.uint32))
    # and inside the sampler's jitted loops: softmax is libm's expf and a float32 running sum
    row = f32(rng.standard_normal(5000) * 4)
    shifted = f32(row - row.max())
    e = f32([libm_expf(float(v)) for v in shifted])
    total = np.float32(0)
    for value in e:
        total = np.float32(total + value)
    cur = candidates(row)
    steps.softmax(cur, False)
    np.testing.assert_array_equal(cur.p.view(np.uint32), (e / total).view(np.uint32))
    # numpy's float32 exp is a different function (this is why the sampler does not use it)
    with np.errstate(over="ignore"):
        assert np.any(np.exp(x[:20000]).view(np.uint32) != expected[:20000].view(np.uint32))
    libm_logf = libm_function("logf")
    p = f32(rng.uniform(0, 1, 5000))
    np.testing.assert_array_equal(f32([steps.logf(v) for v in p]), f32([libm_logf(float(v)) for v in p]))


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=300), data=st.data())
def test_sorts_order_largest_first_and_keep_every_position(keys, data):
    keys = f32(keys)
    n = len(keys)
    order = np.arange(n)
    libstdcxx.sort(order, keys, 0, n)
    assert sorted(order.tolist()) == list(range(n)) and np.all(np.diff(keys[order]) <= 0)
    middle = data.draw(st.integers(0, n))
    order = np.arange(n)
    libstdcxx.partial_sort(order, keys, 0, middle, n)
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(keys[order[:middle]], np.sort(keys)[::-1][:middle])


def test_short_sorts_keep_ties_in_place():
    # up to 16 keys std::sort is one insertion sort, which never moves an element past an
    # equal one: ties stay in their order (longer ranges are partitioned, and need not)
    keys = f32([1, 3, 1, 3, 2, 1])
    order = np.arange(6)
    libstdcxx.sort(order, keys, 0, 6)
    assert order.tolist() == [1, 3, 4, 0, 2, 5]


# ------------------------------------------------------------------------------------------
# The steps, one at a time, on hand-computed examples
# ------------------------------------------------------------------------------------------

def test_penalties_hand_example():
    cur = candidates([2.0, -1.0, 0.5, 3.0, 0.0])
    # token 0 twice, tokens 1 and 4 once; tokens 2 and 3 not at all
    counts = np.bincount([0, 1, 0, 4], minlength=5)
    steps.penalties(cur, counts, 2.0, 0.25, 0.5)
    # 0: 2/2 - (2*0.25 + 0.5) = 0;  1: -1*2 - 0.75 = -2.75;  4: 0*2 - 0.75 = -0.75
    np.testing.assert_array_equal(cur.logits, f32([0.0, -2.75, 0.5, 3.0, -0.75]))
    assert cur.logits.dtype == np.float32 and not cur.sorted


def test_penalties_reject_ids_outside_the_vocabulary():
    s = Sampler(SamplingOptions(repeat_penalty=1.1), n_vocab=3, n_ctx=16)
    with pytest.raises(ValueError, match="7"):
        s.penalty_counts([1, 7])
    with pytest.raises(ValueError, match="-1"):
        s.sample(f32([0, 0, 0]), [1, -1])
    assert s.penalty_counts([2, 0, 2]).tolist() == [1, 0, 2]


def test_top_k_hand_example():
    cur = candidates([1, 5, 3, 6, 2, 4])
    steps.top_k(cur, 3)
    # the three largest, largest first, and sorted from now on
    assert cur.ids.tolist() == [3, 1, 5] and cur.logits.tolist() == [6, 5, 4] and cur.sorted
    for k in (0, -1):                                      # disabled: untouched
        cur = candidates([1, 5, 3])
        steps.top_k(cur, k)
        assert cur.ids.tolist() == [0, 1, 2] and not cur.sorted
    cur = candidates([1, 5, 3])
    steps.top_k(cur, 10)                                   # k > size: all of them, sorted
    assert cur.ids.tolist() == [1, 2, 0]


def test_top_k_above_128_sorts_by_buckets():
    # 200 candidates, k 150: llama.cpp's bucket sort, the same set and order as a full sort
    logits = f32(np.random.default_rng(3).permutation(200) * 0.1 - 10)
    cur = candidates(logits)
    steps.top_k(cur, 150)
    assert cur.ids.tolist() == np.argsort(-logits, kind="stable")[:150].tolist()


def test_bucket_partial_sort_puts_huge_logits_in_the_lowest_bucket():
    # 6.4 * 1e9 does not fit an int32: x86 converts it to INT_MIN, clamped to bucket 0, so a
    # 1e9 logit sorts below every logit of the higher buckets (llama.cpp does the same)
    logits = f32([0.0, 1e9, 5.0, -3.0])
    order = steps.bucket_partial_sort(logits, 2)
    assert order[:2].tolist() == [2, 0]
    assert steps.bucket_partial_sort(logits, 4).tolist() == [2, 0, 3, 1]


# probabilities 0.15, 0.5, 0.05, 0.3 for ids 0..3: sorted 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)
SHUFFLED = log_probs([0.15, 0.5, 0.05, 0.3])


@pytest.mark.parametrize("p, expected", [
    (0.4, [1]),               # 0.5 >= 0.4 already
    (0.6, [1, 3]),            # 0.8
    (0.85, [1, 3, 0]),        # 0.95
    (0.96, [1, 3, 0, 2]),     # needs all
])
def test_top_p_hand_example(p, expected):
    cur = candidates(SHUFFLED)
    steps.top_p(cur, p)
    # the head, most likely first, with its probabilities (softmax over all four)
    assert cur.ids.tolist() == expected and cur.sorted
    np.testing.assert_allclose(cur.p, f32([0.15, 0.5, 0.05, 0.3])[expected], rtol=1e-6)


def test_top_p_1_and_min_keep():
    cur = candidates(SHUFFLED)
    steps.top_p(cur, 1.0)                                  # disabled: untouched
    assert cur.ids.tolist() == [0, 1, 2, 3] and not cur.sorted
    cur = candidates(SHUFFLED)
    steps.top_p(cur, 0.4, 3)                               # but at least 3
    assert cur.ids.tolist() == [1, 3, 0]


def test_top_p_looks_past_the_first_256_on_a_flat_distribution():
    n = 2000
    cur = candidates(np.zeros(n, np.float32))
    steps.top_p(cur, 0.9)
    # each token holds 1/2000: about 1800 are needed, found after sorting past the first 256
    assert 1799 <= cur.size <= 1801 and len(set(cur.ids.tolist())) == cur.size


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(logits=st.lists(st.floats(-8, 8, width=32), min_size=1, max_size=1500),
       p=st.floats(0.01, 0.99))
def test_top_p_keeps_the_smallest_head_reaching_p(logits, p):
    logits = f32(logits)
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    cur = candidates(logits)
    steps.top_p(cur, p)
    kept = set(cur.ids.tolist())
    # a head, largest first: every kept token is at least as likely as every dropped one
    assert np.all(np.diff(cur.logits) <= 0)
    dropped = [i for i in range(len(logits)) if i not in kept]
    if dropped:
        assert cur.logits.min() >= logits[dropped].max()
    # reaches p (up to float32 rounding), and would not without its least likely member
    mass = probs[cur.ids].sum()
    assert mass >= p - 1e-5 or len(kept) == len(logits)
    assert mass - probs[cur.ids].min() < p + 1e-5


@pytest.mark.parametrize("min_p, expected", [
    (0.5, [1, 3]),         # p >= 0.25
    (0.2, [0, 1, 3]),      # p >= 0.1
    (0.01, [0, 1, 2, 3]),  # p >= 0.005
    (1.0, [1]),            # only the most likely
    (0.0, [0, 1, 2, 3]),   # disabled
])
def test_min_p_hand_example(min_p, expected):
    # unsorted candidates keep their (id) order
    cur = candidates(SHUFFLED)
    steps.min_p(cur, min_p)
    assert cur.ids.tolist() == expected and not cur.sorted
    # sorted ones are cut after the last one above the bound
    cur = candidates(SHUFFLED)
    steps.top_k(cur, 4)
    steps.min_p(cur, min_p)
    assert cur.ids.tolist() == sorted(expected, key=lambda i: -SHUFFLED[i])


def test_min_p_with_min_keep_falls_back_to_sorting():
    cur = candidates(SHUFFLED)
    steps.min_p(cur, 0.5, 3)                    # two pass, three must stay: sorted and cut at 3
    assert cur.ids.tolist() == [1, 3, 0] and cur.sorted


def test_temperature_divides_in_float32():
    cur = candidates([2.0, -4.0, 0.0])
    steps.temp(cur, 2.0)
    np.testing.assert_array_equal(cur.logits, f32([1.0, -2.0, 0.0]))
    cur = candidates([1.0])
    with np.errstate(over="ignore"):
        steps.temp(cur, 1e-39)                  # float32, as llama.cpp: overflows to inf
    assert cur.logits.tolist() == [np.inf]


def test_temperature_zero_keeps_the_first_largest():
    cur = candidates([1.0, 3.0, -2.0, 3.0])
    steps.temp(cur, 0.0)
    assert cur.logits.tolist() == [-np.inf, 3.0, -np.inf, -np.inf]


def test_softmax_hand_example():
    cur = candidates([0.0, math.log(3.0)])
    steps.softmax(cur, False)
    np.testing.assert_allclose(cur.p, [0.25, 0.75], rtol=1e-6)
    assert cur.ids.tolist() == [0, 1]
    steps.softmax(cur, True)                    # sorted first
    assert cur.ids.tolist() == [1, 0] and cur.sorted


def test_dist_draws_once_even_for_one_candidate_and_never_a_zero_probability():
    rng, twin = MT19937(5), MT19937(5)
    cur = candidates([0.0])
    assert steps.dist(cur, rng) == 0 and cur.p.tolist() == [1.0]
    generate_canonical(twin)
    assert rng() == twin()
    # a -inf logit has probability 0 (e.g. a token temperature 0 removed)
    drawn = set()
    for _ in range(300):
        cur = candidates([0.0, -np.inf, 0.0])
        drawn.add(int(cur.ids[steps.dist(cur, rng)]))
    assert drawn == {0, 2}


def test_dist_picks_where_the_running_sum_reaches_the_draw():
    # four equal candidates: the draw u picks index floor(4u) (the first whose running sum
    # (i + 1) / 4 reaches u); generate_canonical(FixedOutputs(0, 2^31)) is 0.5 -> index 1
    cur = candidates([0.0, 0.0, 0.0, 0.0])
    assert steps.dist(cur, FixedOutputs(0, 2**31)) == 1
    np.testing.assert_array_equal(cur.p, f32([0.25] * 4))
    cur = candidates([0.0, 0.0, 0.0, 0.0])
    assert steps.dist(cur, FixedOutputs(0, 2**31 + 1)) == 2


# ------------------------------------------------------------------------------------------
# The chain
# ------------------------------------------------------------------------------------------

def sampler(n_vocab, n_ctx=4096, **options):
    return Sampler(SamplingOptions(**options), n_vocab=n_vocab, n_ctx=n_ctx)


SMALL_LOGITS = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=40)  # many ties


@settings(max_examples=100, deadline=None)
@given(logits=SMALL_LOGITS)
def test_temperature_zero_is_argmax(logits):
    # unsorted candidates (top_k and top_p off): the first largest in id order, numpy's argmax
    s = sampler(len(logits), temperature=0.0, top_k=0, top_p=1.0, seed=1)
    assert s.sample(f32(logits), []) == int(np.argmax(logits))
    # sorted (by top_k, or top_p): a largest one, the first in libstdc++'s sort order
    for sorting in (dict(top_k=5), dict(top_k=0, top_p=0.9)):
        s = sampler(len(logits), temperature=0.0, seed=1, **sorting)
        assert logits[s.sample(f32(logits), [])] == max(logits)


@settings(max_examples=100, deadline=None)
@given(logits=SMALL_LOGITS, temperature=st.floats(0.01, 100.0), top_p=st.floats(0.05, 1.0),
       min_p=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_top_k_1_is_greedy_whatever_the_temperature(logits, temperature, top_p, min_p, seed):
    s = sampler(len(logits), top_k=1, temperature=temperature, top_p=top_p, min_p=min_p,
                seed=min(seed, 2**32 - 2))
    assert logits[s.sample(f32(logits), [])] == max(logits)


def test_greedy_sees_the_penalised_logits():
    logits = f32([1.0, 0.9, -5.0])
    assert sampler(3, temperature=0.0).sample(logits, []) == 0
    # 1.0 / 2 = 0.5 < 0.9
    assert sampler(3, temperature=0.0, repeat_penalty=2.0).sample(logits, [0]) == 1
    assert sampler(3, temperature=0.0, presence_penalty=0.2).sample(logits, [0]) == 1
    assert sampler(3, temperature=0.0, frequency_penalty=0.06).sample(logits, [0, 0]) == 1
    assert sampler(3, temperature=0.0, frequency_penalty=0.06).sample(logits, [0]) == 0


def test_penalty_window():
    logits = f32([1.0, 0.9, -5.0])
    history = [0, 2, 2]
    greedy = dict(temperature=0.0, repeat_penalty=2.0)
    assert sampler(3, repeat_last_n=3, **greedy).sample(logits, history) == 1   # 0 in the window
    assert sampler(3, repeat_last_n=2, **greedy).sample(logits, history) == 0   # 0 fell out
    assert sampler(3, repeat_last_n=0, **greedy).sample(logits, history) == 0   # disabled
    # -1 = the context size
    assert sampler(3, n_ctx=3, repeat_last_n=-1, **greedy).sample(logits, history) == 1
    assert sampler(3, n_ctx=2, repeat_last_n=-1, **greedy).sample(logits, history) == 0
    # numpy arrays and tuples work as history too
    assert sampler(3, repeat_last_n=2, **greedy).sample(logits, np.array(history)) == 0
    assert sampler(3, repeat_last_n=3, **greedy).sample(logits, tuple(history)) == 1


def test_top_p_and_min_p_use_temperature_1_probabilities():
    # p = 0.881, 0.119 at temperature 1, but 0.55, 0.45 at temperature 10: if top_p or min_p
    # came after temperature, token 1 would survive and be drawn about half the time.
    logits = f32([2.0, 0.0])
    for step in (dict(top_p=0.85), dict(min_p=0.5)):
        options = {**NEUTRAL, **step, "temperature": 10.0}
        s = sampler(2, seed=3, **options)
        assert {s.sample(logits, []) for _ in range(200)} == {0}, step
    # and without the step, temperature 10 does let token 1 through
    s = sampler(2, seed=3, **{**NEUTRAL, "temperature": 10.0})
    assert {s.sample(logits, []) for _ in range(200)} == {0, 1}


def draw_frequencies(probs, n_draws, seed, **options):
    s = sampler(len(probs), seed=seed, **{**NEUTRAL, **options})
    logits = log_probs(probs)
    counts = np.bincount([s.sample(logits, []) for _ in range(n_draws)], minlength=len(probs))
    return counts / n_draws


def assert_frequencies(observed, expected, n_draws):
    # Each frequency is a mean of n Bernoulli(p) draws: standard deviation sqrt(p(1-p)/n).
    # 5 of them: a correct sampler misses with probability < 6e-7 per token; a wrong
    # distribution (temperature ignored, a step skipped) misses by far more than that.
    expected = np.asarray(expected)
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n_draws) + 1e-12
    assert np.all(np.abs(observed - expected) <= tolerance), (observed, expected, tolerance)


def test_draws_follow_the_distribution():
    probs = [0.1, 0.2, 0.3, 0.4]
    n = 20_000
    assert_frequencies(draw_frequencies(probs, n, seed=2024), probs, n)


def test_temperature_reshapes_the_distribution():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    n = 20_000
    flattened = np.sqrt(probs) / np.sqrt(probs).sum()          # temperature 2: p ** (1/2)
    assert_frequencies(draw_frequencies(probs, n, seed=7, temperature=2.0), flattened, n)
    sharpened = probs ** 2 / (probs ** 2).sum()                 # temperature 0.5: p ** 2
    assert_frequencies(draw_frequencies(probs, n, seed=8, temperature=0.5), sharpened, n)


def test_top_k_renormalises_among_the_survivors():
    n = 20_000
    observed = draw_frequencies([0.1, 0.2, 0.3, 0.4], n, seed=9, top_k=2)
    assert_frequencies(observed, [0.0, 0.0, 3 / 7, 4 / 7], n)


def test_same_seed_same_tokens_different_seed_different_tokens():
    n_vocab = 1000
    flat = np.zeros(n_vocab, np.float32)
    first = sampler(n_vocab, seed=11, **NEUTRAL)
    second = sampler(n_vocab, seed=11, **NEUTRAL)
    other = sampler(n_vocab, seed=12, **NEUTRAL)
    a = [first.sample(flat, []) for _ in range(50)]
    assert a == [second.sample(flat, []) for _ in range(50)]
    # 50 draws from 1000 equally likely tokens: the chance two seeds agree is 1000 ** -50
    assert a != [other.sample(flat, []) for _ in range(50)]


def test_random_seed_is_exposed_and_replays():
    n_vocab = 1000
    flat = np.zeros(n_vocab, np.float32)
    a = sampler(n_vocab, **NEUTRAL)                 # seed -1
    b = sampler(n_vocab, **NEUTRAL)
    assert 0 <= a.seed < LLAMA_DEFAULT_SEED and a.seed != b.seed  # equal with probability 2 ** -32
    tokens = [a.sample(flat, []) for _ in range(30)]
    replay = sampler(n_vocab, seed=a.seed, **NEUTRAL)
    assert [replay.sample(flat, []) for _ in range(30)] == tokens


# The same generation, written once, run here and in a fresh interpreter.
GENERATE = """
import numpy as np
from refllm.engine.sampling import Sampler, SamplingOptions
def generate():
    logits_source = np.random.default_rng(123)
    s = Sampler(SamplingOptions(seed=987654321, repeat_penalty=1.3, presence_penalty=0.2,
                                top_k=0), n_vocab=5000, n_ctx=256)
    history = []
    for _ in range(40):
        logits = (logits_source.standard_normal(5000) * 2).astype(np.float32)
        history.append(s.sample(logits, history))
    return history
"""


def test_seeded_generation_is_the_same_in_a_new_process():
    namespace: dict = {}
    exec(GENERATE, namespace)
    here = namespace["generate"]()
    assert len(set(here)) > 10  # the draws really are random, not stuck on one token
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = GENERATE + "\nimport json; print(json.dumps(generate()))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=120, check=True)
    assert json.loads(result.stdout) == here


def test_sample_checks_its_input():
    s = sampler(4, seed=0)
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(5, np.float32), [])
    with pytest.raises(ValueError, match="NaN"):
        s.sample(f32([0, np.nan, 0, 0]), [])
    logits = f32([1, 2, 3, 4])
    s.sample(logits, [])
    np.testing.assert_array_equal(logits, [1, 2, 3, 4])  # the caller's logits are untouched


# ------------------------------------------------------------------------------------------
# Stop strings
# ------------------------------------------------------------------------------------------

def test_stop_across_chunk_boundaries():
    stops = StopStrings(["</s>"])
    assert stops.feed("Hello <") == ("Hello ", False)
    assert stops.feed("/") == ("", False)
    assert stops.feed("s> and more") == ("", True)
    assert stops.feed("anything") == ("", True)
    assert stops.flush() == ""


def test_partial_prefix_is_held_back_then_released():
    stops = StopStrings(["</s>"])
    assert stops.feed("a </") == ("a ", False)
    assert stops.feed("b") == ("</b", False)
    assert stops.feed("c <") == ("c ", False)
    assert stops.flush() == "<"


def test_no_stop_emits_everything():
    stops = StopStrings([])
    assert stops.feed("abc") == ("abc", False)
    assert stops.flush() == ""
    stops = StopStrings(["STOP"])
    assert stops.feed("all is well, ST") == ("all is well, ", False)
    assert stops.flush() == "ST"


def test_the_first_stop_to_complete_wins():
    # "bcd" is complete before "abcdx" is, even though "abcdx" starts earlier
    assert StopStrings(["abcdx", "bcd"]).feed("abcdx") == ("a", True)
    # complete at the same character: the longer one, so none of it is shown
    assert StopStrings(["b", "ab"]).feed("xab") == ("x", True)
    assert StopStrings(["ab", "b"]).feed("xabb") == ("x", True)


def test_stop_strings_reject_empty_and_bare_strings():
    with pytest.raises(SamplingError, match="empty"):
        StopStrings(["ok", ""])
    with pytest.raises(SamplingError, match="one string"):
        StopStrings("</s>")


def first_stop_cut(text, stops):
    """Oracle: scan the text character by character; at the first end where some stop is
    complete, cut before the longest stop complete there. None if no stop occurs."""
    for end in range(1, len(text) + 1):
        complete = [s for s in stops if text[:end].endswith(s)]
        if complete:
            return end - max(len(s) for s in complete)
    return None


ALPHABET = "ab<>\n"


@settings(max_examples=300, deadline=None)
@given(text=st.text(ALPHABET, max_size=40),
       stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 40), max_size=10))
def test_streamed_output_is_the_text_up_to_the_first_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]

    matcher = StopStrings(stops)
    shown, fed, stopped = "", "", False
    for chunk in chunks:
        emit, stopped = matcher.feed(chunk)
        fed += chunk
        shown += emit
        if stopped:
            break
        # what is held back is exactly a possible start of a stop, nothing more
        assert fed.startswith(shown)
        held = fed[len(shown):]
        assert held == "" or any(s.startswith(held) for s in stops)
    if not stopped:
        shown += matcher.flush()

    cut = first_stop_cut(text, stops)
    assert stopped == (cut is not None)
    assert shown == (text if cut is None else text[:cut])
