"""Decode speed against llama.cpp: prefill, decode at two cache positions, the whole process.

    python bench/speed.py [--llama-python /tmp/golden-venv/bin/python] [--threads 1 2]
        [--models smollm2 gemma3 llama1b-q4_k llama1b-q8_0] [--runs 3] [--write]

For each model and thread count, in one run of this script and on the same token ids:

  engine     refllm (a Transformer and a KV cache, in a worker process with NUMBA_NUM_THREADS
             and OPENBLAS_NUM_THREADS set to the thread count) and llama.cpp (llama-cpp-python's
             raw llama_decode loop: llama_batch_get_one, llama_decode, the logits' argmax; not
             Llama.eval, which adds Python work per token): a 256-token prefill into an empty
             cache (n_batch 512), --decode greedy steps from position 256, and for the real
             models the cache filled on to position --long and --decode more steps there.
  process    a whole `refllm generate` against a Python script doing the same with
             llama-cpp-python (load, a ~300-token prompt, 64 greedy tokens, context 4096): the
             time to the first generated token (first byte on stdout), the whole run, and the
             process's peak resident memory (wait4's ru_maxrss).

The 1B shapes are Llama-3.2-1B-shaped models made here with refllm synth (`llama --layers 16
--dim 2048 --heads 32 --kv-heads 8 --ff 8192`, Q4_K and Q8_0, never committed); for them the
table gives the weight bytes read per second of decoding against the machine's read bandwidth
measured in the same run (bench/dequant.py's Numba loop). Medians of --runs; ratios are
refllm's against llama.cpp's from the same run. --write puts the tables into bench/RESULTS.md
(replacing this script's section). Each worker runs alone: nothing else should load the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Decode speed (`bench/speed.py`"
N_PROMPT = 256
SYNTH_1B = dict(n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192)
MODELS = {
    "smollm2": ("SmolLM2-135M Q4_1", None),
    "gemma3": ("Gemma-3-270M Q4_K_M", None),
    "llama1b-q4_k": ("Llama-3.2-1B-shaped synth, Q4_K", "Q4_K"),
    "llama1b-q8_0": ("Llama-3.2-1B-shaped synth, Q8_0", "Q8_0"),
}

# The llama.cpp worker: argv = path, token ids (JSON), threads, runs, decode steps, long position,
# flash attention (1 or 0).
LLAMA_WORKER = r"""
import ctypes, json, statistics, sys, time
import numpy as np
import llama_cpp as L
path, ids, threads, runs, n_decode, long, flash = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:])
n_ctx = max(len(ids), 2 * 256) + 64
llm = L.Llama(path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
              flash_attn=bool(flash), verbose=False)
ctx = llm._ctx.ctx
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(llm._model.model))

def decode(tokens):
    for start in range(0, len(tokens), 512):
        chunk = tokens[start:start + 512]
        array = (L.llama_token * len(chunk))(*chunk)
        if L.llama_decode(ctx, L.llama_batch_get_one(array, len(chunk))) != 0:
            raise SystemExit("llama_decode failed")
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    return int(logits.argmax())

def steps(token, n):
    t = time.perf_counter()
    for _ in range(n):
        token = decode([token])
    return token, n / (time.perf_counter() - t)

figures = {"prefill": [], "decode": [], "decode_long": []}
for run in range(runs + 1):                     # the first run warms up
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    t = time.perf_counter(); token = decode(ids[:256]); prefill = time.perf_counter() - t
    token, rate = steps(token, n_decode)
    rate_long = None
    if long:
        decode(ids[256 + n_decode:long]); token, rate_long = steps(token, n_decode)
    if run:
        figures["prefill"].append(256 / prefill); figures["decode"].append(rate)
        figures["decode_long"].append(rate_long)
print(json.dumps({k: statistics.median(v) if v[0] is not None else None for k, v in figures.items()}))
"""

# The llama.cpp side of the process measurement: argv = path, prompt, n_predict, threads, flash (1/0).
LLAMA_PROCESS = r"""
import sys
import llama_cpp as L
path, prompt, n_predict, threads, flash = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
llm = L.Llama(path, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads, flash_attn=bool(flash),
              verbose=False)
for chunk in llm.create_completion(prompt, max_tokens=n_predict, temperature=0, stream=True):
    sys.stdout.write(chunk["choices"][0]["text"]); sys.stdout.flush()
