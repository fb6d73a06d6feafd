"""refllm's sampler against llama.cpp's (golden/sampling, made by golden/sampling/make_golden.py
with llama-cpp-python 0.3.36):

- steps: each of llama.cpp's samplers on crafted logits (ties, bucket boundaries, huge values,
  1 to 5000 candidates): after every step the same candidates in the same order with the same
  float32 logits and probabilities, bit for bit, the same size, sorted flag and selected index,
  and over repeated rounds the same draws (the mt19937 stream).
- sequences: whole seeded replies of both real models. refllm's Transformer under
  `--numerics ggml` evaluates each prompt as llama.cpp did (one batch, all logits; then each
  drawn token alone; flash attention off, as there) and refllm's Sampler draws, token for
  token, the ids llama.cpp's sampler chain drew. Every logits row is first checked against the
  sha256 llama.cpp's had, so that a failure says whether the logits or the draw differ.
- the CLI: `refllm generate --seed S` prints one golden case's reply.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.engine.prompt import prompt_tokens
from refllm.engine.sampling import Sampler, SamplingOptions
from refllm.engine.transformer import Transformer
from refllm.formats.files import sha256_file
from refllm.ggml_cpu import sampler as steps
from refllm.ggml_cpu.libstdcxx import MT19937
from refllm.tokenizer import Tokenizer

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "sampling"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
SEQUENCES = json.loads((GOLDEN / "sequences.json").read_text(encoding="utf-8"))["cases"]
STEPS = json.loads((GOLDEN / "steps.json").read_text(encoding="utf-8"))["cases"]
REAL_FIXTURES = {"smollm2": "smollm2_path", "gemma3": "gemma3_path"}
N_CTX = PROVENANCE["llama_args"]["n_ctx"]
N_THREADS = PROVENANCE["llama_args"]["n_threads"]
assert PROVENANCE["llama_args"]["flash_attn"] is False


def test_golden_files_are_what_provenance_says():
    for name, digest in PROVENANCE["files_sha256"].items():
        assert sha256_file(GOLDEN / name) == digest, name


# ------------------------------------------------------------------------------------------
# The samplers one at a time
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def step_arrays():
    with np.load(GOLDEN / "steps.npz") as arrays:
        return dict(arrays)


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def apply_step(cur: steps.Candidates, spec: list, rng: MT19937 | None, accepted: list[int], n_vocab: int) -> int:
    """One llama.cpp sampler of a steps case on cur; dist's selected position, else -1."""
    name, *args = spec
    if name == "penalties":
        last_n, repeat, freq, present = args
        counts = np.bincount(np.asarray(accepted[-last_n:], np.int64), minlength=n_vocab)
        steps.penalties(cur, counts, repeat, freq, present)
    elif name == "top_k":
        steps.top_k(cur, *args)
    elif name == "top_p":
        steps.top_p(cur, *args)
    elif name == "min_p":
        steps.min_p(cur, *args)
    elif name == "temp":
        steps.temp(cur, *args)
    elif name == "dist":
        return steps.dist(cur, rng)
    else:
        raise AssertionError(f"unknown sampler {name}")
    return -1


@pytest.mark.parametrize("name", sorted(STEPS))
def test_each_sampler_step_is_llama_cpps(name, step_arrays):
    case = STEPS[name]
    inputs = [step_arrays[f"{name}/input{k}"] for k in range(case["n_inputs"])]
    n_vocab = max(len(x) for x in inputs)
    chain = case["chain"]
    rngs = {j: MT19937(spec[1]) for j, spec in enumerate(chain) if spec[0] == "dist"}
    for r, expected in enumerate(case["rounds"]):
        cur = steps.Candidates.from_logits(inputs[r % len(inputs)])
        selected = -1
        for j, spec in enumerate(chain):
            found = apply_step(cur, spec, rngs.get(j), case["accepted"], n_vocab)
            selected = found if spec[0] == "dist" else selected
            if "states" not in expected:
                continue
            key, state, where = f"{name}/{r}/{j}", expected["states"][j], f"{name}: round {r}, after {spec}"
            assert (cur.size, cur.sorted, selected) == (state["size"], state["sorted"], state["selected"]), where
            for field, ours in (("ids", cur.ids), ("logits", bits(cur.logits)), ("p", bits(cur.p))):
                theirs = step_arrays[f"{key}/{field}"]
                theirs = theirs if field == "ids" else bits(theirs)
                np.testing.assert_array_equal(ours, theirs, err_msg=f"{where}: {field}")
        assert selected == expected["selected"], f"{name}: round {r}"
        assert int(cur.ids[selected]) == expected["id"], f"{name}: round {r}"


