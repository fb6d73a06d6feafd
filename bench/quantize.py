"""Quantizing a whole model: `refllm quantize` of SmolLM2 in F32 to an FTYPE, as a whole
process, with 1 and 2 threads, next to llama-quantize (llama-cpp-python's
`llama_model_quantize`) on the same input and threads.

    OPENBLAS_NUM_THREADS=1 python bench/quantize.py [--ftype Q4_K_M] [--runs 3]
        [--llama-python /tmp/golden-venv/bin/python]

The F32 source is written once (refllm.tools.quantize_model.write_f32_copy) into a temporary
directory. Each run is a new process, so Numba's start-up and cached-kernel loading count, as
they do for a user. Medians; prints Markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from refllm import fetch
from refllm.tools.quantize_model import FTYPES, write_f32_copy

LLAMA_CPP_SCRIPT = r"""
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = int(sys.argv[3]), int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def timed(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftype", default="Q4_K_M")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--llama-python")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "smollm2-f32.gguf", Path(tmp) / "out.gguf"
        write_f32_copy(fetch.ensure_pack("smollm2", quiet=True), src)
        print(f"SmolLM2-135M F32 ({src.stat().st_size / 1e6:.0f} MB) -> {args.ftype}, whole process, "
              f"median of {args.runs}.\n")
        print("| threads | refllm quantize | llama-quantize | ratio |")
        print("|---|---|---|---|")
        for threads in (1, 2):
            ours = timed([sys.executable, "-m", "refllm.cli", "quantize", str(src), str(out), args.ftype,
                          "--threads", str(threads)], args.runs)
            theirs = "-"
            ratio = "-"
            if args.llama_python:
                seconds = timed([args.llama_python, "-c", LLAMA_CPP_SCRIPT, str(src), str(out),
                                 str(FTYPES[args.ftype][0]), str(threads)], args.runs)
                theirs, ratio = f"{seconds:.2f} s", f"{ours / seconds:.1f}×"
            print(f"| {threads} | {ours:.2f} s | {theirs} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