"""


def refllm_worker(path: str, ids: list[int], runs: int, n_decode: int, long: int, numerics: str,
                  flash_attn: bool) -> dict:
    """In this (worker) process: refllm's figures, as LLAMA_WORKER's."""
    import numpy as np

    import refllm
    from refllm.engine.transformer import Transformer
    net = Transformer(refllm.open(path), numerics, flash_attn=flash_attn)

    def steps(cache, token, n):
        t = time.perf_counter()
        for _ in range(n):
            token = int(np.argmax(net.forward([token], cache)[-1]))
        return token, n / (time.perf_counter() - t)

    figures = {"prefill": [], "decode": [], "decode_long": []}
    for run in range(runs + 1):                   # the first run warms up
        cache = net.new_cache(max(len(ids), 2 * N_PROMPT) + 64)
        t = time.perf_counter()
        token = int(np.argmax(net.forward(ids[:N_PROMPT], cache)[-1]))
        prefill = time.perf_counter() - t
        token, rate = steps(cache, token, n_decode)
        rate_long = None
        if long:
            net.forward(ids[N_PROMPT + n_decode:long], cache)
            token, rate_long = steps(cache, token, n_decode)
        if run:
            figures["prefill"].append(N_PROMPT / prefill)
            figures["decode"].append(rate)
            figures["decode_long"].append(rate_long)
    return {k: statistics.median(v) if v[0] is not None else None for k, v in figures.items()}


def thread_env(threads: int) -> dict:
    return dict(os.environ, NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                OMP_NUM_THREADS=str(threads))


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def process_run(command: list[str], env: dict) -> dict:
    """Run command; the seconds to its first byte on stdout and to its exit, and its peak RSS
    (MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    first = process.stdout.read(1)
    ttft = time.perf_counter() - start
    process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    total = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not first:
        raise SystemExit(f"{command[:3]} failed (exit {process.returncode})")
    return {"ttft": ttft, "total": total, "rss_mib": usage.ru_maxrss / 1024}


def model_path(name: str, work: Path) -> Path:
    """A real model's cached pack, or the 1B shape made with refllm synth (once, in work)."""
    from refllm import fetch
    from refllm.tools.synth import write_synthetic_model
    weight_type = MODELS[name][1]
    if weight_type is None:
        return Path(fetch.ensure_pack(name, quiet=True))
    path = work / f"{name}.gguf"
    if not path.exists():
        print(f"making {path} ...", file=sys.stderr, flush=True)
        types = {m: weight_type for m in ("token_embd.weight", "output.weight", "attn_q.weight", "attn_k.weight",
                                          "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                                          "ffn_down.weight")}
        write_synthetic_model(path, "llama", weight_types=types, n_ctx_train=8192, **SYNTH_1B)
    return path


def token_ids(path: Path, count: int) -> list[int]:
    """`count` token ids of this repository's README (repeated as needed), by the model's tokenizer."""
    import refllm
    from refllm.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_model(refllm.open(path))
    ids = tokenizer.tokenize((ROOT / "README.md").read_text(encoding="utf-8"))
    return (ids * (count // len(ids) + 1))[:count]


def weight_bytes(path: Path) -> int:
    """The bytes one decode step reads: every matrix once (the tied output counted once more)."""
    import refllm
    model = refllm.open(path)
    matrices = [t for t in model.tensors if len(t.shape) == 2]
    total = sum(len(model.tensor_bytes(t.name)) for t in matrices if t.name != "token_embd.weight")
    names = {t.name for t in matrices}
    tied = "output.weight" not in names
    return total + (len(model.tensor_bytes("token_embd.weight")) if tied else 0)


def read_bandwidth(threads: int) -> float:
    """GB/s of bench/dequant.py's Numba read loop, in a worker with `threads` threads."""
    code = ("import sys; sys.path.insert(0, 'bench'); import dequant; "
            f"print(dequant.memory_bandwidth({threads}, 5)[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=thread_env(threads), capture_output=True,
                         text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python==0.3.36 (AVX2 build)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--numerics", default="ggml")
    ap.add_argument("--flash-attn", choices=["on", "off"], default="on",
                    help="both engines' attention (llama.cpp's CPU default: on)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--long", type=int, default=2000, help="the later decode position (real models)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "refllm-speed"))
    ap.add_argument("--write", action="store_true", help="put the tables into bench/RESULTS.md")
    ap.add_argument("--worker", nargs=2, metavar=("PATH", "IDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        path, ids = args.worker[0], json.loads(Path(args.worker[1]).read_text())
        print(json.dumps(refllm_worker(path, ids, args.runs, args.decode, args.long, args.numerics,
                                       args.flash_attn == "on")))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    lines = [f"{SECTION}, {time.strftime('%Y-%m-%d')})", "",
             f"CPU: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; refllm "
             f"`--numerics {args.numerics}`, flash attention {args.flash_attn} in both engines; llama.cpp: "
             + ("llama-cpp-python 0.3.36, AVX2/FMA/F16C build, raw llama_decode loop" if args.llama_python
                else "not measured") + f". Medians of {args.runs} runs; ratios are refllm / llama.cpp "
             "within this run.", "",
             "| model | threads | prefill 256 tok/s (ratio) | decode @256 tok/s (ratio) "
             f"| decode @{args.long} tok/s (ratio) | slowdown @256→@{args.long} refllm / llama.cpp "
             "| weights GB/s (of read bandwidth) |",
             "|---|---|---|---|---|---|---|"]
    bandwidth = {t: read_bandwidth(t) for t in args.threads}

    def cell(ours, theirs, unit=""):
        if ours is None:
            return "-"
        return f"{ours:.1f}{unit}" + (f" ({ours / theirs:.2f}×)" if theirs else "")

    processes = []
    for name in args.models:
        label, weight_type = MODELS[name]
        path = model_path(name, work)
        long = args.long if weight_type is None else 0
        ids = token_ids(path, max(long, N_PROMPT + 2 * args.decode))
        ids_file = work / f"{name}.ids.json"
        ids_file.write_text(json.dumps(ids))
        for threads in args.threads:
            env = thread_env(threads)
            ours = last_json(subprocess.run(
                [sys.executable, __file__, "--worker", str(path), str(ids_file), "--runs", str(args.runs),
                 "--decode", str(args.decode), "--long", str(long), "--numerics", args.numerics,
                 "--flash-attn", args.flash_attn],
                env=env, capture_output=True, text=True, check=True).stdout)
            theirs = {"prefill": None, "decode": None, "decode_long": None}
            if args.llama_python:
                theirs = last_json(subprocess.run(
                    [args.llama_python, "-c", LLAMA_WORKER, str(path), json.dumps(ids), str(threads),
                     str(args.runs), str(args.decode), str(long), str(int(args.flash_attn == "on"))],
                    env=env, capture_output=True, text=True, check=True).stdout)
            slowdown = "-"
            if ours["decode_long"]:
                slowdown = f"{ours['decode'] / ours['decode_long']:.2f}×"
                if theirs["decode_long"]:
                    slowdown += f" / {theirs['decode'] / theirs['decode_long']:.2f}×"
            streamed = "-"
            if weight_type is not None:
                rate = weight_bytes(path) * ours["decode"] / 1e9
                streamed = f"{rate:.1f} ({rate / bandwidth[threads]:.0%} of {bandwidth[threads]:.1f})"
            lines.append(f"| {label} | {threads} | {cell(ours['prefill'], theirs['prefill'])} "
                         f"| {cell(ours['decode'], theirs['decode'])} "
                         f"| {cell(ours['decode_long'], theirs['decode_long'])} | {slowdown} | {streamed} |")
            print(lines[-1], flush=True)
        if weight_type is None:
            processes.append((label, path))

    # whole processes: refllm generate against llama-cpp-python, one thread count (the first)
    threads = args.threads[-1]
    lines += ["", f"Whole processes ({threads} thread(s)): load, a ~300-token prompt (the README's start, raw), "
              "64 greedy tokens, context 4096; time to the first generated byte on stdout, the whole run and "
              f"peak RSS, median of {args.runs}.", "",
              "| model | refllm first token | llama.cpp first token | refllm run | llama.cpp run | ratio "
              "| refllm peak RSS | llama.cpp peak RSS | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    prompt_text = (ROOT / "README.md").read_text(encoding="utf-8")[:1200]
    for label, path in processes:
        env = thread_env(threads)
        ours_cmd = [str(Path(sys.executable).parent / "refllm"), "generate", str(path), prompt_text, "--raw",
                    "-n", "64", "--temperature", "0", "--ctx", "4096", "--numerics", args.numerics,
                    "--flash-attn", args.flash_attn]
        ours = [process_run(ours_cmd, env) for _ in range(args.runs)]
        flash = str(int(args.flash_attn == "on"))
        theirs = [process_run([args.llama_python, "-c", LLAMA_PROCESS, str(path), prompt_text, "64", str(threads),
                               flash], env)
                  for _ in range(args.runs)] if args.llama_python else None

        def median(runs, key):
            return statistics.median(r[key] for r in runs)

        if theirs:
            lines.append(f"| {label} | {median(ours, 'ttft'):.2f} s | {median(theirs, 'ttft'):.2f} s "
                         f"| {median(ours, 'total'):.2f} s | {median(theirs, 'total'):.2f} s "
                         f"| {median(ours, 'total') / median(theirs, 'total'):.2f}× "
                         f"| {median(ours, 'rss_mib'):.0f} MiB | {median(theirs, 'rss_mib'):.0f} MiB "
                         f"| {median(ours, 'rss_mib') / median(theirs, 'rss_mib'):.2f}× |")
        else:
            lines.append(f"| {label} | {median(ours, 'ttft'):.2f} s | - | {median(ours, 'total'):.2f} s | - | - "
                         f"| {median(ours, 'rss_mib'):.0f} MiB | - | - |")
        print(lines[-1], flush=True)
    lines += ["", "Read bandwidth: " + ", ".join(f"{t} thread(s) {b:.1f} GB/s" for t, b in bandwidth.items()), ""]
    report = "\n".join(lines)
    print("\n" + report)
    if args.write:
        write_section(report)


def write_section(report: str, section: str = SECTION) -> None:
    """Replace a script's section of bench/RESULTS.md, the one whose title starts with `section`
    (or append it), atomically."""
    text = RESULTS.read_text(encoding="utf-8")
    start = text.find(section)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + report.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n\n" + report
    temporary = RESULTS.with_suffix(".md.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
