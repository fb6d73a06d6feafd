"""Engine speed: prefilling a 256-token prompt and decoding token by token, for both real
models, on a given number of threads; optionally llama.cpp on the same tokens and threads.

    OPENBLAS_NUM_THREADS=1 python bench/generate.py --threads 1 [--runs 3] [--decode 32]
        [--numerics f32 ggml] [--llama-python /tmp/golden-venv/bin/python]

Prefill is one `Transformer.forward` of the 256 tokens into an empty cache (last-token logits,
as generation needs). Decode is greedy: forward one token, take the argmax, repeat; the rate
is tokens per second over --decode steps after the prefill. With --llama-python, the same is
measured with llama-cpp-python in that interpreter (`Llama.eval`, i.e. llama_decode, with
n_batch 512 and the same thread count). The --numerics modes (default: f32 and ggml) take
turns within each run, so that a busy spell of the machine slows them alike; prints the
medians of --runs and, against the first mode, the median of the per-run prefill ratios.
Markdown for RESULTS.md.
--threads is both thread pools: OPENBLAS_NUM_THREADS, which must equal it (the f32 products run
on numpy's BLAS threads, and BLAS reads the variable at import; the weight decoding is
single-threaded), and Numba's (numba.set_num_threads: the ggml batch kernels share their rows
among them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

import refllm
from refllm import fetch
from refllm.engine.transformer import Transformer
from refllm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
N_PROMPT = 256

LLAMA_CPP_SCRIPT = r"""
import json, sys, time, statistics
import llama_cpp
path, tokens = sys.argv[1], json.loads(sys.argv[2])
threads, runs, n_decode = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
prefill, decode = [], []
for _ in range(runs):
    llm.reset()
    t = time.perf_counter(); llm.eval(tokens); prefill.append(time.perf_counter() - t)
    token = int(llm.scores[llm.n_tokens - 1].argmax())
    t = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token]); token = int(llm.scores[llm.n_tokens - 1].argmax())
    decode.append(n_decode / (time.perf_counter() - t))
print(json.dumps({"prefill": statistics.median(prefill), "decode": statistics.median(decode),
                  "version": llama_cpp.__version__}))
"""


def prompt_tokens(tokenizer: Tokenizer) -> list[int]:
    """The first 256 tokens of this repository's README (English prose with code)."""
    ids = tokenizer.tokenize((ROOT / "README.md").read_text(encoding="utf-8"))
    return ids[:N_PROMPT]


def measure_refllm(net: Transformer, tokens: list[int], n_decode: int) -> tuple[float, float]:
    """One run: (prefill seconds, decode tokens per second)."""
    cache = net.new_cache(len(tokens) + n_decode + 1)
    t = time.perf_counter()
    logits = net.forward(tokens, cache)
    prefill = time.perf_counter() - t
    token = int(np.argmax(logits[-1]))
    t = time.perf_counter()
    for _ in range(n_decode):
        token = int(np.argmax(net.forward([token], cache)[-1]))
    return prefill, n_decode / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--numerics", nargs="+", default=["f32", "ggml"])
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python==0.3.36, to measure llama.cpp too")
    args = ap.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        sys.exit(f"set OPENBLAS_NUM_THREADS={args.threads}: refllm's f32 products run on numpy's BLAS threads "
                 "(its weight decoding is single-threaded), and BLAS reads the variable at import")
    numba.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), {N_PROMPT}-token prompt, {args.decode} greedy decode steps, "
          f"median of {args.runs}.\n")
    base = args.numerics[0]
    print(f"| model | numerics | refllm prefill 256 | prefill / {base} (median of runs) | refllm decode "
          "| llama.cpp prefill 256 | llama.cpp decode |")
    print("|---|---|---|---|---|---|---|")
    for name in ("smollm2", "gemma3"):
        path = fetch.ensure_pack(name, quiet=True)
        model = refllm.open(path)
        tokens = prompt_tokens(Tokenizer.from_model(model))
        nets = {numerics: Transformer(model, numerics) for numerics in args.numerics}
        for net in nets.values():
            measure_refllm(net, tokens, 2)                         # warm-up: Numba kernels loaded
        runs: dict[str, list[tuple[float, float]]] = {numerics: [] for numerics in nets}
        for _ in range(args.runs):
            for numerics, net in nets.items():
                runs[numerics].append(measure_refllm(net, tokens, args.decode))
        figures = {}
        for numerics, measured in runs.items():
            ratio = statistics.median(p / b[0] for (p, _), b in zip(measured, runs[base]))
            figures[numerics] = (statistics.median(p for p, _ in measured), ratio,
                                 statistics.median(d for _, d in measured))
        llama = "| - | - |"
        if args.llama_python:
            result = subprocess.run([args.llama_python, "-c", LLAMA_CPP_SCRIPT, str(path), json.dumps(tokens),
                                     str(args.threads), str(args.runs), str(args.decode)],
                                    capture_output=True, text=True, check=True)
            ll = json.loads(result.stdout.strip().splitlines()[-1])
            llama = f"| {ll['prefill']:.2f} s | {ll['decode']:.1f} tok/s |"
        for numerics, (prefill, ratio, decode) in figures.items():
            print(f"| {name} | {numerics} | {prefill:.2f} s | {ratio:.2f} | {decode:.1f} tok/s {llama}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
