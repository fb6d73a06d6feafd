"""Make golden/logits: llama.cpp's logits for every case of cases.json, and their provenance.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment),
after writing the synthetic models with refllm (write_synth.py):

    python golden/logits/write_synth.py /tmp/refllm-synth                 # refllm's Python
    python golden/logits/make_golden.py SMOLLM2.gguf GEMMA3.gguf /tmp/refllm-synth [--only CASE,...]

(SMOLLM2.gguf and GEMMA3.gguf are the files `refllm pull smollm2` and `refllm pull gemma3`
print.) Each case is a model and its input: a text, tokenized by llama.cpp with
`tokenize(text, add_bos, special=parse_special)`; messages, rendered first by the model's chat
template (Jinja2ChatFormatter, as Llama.__init__ sets it up); or token ids (its own, or with
"same_ids_as" another case's). With "max_tokens" only the first that many ids are evaluated.
The model is loaded with SETTINGS, except that a case with "n_batch" sets n_batch and n_ubatch
to it (1: token by token, llama.cpp's decode path, where the default evaluates the prompt in
one batch of up to 512), and a case with "flash_attn": true turns flash attention on (SETTINGS
turn it off; llama.cpp's own CPU default, -fa auto, resolves to on); the ids are evaluated in one `Llama.eval`, and `Llama.scores[:n]`
(float32 [n, n_vocab]; row i predicts token i + 1) is stored as golden/logits/<case>.npz:

    tokens       int32   [n]          the ids evaluated
    positions    int32   [m]          the rows stored in full: all of them when n * n_vocab * 2
                                      bytes fit ROWS_BUDGET (ROWS_BUDGET_NB1 for an n_batch 1
                                      case), else as many evenly spaced ones as fit, always the
                                      first and the last
    rows         float16 [m, n_vocab] the logits at those positions
    topk_ids     int32   [n, 32]      each position's 32 largest logits, descending (ties: lower id
    topk_logits  float32 [n, 32]      first), from the float32 logits
    logsumexp    float64 [n]          log(sum(exp(row))) of each float32 row, in float64

For every case the script also measures llama.cpp's own noise floor: the same ids run
token by token (n_batch=1) and with an f32 KV cache, compared with the case's own run (KLD of
the softmaxes, NMSE of the logits, the top-1 changes and their margins); an n_batch 1 case is
compared with the batched run (n_batch=512) and with an f32 KV cache at n_batch 1 instead.
provenance.json holds the library versions, the CPU features of the build, every context
setting, and per case the model file's sha256, its input, its n_batch and n_ubatch and what was
stored.

--only CASE,... makes just those cases and merges them into the existing provenance.json: every
other case's .npz file and its entries are left exactly as they are, and "runs" (and "command")
say which run made which case.
"""

from __future__ import annotations

import argparse
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
ROWS_BUDGET_NB1 = 1_500_000      # the same for an n_batch 1 case (golden/ stays under 40 MB)
ROWS_BUDGET_FA = 300_000         # the same for a flash-attention case (bit-exactness rests on top-32)

