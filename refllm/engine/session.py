"""A running model: a Transformer, its KV cache, and the generation loop around them.

    session = Session(Transformer(model), n_ctx=4096)
    logits = session.evaluate(tokens)            # reuses the cached prefix of `tokens`
    for text in session.generate(prompt_ids, tokenizer, SamplingOptions(temperature=0)):
        print(text, end="")
    session.stats                                # ollama's --verbose figures for that call
    rows = prompt_logits(transformer, tokens, n_batch=1)   # every position, token by token

Prefix reuse, as ollama and llama-server do it: the cache remembers the tokens behind it; a new
request keeps the longest common prefix and evaluates only the rest, but always at least its
last token, so that there are logits to sample from. Where a sliding-window layer's ring has
already overwritten positions the first new token attends to, nothing is reused, as
llama-server re-processes the whole prompt then (KVCache.common_prefix).

When generation fills the context, the cache is shifted as llama.cpp shifts it: keep the first
n_keep positions, drop half of the rest, and re-rotate the keys that moved. With
`context_shift=False` a full context is an error instead (ContextFullError).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from refllm.engine.sampling import Sampler, SamplingOptions, StopStrings
from refllm.engine.transformer import Transformer
from refllm.errors import RefllmError
from refllm.tokenizer.tokenizer import Tokenizer

if TYPE_CHECKING:
    from refllm.engine.structured import OutputConstraint


class ContextFullError(RefllmError):
    """The prompt, or the prompt and the reply, do not fit in the context, and neither truncation
    nor shifting was allowed."""


@dataclass
class GenerationStats:
    """What `ollama run --verbose` prints (durations in seconds), and what refllm adds to it."""
    prompt_eval_count: int = 0        # prompt tokens, cached ones included (as ollama counts them)
    prompt_eval_duration: float = 0.0
    cached_tokens: int = 0            # prompt tokens whose keys and values came from the cache
    eval_count: int = 0               # generated tokens
    eval_duration: float = 0.0
    total_duration: float = 0.0
    truncated_tokens: int = 0         # prompt tokens dropped to fit the context
    context_shifts: int = 0
    done_reason: str = ""             # "stop" (EOG token or stop string) or "length" (num_predict)
    seed: int | None = None

    def report(self, load_duration: float = 0.0) -> str:
        """The figures in ollama's --verbose layout, one per line."""
        def rate(count: int, seconds: float) -> str:
            return f"{count / seconds:.2f} tokens/s" if seconds > 0 else "-"
        evaluated = self.prompt_eval_count - self.cached_tokens
        # ollama's count includes the cached tokens but its duration times only the evaluated
        # ones: say so on the line, and rate the evaluated tokens alone
        cached = f" ({self.cached_tokens} from the cache, {evaluated} evaluated)" if self.cached_tokens else ""
        lines = [
            ("total duration", f"{self.total_duration + load_duration:.3f}s"),
            ("load duration", f"{load_duration:.3f}s"),
            ("prompt eval count", f"{self.prompt_eval_count} token(s){cached}"),
            ("prompt eval duration", f"{self.prompt_eval_duration:.3f}s"),
            ("prompt eval rate", rate(evaluated, self.prompt_eval_duration) + (" (evaluated ones)" if cached else "")),
            ("cached tokens", f"{self.cached_tokens} token(s)"),
            ("eval count", f"{self.eval_count} token(s)"),
            ("eval duration", f"{self.eval_duration:.3f}s"),
            ("eval rate", rate(self.eval_count, self.eval_duration)),
        ]
        if self.truncated_tokens:
            lines.append(("truncated prompt", f"{self.truncated_tokens} token(s) dropped"))
        if self.context_shifts:
            lines.append(("context shifts", str(self.context_shifts)))
        return "\n".join(f"{name + ':':<22}{value}" for name, value in lines)


def prompt_logits(transformer: Transformer, tokens: Sequence[int], n_batch: int | None = None,
                  n_ctx: int | None = None) -> np.ndarray:
    """The logits at every position of `tokens`, evaluated in a fresh cache: float32
    [n, n_vocab], row i scoring the token after tokens[i].

    n_batch None evaluates them in one `forward` call, as batched as the transformer goes (what
    `Session.evaluate(tokens, all_logits=True)` does on an empty cache). n_batch k feeds them k
    at a time, each call attending to the keys and values the earlier ones left in the cache,
    as llama.cpp does with n_batch = n_ubatch = k; n_batch 1 is token by token, the path every
    generated token takes (and the golden/logits cases made with "n_batch": 1). n_ctx: the
    context size (default: just the tokens); under flash attention, llama.cpp's context size
    steers how one token's attention is split among its threads.
    """
    tokens = list(tokens)
    if n_batch is not None and n_batch < 1:
        raise ValueError(f"n_batch must be at least 1, not {n_batch}")
    cache = transformer.new_cache(n_ctx or len(tokens))
    step = n_batch or len(tokens)
    rows = [transformer.forward(tokens[i:i + step], cache, all_logits=True) for i in range(0, len(tokens), step)]
    return rows[0] if len(rows) == 1 else np.concatenate(rows)


