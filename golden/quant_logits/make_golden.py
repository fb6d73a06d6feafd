"""Make golden/quant_logits: llama.cpp's logits, as hashes, for small synthetic llamas whose matrices
are random blocks of the types refllm cannot quantize (and tied Q4_0 / Q4_K).

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment),
after writing the models with refllm (write_models.py):

    python golden/quant_logits/write_models.py /tmp/refllm-quant-logits          # refllm's Python
    /tmp/golden-venv/bin/python golden/quant_logits/make_golden.py /tmp/refllm-quant-logits

golden/matmul_kernels checks each kernel alone; this set checks that a whole model picks them as
llama.cpp does: which weights the loader puts in the CPU_REPACK buffer (the tied output
included), which kernel each batch size runs, and everything between the products. Each model
DIR/<case>.gguf is evaluated on the same ids (BOS and N_RANDOM ids drawn with numpy's
PCG64(IDS_SEED) from the non-control tokens) in a fresh llama_cpp.Llama per mode:

    nb512   n_batch = n_ubatch = 512: all the ids in one batch (tiled.cpp's standard path, gemm)
    nb10    n_batch = n_ubatch = 10: batches of 10 (tiled.cpp's narrow path, gemm + gemv)
    nb1     n_batch = n_ubatch = 1: token by token (vec_dot, gemv)

with SETTINGS (f16 KV cache, flash attention off, every position's logits). The logits are
bit-exact targets, so only their hashes are kept: provenance.json has, per case and mode, the
sha256 of the float32 [n, n_vocab] logits (llama.cpp's bytes, little-endian) and of each row,
max |logit|, and what llama.cpp logged about repacking (which tensors, to which layout); per
case the model's sha256 and size, and the versions and CPU features of the build.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).parent
# write_models.CASES' names (copied, not imported: this script never imports refllm)
CASES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "IQ4_NL", "MXFP4", "NVFP4",
         "TQ1_0", "TQ2_0", "Q4_0", "Q4_K", "IQ4_NL-v388")
IDS_SEED = 11
N_RANDOM = 19
SETTINGS = dict(n_ctx=256, n_threads=2, n_threads_batch=2, flash_attn=False, logits_all=True, seed=0, verbose=False)
MODES = {"nb512": 512, "nb10": 10, "nb1": 1}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Log:
    """llama.cpp's log, kept quiet; the lines about repacked weights are kept."""

    def __init__(self):
        self.repack: list[str] = []
        self.callback = llama_cpp.llama_log_callback(self._callback)          # kept alive here
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _callback(self, level, text, _user_data) -> None:
        line = text.decode("utf-8", "replace").strip()
        if "repack" in line and line:
            self.repack.append(line)
        if level == 4:                                                         # GGML_LOG_LEVEL_ERROR
            print(line, file=sys.stderr, flush=True)


def random_ids(path: Path) -> list[int]:
    """BOS, then N_RANDOM ids drawn by PCG64(IDS_SEED) from the vocabulary's non-control tokens."""
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    candidates = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if not llama_cpp.llama_vocab_is_control(vocab, i)]
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    llm.close()
    rng = np.random.Generator(np.random.PCG64(IDS_SEED))
    return [bos] + [int(candidates[k]) for k in rng.integers(0, len(candidates), N_RANDOM)]


def run(path: Path, ids: list[int], n_batch: int) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_batch=n_batch, n_ubatch=n_batch, **SETTINGS)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype="<f4")
    llm.close()
    return logits


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py DIR  (the models of write_models.py)")
    directory = Path(sys.argv[1])
    log = Log()
    cases = {}
    for case in CASES:
        path = directory / f"{case}.gguf"
        ids = random_ids(path)
        entry = {"model_sha256": sha256_file(path), "model_bytes": path.stat().st_size, "ids": ids, "modes": {}}
        for mode, n_batch in MODES.items():
            log.repack.clear()
            logits = run(path, ids, n_batch)
            assert np.all(np.isfinite(logits)), (case, mode)
            entry["modes"][mode] = {
                "n_batch": n_batch,
                "sha256": hashlib.sha256(logits.tobytes()).hexdigest(),
                "row_sha256": [hashlib.sha256(row.tobytes()).hexdigest() for row in logits],
                "max_abs_logit": float(np.abs(logits).max()),
                "repack_log": sorted(set(log.repack)),
            }
        cases[case] = entry
        print(case, entry["modes"]["nb512"]["sha256"][:16], len(entry["modes"]["nb512"]["repack_log"]), flush=True)
    provenance = {
        "made_by": "golden/quant_logits/make_golden.py",
        "command": "python golden/quant_logits/write_models.py DIR  (refllm's Python) && "
                   "/tmp/golden-venv/bin/python golden/quant_logits/make_golden.py DIR",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "settings": SETTINGS,
        "modes": MODES,
        "ids_seed": IDS_SEED,
        "eval": "Llama(model_path, n_batch=n_ubatch=<mode>, **settings).eval(ids); logits = scores[:n] as "
                "little-endian float32 [n, n_vocab], row i scoring the token after ids[i]",
        "cases": cases,
    }
    tmp = HERE / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, HERE / "provenance.json")


if __name__ == "__main__":
    main()
