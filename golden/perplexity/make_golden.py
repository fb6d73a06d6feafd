"""Make golden/perplexity: llama-perplexity's printed perplexity and KL-divergence figures for
text.md, and one base-logits file written by llama.cpp.

Build llama-perplexity out of tree from llama-cpp-python 0.3.36's vendored llama.cpp, AVX2 only
(the arithmetic `--numerics ggml` reproduces), then run this script with any Python 3 (it uses
only the standard library and never imports refllm):

    cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llama-build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF \\
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \\
        -DLLAMA_OPENSSL=OFF
    cmake --build /tmp/llama-build --target llama-perplexity -j2
    python golden/perplexity/write_models.py /tmp/refllm-ppl                         # refllm's Python
    python golden/perplexity/make_golden.py /tmp/llama-build "$(refllm pull smollm2)" "$(refllm pull gemma3)" \\
        /tmp/refllm-ppl

(LLAMA_CURL, which the brief names, is deprecated at this commit and does nothing; LLAMA_OPENSSL
is what would fetch models, and is off.) Each run of RUNS is `llama-perplexity -m MODEL -t 2
ARGS`; its stdout and stderr are kept as <run>.stdout and <run>.stderr. A run that writes a
base-logits file (--kl-divergence-base without --kl-divergence) gets its sha256 and size in
provenance.json; the synthetic model's (KEEP) is committed as <run>.kld, the real models' are
too large (n_vocab uint16 per scored token) and are deleted once the runs that read them are
done. llama.cpp's logger drops its last lines now and then when the process exits; a run whose
output is not complete (every chunk, the final estimate or the closing statistics) is run again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
TEXT = HERE / "text.md"
THREADS = 2
CTX = ["-c", "128"]
ONE_SEQ = ["-b", "128"]       # -b = -c: one chunk a batch (n_seq 1), the KV cells of one sequence
FA_OFF, FA_ON = ["-fa", "off"], ["-fa", "on"]

# run name -> (model, arguments after -m MODEL -t 2). "{text}" is text.md, "{base:RUN}" the
# base-logits file RUN wrote (an earlier run), "{out}" the file this run writes. Flash attention
# off: what refllm --numerics ggml reproduces.
RUNS: dict[str, tuple[str, list[str]]] = {
    # perplexity
    "smollm2-c128": ("smollm2", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF]),
    "smollm2-c128-n4": ("smollm2", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF, "--chunks", "4"]),
    "smollm2-c128-n4-b256": ("smollm2", ["-f", "{text}", *CTX, "-b", "256", *FA_OFF, "--chunks", "4"]),
    "smollm2-c128-n4-b32": ("smollm2", ["-f", "{text}", *CTX, "-b", "32", *FA_OFF, "--chunks", "4"]),
    "gemma3-c128": ("gemma3", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF]),
    "gemma3-c128-n2": ("gemma3", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF, "--chunks", "2"]),
    # base-logits files, and KL divergence against them
    "smollm2-c128-n4-base": ("smollm2", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF, "--chunks", "4",
                                         "--kl-divergence-base", "{out}"]),
    "smollm2-c128-n4-b256-base": ("smollm2", ["-f", "{text}", *CTX, "-b", "256", *FA_OFF, "--chunks", "4",
                                              "--kl-divergence-base", "{out}"]),
    "smollm2-c128-n4-b32-base": ("smollm2", ["-f", "{text}", *CTX, "-b", "32", *FA_OFF, "--chunks", "4",
                                             "--kl-divergence-base", "{out}"]),
    "smollm2-c128-n4-kld-self": ("smollm2", ["--kl-divergence", "--kl-divergence-base", "{base:smollm2-c128-n4-base}",
                                             *CTX, *ONE_SEQ, *FA_OFF]),
    "gemma3-c128-n2-base": ("gemma3", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF, "--chunks", "2",
                                       "--kl-divergence-base", "{out}"]),
    "synth-f32-n4-base": ("synth-f32", ["-f", "{text}", *CTX, *ONE_SEQ, *FA_OFF, "--chunks", "4",
                                        "--kl-divergence-base", "{out}"]),
    "synth-f32-q4_0-kld": ("synth-f32-q4_0", ["--kl-divergence", "--kl-divergence-base", "{base:synth-f32-n4-base}",
                                              *CTX, *ONE_SEQ, *FA_OFF]),
    "synth-f32-kld-self": ("synth-f32", ["--kl-divergence", "--kl-divergence-base", "{base:synth-f32-n4-base}",
                                         *CTX, *ONE_SEQ, *FA_OFF]),
}


def with_flash_attention(args: list[str]) -> list[str]:
    """A run's arguments with -fa on instead of -fa off, reading the -fa runs' base files."""
    out: list[str] = []
    for a in args:
        if a == "off" and out[-1:] == ["-fa"]:
            out.append("on")
        else:
            out.append(a[:-1] + "-fa}" if a.startswith("{base:") else a)
    return out


# every run again with flash attention on (llama.cpp's CPU default, -fa auto), named RUN-fa, for
# when refllm has flash attention
RUNS |= {f"{name}-fa": (model, with_flash_attention(args)) for name, (model, args) in list(RUNS.items())}
KEEP = {"synth-f32-n4-base", "synth-f32-n4-base-fa"}   # base-logits files small enough to commit
ATTEMPTS = 6
# the CMake options that decide the CPU arithmetic and what was built
CMAKE_KEYS = re.compile(r"^(CMAKE_BUILD_TYPE|BUILD_SHARED_LIBS|GGML_(?:NATIVE|SSE42|AVX\w*|FMA|F16C|BMI2|AMX_\w+"
                        r"|OPENMP|LLAMAFILE|CPU_REPACK|BLAS|CPU_ALL_VARIANTS|BACKEND_DL)|LLAMA_(?:BUILD_\w+|OPENSSL))"
                        r":[A-Z]+=(.*)$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def complete(stdout: str, stderr: str) -> bool:
    """Whether llama-perplexity's output has every chunk and its closing lines."""
    ppl = re.search(r"calculating perplexity over (\d+) chunks", stderr)
    if ppl:
        chunks = re.findall(r"\[(\d+)\]", stdout)
        return "Final estimate: PPL" in stderr and chunks[-1:] == [ppl.group(1)]
    kld = re.search(r"kl_divergence: computing over (\d+) chunks", stderr)
    if kld:
        lines = re.findall(r"^ *(\d+) +\S+ ±", stdout, re.MULTILINE)
        return lines[-1:] == [kld.group(1)] and "Same top p:" in stdout
    return False


