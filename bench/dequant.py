"""Dequantization speed: every type on every backend, against gguf-py in the same run.

    OPENBLAS_NUM_THREADS=1 python bench/dequant.py [--elems 16777216] [--runs 5] [--types Q4_K,Q6_K]
    python bench/dequant.py --gpu [--gpu-elems 268435456]     # CUDA: Q4_K, Q6_K, Q8_0 on a GPU
    python bench/dequant.py --first-call                      # Numba's JIT, cold and cached

Prints Markdown tables for bench/RESULTS.md. Each figure is the median of --runs runs on one
tensor of --elems random blocks, already in memory. Rates are M elements/s. "Numba 1T, new
array" is `dequantize` allocating its result (so it pays the page faults of a fresh array);
the other Numba columns decode into one reused `out` array. "in GB/s" counts the quantized
bytes read; "in+out GB/s" adds the float32 bytes written. Numba runs with 1 and then 2
threads (numba.set_num_threads); the NumPy reference and gguf-py are single-threaded. The
machine's memory bandwidth is measured first, by the same kind of Numba loop: a sum over 1 GiB
(read) and a copy of 512 MiB (read + write).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from numba import njit, prange

from refllm.kernels.dequant import dequantize, supported_types
from refllm.type_traits import ggml_type

GGUF_PY_LACKS = {"Q8_1", "Q8_K", "Q1_0", "Q2_0"}
ASTYPE = {"F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}   # gguf-py: typed views
GPU_GOAL_TYPES = ("Q4_K", "Q6_K", "Q8_0")        # the GPU goal: >= 50% of bandwidth


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@njit(parallel=True, cache=True)
def _read_all(words):
    total = np.uint64(0)
    for i in prange(words.size):
        total += words[i]
    return total


@njit(parallel=True, cache=True)
def _copy_all(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def memory_bandwidth(threads: int, runs: int) -> tuple[float, float]:
    """(read GB/s, read+write GB/s) with `threads` Numba threads."""
    numba.set_num_threads(threads)
    words = np.ones(1 << 27, dtype=np.uint64)           # 1 GiB
    _read_all(words)
    read = words.nbytes / median_seconds(lambda: _read_all(words), runs) / 1e9
    src, dst = words[: 1 << 26], np.empty(1 << 26, dtype=np.uint64)
    _copy_all(src, dst)
    copy = 2 * src.nbytes / median_seconds(lambda: _copy_all(src, dst), runs) / 1e9
    return read, copy


def gguf_py_decoder(name: str):
    import gguf
    from gguf.quants import dequantize as gguf_dequantize
    if name in ASTYPE:
        return lambda raw: raw.view(ASTYPE[name]).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[name]
    row = ggml_type(name)
    if name in ("F32", "F16"):
        return lambda raw: gguf_dequantize(raw.view("<f4" if name == "F32" else "<f2"), qtype).astype(np.float32)
    return lambda raw: gguf_dequantize(raw.reshape(-1, 1024 // row.block_elems * row.block_bytes
                                                   if row.block_elems <= 1024 else row.block_bytes), qtype)


def random_tensor(name: str, elems: int, rng) -> np.ndarray:
    row = ggml_type(name)
    n_blocks = elems // row.block_elems
    return rng.integers(0, 256, size=n_blocks * row.block_bytes, dtype=np.uint8)


def cpu_tables(types: list[str], elems: int, runs: int) -> None:
    rng = np.random.default_rng(0)
    read1, copy1 = memory_bandwidth(1, runs)
    read2, copy2 = memory_bandwidth(2, runs)
    print(f"Memory bandwidth (Numba loop): 1 thread {read1:.1f} GB/s read, {copy1:.1f} GB/s copy "
          f"(read+write); 2 threads {read2:.1f} GB/s read, {copy2:.1f} GB/s copy.\n")
    print("| type | gguf-py | NumPy ref | Numba 1T, new array | Numba 1T | 1T in GB/s "
          "| 1T in+out GB/s | Numba 2T | 2T in+out GB/s | Numba 1T ÷ gguf-py |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in types:
        row = ggml_type(name)
        raw = random_tensor(name, elems, rng)
        n = raw.size // row.block_bytes * row.block_elems
        rate = lambda s: f"{n / s / 1e6:.0f}"                     # noqa: E731  M elements/s
        with np.errstate(all="ignore"):
            if name in GGUF_PY_LACKS:
                theirs = None
            else:
                fn = gguf_py_decoder(name)
                theirs = median_seconds(lambda: fn(raw), max(1, runs // 2))
            ours_ref = median_seconds(lambda: dequantize(raw, name), max(1, runs // 2))
        out = np.empty(n, dtype=np.float32)
        numba.set_num_threads(1)
        dequantize(raw, name, backend="numba", out=out)           # load from cache or compile
        fresh = median_seconds(lambda: dequantize(raw, name, backend="numba"), runs)
        one = median_seconds(lambda: dequantize(raw, name, backend="numba", out=out), runs)
        numba.set_num_threads(2)
        two = median_seconds(lambda: dequantize(raw, name, backend="numba", out=out), runs)
        in_gb = raw.nbytes / 1e9
        io_gb = in_gb + n * 4 / 1e9
        print(f"| {name} | {'—' if theirs is None else rate(theirs)} | {rate(ours_ref)} "
              f"| {rate(fresh)} | {rate(one)} | {in_gb / one:.2f} | {io_gb / one:.2f} | {rate(two)} "
              f"| {io_gb / two:.2f} | {'—' if theirs is None else f'{theirs / one:.0f}×'} |",
              flush=True)


def gpu_tables(types: list[str], elems: int, runs: int) -> None:
    import cupy as cp

    from refllm.kernels.cuda import gpu_status
    ok, device = gpu_status()
    if not ok:
        raise SystemExit(f"no GPU: {device}")
    props = cp.cuda.runtime.getDeviceProperties(0)
    peak = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9
    big = cp.empty(1 << 30, dtype=cp.uint8)
    copy_to = cp.empty_like(big)

    def timed(fn) -> float:
        fn()
        cp.cuda.Device().synchronize()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(runs):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    copy = 2 * big.nbytes / timed(lambda: copy_to.__setitem__(Ellipsis, big)) / 1e9
    big = copy_to = None                   # frees the device memory
    print(f"GPU: {device}; spec peak {peak:.0f} GB/s; device-to-device copy {copy:.0f} GB/s "
          "(read+write).\n")
    print("| type | elements | M/s | in+out GB/s | % of copy bandwidth | % of spec peak |")
    print("|---|---|---|---|---|---|")
    for name in types:
        row = ggml_type(name)
        n_blocks = elems // row.block_elems
        raw = cp.random.randint(0, 256, size=n_blocks * row.block_bytes, dtype=cp.uint8)
        seconds = timed(lambda: dequantize(raw, name, backend="cuda"))
        n = n_blocks * row.block_elems
        io = (raw.nbytes + n * 4) / 1e9 / seconds
        print(f"| {name} | {n} | {n / seconds / 1e6:.0f} | {io:.0f} | {100 * io / copy:.0f}% "
              f"| {100 * io / peak:.0f}% |", flush=True)
        raw = None


_FIRST_CALLS = """
import json, sys, time
t0 = time.perf_counter()
from refllm.kernels.dequant import dequantize, supported_types
from refllm.type_traits import ggml_type
imported = time.perf_counter() - t0
times = {}
for name in supported_types():
    t = time.perf_counter()
    dequantize(bytes(ggml_type(name).block_bytes), name, backend="numba")
    times[name] = time.perf_counter() - t
