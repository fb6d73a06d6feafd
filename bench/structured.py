"""Constrained sampling: what llguidance and outlines-core cost, for each real model's vocabulary,
against one decode step of the model.

    python bench/structured.py [--reps 20]

Runs on one thread (it sets NUMBA_NUM_THREADS and OPENBLAS_NUM_THREADS to 1). For each model:

- setup, once per tokenizer: llguidance's LLTokenizer (refllm.engine.structured builds and
  caches it), outlines-core's Vocabulary (token bytes -> ids);
- setup, once per format: llguidance compiles the grammar into a matcher (a few ms at most);
  outlines-core builds an Index, every state's allowed tokens, for the format's regex;
- per token, over a whole reply: the allowed-token mask as a bool [n_vocab] array, and accepting
  the token, replaying the tokens of a valid reply: one to a small schema, one in "json" mode
  (any JSON object; outlines-core cannot express recursion, so its "json" is the regex it
  builds for {"type": "object"}, with nesting bounded: the reply nests two deep, which it
  allows, and not three);
- one decode step of the model (`--numerics ggml`, the token after a 16-token prompt).

Medians; setup over 3 runs (1 for outlines-core's "json" index, tens of seconds on Gemma-3),
per-token costs over every token of `--reps` replays. Prints Markdown for bench/RESULTS.md.
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from dequant import median_seconds  # noqa: E402  (bench/ is on sys.path when a script runs)

import refllm  # noqa: E402
from refllm import fetch  # noqa: E402
from refllm.engine.structured import (  # noqa: E402
    SCHEMA_OPTIONS,
    OutputConstraint,
    _vocabulary,
    closed_objects,
    special_tokens,
)
from refllm.tokenizer import Tokenizer  # noqa: E402

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "color": {"enum": ["red", "green", "blue"]},
                         "hobbies": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "color", "hobbies"]}
# valid replies, in the whitespace each format allows
REPLIES = {
    "schema": '{"name": "Alexandra", "age": 25, "color": "blue", "hobbies": ["chess", "rowing", "baking"]}',
    "json": '{"fruits": ["apple", "banana"], "count": 2, "ripe": true, "price": 1.25, '
            '"shop": {"name": "Corner", "open": false}}',
}
FORMATS = {"schema": SCHEMA, "json": "json"}
# outlines-core's whitespace pattern is required where llguidance's is optional
WHITESPACE = {"schema": SCHEMA_OPTIONS["whitespace_pattern"] + "?", "json": r"[ \t\n]*"}


def per_token(replay, reps: int) -> float:
    """Median seconds of one token's mask and accept, over `reps` replays of a reply."""
    times: list[float] = []
    for _ in range(reps):
        times += replay()
    return statistics.median(times)


def llguidance_replay(fmt, tokenizer: Tokenizer, ids: list[int]):
    def replay() -> list[float]:
        c = OutputConstraint.from_format(fmt, tokenizer)
        times = []
        for t in ids:
            start = time.perf_counter()
            allowed = c.mask()
            c.accept(t)
            times.append(time.perf_counter() - start)
            assert allowed[t]
        assert c.done
        return times
    return replay


def outlines_vocabulary(tokenizer: Tokenizer):
    import outlines_core
    special = special_tokens(tokenizer)
    pieces: dict[bytes, list[int]] = {}
    for t in range(tokenizer.n_vocab):
        if not special[t] and not tokenizer.is_eog(t):
            pieces.setdefault(tokenizer.token_to_piece(t, special=True), []).append(t)
    return outlines_core.Vocabulary(tokenizer.vocab.eos_id, pieces)


def outlines_regex(name: str) -> str:
    from outlines_core.json_schema import build_regex_from_schema
    schema = closed_objects(SCHEMA) if name == "schema" else {"type": "object"}
    return build_regex_from_schema(json.dumps(schema), WHITESPACE[name])


def outlines_replay(index, n_vocab: int, ids: list[int]):
    import outlines_core
    bitmask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def replay() -> list[float]:
        guide = outlines_core.Guide(index)
        times = []
        for t in ids:
            start = time.perf_counter()
            guide.write_mask_into(bitmask.ctypes.data, bitmask.size, 4)
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:n_vocab].view(bool)
            guide.advance(t, return_tokens=False)
            times.append(time.perf_counter() - start)
            assert allowed[t]
        assert guide.is_finished()
        return times
    return replay


def decode_step(model, runs: int = 10) -> float:
    from refllm.engine import Session, Transformer
    session = Session(Transformer(model, "ggml"), n_ctx=64)
    session.evaluate(list(range(100, 116)))
    steps = []
    for k in range(runs):
        start = time.perf_counter()
        session.transformer.forward([200 + k], session.cache)
        steps.append(time.perf_counter() - start)
    return statistics.median(steps)


def ms(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    from importlib.metadata import version

    import outlines_core
    print(f"llguidance {version('llguidance')}, outlines-core {version('outlines-core')}; one thread\n")
    print('| model (vocab) | library | setup: tokenizer | setup: schema / "json" '
          '| per token: schema / "json" | decode step |')
    print("|---|---|---|---|---|---|")
    for pack in ("smollm2", "gemma3"):
        model = refllm.open(fetch.ensure_pack(pack, quiet=True))
        tokenizer = Tokenizer.from_model(model)
        ids = {name: tokenizer.tokenize(text, add_special=False) for name, text in REPLIES.items()}
        step = decode_step(model)
        label = f"{pack} ({tokenizer.n_vocab:,}, {tokenizer.vocab.kind.upper()})"

        # llguidance: the tokenizer once, then a matcher per reply
        llg_tokenizer = median_seconds(lambda: _vocabulary.__wrapped__(tokenizer), 3)
        _vocabulary(tokenizer)                   # cached from here on, as a server has it
        llg_compile = {name: median_seconds(lambda f=fmt: OutputConstraint.from_format(f, tokenizer), 3)
                       for name, fmt in FORMATS.items()}
        llg_token = {name: per_token(llguidance_replay(FORMATS[name], tokenizer, ids[name]), args.reps)
                     for name in FORMATS}
        print(f"| {label} | llguidance | {ms(llg_tokenizer)} | {ms(llg_compile['schema'])} / {ms(llg_compile['json'])} "
              f"| {ms(llg_token['schema'])} / {ms(llg_token['json'])} | {ms(step)} |")

        # outlines-core: the vocabulary once, then an Index per format (cacheable per schema)
        oc_vocabulary = median_seconds(lambda: outlines_vocabulary(tokenizer), 3)
        vocabulary = outlines_vocabulary(tokenizer)
        regexes = {name: outlines_regex(name) for name in FORMATS}
        oc_index = {"schema": median_seconds(lambda: outlines_core.Index(regexes["schema"], vocabulary), 3)}
        start = time.perf_counter()
        indexes = {"json": outlines_core.Index(regexes["json"], vocabulary)}       # once: tens of seconds
        oc_index["json"] = time.perf_counter() - start
        indexes["schema"] = outlines_core.Index(regexes["schema"], vocabulary)
        oc_token = {name: per_token(outlines_replay(indexes[name], tokenizer.n_vocab, ids[name]), args.reps)
                    for name in FORMATS}
        print(f"| {label} | outlines-core | {ms(oc_vocabulary)} | {ms(oc_index['schema'])} / {ms(oc_index['json'])} "
              f"| {ms(oc_token['schema'])} / {ms(oc_token['json'])} | {ms(step)} |")
    print(f"\nReplies: schema {len(REPLIES['schema'])} characters, \"json\" {len(REPLIES['json'])} characters.")


if __name__ == "__main__":
    main()