# Every Llama() argument the golden runs set; everything else (type_k/type_v: f16 KV cache) is
# llama-cpp-python's default, recorded in provenance from the context parameters.
SETTINGS = dict(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                flash_attn=False, logits_all=True, seed=0, verbose=False)
# The reruns that measure llama.cpp's own variation: each one's changes to SETTINGS.
VARIATIONS = {
    "n_batch=1": dict(n_batch=1, n_ubatch=1),                             # token by token
    "f32_kv_cache": dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32),
}
# The same for an n_batch 1 case, on top of its own n_batch = n_ubatch = 1.
VARIATIONS_NB1 = {
    "n_batch=512": dict(n_batch=512, n_ubatch=512),                       # batched, as SETTINGS
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


def case_changes(case: dict) -> dict:
    """A case's changes to SETTINGS: n_batch and n_ubatch set to its "n_batch", if it has one,
    and flash attention on where it says "flash_attn": true."""
    changes = dict(n_batch=case["n_batch"], n_ubatch=case["n_batch"]) if "n_batch" in case else {}
    if case.get("flash_attn"):
        changes["flash_attn"] = True
    return changes


def prompt_ids(path: Path, case: dict, spec: dict) -> tuple[list[int], dict]:
    """The ids a case evaluates (all of them; make_case applies max_tokens), and what
    provenance records about its input."""
    if "same_ids_as" in case:
        ids = spec["cases"][case["same_ids_as"]]["ids"]
        return list(ids), {"same_ids_as": case["same_ids_as"], "ids": ids}
    if "ids" in case:
        return list(case["ids"]), {"ids": case["ids"]}
    texts = spec["texts"]
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


def stored_positions(n: int, n_vocab: int, budget: int) -> np.ndarray:
    """The positions stored as full float16 rows, `budget` bytes of them (see the module
    docstring)."""
    fit = budget // (n_vocab * 2)
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


def make_case(name: str, case: dict, spec: dict, path: Path) -> tuple[dict, dict, dict]:
    """Run one case, write golden/logits/<name>.npz: (its provenance entry, its self-variation,
    the context settings of its run)."""
    ids, info = prompt_ids(path, case, spec)
    if "max_tokens" in case:
        info.update(max_tokens=case["max_tokens"], n_tokens_tokenized=len(ids))
        ids = ids[:case["max_tokens"]]
    if len(ids) > SETTINGS["n_ctx"]:
        sys.exit(f"{name}: {len(ids)} tokens do not fit n_ctx {SETTINGS['n_ctx']}")
    changes = case_changes(case)
    logits, settings = run(path, ids, **changes)
    n, n_vocab = logits.shape
    assert np.all(np.isfinite(logits)), name

    nb1 = settings["n_batch"] == 1
    budget = ROWS_BUDGET_FA if case.get("flash_attn") else ROWS_BUDGET_NB1 if nb1 else ROWS_BUDGET
    positions = stored_positions(n, n_vocab, budget)
    topk_ids, topk_logits = top_k(logits, TOP_K)
    out = HERE / f"{name}.npz"
    np.savez_compressed(out, tokens=np.array(ids, np.int32), positions=positions,
                        rows=logits[positions].astype(np.float16), topk_ids=topk_ids,
                        topk_logits=topk_logits, logsumexp=logsumexp(logits))
    entry = {"model": path.name, "sha256": sha256_file(path), **info}
    if "synth" in case:
        entry["synth"] = case["synth"]
    entry.update(n_batch=settings["n_batch"], n_ubatch=settings["n_ubatch"], flash_attn_type=settings["flash_attn_type"],
                 n_tokens=n, n_vocab=n_vocab,
                 stored_positions=int(positions.size), npz_sha256=sha256_file(out))
    print(f"{name}: n_batch {settings['n_batch']}, {n} tokens, {positions.size} full rows, "
          f"{out.stat().st_size} bytes", flush=True)

    variations = VARIATIONS_NB1 if nb1 else VARIATIONS
    variation = {key: compare(logits, run(path, ids, **{**changes, **more})[0]) for key, more in variations.items()}
    print("   ", {k: (f"{v['kld_mean']:.2e}", f"{v['nmse']:.2e}", v["top1_changed"])
                  for k, v in variation.items()}, flush=True)
    return entry, variation, settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("smollm2", type=Path, help="SmolLM2's GGUF (refllm pull smollm2)")
    ap.add_argument("gemma3", type=Path, help="Gemma-3's GGUF (refllm pull gemma3)")
    ap.add_argument("synth_dir", type=Path, help="the folder write_synth.py wrote")
    ap.add_argument("--only", metavar="CASE,...",
                    help="make only these cases and merge them into the existing provenance.json")
    args = ap.parse_args()
    spec = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    real = {"smollm2": args.smollm2, "gemma3": args.gemma3}
    command = ("python golden/logits/write_synth.py DIR && python golden/logits/make_golden.py "
               + " ".join([real["smollm2"].name, real["gemma3"].name, "DIR"]))
    versions = {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    today = datetime.date.today().isoformat()

    old = None
    names = list(spec["cases"])
    if args.only:
        names = args.only.split(",")
        unknown = [name for name in names if name not in spec["cases"]]
        if unknown:
            sys.exit(f"--only: not cases of cases.json: {', '.join(unknown)}")
        command += " --only " + ",".join(names)
        old = json.loads((HERE / "provenance.json").read_text(encoding="utf-8"))
        # merged files must come from the same build and settings as the ones they join
        # (the platform string names the kernel's build, which changes under the same library
        # build; each run records its own)
        differ = [key for key, value in {**versions, "system_info": system_info, "llama_args": SETTINGS}.items()
                  if key != "platform" and old.get(key) != value]
        if differ:
            sys.exit(f"--only: this environment differs from provenance.json's in {', '.join(differ)}; "
                     "remake every case instead")

    made, made_variation, base_settings = {}, {}, None
    for name in names:
        case = spec["cases"][name]
        path = args.synth_dir / f"{name}.gguf" if case["model"] == "synth" else real[case["model"]]
        made[name], made_variation[name], settings = make_case(name, case, spec, path)
        # every case's context is the default one but for its n_batch and n_ubatch
        if base_settings is None and not case_changes(case):
            base_settings = settings
        base = base_settings or (old["context_params"] if old else None)
        if base is not None:
            differ = sorted(k for k in set(base) | set(settings)
                            if k not in ("n_batch", "n_ubatch", "flash_attn_type") and base.get(k) != settings.get(k))
            assert not differ, f"{name}: context settings differ from the default run's in {differ}"
    if base_settings is None:
        base_settings = old["context_params"]

    if old is None:
        cases, variation = made, made_variation
        runs = [{"command": command, "date": today, "cases": names}]
    else:
        # keep every other case's entries as they are, in cases.json's order
        old_variation = old["llama_cpp_self_variation"]["cases"]
        cases = {name: made.get(name, old["cases"].get(name)) for name in spec["cases"]
                 if name in made or name in old["cases"]}
        variation = {name: made_variation.get(name, old_variation.get(name)) for name in cases
                     if name in made_variation or name in old_variation}
        runs = old.get("runs") or [{"command": old["command"], "date": old["date"], "cases": list(old["cases"])}]
        runs = [dict(r, cases=[c for c in r["cases"] if c not in made and c in cases]) for r in runs]
        runs = [r for r in runs if r["cases"]] + [{"command": command, "date": today, "cases": names,
                                                    "platform": versions["platform"]}]

    provenance = {
        "made_by": "golden/logits/make_golden.py",
        "command": " ; then ".join(r["command"] for r in runs),
        "runs": runs,
        **versions,
        "date": runs[-1]["date"],
        "system_info": system_info,
        "cases_sha256": sha256_file(HERE / "cases.json"),
        "llama_args": SETTINGS,
        "context_params": base_settings,
        "eval": "Llama(model_path, **llama_args).eval(ids), with n_batch and n_ubatch set to the case's "
                "entry's where it names them (the n_batch 1 cases; an entry without them ran with llama_args'); "
                "logits = Llama.scores[:n] (float32, row i predicts token i + 1); type_k/type_v left at their "
                "default (context_params: 1 = f16); context_params: those of a batched run, and every case's "
                "are the same but for n_batch and n_ubatch, and flash_attn_type (1 = enabled) in the cases that "
                "say \"flash_attn\": true",
        "storage": {"top_k": TOP_K, "rows_budget_bytes": ROWS_BUDGET,
                    "rows_budget_bytes_n_batch_1": ROWS_BUDGET_NB1,
                    "rows_budget_bytes_flash_attn": ROWS_BUDGET_FA,
                    "positions": "all when n * n_vocab * 2 <= the case's budget (rows_budget_bytes, or "
                                 "rows_budget_bytes_n_batch_1 for an n_batch 1 case, "
                                 "rows_budget_bytes_flash_attn for a flash-attention case), else "
                                 "unique(round(linspace(0, n - 1, budget // (n_vocab * 2))))"},
        "cases": cases,
        "llama_cpp_self_variation": {
            "about": "Each case rerun with a change of its llama_args, against the case's own run: "
                     "kld = KLD(own || other) per position from float64 log-softmax, mean and max over "
                     "positions; nmse = sum((other - own)^2) / sum((own - mean(own))^2) over all "
                     "positions and the vocabulary; top1_changed = positions whose argmax differs, with the "
                     "own run's margin (top-1 minus top-2 logit) there. Batched cases: the changes of "
                     "\"variations\"; n_batch 1 cases: those of \"variations_n_batch_1\" (its f32_kv_cache run "
                     "stays at n_batch 1).",
            "variations": VARIATIONS,
            "variations_n_batch_1": VARIATIONS_NB1,
            "cases": variation,
        },
    }
    if old is not None:
        provenance["platform"] = old["platform"]           # the first run's; later runs record their own
    tmp = HERE / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(HERE / "provenance.json")


if __name__ == "__main__":
    main()
