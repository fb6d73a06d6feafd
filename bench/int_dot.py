"""Integer dot products (`refllm.kernels.vec_dot.integer_matmul`) against refllm's float32 matmul.

    python bench/int_dot.py [--runs 5] [--only Q4_1,Q8_0]

One activation row (n = 1, a decode step) times the weight matrices of SmolLM2-135M (Q4_1) and
Gemma-3-270M (Q4_K_M), random N(0, 1) weights quantized with `refllm.quantize`. Single-threaded
on purpose, as the engine runs: OpenBLAS and Numba get one thread each (set below, before NumPy
loads). Columns, each the median of --runs calls after one warm-up call, the three taking turns:

    integer_matmul     the whole call: x rounded to Q8_0/Q8_1/Q8_K by `converted_activations`
                       (NumPy), then the Numba integer kernel
    kernel only        the same with the rounded activations passed in (`act=`)
    dequant + BLAS     what the f32 engine path does (engine/numerics.py matmul_f32): decode
                       ~1 MiB of rows at a time with dequantize(..., backend="numba") into one
                       scratch array, then x @ chunk.T
Shapes are numpy order, rows (outputs) x cols (inputs); gguf-py lists them the other way round.
Prints a Markdown table for bench/RESULTS.md, with the load average before and after.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"         # before NumPy loads OpenBLAS

import argparse                                  # noqa: E402
import statistics                                # noqa: E402
import time                                      # noqa: E402

import numba                                     # noqa: E402
import numpy as np                               # noqa: E402

from refllm.kernels import dequantize, quantize  # noqa: E402
from refllm.kernels.vec_dot import converted_activations, integer_matmul  # noqa: E402

# (model, tensor, rows, cols, type): the tensors of the two models' decode step
SHAPES = [
    ("SmolLM2-135M", "attn_q, attn_output", 576, 576, "Q4_1"),
    ("SmolLM2-135M", "ffn_gate, ffn_up", 1536, 576, "Q4_1"),
    ("SmolLM2-135M", "ffn_down", 576, 1536, "Q4_1"),
    ("SmolLM2-135M", "output (token_embd)", 49152, 576, "Q8_0"),
    ("Gemma-3-270M", "attn_q", 1024, 640, "Q5_0"),
    ("Gemma-3-270M", "ffn_gate, ffn_up", 2048, 640, "Q5_0"),
    ("Gemma-3-270M", "ffn_down (half the layers)", 640, 2048, "Q4_K"),
    ("Gemma-3-270M", "ffn_down (the other half)", 640, 2048, "Q6_K"),
    ("Gemma-3-270M", "output (token_embd)", 262144, 640, "Q8_0"),
]

CHUNK_ELEMENTS = 1 << 18                         # engine/numerics.py: ~1 MiB of float32 rows


def dequant_blas(x: np.ndarray, raw: np.ndarray, weight_type: str, rows: int, cols: int) -> np.ndarray:
    """engine/numerics.py matmul_f32, on raw bytes: decode a chunk of rows, multiply, repeat."""
    y = np.empty((x.shape[0], rows), np.float32)
    step = max(1, CHUNK_ELEMENTS // cols)
    scratch = np.empty((min(step, rows), cols), np.float32)
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        chunk = dequantize(raw[start:stop], weight_type, (stop - start, cols), "numba",
                           out=scratch[:stop - start].reshape(-1))
        y[:, start:stop] = x @ chunk.T
    return y


def random_weights(rows: int, cols: int, weight_type: str, rng) -> np.ndarray:
    """uint8 [rows, row_bytes]: N(0, 1) rows quantized, 4096 rows at a time (bounded memory)."""
    parts = [quantize(rng.standard_normal((min(4096, rows - s), cols), dtype=np.float32), weight_type)
             for s in range(0, rows, 4096)]
    return np.concatenate(parts)


def median_ms(fns, runs: int) -> list[float]:
    """The median time of each function, in ms, the functions taking turns run by run (so that
    a change in the machine's load falls on all of them alike)."""
    for fn in fns:
        fn()                                                       # warm-up (and JIT)
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, spent in zip(fns, times):
            t = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t)
    return [statistics.median(spent) * 1e3 for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated weight types to run")
    args = parser.parse_args()
    numba.set_num_threads(1)
    only = {t.strip().upper() for t in args.only.split(",") if t.strip()}
    rng = np.random.default_rng(0)

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print("| model | tensor | rows x cols | type | integer_matmul | kernel only | dequant + BLAS "
          "| speed-up (whole call) | kernel G weights/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, tensor, rows, cols, weight_type in SHAPES:
        if only and weight_type not in only:
            continue
        raw = random_weights(rows, cols, weight_type, rng)
        x = rng.standard_normal((1, cols), dtype=np.float32)
        _, act = converted_activations(x, weight_type)
        whole, kernel, base = median_ms([
            lambda: integer_matmul(x, raw, weight_type, (rows, cols)),
            lambda: integer_matmul(x, raw, weight_type, (rows, cols), act=act),
            lambda: dequant_blas(x, raw, weight_type, rows, cols)], args.runs)
        print(f"| {model} | {tensor} | {rows} x {cols} | {weight_type} | {whole:.3f} ms | {kernel:.3f} ms "
              f"| {base:.3f} ms | {base / whole:.2f}x | {rows * cols / kernel / 1e6:.2f} |", flush=True)
        del raw
    print()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
