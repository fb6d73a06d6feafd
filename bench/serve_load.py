"""A bounded load run against `refllm serve`, and against llama-cpp-python's server as the peer.

    python bench/serve_load.py [--requests 200] [--clients 8] [--llama-python /tmp/golden-venv/bin/python]
        [--write]

Each of --clients threads holds short chats with the server over loopback, one request at a
time: a user question, then a follow-up that carries the first reply, so that a server with a
prompt cache evaluates only the new turn (SmolLM2, OpenAI's /v1/chat/completions, which both
servers answer; 16 tokens a reply, temperature 0.7, a seed per conversation). --requests in all.
Every request must end in a complete reply or a 503 (the queue was full; that client then waits
BACK_OFF seconds before its next conversation); any other outcome,
and any request still open after its timeout, is counted as lost and fails the run.

Servers, each started by this script on a free 127.0.0.1 port and stopped after its run:
  refllm            `refllm serve --num-parallel 4` (a KV slot per conversation a client can be
                    in the middle of, ollama's OLLAMA_NUM_PARALLEL; one request at a time)
  refllm, queue 2   the same with --max-queue 2: with 8 clients, some requests are answered 503
  llama-cpp-python  `python -m llama_cpp.server --cache true` (0.3.36, AVX2 build), its RAM
                    prompt cache on, flash attention off (its default; refllm's is on, as
                    llama.cpp's -fa auto); also one request at a time

Figures: requests per second, the latency of a request (p50, p99, seconds), and the prefix-cache
hit rate (cached prompt tokens over prompt tokens, from usage.prompt_tokens_details, which only
refllm reports). Both servers get 2 threads (NUMBA_NUM_THREADS, --n_threads). --write puts the
table into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speed import write_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Serving under load (`bench/serve_load.py`"
QUESTIONS = ["Name a colour.", "What is two plus two?", "Say hello in French.", "Name a planet.",
             "What is the capital of Italy?", "Name a fruit.", "Give me a number.", "Name an animal."]
FOLLOW_UP = "And another one?"
REQUEST_TIMEOUT = 120.0
BACK_OFF = 0.5                  # seconds a client waits after a 503


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def start(command: list[str], env: dict, url: str, probe: str) -> subprocess.Popen:
    """Start a server and wait (at most 3 minutes) until `probe` answers."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + probe, timeout=5).close()
            return process
        except (OSError, urllib.error.URLError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"the server did not start: {' '.join(command)}") from None
            time.sleep(0.3)


