"""Make golden/sampling: what llama.cpp's sampler chain draws, for refllm's sampler to equal.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment):

    python golden/sampling/make_golden.py SMOLLM2.gguf GEMMA3.gguf

(SMOLLM2.gguf and GEMMA3.gguf are the files `refllm pull smollm2` and `refllm pull gemma3`
print.) It writes two sets, and provenance.json beside them.

sequences.json: whole seeded replies. For each case (a model, a prompt, an option set of
OPTION_SETS, a seed) a fresh Llama with golden/logits' SETTINGS (n_ctx 1024, n_batch = n_ubatch
= 512, 2 threads, flash attention off, logits_all) evaluates the prompt's ids in one batch
(`Llama.eval`), then each drawn token alone. The sampler chain is built with llama.cpp's
low-level API (not Llama.sample, whose chain differs) as ollama's llama.cpp runner builds it,
i.e. common_sampler_init with ollama's values: penalties, dry, top_n_sigma, top_k, typical,
top_p, min_p, xtc, temp_ext, dist (dry, top_n_sigma, typical and xtc neutral, min_keep 0); the
prompt's ids are accepted into it (llama_sampler_accept, as ollama's runner does), then each
token is drawn by llama_sampler_sample(chain, ctx, -1), which also accepts it. A reply stops at
an end-of-generation token (kept as the last id) or after N_TOKENS ids. Each case records the
prompt's ids, the drawn ids, the reply's text (llama.cpp's detokenize of the ids before any
EOG) and the sha256 of every float32 logits row the chain sampled from (so that a mismatch can
be told apart: different logits, or a different draw).

steps.npz and steps.json: llama.cpp's samplers one at a time on crafted logits (STEP_CASES:
many ties, bucket boundaries, huge values, flat and peaked rows, 1 to 5000 candidates), through
llama_sampler_apply on a llama_token_data_array built here: after each step, the candidates'
ids, logits and probabilities (steps.npz: "<case>/<round>/<step>/ids|logits|p") and the array's
size, sorted flag and selected index (steps.json); each case's chain is applied `rounds` times
to fresh copies of its inputs (round r: inputs[r % len(inputs)]) with the same dist sampler, so
the selected ids show the random stream. The inputs are stored too ("<case>/input<k>").
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import platform
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

HERE = Path(__file__).parent
N_TOKENS = 24

# golden/logits/make_golden.py's SETTINGS (flash attention stays off here)
SETTINGS = dict(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                flash_attn=False, logits_all=True, seed=0, verbose=False)

# common_params_sampling's values for what ollama's runner does not set (common/common.h)
COMMON = dict(min_keep=0, typical_p=1.0, dry_multiplier=0.0, dry_base=1.75, dry_allowed_length=2,
              dry_penalty_last_n=64, top_n_sigma=-1.0, xtc_probability=0.0, xtc_threshold=0.5,
              dynatemp_range=0.0, dynatemp_exponent=1.0)

# refllm's SamplingOptions defaults; each option set changes some (ollama's names)
DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.0, repeat_last_n=64, repeat_penalty=1.0,
                presence_penalty=0.0, frequency_penalty=0.0)
OPTION_SETS = {
    "defaults": {},                                                      # refllm's
    "ollama-defaults": dict(repeat_penalty=1.1),                         # ollama's api.DefaultOptions
    "temperature-1.5": dict(temperature=1.5),
    "top-k-only": dict(top_k=20, top_p=1.0, temperature=1.0),
    "top-k-200": dict(top_k=200, top_p=1.0, temperature=1.0),            # top_k's bucket sort
    "top-p-0.5": dict(top_k=0, top_p=0.5),                               # top_p's own sort
    "top-p-0.99": dict(top_k=0, top_p=0.99, temperature=1.0),            # past the first 256
    "min-p-0.1": dict(top_k=0, top_p=1.0, min_p=0.1),                    # unsorted min_p
    "penalties": dict(repeat_penalty=1.3, repeat_last_n=64, presence_penalty=0.5, frequency_penalty=0.5),
    "greedy": dict(temperature=0.0),
}
SEEDS = (42, 1234, 3000000000)
GREEDY_SEED = 7

PROSE = ("The lighthouse on the northern point had not been kept by a person for almost forty years, "
         "but everyone in the village still called it")
QUESTION = "Why do leaves change colour in autumn? Please answer in two sentences."
PROMPTS = {
    # model -> prompt name -> how it is made
    "smollm2": {"chat": dict(messages=[{"role": "user", "content": QUESTION}]),
                "prose": dict(text=PROSE, parse_special=False)},
    "gemma3": {"chat": dict(text=f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n",
                            parse_special=True),
               "prose": dict(text=PROSE, parse_special=False)},
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cases() -> list[dict]:
    """Every sequence case: per model and option set, one case per seed, the prompt alternating
    chat, prose, chat; greedy once per prompt."""
    out = []
    for model in PROMPTS:
        for set_name, changes in OPTION_SETS.items():
            options = {**DEFAULTS, **changes}
            if set_name == "greedy":
                runs = [(prompt, GREEDY_SEED) for prompt in PROMPTS[model]]
            else:
                runs = [(("chat", "prose")[i % 2], seed) for i, seed in enumerate(SEEDS)]
            for prompt, seed in runs:
                out.append(dict(name=f"{model}-{prompt}-{set_name}-{seed}", model=model, prompt=prompt,
                                option_set=set_name, options=options, seed=seed))
    return out


def prompt_ids(llm: llama_cpp.Llama, spec: dict) -> tuple[list[int], dict]:
    """The prompt's ids, as golden/logits/make_golden.py makes them, and its description."""
    if "messages" in spec:
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
            eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            add_generation_prompt=True)
        text = formatter(messages=spec["messages"]).prompt
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        return ids, dict(messages=spec["messages"], add_generation_prompt=True, text=text, add_bos=True,
                         parse_special=True, rendered_by="the model's tokenizer.chat_template through "
                                                         "Jinja2ChatFormatter")
    ids = llm.tokenize(spec["text"].encode("utf-8"), add_bos=True, special=spec["parse_special"])
    return ids, dict(text=spec["text"], add_bos=True, parse_special=spec["parse_special"])


