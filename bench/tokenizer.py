"""Tokenizer speed: building each real model's tokenizer from its metadata, and tokenizing
1 MB of mixed text (English prose and code from this repository, the multilingual and emoji
texts of golden/tokens/corpus.json and of llama.cpp's tokenizer suites, lines shuffled with a
fixed seed).

    OPENBLAS_NUM_THREADS=1 python bench/tokenizer.py [--runs 5] [--mb 1]

Prints a Markdown table for bench/RESULTS.md. Medians. "first call" tokenizes with a freshly built
tokenizer, so it pays for the lazily built structures and starts with no per-word cache;
"again" tokenizes the same text a second time with that tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import refllm
from refllm import fetch
from refllm.tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


def mixed_text(n_bytes: int) -> str:
    lines: list[str] = []
    for path in sorted(ROOT.glob("refllm/**/*.py")) + [ROOT / "README.md", ROOT / "bench/RESULTS.md"]:
        lines += path.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus = json.loads((ROOT / "golden/tokens/corpus.json").read_text(encoding="utf-8"))["texts"]
    lines += [t + "\n" for t in corpus.values()]
    vocab = fetch.ensure_pack("llama-vocab", quiet=True)
    for inp in sorted(vocab.glob("*.inp")):
        lines += [t + "\n" for t in inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")]
    rng = random.Random(0)
    out, size = [], 0
    while size < n_bytes:
        line = rng.choice(lines)
        out.append(line)
        size += len(line.encode("utf-8"))
    return "".join(out)


def median(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=float, default=1.0)
    args = ap.parse_args()
    text = mixed_text(int(args.mb * 1e6))
    print(f"Text: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(text)} characters.\n")
    print("| model | tokenizer | build from metadata | tokenize, first call | MB/s | tokenize again | tokens |")
    print("|---|---|---|---|---|---|---|")
    for name in ("smollm2", "gemma3"):
        model = refllm.open(fetch.ensure_pack(name, quiet=True))
        build = median(lambda: Tokenizer.from_model(model), args.runs)
        first, again, n_tokens = [], [], 0
        for _ in range(args.runs):
            tok = Tokenizer.from_model(model)
            for times in (first, again):
                t = time.perf_counter()
                n_tokens = len(tok.tokenize(text, add_special=True, parse_special=False))
                times.append(time.perf_counter() - t)
        seconds, seconds_again = statistics.median(first), statistics.median(again)
        kind = model.metadata.get("tokenizer.ggml.model")
        print(f"| {name} | {kind} ({model.metadata.get('tokenizer.ggml.pre', '-')}) | {build * 1e3:.0f} ms "
              f"| {seconds:.2f} s | {len(text.encode('utf-8')) / 1e6 / seconds:.2f} | {seconds_again:.2f} s "
              f"| {n_tokens} |", flush=True)


if __name__ == "__main__":
    main()