class Session:
    """A Transformer with one KV cache that persists across requests."""

    def __init__(self, transformer: Transformer, n_ctx: int, context_shift: bool = True, n_batch: int | None = None):
        self.transformer = transformer
        self.cache = transformer.new_cache(n_ctx) if n_batch is None else transformer.new_cache(n_ctx, n_batch)
        self.context_shift = context_shift
        self.cached_tokens = 0            # of the last evaluate(): positions reused from the cache
        self.stats = GenerationStats()
        self.reply: list[int] = []        # of the last generate(): the ids drawn, end token excluded

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    def evaluate(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Logits after `tokens`, reusing the cache's longest common prefix with them.

        Returns float32 [1, n_vocab] for the last token, or with all_logits one row for each
        token that was evaluated (the ones after the reused prefix). Sets `self.cached_tokens`.
        """
        tokens = list(tokens)
        if len(tokens) > self.n_ctx:
            raise ContextFullError(f"{len(tokens)} tokens do not fit in a context of {self.n_ctx}")
        # at least the last token is evaluated; with sliding-window rings, the prefix may be
        # reusable only whole or not at all (KVCache.common_prefix)
        reused = self.cache.common_prefix(tokens, at_most=len(tokens) - 1)
        self.cache.truncate(reused)
        self.cached_tokens = reused
        return self.transformer.forward(tokens[reused:], self.cache, all_logits)

    def fit_prompt(self, prompt: Sequence[int], num_keep: int, truncate: bool) -> list[int]:
        """The prompt, shortened to leave room to generate when it does not fit and `truncate`
        allows it, as ollama does: keep its first num_keep tokens and as many of its last ones
        as leave half of the rest of the context free. Raises ContextFullError otherwise."""
        prompt = list(prompt)
        if len(prompt) < self.n_ctx:
            return prompt
        if not truncate:
            raise ContextFullError(f"the prompt is {len(prompt)} tokens and the context holds {self.n_ctx} "
                                   "(use a larger --ctx, or --truncate to drop the middle of the prompt)")
        keep = self._n_keep(num_keep, len(prompt))
        limit = self.n_ctx - max((self.n_ctx - keep) // 2, 1)
        return prompt[:keep] + prompt[len(prompt) - (limit - keep):]

    def _n_keep(self, num_keep: int, n_prompt: int) -> int:
        """Positions a shift or a truncation keeps: num_keep (-1: the whole prompt), at most n_ctx - 4."""
        keep = n_prompt if num_keep < 0 else num_keep
        return max(0, min(keep, self.n_ctx - 4))

    def generate(self, prompt: Sequence[int], tokenizer: Tokenizer, options: SamplingOptions,
                 truncate: bool = False, constraint: OutputConstraint | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_token: Callable[[int, np.ndarray], None] | None = None) -> Iterator[str]:
        """Stream the reply to `prompt` (token ids) as text, piece by piece.

        Stops at an end-of-generation token, a stop string (not shown), num_predict tokens, or
        when should_stop() says so before a draw (done_reason "cancelled": a client went away).
        With a `constraint` (refllm.engine.structured), only the tokens it allows are drawn, and
        the reply also stops where it is done (the JSON is complete). on_token(token, logits) sees
        each token of the reply with the model's logits it was drawn from (float32 [n_vocab]).
        Text is never cut inside a UTF-8 character or shown while it could still be the start
        of a stop string. `self.stats` holds the figures of this call when the iterator ends.
        """
        started = time.perf_counter()
        stats = self.stats = GenerationStats()
        fitted = self.fit_prompt(prompt, options.num_keep, truncate)
        stats.truncated_tokens = len(prompt) - len(fitted)
        n_keep = self._n_keep(options.num_keep, len(fitted))

        # prompt: evaluate what the cache does not already hold
        logits = self.evaluate(fitted)
        stats.prompt_eval_count, stats.cached_tokens = len(fitted), self.cached_tokens
        stats.prompt_eval_duration = time.perf_counter() - started

        sampler = Sampler(options, self.transformer.config.n_vocab, self.n_ctx)
        stats.seed = sampler.seed
        history = list(fitted)
        self.reply = []
        text_stream, stops = tokenizer.stream(), StopStrings(options.stop)
        decode_started = time.perf_counter()
        stats.done_reason = "length"
        try:
            while options.num_predict < 0 or stats.eval_count < options.num_predict:
                if should_stop is not None and should_stop():
                    stats.done_reason = "cancelled"
                    break
                # sample the next token (among those the format allows); an end-of-generation
                # token ends the reply unseen
                row = logits[-1] if constraint is None else np.where(constraint.mask(), logits[-1], -np.inf)
                token = sampler.sample(row, history)
                if tokenizer.is_eog(token):
                    stats.done_reason = "stop"
                    break
                if constraint is not None:
                    constraint.accept(token)
                if on_token is not None:
                    on_token(token, logits[-1])
                history.append(token)
                self.reply.append(token)
                stats.eval_count += 1

                # show its text, unless it completes (or may start) a stop string; a complete
                # JSON reply ends here too
                text, stopped = stops.feed(text_stream.feed(token))
                if text:
                    yield text
                if stopped or (constraint is not None and constraint.done):
                    stats.done_reason = "stop"
                    break

                # make room when the context is full, then evaluate the token
                if self.cache.n_free == 0:
                    self._shift(n_keep)
                    stats.context_shifts += 1
                logits = self.transformer.forward([token], self.cache)
            if not stops.stopped:
                text, _ = stops.feed(text_stream.flush())
                text += stops.flush()
                if text:
                    yield text
        finally:       # a cancelled stream or a full context still leaves its figures
            stats.eval_duration = time.perf_counter() - decode_started
            stats.total_duration = time.perf_counter() - started

    def _shift(self, n_keep: int) -> None:
        if not self.context_shift:
            raise ContextFullError(f"the context of {self.n_ctx} tokens is full (use a larger --ctx, "
                                   "or allow the context to shift)")
        n_discard = (self.cache.n_past - n_keep) // 2
        self.transformer.shift(self.cache, n_keep, n_discard)