def build_chain(model: llama_cpp.llama_model_p, n_vocab: int, options: dict, seed: int):
    """common_sampler_init's chain for ollama's values (sampling_ext.cpp's common_sampler_cinit)."""
    lc = llama_cpp
    vocab = lc.llama_model_get_vocab(model)
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    samplers = [
        lc.llama_sampler_init_penalties(n_vocab, options["repeat_last_n"], options["repeat_penalty"],
                                        options["frequency_penalty"], options["presence_penalty"]),
        lc.llama_sampler_init_dry(vocab, COMMON["dry_multiplier"], COMMON["dry_base"], COMMON["dry_allowed_length"],
                                  COMMON["dry_penalty_last_n"], None, 0),
        lc.llama_sampler_init_top_n_sigma(COMMON["top_n_sigma"]),
        lc.llama_sampler_init_top_k(options["top_k"]),
        lc.llama_sampler_init_typical(COMMON["typical_p"], COMMON["min_keep"]),
        lc.llama_sampler_init_top_p(options["top_p"], COMMON["min_keep"]),
        lc.llama_sampler_init_min_p(options["min_p"], COMMON["min_keep"]),
        lc.llama_sampler_init_xtc(COMMON["xtc_probability"], COMMON["xtc_threshold"], COMMON["min_keep"], seed),
        lc.llama_sampler_init_temp_ext(options["temperature"], COMMON["dynatemp_range"], COMMON["dynatemp_exponent"]),
        lc.llama_sampler_init_dist(seed),
    ]
    for sampler in samplers:
        lc.llama_sampler_chain_add(chain, sampler)
    names = [lc.llama_sampler_name(lc.llama_sampler_chain_get(chain, i)).decode() for i in range(len(samplers))]
    return chain, names


def logits_row(llm: llama_cpp.Llama) -> np.ndarray:
    """The float32 logits llama_sampler_sample(chain, ctx, -1) reads: the last output's."""
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def run_case(path: Path, case: dict) -> dict:
    """One seeded reply, in a fresh Llama."""
    llm = llama_cpp.Llama(model_path=str(path), **SETTINGS)
    n_suppress = ctypes.c_int32(0)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llama_cpp.llama_vocab_get_suppress_tokens(vocab, ctypes.byref(n_suppress))
    assert n_suppress.value == 0, "the model suppresses tokens: common_sampler_init would add a logit bias"
    ids, info = prompt_ids(llm, PROMPTS[case["model"]][case["prompt"]])
    chain, names = build_chain(llm.model, llm.n_vocab(), case["options"], case["seed"])
    for token in ids:                                  # ollama's runner: sc.Accept(token, false)
        llama_cpp.llama_sampler_accept(chain, token)
    llm.eval(ids)                                      # the prompt in one batch
    drawn, row_sha256, eog = [], [], False
    while len(drawn) < N_TOKENS:
        row_sha256.append(hashlib.sha256(logits_row(llm).tobytes()).hexdigest()[:16])
        token = llama_cpp.llama_sampler_sample(chain, llm.ctx, -1)
        drawn.append(token)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            eog = True
            break
        llm.eval([token])                              # one token at a time
    reply = drawn[:-1] if eog else drawn
    text = llm.detokenize(reply).decode("utf-8", errors="replace")
    llama_cpp.llama_sampler_free(chain)
    llm.close()
    return {**case, "prompt_ids": ids, "prompt_info": info, "chain": names, "ids": drawn,
            "stopped_at_eog": eog, "text": text, "logits_sha256_16": row_sha256}


