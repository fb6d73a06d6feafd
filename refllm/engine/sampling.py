"""Choosing the next token from the model's logits as llama.cpp's sampler chain does, draw for
draw, and cutting the reply at stop strings, with ollama's options.

    options = SamplingOptions(temperature=0.7, seed=42, stop=("</s>",))
    sampler = Sampler(options, n_vocab=len(vocab), n_ctx=4096)
    token = sampler.sample(logits, history)      # history: prompt and generated ids so far

The chain is the one ollama's llama.cpp runner builds (runner/llamarunner: common_sampler_init of
common/sampling.cpp, llama.cpp's default order of common/common.h), less the samplers that ollama
leaves neutral (DRY, top-n-sigma, typical-p, XTC). common_sampler_init would also put a -inf
logit bias first for the ids a model's tokenizer.ggml.suppress_tokens lists; refllm does not
(neither real model lists any):

1. penalties    repeat / frequency / presence, over the last `repeat_last_n` ids of history
2. top_k        keep the k highest logits
3. top_p        keep the smallest head whose probability mass reaches p
4. min_p        keep tokens at least min_p times as likely as the most likely one
5. temperature  divide the logits by T (llama_sampler_init_temp_ext(T, 0, 1)); T = 0 keeps
                only the largest logit
6. dist         draw one candidate with probability softmax(logits), from std::mt19937(seed)

Each step is refllm.ggml_cpu.sampler's reproduction of llama.cpp's, with its float arithmetic,
its candidate order (libstdc++'s sorts, ties included) and its random numbers, so with the same
logits (`--numerics ggml`) and the same seed refllm draws llama.cpp's tokens. top_k, top_p and
min_p come before temperature, so they see temperature-1 probabilities: a high temperature
flattens the draw among the survivors but does not let more tokens survive. Temperature 0 is
not a shortcut: the chain runs, the draw still takes one random number, and of equal largest
logits the first in the candidates' order wins: libstdc++'s order once top_k or top_p has sorted
them (both are on by default), else the lowest id.

The penalty window is the ids the sampler has accepted: ollama's runner accepts the whole prompt
(after any truncation) before the first draw and then every drawn id (as llama-server does), so
`history` is the prompt and the reply so far.

Where ollama's defaults and llama.cpp's differ, each option follows:

    option            default  follows
    temperature       0.8      both
    top_k             40       both; 0 disables
    top_p             0.9      ollama (llama.cpp's common default is 0.95); 1 disables
    min_p             0.0      ollama (llama.cpp: 0.05); 0 disables
    repeat_penalty    1.0      both (ollama's api.DefaultOptions had 1.1 until 2026-08); 1 disables
    repeat_last_n     64       both; 0 disables; -1 means the context size, as ollama documents
                               (llama.cpp's CLI refuses negatives, and ollama's llama.cpp
                               runner passes -1 on, which llama_sampler_init_penalties clamps
                               to 0: penalties off)
    presence_penalty  0.0      both
    frequency_penalty 0.0      both
    seed              -1       ollama: -1 draws a random seed (llama.cpp's is LLAMA_DEFAULT_SEED,
                               0xFFFFFFFF, so a seed is 0 .. 2^32 - 2)
    min_keep          0        llama.cpp's default; ollama does not set it (not an option here)

num_predict, num_keep and stop are ollama's options for the generation loop (Session.generate);
the Sampler does not read them. ollama's newer Go engine (ollamarunner) samples with its own Go
code (temperature before top_p and min_p, another random generator): refllm follows the llama.cpp
runner, not that one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refllm.errors import RefllmError

LLAMA_DEFAULT_SEED = 0xFFFFFFFF     # llama_sampler_init_dist's "random seed"; not a seed itself
MIN_KEEP = 0                        # common_params_sampling::min_keep, which ollama leaves as is


class SamplingError(RefllmError, ValueError):
    """A sampling option with an impossible value; the message names the option."""


@dataclass(frozen=True)
class SamplingOptions:
    """ollama's sampling options (`api.Options`), with the defaults of the module docstring's
    table.

    top_k 0 disables top_k, top_p 1 disables top_p, min_p 0 disables min_p; repeat_last_n 0
    disables the penalties and -1 means the whole context; seed -1 means a random seed, else
    0 .. 2^32 - 2; num_predict -1 means no limit. num_predict, num_keep and stop are for the
    generation loop (the Sampler itself does not read them). Constructing an impossible set
    raises SamplingError.
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
        if not -1 <= self.seed < LLAMA_DEFAULT_SEED:
            raise SamplingError(f"seed must be between 0 and {LLAMA_DEFAULT_SEED - 1} (llama.cpp's 32-bit "
                                f"seeds), or -1 for a random seed, got {self.seed}")
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
# The chain
# ---------------------------------------------------------------------------------------------

