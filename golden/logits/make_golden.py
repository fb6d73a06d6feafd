"""Make golden/logits: llama.cpp's logits for every case of cases.json, and their provenance.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment),
after writing the synthetic models with refllm (write_synth.py):

    python golden/logits/write_synth.py /tmp/refllm-synth                 # refllm's Python
    python golden/logits/make_golden.py SMOLLM2.gguf GEMMA3.gguf /tmp/refllm-synth

(SMOLLM2.gguf and GEMMA3.gguf are the files `refllm pull smollm2` and `refllm pull gemma3`
print.) Each case is a model and its input: a text, tokenized by llama.cpp with
`tokenize(text, add_bos, special=parse_special)`; messages, rendered first by the model's chat
template (Jinja2ChatFormatter, as Llama.__init__ sets it up); or token ids. The model is loaded
with SETTINGS, the ids are evaluated in one `Llama.eval`, and `Llama.scores[:n]` (float32
[n, n_vocab]; row i predicts token i + 1) is stored as golden/logits/<case>.npz:

    tokens       int32   [n]          the ids evaluated
    positions    int32   [m]          the rows stored in full: all of them when n * n_vocab * 2
                                      bytes fit ROWS_BUDGET, else as many evenly spaced ones as
                                      fit, always the first and the last
    rows         float16 [m, n_vocab] the logits at those positions
    topk_ids     int32   [n, 32]      each position's 32 largest logits, descending (ties: lower id
    topk_logits  float32 [n, 32]      first), from the float32 logits
    logsumexp    float64 [n]          log(sum(exp(row))) of each float32 row, in float64

For every case the script also measures llama.cpp's own noise floor: the same ids run
token by token (n_batch=1) and with an f32 KV cache, compared with the default run (KLD of the
softmaxes, NMSE of the logits, the top-1 changes and their margins). provenance.json holds the
library versions, the CPU features of the build, every context setting, and per case the model
file's sha256, its input and what was stored.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

HERE = Path(__file__).parent
TOP_K = 32
ROWS_BUDGET = 3_000_000          # bytes of float16 full rows per case

# Every Llama() argument the golden runs set; everything else (type_k/type_v: f16 KV cache) is
# llama-cpp-python's default, recorded in provenance from the context parameters.
SETTINGS = dict(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                flash_attn=False, logits_all=True, seed=0, verbose=False)
# The reruns that measure llama.cpp's own variation: each one's changes to SETTINGS.
VARIATIONS = {
    "n_batch=1": dict(n_batch=1, n_ubatch=1),                             # token by token
    "f32_kv_cache": dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def context_settings(llm: llama_cpp.Llama) -> dict:
    """The plain fields of the llama_context_params a Llama was built with."""
    cp = llm.context_params
    out = {}
    for name, ctype in cp._fields_:
        value = getattr(cp, name)
        if ctype is not ctypes.c_void_p and isinstance(value, (bool, int, float)):
            out[name] = value
    return out


def run(path: Path, ids: list[int], **changes) -> tuple[np.ndarray, dict]:
    """Evaluate ids in a fresh Llama: (logits float32 [n, n_vocab], its context settings)."""
    llm = llama_cpp.Llama(model_path=str(path), **{**SETTINGS, **changes})
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    settings = context_settings(llm)
    llm.close()
    return logits, settings


def prompt_ids(path: Path, case: dict, texts: dict) -> tuple[list[int], dict]:
    """The ids a case evaluates, and what provenance records about its input."""
    if "ids" in case:
        return list(case["ids"]), {"ids": case["ids"]}
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    info = {}
    if "messages" in case:
        # as Llama.__init__ sets up the model's template: the texts of its BOS and EOS tokens
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
            eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            add_generation_prompt=case["add_generation_prompt"])
        text = formatter(messages=case["messages"]).prompt
        info["messages"] = case["messages"]
        info["add_generation_prompt"] = case["add_generation_prompt"]
        info["rendered_by"] = "the model's tokenizer.chat_template through Jinja2ChatFormatter"
    else:
        text = case["text"] if "text" in case else texts[case["text_key"]]
    ids = llm.tokenize(text.encode("utf-8"), add_bos=case["add_bos"], special=case["parse_special"])
    info.update(text=text, add_bos=case["add_bos"], parse_special=case["parse_special"])
    llm.close()
    return ids, info


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax of each row."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """float64 log(sum(exp(row))) of each row, [n]."""
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest logits, descending, ties to the lower id: (ids int32, logits f32)."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return order.astype(np.int32), np.take_along_axis(logits, order, axis=1)


def stored_positions(n: int, n_vocab: int) -> np.ndarray:
    """The positions stored as full float16 rows (see the module docstring)."""
    fit = ROWS_BUDGET // (n_vocab * 2)
    if n <= fit:
        return np.arange(n, dtype=np.int32)
    return np.unique(np.round(np.linspace(0, n - 1, max(fit, 2)))).astype(np.int32)


def compare(default: np.ndarray, other: np.ndarray) -> dict:
    """How far another llama.cpp run is from the default one."""
    lp_d, lp_o = log_softmax(default), log_softmax(other)
    kld = (np.exp(lp_d) * (lp_d - lp_o)).sum(axis=1)                    # [n] KLD(default || other)
    d64, o64 = default.astype(np.float64), other.astype(np.float64)
    nmse = ((o64 - d64) ** 2).sum() / ((d64 - d64.mean()) ** 2).sum()
    top2 = np.sort(default, axis=1)[:, -2:]                              # [n, 2]
    margin = top2[:, 1] - top2[:, 0]                                     # default's top-1 margin
    changed = np.flatnonzero(default.argmax(axis=1) != other.argmax(axis=1))
    return {
        "kld_mean": float(kld.mean()), "kld_max": float(kld.max()), "nmse": float(nmse),
        "max_abs_diff": float(np.abs(o64 - d64).max()),
        "top1_changed": int(changed.size),
        "top1_changed_at": [{"position": int(p), "default_margin": float(margin[p])} for p in changed],
        "largest_margin_that_changed": float(margin[changed].max()) if changed.size else None,
        "smallest_margin_that_changed": float(margin[changed].min()) if changed.size else None,
        "smallest_margin": float(margin.min()),
    }


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    spec = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    real = {"smollm2": Path(sys.argv[1]), "gemma3": Path(sys.argv[2])}
    synth_dir = Path(sys.argv[3])
    cases, variation, settings = {}, {}, None
    for name, case in spec["cases"].items():
        path = synth_dir / f"{name}.gguf" if case["model"] == "synth" else real[case["model"]]
        ids, info = prompt_ids(path, case, spec["texts"])
        if len(ids) > SETTINGS["n_ctx"]:
            sys.exit(f"{name}: {len(ids)} tokens do not fit n_ctx {SETTINGS['n_ctx']}")
        logits, settings = run(path, ids)
        n, n_vocab = logits.shape
        assert np.all(np.isfinite(logits)), name

        positions = stored_positions(n, n_vocab)
        topk_ids, topk_logits = top_k(logits, TOP_K)
        out = HERE / f"{name}.npz"
        np.savez_compressed(out, tokens=np.array(ids, np.int32), positions=positions,
                            rows=logits[positions].astype(np.float16), topk_ids=topk_ids,
                            topk_logits=topk_logits, logsumexp=logsumexp(logits))
        entry = {"model": path.name, "sha256": sha256_file(path), **info}
        if "synth" in case:
            entry["synth"] = case["synth"]
        entry.update(n_tokens=n, n_vocab=n_vocab, stored_positions=int(positions.size),
                     npz_sha256=sha256_file(out))
        cases[name] = entry
        print(f"{name}: {n} tokens, {positions.size} full rows, {out.stat().st_size} bytes", flush=True)

        variation[name] = {key: compare(logits, run(path, ids, **changes)[0])
                           for key, changes in VARIATIONS.items()}
        print("   ", {k: (f"{v['kld_mean']:.2e}", f"{v['nmse']:.2e}", v["top1_changed"])
                      for k, v in variation[name].items()}, flush=True)

    provenance = {
        "made_by": "golden/logits/make_golden.py",
        "command": "python golden/logits/write_synth.py DIR && python golden/logits/make_golden.py "
                   + " ".join([real["smollm2"].name, real["gemma3"].name, "DIR"]),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "cases_sha256": sha256_file(HERE / "cases.json"),
        "llama_args": SETTINGS,
        "context_params": settings,
        "eval": "Llama(model_path, **llama_args).eval(ids); logits = Llama.scores[:n] (float32, row i "
                "predicts token i + 1); type_k/type_v left at their default (context_params: 1 = f16)",
        "storage": {"top_k": TOP_K, "rows_budget_bytes": ROWS_BUDGET,
                    "positions": "all when n * n_vocab * 2 <= rows_budget_bytes, else "
                                 "unique(round(linspace(0, n - 1, rows_budget_bytes // (n_vocab * 2))))"},
        "cases": cases,
        "llama_cpp_self_variation": {
            "about": "Each case rerun with a change of llama_args, against the default run: "
                     "kld = KLD(default || other) per position from float64 log-softmax, mean and max over "
                     "positions; nmse = sum((other - default)^2) / sum((default - mean(default))^2) over all "
                     "positions and the vocabulary; top1_changed = positions whose argmax differs, with the "
                     "default run's margin (top-1 minus top-2 logit) there.",
            "variations": VARIATIONS,
            "cases": variation,
        },
    }
    tmp = HERE / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(HERE / "provenance.json")


if __name__ == "__main__":
    main()
