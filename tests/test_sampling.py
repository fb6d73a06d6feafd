"""refllm.engine.sampling: each step of llama.cpp's chain on hand-computed examples, the chain's
order, seeded determinism (also across processes), the drawn distribution, option validation,
and stop strings over streamed chunks."""

from __future__ import annotations

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

from refllm.engine.sampling import (
    Sampler,
    SamplingError,
    SamplingOptions,
    StopStrings,
    apply_penalties,
    apply_temperature,
    draw,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    largest_first,
    softmax,
)
from refllm.errors import RefllmError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Options that let every token through, so a test can switch on one step at a time.
NEUTRAL = dict(top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, temperature=1.0)


def f32(values):
    return np.asarray(values, dtype=np.float32)


def log_probs(probs):
    """Logits whose softmax is `probs`."""
    return f32(np.log(probs))


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------

def test_defaults_are_ollamas():
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
    ("repeat_last_n", -1), ("repeat_last_n", 0), ("seed", 0), ("num_predict", 0), ("num_keep", -1),
    ("presence_penalty", -1.5), ("frequency_penalty", 2.0),
])
def test_edge_values_are_allowed(name, value):
    assert getattr(SamplingOptions(**{name: value}), name) == value


# ------------------------------------------------------------------------------------------
# The steps, one at a time, on hand-computed examples
# ------------------------------------------------------------------------------------------