def last_row_check(path: Path, ids: list[int]) -> bool:
    """Whether the prompt's last logits row is the same, bit for bit, with logits_all off (only
    the last row computed, as a generation without logprobs does) and on (SETTINGS)."""
    rows = []
    for logits_all in (True, False):
        llm = llama_cpp.Llama(model_path=str(path), **{**SETTINGS, "logits_all": logits_all})
        llm.eval(ids)
        rows.append(logits_row(llm))
        llm.close()
    return bool(np.array_equal(rows[0].view(np.uint32), rows[1].view(np.uint32)))


# -- the samplers one at a time, on crafted logits -------------------------------------------------

def crafted_inputs() -> dict[str, list[np.ndarray]]:
    """Each step case's input rows (float32), from a seeded generator."""
    rng = np.random.Generator(np.random.PCG64(20261205))
    f32 = np.float32

    def normal(n, scale=3.0):
        return (rng.standard_normal(n) * scale).astype(f32)

    def ties(n, levels, step=0.5):
        return (rng.integers(-levels, levels + 1, n) * step).astype(f32)

    # logits at and one float32 step around each bucket boundary (6.4 b + 64 = integer),
    # beyond [-10, 10], and repeated
    edges = (np.arange(-70, 200, dtype=np.float64) - 64) / 6.4
    edges = edges.astype(f32)
    around = np.concatenate([edges, np.nextafter(edges, f32(np.inf)), np.nextafter(edges, f32(-np.inf))])
    bucket_edges = np.concatenate([around, around[::7], normal(300, 6.0)]).astype(f32)
    rng.shuffle(bucket_edges)

    huge = ties(2000, 20, 0.5)
    huge[[5, 600, 1500]] = f32(1e9)          # 6.4 * 1e9 overflows int32: bucket 0 in llama.cpp
    huge[[7, 8]] = f32(-np.inf)
    huge[[9]] = f32(-1e9)

    peaked = normal(3000, 1.0)
    peaked[[17, 2999]] = f32(9.0)             # two equal maxima
    flat = np.zeros(1000, f32)
    return {
        "ties-top-k-40": [ties(2000, 6)],
        "ties-top-k-300": [ties(5000, 6)],
        "top-k-all-150": [ties(150, 3)],
        "top-p-adaptive-ties": [ties(4096, 3, 0.25)],
        "top-p-adaptive-early": [normal(4096, 4.0)],
        "top-p-sort-inplace-900": [ties(900, 4)],
        "top-p-heap-100": [ties(100, 2)],
        "top-p-min-keep": [normal(2000, 5.0)],
        "min-p-unsorted": [ties(3000, 8)],
        "min-p-sorted": [normal(1500)],
        "min-p-min-keep-fallback": [peaked],
        "greedy-unsorted-ties": [peaked],
        "greedy-after-top-k": [ties(2000, 2)],
        "bucket-edges": [bucket_edges],
        "huge-logits": [huge],
        "penalties": [normal(500, 2.0)],
        "dist-flat": [flat],
        "dist-one-then-many": [np.array([3.5], f32), flat],
        "default-chain": [normal(5000, 2.5)],
    }


