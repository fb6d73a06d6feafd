"""Two checkouts of refllm side by side: the CLI's start-up, and prefill and decode speed of both
real models under both numerics, for a change that must not move them (a refactor).

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/checkouts.py OLD_DIR NEW_DIR [--rounds 2] [--runs 3]

OLD_DIR and NEW_DIR are source trees (e.g. `git worktree add /tmp/old HEAD~3`); each is measured
in its own processes, which take turns (--rounds), so that a busy spell of the machine slows
both alike. Prefill is one forward of a 256-token prompt (the first 256 tokens of OLD_DIR's
README, the same ids for both), decode 16 greedy steps after it, median of --runs per process;
start-up is `python -m refllm.cli --help`, median of 5. Prints Markdown for RESULTS.md: the
median over rounds of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Runs in a child process with the checkout first on sys.path; prints {"model/numerics": [s, tok/s]}.
MEASURE = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numba, numpy as np
import refllm
from refllm import fetch
from refllm.engine.transformer import Transformer
try:
    from refllm.tokenizer import Tokenizer
except ImportError:                                  # checkouts before the tokenizer/ package
    from refllm.engine import Tokenizer
assert refllm.__file__.startswith(sys.argv[1]), refllm.__file__
numba.set_num_threads(int(os.environ["NUMBA_NUM_THREADS"]))
text = open(sys.argv[2], encoding="utf-8").read()
runs, out = int(sys.argv[3]), {}
for name in ("smollm2", "gemma3"):
    model = refllm.open(fetch.ensure_pack(name, quiet=True))
    tokens = Tokenizer.from_model(model).tokenize(text)[:256]
    for numerics in ("f32", "ggml"):
        net = Transformer(model, numerics)
        def run(n_decode):
            cache = net.new_cache(len(tokens) + n_decode + 1)
            t = time.perf_counter()
            token = int(np.argmax(net.forward(tokens, cache)[-1]))
            prefill, t = time.perf_counter() - t, time.perf_counter()
            for _ in range(n_decode):
                token = int(np.argmax(net.forward([token], cache)[-1]))
            return prefill, n_decode / (time.perf_counter() - t)
        run(2)                                        # Numba's kernels loaded
        measured = [run(16) for _ in range(runs)]
        out[f"{name}/{numerics}"] = [statistics.median(p for p, _ in measured),
                                     statistics.median(d for _, d in measured)]
print(json.dumps(out))
"""


def start_up(checkout: str) -> float:
    """Median seconds of `python -m refllm.cli --help` with the checkout on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=checkout)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "refllm.cli", "--help"], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1" or os.environ.get("NUMBA_NUM_THREADS") != "1":
        sys.exit("set OPENBLAS_NUM_THREADS=1 and NUMBA_NUM_THREADS=1: one thread each, so the figures compare")
    checkouts = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    prompt = os.path.join(checkouts["old"], "README.md")
    results: dict[str, list[dict]] = {side: [] for side in checkouts}
    startups: dict[str, list[float]] = {side: [] for side in checkouts}
    for _ in range(args.rounds):
        for side, checkout in checkouts.items():
            startups[side].append(start_up(checkout))
            done = subprocess.run([sys.executable, "-c", MEASURE, checkout, prompt, str(args.runs)],
                                  capture_output=True, text=True, check=True)
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"`refllm --help` start-up: old {statistics.median(startups['old']):.2f} s, "
          f"new {statistics.median(startups['new']):.2f} s\n")
    print("| model | numerics | prefill 256, old | new | new / old | decode, old | new | new / old |")
    print("|---|---|---|---|---|---|---|---|")
    for key in results["old"][0]:
        old = [statistics.median(r[key][i] for r in results["old"]) for i in (0, 1)]
        new = [statistics.median(r[key][i] for r in results["new"]) for i in (0, 1)]
        model, numerics = key.split("/")
        print(f"| {model} | {numerics} | {old[0]:.3f} s | {new[0]:.3f} s | {new[0] / old[0]:.2f} "
              f"| {old[1]:.1f} tok/s | {new[1]:.1f} tok/s | {new[1] / old[1]:.2f} |")


if __name__ == "__main__":
    main()
