"""`--numerics ggml` on an idle machine and on one whose cores are busy elsewhere, under
OpenMP's spin settings: why refllm sets GOMP_SPINCOUNT (refllm/numba_setup.py).

    python bench/busy_machine.py [--threads 2] [--runs 3]

Each setting runs in a fresh process (libgomp reads its settings when it loads): SmolLM2, a
6-token prompt, prefill and then 15 greedy decode steps, median of --runs after a warm-up.
"Busy" starts one `yes > /dev/null` per core for the length of the measurement. Prints
Markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MEASURE = r"""
import json, statistics, sys, time
import numpy as np
import refllm
from refllm import fetch
from refllm.engine.transformer import Transformer
from refllm.tokenizer import Tokenizer
model = refllm.open(fetch.ensure_pack("smollm2", quiet=True))
net = Transformer(model, "ggml")
tokens = Tokenizer.from_model(model).tokenize("The sky is blue because")
def run():
    cache = net.new_cache(64)
    t = time.perf_counter()
    token = int(np.argmax(net.forward(tokens, cache)[-1]))
    prefill, t = time.perf_counter() - t, time.perf_counter()
    for _ in range(15):
        token = int(np.argmax(net.forward([token], cache)[-1]))
    return prefill, 15 / (time.perf_counter() - t)
run()
runs = [run() for _ in range(int(sys.argv[1]))]
print(json.dumps([statistics.median(p for p, _ in runs), statistics.median(d for _, d in runs)]))
"""

# label -> the environment of the measured process ("libgomp's default" unsets refllm's)
SETTINGS = {
    "libgomp's default (spins 300,000)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "300000"},
    "GOMP_SPINCOUNT=10000 (refllm's)": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""},
}


def measure(env: dict[str, str], threads: int, runs: int) -> tuple[float, float]:
    full = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS=str(threads))
    for name, value in env.items():
        if value:
            full[name] = value
        else:
            full.pop(name, None)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(runs)], env=full, capture_output=True, text=True,
                          check=True, timeout=900)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"SmolLM2, --numerics ggml, {args.threads} Numba threads, median of {args.runs}.\n")
    print("| machine | OpenMP setting | prefill 6 tokens | decode |")
    print("|---|---|---|---|")
    for machine in ("idle", "busy"):
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 1)] \
            if machine == "busy" else []
        try:
            for label, env in SETTINGS.items():
                prefill, decode = measure(env, args.threads, args.runs)
                print(f"| {machine} | {label} | {prefill * 1e3:.0f} ms | {decode:.1f} tok/s |", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
