"""Choosing the next token from the model's logits, and cutting the reply at stop strings,
as ollama does it (ollama's options and defaults; llama.cpp's sampler chain, which ollama's
llama-server runs).

    options = SamplingOptions(temperature=0.7, seed=42, stop=("</s>",))
    sampler = Sampler(options, n_vocab=len(vocab), n_ctx=4096)
    token = sampler.sample(logits, history)      # history: prompt and generated ids so far

The chain is llama.cpp's default order (`common_params_sampling::samplers` in common/common.h,
built into a chain by `common_sampler_init` in common/sampling.cpp), less the samplers that
ollama leaves neutral (DRY, top-n-sigma, typical-p, XTC):

1. penalties    repeat / frequency / presence, over the last `repeat_last_n` tokens of history
2. top_k        keep the k highest logits
3. top_p        keep the smallest head whose probability mass reaches p
4. min_p        keep tokens at least min_p times as likely as the most likely one
5. temperature  divide the logits by T
6. draw         pick one candidate with probability softmax(logits)

top_k, top_p and min_p come before temperature, so they see temperature-1 probabilities: a high
temperature flattens the draw among the survivors but does not let more tokens survive.

Tokens are numbered 0..n_vocab-1; every step below keeps its candidates in ascending id order,
so that wherever logits tie, the lowest id wins (as numpy's argmax does).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refllm.errors import RefllmError


class SamplingError(RefllmError, ValueError):
    """A sampling option with an impossible value; the message names the option."""


@dataclass(frozen=True)
class SamplingOptions:
    """ollama's sampling options (`api.Options`), with ollama's defaults.

    top_k 0 disables top_k, top_p 1 disables top_p, min_p 0 disables min_p; repeat_last_n 0
    disables the penalties and -1 means the whole context; seed -1 means a random seed;
    num_predict -1 means no limit. num_predict, num_keep and stop are for the generation loop
    (the Sampler itself does not read them). Constructing an impossible set raises SamplingError.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    num_keep: int = 4

    def __post_init__(self):
        # A list of stops is accepted and stored as a tuple, so the options stay hashable.
        if isinstance(self.stop, (list, tuple)):
            object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    def validate(self) -> None:
        """Raise SamplingError, naming the option, if any value is impossible; else return None."""
        for name in ("top_k", "repeat_last_n", "seed", "num_predict", "num_keep"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise SamplingError(f"{name} must be an integer, got {value!r}")
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                     "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise SamplingError(f"{name} must be a finite number, got {value!r}")

        # Written as "not (allowed range)" so that the messages read like the rules.
        if not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not self.top_k >= 0:
            raise SamplingError(f"top_k must be >= 0 (0 = disabled), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1] (1 = disabled), got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise SamplingError(f"min_p must be in [0, 1] (0 = disabled), got {self.min_p}")
        if not self.repeat_last_n >= -1:
            raise SamplingError(f"repeat_last_n must be >= -1 (0 = disabled, -1 = the context size), "
                                f"got {self.repeat_last_n}")
        if not self.repeat_penalty > 0:
            raise SamplingError(f"repeat_penalty must be > 0 (1 = disabled), got {self.repeat_penalty}")
        if not self.seed >= -1:
            raise SamplingError(f"seed must be >= 0, or -1 for a random seed, got {self.seed}")
        if not self.num_predict >= -1:
            raise SamplingError(f"num_predict must be >= 0, or -1 for no limit, got {self.num_predict}")
        if not self.num_keep >= -1:
            raise SamplingError(f"num_keep must be >= 0, or -1 for the whole prompt, got {self.num_keep}")
        if not isinstance(self.stop, tuple):
            raise SamplingError(f"stop must be a tuple of strings, got {self.stop!r}")
        for stop in self.stop:
            if not isinstance(stop, str):
                raise SamplingError(f"stop must be a tuple of strings, got {stop!r} in it")
            if stop == "":
                raise SamplingError("stop must not contain an empty string (it would match at once)")


# ---------------------------------------------------------------------------------------------
# The steps. Each takes candidates as (ids, logits): two parallel arrays, ids ascending.
# ---------------------------------------------------------------------------------------------

def apply_penalties(logits: np.ndarray, recent_tokens: Sequence[int], repeat_penalty: float,
                    frequency_penalty: float, presence_penalty: float) -> np.ndarray:
    """Return a copy of the full-vocabulary `logits` with every token that occurs c > 0 times in
    `recent_tokens` penalised: a positive logit is divided by repeat_penalty, a negative (or zero)
    one multiplied by it, then c * frequency_penalty + presence_penalty is subtracted
    (llama.cpp's `llama_sampler_penalties_apply`). Tokens that do not occur are unchanged."""
    penalised = logits.copy()
    if len(recent_tokens) == 0:
        return penalised
    seen, counts = np.unique(np.asarray(recent_tokens, dtype=np.int64), return_counts=True)
    if seen[0] < 0 or seen[-1] >= len(logits):
        raise ValueError(f"history holds token id {seen[0] if seen[0] < 0 else seen[-1]}, "
                         f"outside the vocabulary of {len(logits)} tokens")
    # float32 throughout, as llama.cpp computes it
    repeat = np.float32(repeat_penalty)
    seen_logits = penalised[seen]
    # Dividing a negative logit would make the token MORE likely, so those are multiplied.
    seen_logits = np.where(seen_logits <= 0, seen_logits * repeat, seen_logits / repeat)
    seen_logits -= counts.astype(np.float32) * np.float32(frequency_penalty) + np.float32(presence_penalty)
    penalised[seen] = seen_logits
    return penalised


def largest_first(logits: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n largest values of `logits` (all of them if n >= len), ordered from the
    largest down; equal values are ordered by position, lowest first. Only the n chosen are
    sorted, so this is cheap for n much smaller than len(logits)."""
    if n < len(logits):
        # The n-th largest value, found without sorting; everything above it is in, and the
        # remaining places go to the lowest positions holding exactly that value.
        nth_largest = np.partition(logits, len(logits) - n)[len(logits) - n]
        above = np.flatnonzero(logits > nth_largest)
        tied = np.flatnonzero(logits == nth_largest)[: n - len(above)]
        chosen = np.sort(np.concatenate([above, tied]))
    else:
        chosen = np.arange(len(logits))
    # A stable sort on -logit keeps ascending positions among equal logits.
    return chosen[np.argsort(-logits[chosen], kind="stable")]


def keep_top_k(ids: np.ndarray, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k candidates with the highest logits (ties: lowest ids); k <= 0 keeps all
    (llama.cpp's `llama_sampler_top_k_impl`)."""
    if k <= 0 or k >= len(ids):
        return ids, logits
    kept = np.sort(largest_first(logits, k))
    return ids[kept], logits[kept]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities proportional to exp(logit), summing to 1 (float32, max subtracted first so
    that exp cannot overflow)."""
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


# top_p sorts only the most likely tokens: the first 256 (as llama.cpp does), then 16 times as
# many while they hold less than p. Sorting all 262,144 logits at once takes tens of ms.
TOP_P_FIRST_LOOK = 256
TOP_P_LOOK_GROWTH = 16


def keep_top_p(ids: np.ndarray, logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest set of most likely candidates whose probabilities (softmax over the
    candidates) add up to at least p, and at least one; p >= 1 keeps all (llama.cpp's
    `llama_sampler_top_p_apply`, with min_keep 1). If rounding keeps the total below p, all are
    kept, as in llama.cpp."""
    if p >= 1:
        return ids, logits
    p = np.float32(p)                          # llama.cpp compares in float32
    probs = softmax(logits)
    look = TOP_P_FIRST_LOOK
    head = largest_first(logits, look)
    cumulative = np.cumsum(probs[head])       # float32, summed in order, as llama.cpp does
    while cumulative[-1] < p and len(head) < len(logits):
        look *= TOP_P_LOOK_GROWTH
        head = largest_first(logits, look)
        cumulative = np.cumsum(probs[head])
    # the first position where the running total reaches p, counted inclusively
    n_keep = min(int(np.searchsorted(cumulative, p, side="left")) + 1, len(head))
    kept = np.sort(head[:n_keep])
    return ids[kept], logits[kept]


def keep_min_p(ids: np.ndarray, logits: np.ndarray, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the candidates whose probability is at least min_p times the largest probability,
    i.e. whose logit is at least max_logit + log(min_p); min_p <= 0 keeps all. The most likely
    candidate always survives (llama.cpp's `llama_sampler_min_p_apply`)."""
    if min_p <= 0:
        return ids, logits
    # p_i / p_max = exp(logit_i - max_logit), so the test needs no softmax
    threshold = logits.max() + np.float32(math.log(min_p))
    kept = logits >= threshold
    return ids[kept], logits[kept]


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The logits divided by temperature (> 0), as float64: above 1 flattens the distribution,
    below 1 sharpens it (llama.cpp's `llama_sampler_temp_impl`, there in float32; float64 keeps a
    tiny temperature from overflowing to inf). Temperature 0 is handled by the Sampler as greedy."""
    return logits.astype(np.float64) / temperature


def draw(ids: np.ndarray, logits: np.ndarray, rng: np.random.Generator) -> int:
    """One id from `ids`, id i with probability softmax(logits)[i], using exactly one uniform
    draw from `rng` (even when there is a single candidate, so a seed's stream of draws does not
    depend on how many candidates survived). Candidates with probability 0 are never drawn."""
    weights = np.exp(logits.astype(np.float64) - logits.max())
    cumulative = np.cumsum(weights)
    target = rng.random() * cumulative[-1]            # uniform in [0, total)
    # inverse CDF: the first candidate whose running total passes the target
    index = int(np.searchsorted(cumulative, target, side="right"))
    return int(ids[min(index, len(ids) - 1)])


# ---------------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------------

class Sampler:
    """Picks next tokens for one generation, with one random stream.

    Differences from llama.cpp:
    - The random numbers come from numpy's PCG64 (`np.random.Generator(np.random.PCG64(seed))`);
      llama.cpp uses std::mt19937. The same seed gives the same tokens on every run of refllm
      (same options, same logits), but not the tokens llama.cpp or ollama would give.
    - seed -1 takes a 32-bit seed from the OS (`secrets`); it is exposed as `sampler.seed`, so
      a run can be repeated.
    - temperature 0 is plain argmax of the penalised logits and draws no random number
      (llama.cpp keeps the largest logit and still draws once). The chosen token is the same,
      ties aside: refllm picks the lowest id; llama.cpp's tie order is its sort's.
    - The penalty window is the last repeat_last_n ids of `history` as given; llama-server
      puts the prompt tokens into that window too, so pass the prompt and the generated ids.
    - Candidates are drawn by inverse CDF in ascending id order (llama.cpp: in its candidate
      order); the distribution is the same.
    """

    def __init__(self, options: SamplingOptions, n_vocab: int, n_ctx: int):
        options.validate()
        if n_vocab < 1 or n_ctx < 1:
            raise ValueError(f"n_vocab and n_ctx must be positive, got {n_vocab} and {n_ctx}")
        self.options = options
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.seed = options.seed if options.seed != -1 else secrets.randbits(32)
        self.penalty_window = n_ctx if options.repeat_last_n == -1 else options.repeat_last_n
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        # Every id, made once: a fresh 2 MB array per token costs about a millisecond.
        self._all_ids = np.arange(n_vocab)
        self._all_ids.flags.writeable = False

    def _penalties_apply(self) -> bool:
        """Whether the penalty step changes anything (llama.cpp's `is_disabled`, negated)."""
        o = self.options
        return self.penalty_window > 0 and not (
            o.repeat_penalty == 1 and o.frequency_penalty == 0 and o.presence_penalty == 0)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token id: the options' chain applied to `logits` (one float per vocabulary
        entry, not modified) given `history` (the ids so far, oldest first). Deterministic for a
        given seed, options and sequence of calls."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {logits.shape}")
        if np.isnan(logits).any():
            raise ValueError("logits contain NaN")
        o = self.options

        # 1. penalties: make recently seen tokens less likely
        if self._penalties_apply():
            recent = history[-self.penalty_window:]
            logits = apply_penalties(logits, recent, o.repeat_penalty, o.frequency_penalty,
                                     o.presence_penalty)

        # temperature 0: the most likely token; top_k/top_p/min_p always keep it anyway
        if o.temperature == 0:
            return int(np.argmax(logits))

        ids = self._all_ids
        # 2. top_k: only the k most likely tokens stay candidates
        ids, logits = keep_top_k(ids, logits, o.top_k)
        # 3. top_p: only the head of the distribution holding probability p
        ids, logits = keep_top_p(ids, logits, o.top_p)
        # 4. min_p: drop tokens much less likely than the best one
        ids, logits = keep_min_p(ids, logits, o.min_p)
        # 5. temperature: reshape the distribution among the survivors
        logits = apply_temperature(logits, o.temperature)
        # 6. draw one of them
        return draw(ids, logits, self._rng)


# ---------------------------------------------------------------------------------------------
# Stop strings
# ---------------------------------------------------------------------------------------------

class StopStrings:
    """Cuts streamed text at the first stop string, showing text as soon as it cannot be part
    of one.

    "First" means the stop that is complete earliest in the text (the one a streaming
    generator meets first); if several are complete at the same character, the longest, so
    that none of a stop's text is shown. The stop string itself is never shown, as in ollama.
    The result does not depend on how the text is cut into chunks.
    """

    def __init__(self, stops: Sequence[str]):
        if isinstance(stops, str):
            raise SamplingError("stop must be a sequence of strings, not one string")
        if any(stop == "" for stop in stops):
            raise SamplingError("stop must not contain an empty string (it would match at once)")
        self.stops = tuple(stops)
        self.stopped = False
        self._held = ""   # text received but not yet shown: it may be the start of a stop

    def feed(self, text: str) -> tuple[str, bool]:
        """Take the next chunk of text. Return (the text that is now safe to show, whether a stop
        string has completed). On a stop, the text returned ends just before the stop, and every
        later call returns ("", True)."""
        if self.stopped:
            return "", True
        pending = self._held + text

        # A complete stop? Take the one ending first; among those, the one starting first.
        best_end, best_start = None, None
        for stop in self.stops:
            start = pending.find(stop)
            if start < 0:
                continue
            end = start + len(stop)
            if best_end is None or (end, start) < (best_end, best_start):
                best_end, best_start = end, start
        if best_start is not None:
            self.stopped = True
            self._held = ""
            return pending[:best_start], True

        # Hold back the longest tail that some stop begins with; show the rest.
        held_length = 0
        for length in range(min(len(pending), max((len(s) for s in self.stops), default=0)), 0, -1):
            if any(stop.startswith(pending[-length:]) for stop in self.stops):
                held_length = length
                break
        self._held = pending[len(pending) - held_length:]
        return pending[: len(pending) - held_length], False

    def flush(self) -> str:
        """At the end of generation: the text held back (it never became a stop); "" after a
        stop."""
        held, self._held = self._held, ""
        return held