class Sampler:
    """Picks next tokens for one generation, with one std::mt19937 stream: llama.cpp's chain
    (the module docstring's steps) built from `options`, as common_sampler_init builds it.

    seed -1 takes a seed from the OS (`secrets`, 0 .. 2^32 - 2); `sampler.seed` exposes it, so
    a run can be repeated.
    """

    def __init__(self, options: SamplingOptions, n_vocab: int, n_ctx: int):
        # the steps are jitted: loaded here, not when the CLI imports SamplingOptions
        from refllm.ggml_cpu import libstdcxx, sampler

        options.validate()
        if n_vocab < 1 or n_ctx < 1:
            raise ValueError(f"n_vocab and n_ctx must be positive, got {n_vocab} and {n_ctx}")
        self.options = options
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.seed = options.seed if options.seed != -1 else secrets.randbelow(LLAMA_DEFAULT_SEED)
        self.penalty_window = n_ctx if options.repeat_last_n == -1 else options.repeat_last_n
        self._steps = sampler
        self._rng = libstdcxx.MT19937(self.seed)

    def _penalties_apply(self) -> bool:
        """Whether the penalty step changes anything (llama.cpp's `is_disabled`, negated; the
        penalties compare as C floats)."""
        o = self.options
        return self.penalty_window > 0 and not (np.float32(o.repeat_penalty) == 1
                                                and np.float32(o.frequency_penalty) == 0
                                                and np.float32(o.presence_penalty) == 0)

    def penalty_counts(self, history: Sequence[int]) -> np.ndarray:
        """How often each id occurs among the last penalty_window ids of `history`: int64
        [n_vocab] (the penalty sampler's token_count). ValueError for an id outside the
        vocabulary."""
        recent = np.asarray(history[-self.penalty_window:], dtype=np.int64)
        if recent.size and (recent.min() < 0 or recent.max() >= self.n_vocab):
            bad = recent.min() if recent.min() < 0 else recent.max()
            raise ValueError(f"history holds token id {bad}, outside the vocabulary of {self.n_vocab} tokens")
        return np.bincount(recent, minlength=self.n_vocab)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token id: the options' chain applied to `logits` (one float per vocabulary
        entry, not modified) given `history` (the ids so far, oldest first). Deterministic for a
        given seed, options and sequence of calls; each call takes exactly one random draw."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {logits.shape}")
        if np.isnan(logits).any():
            raise ValueError("logits contain NaN")
        o, steps = self.options, self._steps

        cur = steps.Candidates.from_logits(logits)            # every id, in id order
        # 1. penalties: make recently seen tokens less likely
        if self._penalties_apply():
            steps.penalties(cur, self.penalty_counts(history), o.repeat_penalty, o.frequency_penalty,
                            o.presence_penalty)
        # 2. top_k: only the k most likely tokens stay candidates
        steps.top_k(cur, o.top_k)
        # 3. top_p: only the head of the distribution holding probability p
        steps.top_p(cur, o.top_p, MIN_KEEP)
        # 4. min_p: drop tokens much less likely than the best one
        steps.min_p(cur, o.min_p, MIN_KEEP)
        # 5. temperature: reshape the distribution among the survivors (0: keep the best)
        if np.float32(o.temperature) != 1:
            steps.temp(cur, o.temperature)
        # 6. draw one of them
        return int(cur.ids[steps.dist(cur, self._rng)])


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
