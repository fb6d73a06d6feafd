"""refllm's tokenizers against llama.cpp on the real models: golden/tokens/expected.json holds
the ids llama.cpp (llama-cpp-python 0.3.36, golden/tokens/make_golden.py) gives for every text
of golden/tokens/corpus.json, with add_special on (BOS where the model adds it: Gemma-3 yes,
SmolLM2 no), parse_special off and on. Exact equality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import refllm
from refllm.formats.files import sha256_file
from refllm.tokenizer.tokenizer import Tokenizer

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "tokens"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8")) \
    if (GOLDEN / "expected.json").exists() else None
CORPUS = json.loads((GOLDEN / "corpus.json").read_text(encoding="utf-8"))["texts"]


@pytest.fixture(scope="module", params=["smollm2_path", "gemma3_path"])
def golden_model(request):
    if EXPECTED is None:
        pytest.skip("golden/tokens/expected.json has not been made (golden/tokens/make_golden.py)")
    path = request.getfixturevalue(request.param)
    entry = EXPECTED["models"][Path(path).name]
    assert entry["sha256"] == sha256_file(path), "the golden file was made from another model file"
    return Tokenizer.from_model(refllm.open(path)), entry["cases"]


def test_golden_covers_the_whole_corpus(golden_model):
    _, cases = golden_model
    assert set(cases) == set(CORPUS)


@pytest.mark.parametrize("key", sorted(CORPUS))
@pytest.mark.parametrize("parse_special", [False, True])
def test_ids_equal_llama_cpp(golden_model, key, parse_special):
    tokenizer, cases = golden_model
    expected = cases[key][f"parse_special={parse_special}"]
    assert tokenizer.tokenize(CORPUS[key], add_special=True, parse_special=parse_special) == expected


@pytest.mark.parametrize("parse_special", [False, True])
def test_corpus_round_trips(golden_model, parse_special):
    """Every corpus text comes back from its ids (special-token text too, when it was parsed)."""
    tokenizer, _ = golden_model
    for key, text in CORPUS.items():
        ids = tokenizer.tokenize(text, add_special=True, parse_special=parse_special)
        assert tokenizer.detokenize(ids, remove_special=True, unparse_special=parse_special) == text, key
