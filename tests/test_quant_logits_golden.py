"""golden/quant_logits: --numerics ggml gives llama.cpp's logits bit for bit on whole models of the
types refllm cannot quantize (IQ*, TQ*, MXFP4, NVFP4) and on tied Q4_0 / Q4_K.

golden/quant_logits/provenance.json holds the sha256 of llama.cpp's logits (every position, one
hash per row) for two-layer synthetic llamas whose matrices are random blocks of one type,
evaluated in one batch (nb512), in batches of 10 (nb10) and token by token (nb1). The models are
rebuilt here by write_models.py (their sha256 checked), and refllm's logits are hashed the same
way.

Where token_embd is also the output matrix and its type is one llama.cpp repacks (Q4_0, Q4_K,
IQ4_NL, MXFP4; rows whole 8s), llama.cpp multiplies a repacked second copy of it (its log:
"repack tensor token_embd.weight"); refllm's engine routes every matrix it multiplies by as a
MUL_MAT weight, so the tied cases (TIED_REPACKED) give the bits too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.engine.session import prompt_logits
from refllm.engine.transformer import Transformer

GOLDEN = Path(__file__).parent.parent / "golden" / "quant_logits"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
CASES = tuple(PROVENANCE["cases"])
MODES = tuple(PROVENANCE["modes"])
# the cases whose tied output llama.cpp repacked (provenance: its log)
TIED_REPACKED = tuple(c for c, e in PROVENANCE["cases"].items()
                      if any("repack tensor token_embd.weight" in line for line in e["modes"]["nb512"]["repack_log"]))


def write_models_module():
    spec = importlib.util.spec_from_file_location("golden_quant_logits_write_models", GOLDEN / "write_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    """Every case's model, rebuilt once for this module."""
    write_models = write_models_module()
    root = tmp_path_factory.mktemp("quant-logits")
    return {case: write_models.write_model(case, root) for case in CASES}


@cache
def _transformer(path: Path) -> Transformer:
    return Transformer(refllm.open(path), "ggml", flash_attn=False)   # as the golden ran


def row_hashes(case: str, mode: str, path: Path) -> list[str]:
    """sha256 of each row of refllm's --numerics ggml logits, evaluated as the mode says."""
    entry = PROVENANCE["cases"][case]
    n_batch = PROVENANCE["modes"][mode]
    logits = prompt_logits(_transformer(path), entry["ids"], n_batch=None if n_batch >= len(entry["ids"]) else n_batch)
    logits = np.ascontiguousarray(logits, "<f4")
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in logits]


def test_cases_and_write_models_agree():
    write_models = write_models_module()
    assert CASES == tuple(write_models.CASES)
    assert set(TIED_REPACKED) == {"IQ4_NL", "MXFP4", "Q4_0", "Q4_K"}          # not IQ4_NL-v388: 388 rows


@pytest.mark.parametrize("case", CASES)
def test_models_rebuild_to_the_sha256_llama_cpp_saw(model_paths, case):
    path = model_paths[case]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PROVENANCE["cases"][case]["model_sha256"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_logits_are_llama_cpp_bits(model_paths, case, mode):
    ours = row_hashes(case, mode, model_paths[case])
    theirs = PROVENANCE["cases"][case]["modes"][mode]["row_sha256"]
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same == len(theirs), f"{case} {mode}: {same} of {len(theirs)} rows are llama.cpp's bits"