def chat(url: str, messages: list[dict], seed: int) -> tuple[int, dict | None, float]:
    """One request: (HTTP status, the answer or None, seconds)."""
    body = json.dumps({"model": "smollm2", "messages": messages, "max_tokens": 16, "temperature": 0.7,
                       "seed": seed}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, json.load(response), time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, None, time.perf_counter() - started


def load(url: str, requests: int, clients: int) -> dict:
    """Run the chats; the outcome of every request."""
    lock, issued = threading.Lock(), [0]
    outcomes: list[tuple[int, dict | None, float]] = []

    def take() -> bool:
        with lock:
            if issued[0] >= requests:
                return False
            issued[0] += 1
            return True

    def client(number: int) -> None:
        conversation = 0
        while take():
            seed = number * 1000 + conversation
            messages = [{"role": "user", "content": QUESTIONS[(number + conversation) % len(QUESTIONS)]}]
            status, answer, seconds = chat(url, messages, seed)
            outcomes.append((status, answer, seconds))
            if status == 503:
                time.sleep(BACK_OFF)                 # as a client would before trying again
            if status == 200 and take():
                messages += [answer["choices"][0]["message"], {"role": "user", "content": FOLLOW_UP}]
                outcomes.append(chat(url, messages, seed))
            conversation += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result(timeout=requests * REQUEST_TIMEOUT)
    wall = time.perf_counter() - started
    complete = [o for o in outcomes if o[0] == 200 and o[1]["choices"][0]["finish_reason"] in ("stop", "length")]
    refused = [o for o in outcomes if o[0] == 503]
    usage = [o[1]["usage"] for o in complete]
    cached = [u.get("prompt_tokens_details", {}) for u in usage]
    has_cached = all(isinstance(c, dict) and "cached_tokens" in c for c in cached) and cached
    latencies = sorted(o[2] for o in complete)
    return {"requests": len(outcomes), "complete": len(complete), "refused": len(refused),
            "reply_tokens": statistics.mean(u["completion_tokens"] for u in usage),
            "lost": requests - len(complete) - len(refused), "wall": wall,
            "per_second": len(complete) / wall,
            "p50": statistics.median(latencies), "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "hit_rate": (sum(c["cached_tokens"] for c in cached) / sum(u["prompt_tokens"] for u in usage))
            if has_cached else None}


def run(name: str, command: list[str], env: dict, url: str, probe: str, args) -> dict:
    process = start(command, env, url, probe)
    try:
        chat(url, [{"role": "user", "content": "Hi"}], 0)               # load the model, compile
        result = load(url, args.requests, args.clients)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"{name}: {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--llama-python", help="A Python with llama-cpp-python[server] 0.3.36 (the peer).")
    parser.add_argument("--write", action="store_true", help="Put the table into bench/RESULTS.md.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from refllm import fetch
    model = fetch.ensure_pack("smollm2", quiet=True)
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    results = {}
    for name, extra in (("refllm", []), ("refllm, queue 2", ["--max-queue", "2"])):
        port = free_port()
        results[name] = run(name, [sys.executable, "-m", "refllm.cli", "serve", "--port", str(port), "--num-parallel",
                                   "4", "--log-level", "warning", *extra], env, f"http://127.0.0.1:{port}", "/", args)
    if args.llama_python:
        port = free_port()
        results["llama-cpp-python"] = run(
            "llama-cpp-python", [args.llama_python, "-m", "llama_cpp.server", "--model", str(model), "--model_alias",
                                 "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                                 "--n_threads", "2", "--n_threads_batch", "2", "--cache", "true"],
            env, f"http://127.0.0.1:{port}", "/v1/models", args)

    lines = [f"{SECTION}, {time.strftime('%Y-%m-%d')})", "",
             f"{cpu_name()}, {os.cpu_count()} cores; SmolLM2-135M Q4_1; {args.requests} requests from "
             f"{args.clients} concurrent clients over loopback, two-turn chats of 16-token replies "
             "(`python bench/serve_load.py --llama-python /tmp/golden-venv/bin/python --write`).", "",
             "| server | complete | 503 | lost | tokens a reply | requests/s | p50 latency | p99 latency "
             "| prefix-cache hit rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        hit = "n/a" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.0f}%"
        lines.append(f"| {name} | {r['complete']} | {r['refused']} | {r['lost']} | {r['reply_tokens']:.1f} | "
                     f"{r['per_second']:.2f} | "
                     f"{r['p50']:.2f} s | {r['p99']:.2f} s | {hit} |")
    if "llama-cpp-python" in results:
        ratio = results["refllm"]["per_second"] / results["llama-cpp-python"]["per_second"]
        lines += ["", f"refllm serves {ratio:.2f}x llama-cpp-python's requests per second in this run."]
    lines += ["", "llama-cpp-python's server runs with its RAM prompt cache on and its default flash attention "
              "off; refllm with flash attention on (llama.cpp's -fa auto). "
              "Both servers run one request at a time, so a request's latency is mostly its wait behind the "
              "others in the queue (up to 7 here). The hit rate is the share of prompt tokens whose keys and "
              "values came from a KV slot: a follow-up turn finds its conversation's slot unless four other "
              "conversations took the slots in between. With `--max-queue 2` the requests past two waiting are "
              "refused at once with a 503 (the client then waits half a second), and none is lost: every "
              "request ended in a complete reply or a 503."]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.write:
        write_section(report, SECTION)
    return 1 if any(r["lost"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
