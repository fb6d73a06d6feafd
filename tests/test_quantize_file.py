"""`refllm quantize` against llama-quantize: golden/quant_files/hashes.json holds, for two float32
sources and every FTYPE, the sha256 of the file llama.cpp's `llama_model_quantize` wrote and of
each of its tensors (golden/quant_files/make_golden.py, llama-cpp-python 0.3.36, no imatrix).
The tests rebuild the sources with refllm, quantize them, and compare every hash."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.formats.files import sha256_file
from refllm.tools.quantize_model import QuantizeFileError, plan_types, quantize_model, tensor_order_key
from refllm.tools.synth import write_synthetic_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "quant_files"
HASHES = json.loads((GOLDEN / "hashes.json").read_text(encoding="utf-8"))
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
FTYPES = list(PROVENANCE["ftypes"])


@pytest.fixture(scope="module")
def sources(tmp_path_factory, smollm2_path):
    """The two float32 sources, rebuilt as golden/quant_files/write_sources.py builds them."""
    sys.path.insert(0, str(GOLDEN))
    try:
        from write_sources import write_sources
    finally:
        sys.path.remove(str(GOLDEN))
    paths = write_sources(tmp_path_factory.mktemp("quant-sources"))
    for name, path in paths.items():
        assert sha256_file(path) == PROVENANCE["sources_sha256"][name], f"{name}: not the source llama.cpp quantized"
    return paths


@pytest.mark.parametrize("source", sorted(HASHES))
@pytest.mark.parametrize("ftype", FTYPES)
def test_plan_is_llama_quantizes_order_and_types(sources, source, ftype):
    plans = plan_types(refllm.open(sources[source]), ftype)
    want = [(t["name"], t["type"]) for t in HASHES[source][ftype]["tensors"]]
    assert [(p.name, p.target_type) for p in plans] == want


@pytest.mark.parametrize("source", sorted(HASHES))
@pytest.mark.parametrize("ftype", FTYPES)
def test_file_is_byte_identical_to_llama_quantize(sources, source, ftype, tmp_path):
    out = tmp_path / "out.gguf"
    quantize_model(sources[source], out, ftype)
    model = refllm.open(out)
    got = {t.name: hashlib.sha256(model.tensor_bytes(t.name).tobytes()).hexdigest() for t in model.tensors}
    for entry in HASHES[source][ftype]["tensors"]:
        assert got[entry["name"]] == entry["sha256"], f"{entry['name']} ({entry['type']}) differs"
    keys = list(model.metadata)
    assert keys[-2:] == ["general.quantization_version", "general.file_type"]
    assert sha256_file(out) == HASHES[source][ftype]["sha256"]


def test_tensor_order_is_block_number_then_name():
    names = ["output.weight", "blk.10.attn_q.weight", "blk.2.ffn_up.weight", "token_embd.weight", "blk.2.attn_k.weight"]
    assert sorted(names, key=tensor_order_key) == [
        "output.weight", "token_embd.weight", "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


# -- options and bad input ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    types = {n: "F32" for n in ("token_embd.weight", "output.weight", "attn_q.weight", "attn_k.weight",
                                "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                                "ffn_down.weight")}
    return write_synthetic_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "llama", n_layer=2,
                                 weight_types=types)


def test_pure_and_type_options(tiny_f32):
    model = refllm.open(tiny_f32)
    pure = {p.name: p.target_type for p in plan_types(model, "Q4_K_M", pure=True)}
    assert pure["output.weight"] == "Q4_K" and pure["blk.0.attn_v.weight"] == "Q4_K"
    mixed = {p.name: p.target_type for p in plan_types(model, "Q4_K_M")}
    assert mixed["output.weight"] == "Q6_K" and mixed["blk.1.attn_v.weight"] == "Q6_K"   # use_more_bits(1, 2)
    assert mixed["blk.0.attn_v.weight"] == "Q4_K"
    chosen = {p.name: p.target_type for p in plan_types(model, "Q4_K_M", output_type="Q8_0",
                                                          token_embedding_type="Q4_0")}
    assert chosen["output.weight"] == "Q8_0" and chosen["token_embd.weight"] == "Q4_0"
    assert all(t == "F32" for n, t in mixed.items() if n.endswith("_norm.weight"))


def test_a_quantized_input_needs_allow_requantize(smollm2_path, tmp_path):
    with pytest.raises(QuantizeFileError, match="allow-requantize"):
        quantize_model(smollm2_path, tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()


def test_nan_names_the_tensor_and_row(tmp_path):
    from refllm.formats import GGUFWriter
    w = GGUFWriter()
    w.add_kv("general.architecture", "llama")
    w.add_kv("llama.block_count", 1, refllm.formats.ValueType.UINT32)
    bad = np.zeros((4, 64), np.float32)
    bad[2, 5] = np.nan
    w.add_tensor("blk.0.ffn_up.weight", "F32", (4, 64), bad)
    w.write(tmp_path / "nan.gguf")
    with pytest.raises(QuantizeFileError, match=r"blk\.0\.ffn_up\.weight: row 2"):
        quantize_model(tmp_path / "nan.gguf", tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_quantize_and_its_errors(tiny_f32, tmp_path, capsys):
    code, _, err = run(["quantize", tiny_f32, tmp_path / "q.gguf", "q8_0"], capsys)
    assert code == 0 and "Q8_0" in err
    assert refllm.open(tmp_path / "q.gguf").tensor("blk.0.ffn_up.weight").type_name == "Q8_0"
    for args, message in ((["Q9_9"], "unknown FTYPE"),
                          (["Q4_K_M", "--output-tensor-type", "IQ2_XXS"], "output tensor type"),
                          (["Q8_0", "--threads", "0"], "--threads")):
        code, out, err = run(["quantize", tiny_f32, tmp_path / "z.gguf"] + args, capsys)
        assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "z.gguf").exists()
    code, _, err = run(["quantize", tiny_f32, tiny_f32, "Q8_0"], capsys)
    assert code == 2 and "refusing to overwrite the input" in err