def test_the_steps_cover_the_sort_paths():
    """The crafted cases reach each way llama.cpp orders candidates (else a path goes untested)."""
    chains = {name: [spec[0] for spec in case["chain"]] for name, case in STEPS.items()}
    first_rounds = {name: case["rounds"][0]["states"] for name, case in STEPS.items()}
    # top_k by std::partial_sort (k <= 128) and by buckets (k > 128); top_p's four ways in
    top_k = {name: case["chain"][0][1] for name, case in STEPS.items() if chains[name][0] == "top_k"}
    assert min(top_k.values()) <= steps.PARTIAL_SORT_HEAP_MAX < max(top_k.values())
    top_p_first = [name for name in STEPS if chains[name][0] == "top_p"]
    sizes = {len(np.load(GOLDEN / "steps.npz")[f"{name}/input0"]) for name in top_p_first}
    assert min(sizes) <= steps.PARTIAL_SORT_HEAP_MAX < max(s for s in sizes if s <= steps.TOP_P_SORT_ALL)
    assert max(sizes) > steps.TOP_P_SORT_ALL
    # top_p past its first 256 (adaptive, then all) and within them
    kept = {name: first_rounds[name][0]["size"] for name in top_p_first}
    assert any(n > steps.TOP_P_BUCKET_FIRST for n in kept.values())
    assert any(n <= steps.TOP_P_BUCKET_FIRST for name, n in kept.items() if "adaptive" in name)
    # min_p unsorted (keeps order), sorted, and its fallback; greedy on unsorted and sorted
    assert {"min-p-unsorted", "min-p-sorted", "min-p-min-keep-fallback", "greedy-unsorted-ties",
            "greedy-after-top-k"} <= set(STEPS)


# ------------------------------------------------------------------------------------------
# Whole replies of the real models
# ------------------------------------------------------------------------------------------

class PromptRunner:
    """One model under --numerics ggml; each prompt evaluated once, its cache copied per case."""

    def __init__(self, path: Path):
        # golden/sampling ran llama.cpp with flash attention off, on 2 threads
        self.transformer = Transformer(refllm.open(path), "ggml", flash_attn=False, threads=N_THREADS)
        self.prompts: dict[tuple[int, ...], tuple] = {}

    def after_prompt(self, ids: list[int]):
        """A fresh cache holding the prompt (evaluated in one batch, every row's logits, as
        llama.cpp's logits_all run), and the prompt's last logits row."""
        key = tuple(ids)
        if key not in self.prompts:
            cache = self.transformer.new_cache(N_CTX)
            logits = self.transformer.forward(ids, cache, all_logits=True)
            self.prompts[key] = (cache, logits[-1])
        cache, last = self.prompts[key]
        return copy.deepcopy(cache), last


@pytest.fixture(scope="module")
def runners(request):
    made = {}

    def runner(model: str) -> PromptRunner:
        if model not in made:
            path = request.getfixturevalue(REAL_FIXTURES[model])
            assert sha256_file(path) == PROVENANCE["models"][model]["sha256"], \
                f"{model}: not the model file the golden replies came from"
            made[model] = PromptRunner(path)
        return made[model]
    return runner


def row_sha256_16(logits: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(logits, np.float32).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_seeded_reply_is_llama_cpps_token_for_token(name, runners):
    case = SEQUENCES[name]
    runner = runners(case["model"])
    cache, logits = runner.after_prompt(case["prompt_ids"])
    sampler = Sampler(SamplingOptions(**case["options"], seed=case["seed"]), runner.transformer.config.n_vocab, N_CTX)
    history = list(case["prompt_ids"])
    for step, expected in enumerate(case["ids"]):
        assert row_sha256_16(logits) == case["logits_sha256_16"][step], \
            f"{name}: refllm's logits differ from llama.cpp's at step {step} (position {len(history) - 1})"
        token = sampler.sample(logits, history)
        assert token == expected, f"{name}: step {step} drew {token}, llama.cpp drew {expected}"
        history.append(token)
        if step + 1 < len(case["ids"]):
            logits = runner.transformer.forward([token], cache)[0]


def test_the_golden_replies_cover_the_options():
    """Every option set with three seeds (greedy: one), on both models and both prompts, and the
    draws really differ between seeds (else a seed-blind sampler would pass)."""
    sets = PROVENANCE["option_sets"]
    for model in REAL_FIXTURES:
        for set_name in sets:
            mine = [c for c in SEQUENCES.values() if c["model"] == model and c["option_set"] == set_name]
            assert {c["prompt"] for c in mine} == {"chat", "prose"}
            if set_name != "greedy":
                assert {c["seed"] for c in mine} == set(PROVENANCE["seeds"])
                chat = [tuple(c["ids"]) for c in mine if c["prompt"] == "chat"]
                assert len(set(chat)) == len(chat), (model, set_name)


# ------------------------------------------------------------------------------------------
# The CLI
# ------------------------------------------------------------------------------------------

CLI_CASE = "smollm2-chat-defaults-42"
OPTION_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                "repeat_last_n": "--repeat-last-n", "repeat_penalty": "--repeat-penalty",
                "presence_penalty": "--presence-penalty", "frequency_penalty": "--frequency-penalty"}


def test_cli_generate_with_a_seed_prints_llama_cpps_reply(smollm2_path, capsys):
    case = SEQUENCES[CLI_CASE]
    question = case["prompt_info"]["messages"][0]["content"]
    # generate's chat prompt is the one llama.cpp evaluated
    model = refllm.open(smollm2_path)
    assert prompt_tokens(Tokenizer.from_model(model), model.metadata, question, None, False) == case["prompt_ids"]
    flags = [str(a) for key, flag in OPTION_FLAGS.items() for a in (flag, case["options"][key])]
    with pytest.raises(SystemExit) as e:
        main(["generate", str(smollm2_path), question, "--numerics", "ggml", "--flash-attn", "off",
              "--seed", str(case["seed"]), "--ctx", str(N_CTX), "-n", str(len(case["ids"])), *flags])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    assert not case["stopped_at_eog"] and len(case["ids"]) == PROVENANCE["n_tokens"]
    assert out.out == case["text"] + "\n"
