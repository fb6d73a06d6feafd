"""`--numerics ggml` legacy-family matmuls (refllm/ggml_cpu/cpu/legacy.py) against the f32 path.

    python bench/ggml_matmul.py [--runs 5] [--tokens 1,44,256] [--baseline OLD.py]

The weight matrices of SmolLM2-135M (Q4_1, and its Q8_0 output matrix), random N(0, 1) rows
quantized with `refllm.quantize`, times n random activation rows (n = 1 is a decode step,
44 and 256 prompt batches). Single-threaded on purpose, as the engine runs: OpenBLAS and
Numba get one thread each (set below, before NumPy loads). Columns, each the median of
--runs samples after warm-up calls (a sample times back-to-back calls for about 20 ms, so the
sub-millisecond shapes are not all timer noise; the columns' samples alternate, so that a slow
spell of a shared machine hits them alike):

    kernel            refllm.ggml_cpu.cpu.legacy.mul_mat on activations already rounded to
                      Q8_0/Q8_1 (what this family's Numba code costs)
    G weights/s       n * rows * cols / kernel: weights times tokens (multiply-adds) per second
    whole call        refllm.ggml_cpu.matmul.mul_mat on float32 x: the activation rounding
                      (NumPy) and the kernel
    f32 path          what engine/numerics.py matmul_f32 does: decode ~1 MiB of rows at a time
                      with dequantize(..., backend="numba") into one scratch array, then
                      x @ chunk.T (OpenBLAS sgemm)
    baseline kernel   with --baseline OLD.py: that file's mul_mat (e.g. the module before a
                      change, `git show REV:refllm/ggml_cpu/cpu/legacy.py > /tmp/old.py`),
                      measured in the same run, so that the ratio compares like with like

The baseline's output is checked bit for bit against the kernel's. Shapes are numpy order,
rows (outputs) x cols (inputs). Prints a Markdown table for bench/RESULTS.md, with the load
average before and after.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"         # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from refllm.ggml_cpu import matmul as ggml_matmul  # noqa: E402
from refllm.ggml_cpu.cpu import legacy as ggml_legacy  # noqa: E402
from refllm.ggml_cpu.vec_dot import converted_activations  # noqa: E402
from refllm.kernels import dequantize, quantize  # noqa: E402

# (tensor, rows, cols, type): SmolLM2-135M's legacy-type matrices
SHAPES = [
    ("attn_q, attn_output", 576, 576, "Q4_1"),
    ("attn_k, attn_v", 192, 576, "Q4_1"),
    ("ffn_gate, ffn_up", 1536, 576, "Q4_1"),
    ("ffn_down", 576, 1536, "Q4_1"),
    ("output (token_embd)", 49152, 576, "Q8_0"),
]

CHUNK_ELEMENTS = 1 << 18                         # engine/numerics.py: ~1 MiB of float32 rows


def f32_path(x: np.ndarray, raw: np.ndarray, weight_type: str, rows: int, cols: int) -> np.ndarray:
    """engine/numerics.py matmul_f32, on raw bytes: decode a chunk of rows, multiply, repeat."""
    y = np.empty((x.shape[0], rows), np.float32)
    step = max(1, CHUNK_ELEMENTS // cols)
    scratch = np.empty((min(step, rows), cols), np.float32)
    row_bytes = raw.size // rows
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        chunk = dequantize(raw[start * row_bytes:stop * row_bytes], weight_type, (stop - start, cols), "numba",
                           out=scratch[:stop - start].reshape(-1))
        y[:, start:stop] = x @ chunk.T
    return y


def random_weights(rows: int, cols: int, weight_type: str, rng) -> np.ndarray:
    """uint8 [rows, row_bytes]: N(0, 1) rows quantized, 4096 rows at a time (bounded memory)."""
    parts = [quantize(rng.standard_normal((min(4096, rows - s), cols), dtype=np.float32), weight_type)
             for s in range(0, rows, 4096)]
    return np.concatenate(parts)


def median_ms(fns, runs: int) -> list[float]:
    """Milliseconds per call of each function: the median of `runs` samples after two warm-up
    calls (the second one timed), each sample timing enough back-to-back calls to last about
    20 ms (one call for the slow ones). The functions' samples are taken in turn, so that a
    slow spell of the shared machine falls on all of them alike."""
    repeats = []
    for fn in fns:
        fn()                                                       # warm-up (and JIT)
        t = time.perf_counter()
        fn()
        repeats.append(max(1, int(0.02 / max(time.perf_counter() - t, 1e-6))))
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, repeat, samples in zip(fns, repeats, times):
            t = time.perf_counter()
            for _ in range(repeat):
                fn()
            samples.append((time.perf_counter() - t) / repeat)
    return [statistics.median(samples) * 1e3 for samples in times]


def load_module(path: str):
    """The module in file `path`, imported as `legacy_baseline` from a fresh copy (so that no
    Numba cache of an earlier import, under another name, is picked up)."""
    copy = os.path.join(tempfile.mkdtemp(prefix="legacy_baseline"), "legacy_baseline.py")
    shutil.copyfile(path, copy)
    spec = importlib.util.spec_from_file_location("legacy_baseline", copy)
    module = importlib.util.module_from_spec(spec)
    sys.modules["legacy_baseline"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", default="1,44,256", help="comma-separated batch sizes")
    parser.add_argument("--only", default="", help="comma-separated weight types to run")
    parser.add_argument("--baseline", default="", help="a copy of an older ggml_legacy.py to compare with")
    args = parser.parse_args()
    numba.set_num_threads(1)
    only = {t.strip().upper() for t in args.only.split(",") if t.strip()}
    baseline = load_module(args.baseline) if args.baseline else None
    rng = np.random.default_rng(0)

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    head = "| tensor | rows x cols | type | n | kernel | G weights/s | whole call | f32 path | f32 ÷ kernel |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    if baseline:
        head += " baseline kernel | baseline ÷ kernel |"
        rule += "---|---|"
    print(head)
    print(rule)
    for tensor, rows, cols, weight_type in SHAPES:
        if only and weight_type not in only:
            continue
        raw = random_weights(rows, cols, weight_type, rng).reshape(-1)    # as engine Matrix.raw
        for n in (int(t) for t in args.tokens.split(",")):
            x = rng.standard_normal((n, cols), dtype=np.float32)
            _, act = converted_activations(x, weight_type)
            y = ggml_legacy.mul_mat(raw, weight_type, (rows, cols), act)
            fns = [lambda: ggml_legacy.mul_mat(raw, weight_type, (rows, cols), act),
                   lambda: ggml_matmul.mul_mat(x, raw, weight_type, (rows, cols)),
                   lambda: f32_path(x, raw, weight_type, rows, cols)]
            if baseline:
                old = baseline.mul_mat(raw, weight_type, (rows, cols), act)
                assert np.array_equal(old.view(np.uint32), y.view(np.uint32)), (tensor, n)
                fns.append(lambda: baseline.mul_mat(raw, weight_type, (rows, cols), act))
            kernel, whole, f32, *base = median_ms(fns, args.runs)
            line = (f"| {tensor} | {rows} x {cols} | {weight_type} | {n} | {kernel:.3f} ms "
                    f"| {n * rows * cols / kernel / 1e6:.2f} | {whole:.3f} ms | {f32:.3f} ms | {f32 / kernel:.2f} |")
            if baseline:
                line += f" {base[0]:.3f} ms | {base[0] / kernel:.2f}x |"
            print(line, flush=True)
        raw = None
    print()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
