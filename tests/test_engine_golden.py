"""refllm's logits against llama.cpp's (golden/logits, made by golden/logits/make_golden.py with
llama-cpp-python 0.3.36: batched, f16 KV cache, flash attention off but in the *-fa cases; the
*-nb1 cases token by token, n_batch 1, and refllm evaluates those token by token too).

Every case runs in both numerics modes:

- f32, the float32 reference. llama.cpp moves by mean KLD 2e-3 to 9e-3 against itself (n_batch
  1, or an f32 KV cache; provenance.json records it per case), so f32 must land within mean KLD
  2e-2 and NMSE 2e-2 of it, and pick the same top-1 token wherever llama.cpp's top-1 leads its
  runner-up by at least 1.0 logit.
- ggml, which reproduces llama.cpp's CPU arithmetic: the issue's floor (mean KLD 1e-4, NMSE
  1e-5, the same top-1 wherever llama.cpp leads by 0.05), and beyond it llama.cpp's logits bit
  for bit: its stored float32 top-32 logits exactly, at every position, and its float16 rows
  exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.engine.session import Session, prompt_logits
from refllm.engine.transformer import Transformer
from refllm.formats.files import sha256_file
from refllm.tools.compare import per_position_coarse_kld, per_position_kld
from refllm.tools.synth import write_synthetic_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "logits"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
CASES = sorted(PROVENANCE["cases"])
SPEC = json.loads((GOLDEN / "cases.json").read_text(encoding="utf-8"))["cases"]
REAL_FIXTURES = {"smollm2": "smollm2_path", "gemma3": "gemma3_path"}

# numerics mode -> (max mean KLD, max NMSE, the top-1 margin from which the top-1 must agree)
FLOORS = {"f32": (2e-2, 2e-2, 1.0), "ggml": (1e-4, 1e-5, 0.05)}

_logits: dict[tuple[str, str], np.ndarray] = {}


def case_model_path(request, tmp_path_factory, name: str) -> str:
    """The model file the case was made with: a fetched real model, or the synthetic model
    rebuilt by refllm.tools.synth (checked against the sha256 llama.cpp saw)."""
    case = PROVENANCE["cases"][name]
    if "synth" in case:
        args = dict(case["synth"])
        path = write_synthetic_model(tmp_path_factory.mktemp("synth") / f"{name}.gguf", args.pop("arch"), **args)
    else:
        path = request.getfixturevalue(REAL_FIXTURES[SPEC[name]["model"]])
    assert sha256_file(path) == case["sha256"], f"{name}: not the model file the golden logits came from"
    return str(path)


@pytest.fixture(params=[(name, mode) for mode in FLOORS for name in CASES], ids=lambda p: f"{p[0]}-{p[1]}")
def golden_case(request, tmp_path_factory):
    """(case name, numerics mode, llama.cpp's stored logits, refllm's logits [n, n_vocab] for
    the same ids, evaluated as llama.cpp did: in one batch, or n_batch at a time where the case
    names one)."""
    name, mode = request.param
    golden = dict(np.load(GOLDEN / f"{name}.npz"))
    if (name, mode) not in _logits:
        model = refllm.open(case_model_path(request, tmp_path_factory, name))
        tokens = golden["tokens"].tolist()
        # llama.cpp's settings: its context size and threads, flash attention as the case ran it
        net = Transformer(model, mode, flash_attn=SPEC[name].get("flash_attn", False),
                          threads=PROVENANCE["llama_args"]["n_threads"])
        _logits[name, mode] = prompt_logits(net, tokens, n_batch=SPEC[name].get("n_batch"),
                                            n_ctx=PROVENANCE["llama_args"]["n_ctx"])
    return name, mode, golden, _logits[name, mode]


def test_mean_kld_and_nmse_within_the_floor(golden_case):
    name, mode, golden, ours = golden_case
    max_kld, max_nmse, _ = FLOORS[mode]
    positions = golden["positions"]
    ref = golden["rows"].astype(np.float32)                                  # [m, n_vocab]
    test = ours[positions]
    kld = per_position_kld(ref, test).mean()
    nmse = np.sum((test.astype(np.float64) - ref) ** 2) / np.sum((ref - ref.astype(np.float64).mean()) ** 2)
    assert kld <= max_kld, f"{name} ({mode}): mean KLD {kld:.3e}"
    assert nmse <= max_nmse, f"{name} ({mode}): NMSE {nmse:.3e}"


def test_coarse_kld_at_every_position_within_the_floor(golden_case):
    """Full rows are stored at a few positions only (Gemma-3: 5); every position has llama.cpp's
    top-32 logits and its log-sum-exp. Lumping all other tokens into one outcome gives a KLD
    that can only be smaller than the true one (coarse-graining never increases KL), so it must
    be within the floor at every position too."""
    name, mode, golden, ours = golden_case
    coarse = per_position_coarse_kld(golden["topk_ids"], golden["topk_logits"], golden["logsumexp"], ours)
    assert coarse.mean() <= FLOORS[mode][0], f"{name} ({mode}): mean coarse KLD {coarse.mean():.3e}"


def test_same_top1_wherever_llama_cpp_is_sure(golden_case):
    name, mode, golden, ours = golden_case
    margin = golden["topk_logits"][:, 0] - golden["topk_logits"][:, 1]      # [n]
    sure = np.flatnonzero(margin >= FLOORS[mode][2])
    differ = sure[ours[sure].argmax(axis=1) != golden["topk_ids"][sure, 0]]
    assert sure.size > 0
    assert differ.size == 0, f"{name} ({mode}): top-1 differs at positions {differ.tolist()} (margins {margin[differ]})"


def test_ggml_numerics_give_llama_cpp_bits(golden_case):
    """--numerics ggml's logits are llama.cpp's own: the stored top-32 float32 logits of every
    position exactly, and the stored float16 rows exactly once rounded the same way."""
    name, mode, golden, ours = golden_case
    if mode != "ggml":
        pytest.skip("only --numerics ggml reproduces llama.cpp's bits")
    ids = golden["topk_ids"]
    top = np.take_along_axis(ours, ids, axis=1)                              # [n, 32]
    differ = np.flatnonzero(np.any(top != golden["topk_logits"], axis=1))
    assert differ.size == 0, f"{name}: top-32 logits differ from llama.cpp's at positions {differ.tolist()}"
    rows = ours[golden["positions"]].astype(np.float16)
    assert np.array_equal(rows, golden["rows"]), f"{name}: float16 rows differ from llama.cpp's"


def test_prompt_logits_token_by_token_agree_with_one_batch(tmp_path):
    """prompt_logits in one batch is Session.evaluate on an empty cache; fed n_batch at a time
    (1: token by token, as golden/logits' *-nb1 cases) it gives the same logits but for float32
    rounding."""
    net = Transformer(refllm.open(write_synthetic_model(tmp_path / "m.gguf", "qwen3", seed=9)))
    tokens = [381, 7, 300, 12, 12, 99, 150, 3, 42, 201, 5]
    batched = prompt_logits(net, tokens)
    assert np.array_equal(batched, Session(net, n_ctx=len(tokens)).evaluate(tokens, all_logits=True))
    for n_batch in (1, 4):
        split = prompt_logits(net, tokens, n_batch=n_batch)
        assert split.shape == batched.shape
        np.testing.assert_allclose(split, batched, rtol=0, atol=1e-4 * np.abs(batched).max())
    with pytest.raises(ValueError, match="n_batch"):
        prompt_logits(net, tokens, n_batch=0)


def test_golden_files_are_what_provenance_says():
    for name in CASES:
        entry = PROVENANCE["cases"][name]
        assert sha256_file(GOLDEN / f"{name}.npz") == entry["npz_sha256"], name
        # made with the case's n_batch (entries without one ran with llama_args' n_batch)
        n_batch = entry.get("n_batch", PROVENANCE["llama_args"]["n_batch"])
        assert n_batch == SPEC[name].get("n_batch", PROVENANCE["llama_args"]["n_batch"]), name
        with np.load(GOLDEN / f"{name}.npz") as golden:
            assert golden["tokens"].shape == (entry["n_tokens"],)
            assert golden["rows"].shape == (entry["stored_positions"], entry["n_vocab"])
            if "same_ids_as" in SPEC[name]:
                assert golden["tokens"].tolist() == SPEC[SPEC[name]["same_ids_as"]]["ids"], name