# chain of (sampler, its arguments), the rounds, and the ids accepted before (penalties)
STEP_CASES = {
    "ties-top-k-40": dict(chain=[("top_k", 40), ("temp", 0.7), ("dist", 11)], rounds=20),
    "ties-top-k-300": dict(chain=[("top_k", 300), ("dist", 12)], rounds=20),
    "top-k-all-150": dict(chain=[("top_k", 1000), ("dist", 13)], rounds=5),
    "top-p-adaptive-ties": dict(chain=[("top_p", 0.95, 0), ("dist", 14)], rounds=10),
    "top-p-adaptive-early": dict(chain=[("top_p", 0.5, 0), ("dist", 15)], rounds=10),
    "top-p-sort-inplace-900": dict(chain=[("top_p", 0.8, 0), ("dist", 16)], rounds=10),
    "top-p-heap-100": dict(chain=[("top_p", 0.6, 0), ("temp", 1.7), ("dist", 17)], rounds=10),
    "top-p-min-keep": dict(chain=[("top_k", 60), ("top_p", 0.1, 7), ("dist", 18)], rounds=10),
    "min-p-unsorted": dict(chain=[("min_p", 0.05, 0), ("dist", 19)], rounds=10),
    "min-p-sorted": dict(chain=[("top_k", 100), ("min_p", 0.2, 0), ("dist", 20)], rounds=10),
    "min-p-min-keep-fallback": dict(chain=[("min_p", 0.5, 10), ("dist", 21)], rounds=10),
    "greedy-unsorted-ties": dict(chain=[("temp", 0.0), ("dist", 22)], rounds=3),
    "greedy-after-top-k": dict(chain=[("top_k", 40), ("temp", 0.0), ("dist", 23)], rounds=3),
    "bucket-edges": dict(chain=[("top_k", 500), ("top_p", 0.9, 0), ("dist", 24)], rounds=10),
    "huge-logits": dict(chain=[("top_k", 300), ("temp", 0.0), ("dist", 25)], rounds=3),
    "penalties": dict(chain=[("penalties", 16, 1.3, 0.5, 0.5), ("top_k", 40), ("temp", 0.7), ("dist", 26)],
                      rounds=10, accepted=[3, 3, 7, 9, 3, 100, 250, 499, 7, 0, 0, 0, 42, 3, 5, 6, 7, 8, 300]),
    "dist-flat": dict(chain=[("dist", 4294967294)], rounds=200),
    "dist-one-then-many": dict(chain=[("dist", 0)], rounds=40),
    "default-chain": dict(chain=[("top_k", 40), ("top_p", 0.9, 0), ("min_p", 0.05, 0), ("temp", 0.8), ("dist", 27)],
                          rounds=50),
}


def make_sampler(spec: tuple, n_vocab: int, accepted: list[int]):
    lc = llama_cpp
    name, *args = spec
    if name == "penalties":
        sampler = lc.llama_sampler_init_penalties(n_vocab, *args)
        for token in accepted:
            lc.llama_sampler_accept(sampler, token)
        return sampler
    make = {"top_k": lc.llama_sampler_init_top_k, "top_p": lc.llama_sampler_init_top_p,
            "min_p": lc.llama_sampler_init_min_p, "temp": lc.llama_sampler_init_temp,
            "dist": lc.llama_sampler_init_dist}[name]
    return make(*args)


def token_data_array(logits: np.ndarray):
    data = (llama_cpp.llama_token_data * len(logits))()
    for i, value in enumerate(logits):
        data[i].id, data[i].logit, data[i].p = i, float(value), 0.0
    array = llama_cpp.llama_token_data_array(data=ctypes.cast(data, llama_cpp.llama_token_data_p),
                                             size=len(logits), selected=-1, sorted=False)
    return data, array


