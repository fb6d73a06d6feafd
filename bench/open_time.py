"""How long it takes to open a model: refllm.open against gguf-py's GGUFReader, same process,
same files, plus the whole-process time of `refllm inspect blob`.

    OPENBLAS_NUM_THREADS=1 python bench/open_time.py [--runs 7] [--gguf-py-runs 3]

Prints a Markdown table for bench/RESULTS.md. Medians; the ratio is gguf-py / refllm.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import gguf

import refllm
from refllm import fetch


def median_seconds(fn, runs: int) -> tuple[float, float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--gguf-py-runs", type=int, default=3)
    args = ap.parse_args()

    print("| model | file | refllm.open median (min–max) | gguf-py GGUFReader median | ratio | "
          "`refllm inspect blob --no-tensors` process |")
    print("|---|---|---|---|---|---|")
    for name in ["smollm2", "gemma3"]:
        path = fetch.ensure_pack(name, quiet=True)
        refllm.open(path)                                   # page cache warm for both readers
        ours, lo, hi = median_seconds(lambda: refllm.open(path), args.runs)
        theirs, _, _ = median_seconds(lambda: gguf.GGUFReader(path), args.gguf_py_runs)
        cli, _, _ = median_seconds(lambda: subprocess.run(
            [sys.executable, "-m", "refllm.cli", "inspect", "blob", str(path), "--no-tensors"],
            stdout=subprocess.DEVNULL, check=True), 5)
        print(f"| {name} | {path.stat().st_size / 1e6:.0f} MB | {ours * 1e3:.1f} ms ({lo * 1e3:.1f}–{hi * 1e3:.1f}) "
              f"| {theirs:.2f} s | {theirs / ours:.0f}× | {cli:.2f} s |")


if __name__ == "__main__":
    main()