print(json.dumps({"import": imported, "calls": times}))
"""


def first_call_table() -> None:
    """Numba's first call per type in a fresh process: with an empty cache (the JIT compiles),
    then again with the cache that run wrote."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [json.loads(subprocess.run([sys.executable, "-c", _FIRST_CALLS], env=env, check=True,
                                          capture_output=True, text=True).stdout) for _ in range(2)]
    cold, warm = (r["calls"] for r in runs)
    print("| first call of every type in a new process | total | slowest type |")
    print("|---|---|---|")
    for label, calls in (("empty cache (JIT compiles)", cold), ("cache written by that run", warm)):
        slowest = max(calls, key=calls.get)
        print(f"| {label} | {sum(calls.values()):.1f} s | {slowest} {calls[slowest]:.2f} s |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--elems", type=int, default=1 << 24)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--types", help="comma-separated type names (default: all)")
    ap.add_argument("--gpu", action="store_true", help="benchmark the CUDA backend instead")
    ap.add_argument("--gpu-elems", type=int, default=1 << 28)
    ap.add_argument("--first-call", action="store_true", help="time Numba's JIT and its cache")
    args = ap.parse_args()
    if args.first_call:
        return first_call_table()
    if args.types:
        types = args.types.split(",")
    else:
        types = list(GPU_GOAL_TYPES) if args.gpu else supported_types()
    if args.gpu:
        gpu_tables(types, args.gpu_elems, args.runs)
    else:
        cpu_tables(types, args.elems, args.runs)


if __name__ == "__main__":
    main()