def read_array(array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = array.size
    ids = np.array([array.data[i].id for i in range(n)], np.int32)
    logits = np.array([array.data[i].logit for i in range(n)], np.float32)
    p = np.array([array.data[i].p for i in range(n)], np.float32)
    return ids, logits, p


def run_step_case(name: str, spec: dict, inputs: list[np.ndarray], arrays: dict) -> dict:
    n_vocab = max(len(x) for x in inputs)
    samplers = [make_sampler(s, n_vocab, spec.get("accepted", [])) for s in spec["chain"]]
    rounds = []
    for r in range(spec["rounds"]):
        data, array = token_data_array(inputs[r % len(inputs)])
        states = []
        for j, sampler in enumerate(samplers):
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            # every step of the first round of each input; only the draws after that
            if r < len(inputs):
                ids, logits, p = read_array(array)
                key = f"{name}/{r}/{j}"
                arrays[f"{key}/ids"], arrays[f"{key}/logits"], arrays[f"{key}/p"] = ids, logits, p
                states.append(dict(size=int(array.size), sorted=bool(array.sorted), selected=int(array.selected)))
        selected = int(array.selected)
        rounds.append(dict(selected=selected, id=int(array.data[selected].id) if selected >= 0 else None,
                           **({"states": states} if states else {})))
    for sampler in samplers:
        llama_cpp.llama_sampler_free(sampler)
    return dict(chain=[list(s) for s in spec["chain"]], accepted=spec.get("accepted", []),
                n_inputs=len(inputs), rounds=rounds)


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("smollm2", type=Path, help="SmolLM2's GGUF (refllm pull smollm2)")
    ap.add_argument("gemma3", type=Path, help="Gemma-3's GGUF (refllm pull gemma3)")
    args = ap.parse_args()
    paths = {"smollm2": args.smollm2, "gemma3": args.gemma3}

    # the samplers on crafted logits
    inputs = crafted_inputs()
    arrays: dict[str, np.ndarray] = {}
    steps = {}
    for name, spec in STEP_CASES.items():
        for k, row in enumerate(inputs[name]):
            arrays[f"{name}/input{k}"] = row
        steps[name] = run_step_case(name, spec, inputs[name], arrays)
        print(f"steps {name}: {[r['id'] for r in steps[name]['rounds']][:10]}", flush=True)
    tmp = HERE / "steps.npz.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(HERE / "steps.npz")
    (HERE / "steps.json.tmp").write_text(json.dumps({"cases": steps}, indent=1) + "\n", encoding="utf-8")
    (HERE / "steps.json.tmp").replace(HERE / "steps.json")

    # whole replies
    sequences = {}
    for case in cases():
        result = run_case(paths[case["model"]], case)
        sequences[case["name"]] = result
        print(f"{case['name']}: {result['ids']} {result['text']!r}", flush=True)
    prompts = {f"{m}-{p}": sequences[next(n for n in sequences if n.startswith(f"{m}-{p}-"))]["prompt_ids"]
               for m in PROMPTS for p in PROMPTS[m]}
    last_row_same = {key: last_row_check(paths[key.split("-")[0]], ids) for key, ids in prompts.items()}
    (HERE / "sequences.json.tmp").write_text(json.dumps({"cases": sequences}, indent=1, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    (HERE / "sequences.json.tmp").replace(HERE / "sequences.json")

    provenance = {
        "made_by": "golden/sampling/make_golden.py",
        "command": "python golden/sampling/make_golden.py " + " ".join(p.name for p in paths.values()),
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "models": {name: {"file": path.name, "sha256": sha256_file(path)} for name, path in paths.items()},
        "llama_args": SETTINGS,
        "flash_attn": "off (SETTINGS), as golden/logits",
        "eval": "a fresh Llama(model_path, **llama_args) per case; Llama.eval(prompt ids) (one batch: n_batch "
                "512), then Llama.eval([token]) for each drawn token; the chain samples the last output's "
                "logits (llama_sampler_sample(chain, ctx, -1))",
        "prompt_last_row_same_with_logits_all_off": last_row_same,
        "chain": "llama_sampler_chain_init(default params) + penalties(n_vocab, repeat_last_n, repeat_penalty, "
                 "frequency_penalty, presence_penalty), dry(multiplier 0: empty), top_n_sigma(-1: empty), "
                 "top_k(top_k), typical(1.0: empty), top_p(top_p, 0), min_p(min_p, 0), xtc(0, 0.5: empty), "
                 "temp_ext(temperature, 0, 1), dist(seed): common_sampler_init's order with ollama's values; "
                 "prompt ids accepted before the first draw",
        "common_values": COMMON,
        "n_tokens": N_TOKENS,
        "option_sets": {name: {**DEFAULTS, **changes} for name, changes in OPTION_SETS.items()},
        "seeds": list(SEEDS),
        "greedy_seed": GREEDY_SEED,
        "steps": "STEP_CASES of this script on crafted_inputs() (numpy PCG64(20261205)); llama_sampler_apply of "
                 "each sampler in turn on a llama_token_data_array (ids 0..n-1, p 0, unsorted); samplers made "
                 "with llama_sampler_init_top_k/top_p/min_p/temp/dist/penalties (penalties: the 'accepted' "
                 "ids accepted first, n_vocab = the input's length)",
        "files_sha256": {name: sha256_file(HERE / name) for name in ("sequences.json", "steps.json", "steps.npz")},
    }
    (HERE / "provenance.json.tmp").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    (HERE / "provenance.json.tmp").replace(HERE / "provenance.json")


if __name__ == "__main__":
    main()