def test_penalties_hand_example():
    logits = f32([2.0, -1.0, 0.5, 3.0, 0.0])
    # token 0 twice, tokens 1 and 4 once; tokens 2 and 3 not at all
    out = apply_penalties(logits, [0, 1, 0, 4], repeat_penalty=2.0, frequency_penalty=0.25,
                          presence_penalty=0.5)
    # 0: 2/2 - (2*0.25 + 0.5) = 0;  1: -1*2 - 0.75 = -2.75;  4: 0*2 - 0.75 = -0.75
    np.testing.assert_array_equal(out, f32([0.0, -2.75, 0.5, 3.0, -0.75]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(logits, f32([2.0, -1.0, 0.5, 3.0, 0.0]))  # input untouched


def test_penalties_reject_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="7"):
        apply_penalties(f32([0, 0, 0]), [1, 7], 1.1, 0.0, 0.0)


def test_largest_first_orders_by_value_then_lowest_position():
    values = f32([1, 5, 3, 5, 2, 3])
    assert largest_first(values, 3).tolist() == [1, 3, 2]
    assert largest_first(values, 6).tolist() == [1, 3, 2, 5, 4, 0]
    assert largest_first(values, 99).tolist() == [1, 3, 2, 5, 4, 0]


def test_top_k_hand_example():
    ids = np.arange(6)
    logits = f32([1, 5, 3, 5, 2, 3])
    kept_ids, kept_logits = keep_top_k(ids, logits, 3)
    # 5, 5 and one of the two 3s: the lower id (2) wins the tie
    assert kept_ids.tolist() == [1, 2, 3]
    assert kept_logits.tolist() == [5, 3, 5]
    assert keep_top_k(ids, logits, 0)[0].tolist() == list(range(6))     # 0 = disabled
    assert keep_top_k(ids, logits, 10)[0].tolist() == list(range(6))


# probabilities 0.15, 0.5, 0.05, 0.3 for ids 0..3: sorted 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)
SHUFFLED = log_probs([0.15, 0.5, 0.05, 0.3])


@pytest.mark.parametrize("p, expected", [
    (0.4, [1]),               # 0.5 >= 0.4 already
    (0.6, [1, 3]),            # 0.8
    (0.85, [0, 1, 3]),        # 0.95
    (0.96, [0, 1, 2, 3]),     # needs all
    (1.0, [0, 1, 2, 3]),      # disabled
])
def test_top_p_hand_example(p, expected):
    kept_ids, kept_logits = keep_top_p(np.arange(4), SHUFFLED, p)
    assert kept_ids.tolist() == expected
    np.testing.assert_array_equal(kept_logits, SHUFFLED[expected])


def test_top_p_looks_past_the_first_256_on_a_flat_distribution():
    n = 1000
    kept_ids, _ = keep_top_p(np.arange(n), np.zeros(n, np.float32), 0.9)
    # each token holds 0.001: about 900 are needed, and ties go to the lowest ids
    assert 899 <= len(kept_ids) <= 901
    assert kept_ids.tolist() == list(range(len(kept_ids)))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(logits=st.lists(st.floats(-8, 8, width=32), min_size=1, max_size=600),
       p=st.floats(0.01, 0.99))
def test_top_p_keeps_the_smallest_head_reaching_p(logits, p):
    logits = f32(logits)
    probs = softmax(logits).astype(np.float64)
    kept_ids, _ = keep_top_p(np.arange(len(logits)), logits, p)
    kept = set(kept_ids.tolist())
    # a head: every kept token is at least as likely as every dropped one
    dropped = [i for i in range(len(logits)) if i not in kept]
    if dropped:
        assert logits[kept_ids].min() >= logits[dropped].max()
    # reaches p (up to float32 rounding), and would not without its least likely member
    mass = probs[kept_ids].sum()
    assert mass >= p - 1e-5 or len(kept) == len(logits)
    assert mass - probs[kept_ids].min() < p + 1e-5


@pytest.mark.parametrize("min_p, expected", [
    (0.5, [1, 3]),         # p >= 0.25
    (0.2, [0, 1, 3]),      # p >= 0.1
    (0.01, [0, 1, 2, 3]),  # p >= 0.005
    (1.0, [1]),            # only the most likely
    (0.0, [0, 1, 2, 3]),   # disabled
])
def test_min_p_hand_example(min_p, expected):
    kept_ids, _ = keep_min_p(np.arange(4), SHUFFLED, min_p)
    assert kept_ids.tolist() == expected


def test_temperature_divides():
    np.testing.assert_array_equal(apply_temperature(f32([2.0, -4.0, 0.0]), 2.0), [1.0, -2.0, 0.0])
    np.testing.assert_array_equal(apply_temperature(f32([1.0]), 0.5), [2.0])


def test_softmax_hand_example():
    np.testing.assert_allclose(softmax(f32([0.0, math.log(3.0)])), [0.25, 0.75], rtol=1e-6)


def test_draw_uses_exactly_one_random_number_and_never_a_zero_probability():
    rng = np.random.Generator(np.random.PCG64(5))
    twin = np.random.Generator(np.random.PCG64(5))
    assert draw(np.array([42]), f32([0.0]), rng) == 42
    twin.random()
    assert rng.random() == twin.random()
    # a -inf logit has probability 0 (e.g. a token a penalty or a mask removed)
    drawn = {draw(np.arange(3), f32([0.0, -np.inf, 0.0]), rng) for _ in range(300)}
    assert drawn == {0, 2}


# ------------------------------------------------------------------------------------------
# The chain
# ------------------------------------------------------------------------------------------

def sampler(n_vocab, n_ctx=4096, **options):
    return Sampler(SamplingOptions(**options), n_vocab=n_vocab, n_ctx=n_ctx)


SMALL_LOGITS = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=40)  # many ties


@settings(max_examples=100, deadline=None)
@given(logits=SMALL_LOGITS)
def test_temperature_zero_is_argmax(logits):
    s = sampler(len(logits), temperature=0.0, seed=1)
    assert s.sample(f32(logits), []) == int(np.argmax(logits))


@settings(max_examples=100, deadline=None)
@given(logits=SMALL_LOGITS, temperature=st.floats(0.01, 100.0), top_p=st.floats(0.05, 1.0),
       min_p=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_top_k_1_is_greedy_whatever_the_temperature(logits, temperature, top_p, min_p, seed):
    s = sampler(len(logits), top_k=1, temperature=temperature, top_p=top_p, min_p=min_p, seed=seed)
    assert s.sample(f32(logits), []) == int(np.argmax(logits))


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
    assert 0 <= a.seed < 2**32 and a.seed != b.seed  # equal with probability 2 ** -32
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