def run(binary: Path, args: list[str]) -> tuple[str, str, float]:
    """stdout, stderr and wall seconds of one complete run (retried while the output is cut)."""
    for _ in range(ATTEMPTS):
        started = time.perf_counter()
        done = subprocess.run([str(binary), *args], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"llama-perplexity {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
        if complete(done.stdout, done.stderr):
            return done.stdout, done.stderr, seconds
    sys.exit(f"llama-perplexity {' '.join(args)}: output incomplete {ATTEMPTS} times")


def main() -> None:
    if len(sys.argv) not in (5, 6):
        sys.exit("usage: python golden/perplexity/make_golden.py LLAMA_BUILD_DIR SMOLLM2 GEMMA3 SYNTH_DIR "
                 "[--only=RUN,...]")
    build, only = Path(sys.argv[1]), None
    if len(sys.argv) == 6:
        only = set(sys.argv[5].removeprefix("--only=").split(","))
    binary = build / "bin" / "llama-perplexity"
    models = {"smollm2": Path(sys.argv[2]), "gemma3": Path(sys.argv[3]),
              "synth-f32": Path(sys.argv[4]) / "synth-f32.gguf",
              "synth-f32-q4_0": Path(sys.argv[4]) / "synth-f32-q4_0.gguf"}
    provenance_path = HERE / "provenance.json"
    old = json.loads(provenance_path.read_text(encoding="utf-8")) if provenance_path.exists() else {}
    runs = dict(old.get("runs", {}))
    bases: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wanted = set(RUNS) if only is None else only
        # and the runs whose base-logits files the wanted ones read
        needed = wanted | {a[6:-1] for n in wanted for a in RUNS[n][1] if a.startswith("{base:")}
        for name, (model, template) in RUNS.items():
            if name not in needed:
                continue
            out = (HERE if name in KEEP else Path(tmp)) / f"{name}.kld"
            args = ["-m", str(models[model]), "-t", str(THREADS)]
            for a in template:
                if a.startswith("{base:"):
                    a = str(bases[a[6:-1]])
                args.append(a.replace("{text}", str(TEXT)).replace("{out}", str(out)))
            stdout, stderr, seconds = run(binary, args)
            record = {"model": model, "args": ["-m", model, *args[2:]], "wall_seconds": round(seconds, 2)}
            record["args"] = [a.replace(str(TEXT), "text.md").replace(str(out), f"{name}.kld")
                              .replace(tmp, "TMP") for a in record["args"]]
            if "{out}" in template:
                bases[name] = out
                record["base_file"] = {"sha256": sha256_file(out), "size": out.stat().st_size,
                                       "committed": name in KEEP}
            if name in wanted:
                (HERE / f"{name}.stdout").write_text(stdout, encoding="utf-8")
                (HERE / f"{name}.stderr").write_text(stderr.replace(tmp, "TMP"), encoding="utf-8")
                runs[name] = record
            print(f"{name}: {seconds:.1f} s", flush=True)
    cache = (build / "CMakeCache.txt").read_text(encoding="utf-8").splitlines()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    provenance = {
        "made_by": "golden/perplexity/make_golden.py",
        "command": "python golden/perplexity/write_models.py DIR && python golden/perplexity/make_golden.py "
                   "LLAMA_BUILD_DIR SMOLLM2 GEMMA3 DIR",
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36), "
                     "tools/perplexity built out of tree",
        "llama_perplexity_version": (version.stdout + version.stderr).strip().splitlines(),
        "llama_perplexity_sha256": sha256_file(binary),
        "compiler": compiler,
        "cmake_cache": dict(m.groups() for line in cache if (m := CMAKE_KEYS.match(line))),
        "threads": THREADS,
        "defaults_left": "n_ubatch 512, f16 KV cache; -b = -c (n_seq 1) except the b256 (n_seq 2) and b32 "
                         "(4 batches a chunk) runs",
        "text": {"file": "text.md", "sha256": sha256_file(TEXT),
                 "source": "docs/speculative.md of llama.cpp@0c1e57098 (llama-cpp-python 0.3.36's sdist, "
                           "vendor/llama.cpp), unchanged",
                 "licence": "MIT, Copyright (c) 2023-2026 The ggml authors: text-LICENSE"},
        "models": {name: {"file": path.name, "sha256": sha256_file(path)} for name, path in models.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()),
        "date": datetime.date.today().isoformat(),
        "runs": {name: runs[name] for name in RUNS if name in runs},
    }
    provenance_path.write_text(json.dumps(provenance, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
