"""Synthetic models (refllm.tools.synth): every architecture writes a file refllm reads back
whole, with its config, a working tokenizer and all five weight types; the bytes depend on the
seed alone; impossible shapes are one clear error. The golden synthetic files rebuild to the
sha256 their provenance records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.engine.config import ARCHITECTURES, ModelConfig
from refllm.errors import RefllmError
from refllm.kernels.quantize import quantizable_types
from refllm.tokenizer import Tokenizer
from refllm.tools.synth import (
    DEFAULT_WEIGHT_TYPES,
    FILE_TYPES,
    MATRIX_TYPES,
    SPECIAL_TOKENS,
    SynthError,
    bpe_vocabulary,
    byte_to_unicode,
    llama3_rope_divisors,
    write_synthetic_model,
)

FIVE_TYPES = {"F32", "F16", "Q8_0", "Q4_0", "Q4_K"}
GOLDEN = Path(__file__).parent.parent / "golden" / "logits" / "provenance.json"

# arch -> the options that exercise what is particular to it
VARIANTS = {
    "llama": dict(rope="rope_freqs"),
    "qwen2": dict(),
    "qwen3": dict(tied_output=True),
    "gemma3": dict(n_layer=4, n_swa=8, swa_pattern=3, head_dim=128, tied_output=True),
}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """arch -> path of a model written with VARIANTS[arch], seed 1."""
    root = tmp_path_factory.mktemp("synth")
    return {arch: write_synthetic_model(root / f"{arch}.gguf", arch, seed=1, **kw) for arch, kw in VARIANTS.items()}


def test_every_architecture_has_a_variant():
    assert set(VARIANTS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(VARIANTS))
def test_reads_back_with_config_and_all_five_types(written, arch):
    model = refllm.open(written[arch])                       # strict: any structural problem raises
    assert model.problems == []
    config = ModelConfig.from_model(model)
    assert config.arch == arch and config.n_vocab == 384 and config.n_embd == 256
    assert {t.type_name for t in model.tensors} == FIVE_TYPES
    assert model.metadata["tokenizer.ggml.model"] == "gpt2"


def test_config_sees_each_variant(written):
    configs = {arch: ModelConfig.from_model(refllm.open(p)) for arch, p in written.items()}
    assert configs["llama"].has_rope_freqs and not configs["llama"].tied_output
    assert configs["qwen3"].tied_output and configs["gemma3"].tied_output
    gemma = configs["gemma3"]
    assert (gemma.n_swa, gemma.swa_layers, gemma.head_dim) == (8, (True, True, False, True), 128)
    qwen2 = refllm.open(written["qwen2"])
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= {t.name for t in qwen2.tensors}
    assert not any(t.name.endswith(".bias") for t in refllm.open(written["qwen3"]).tensors)


def test_linear_rope_scaling(tmp_path):
    path = write_synthetic_model(tmp_path / "m.gguf", "llama", rope="linear", rope_factor=2.0)
    model = refllm.open(path)
    assert model.metadata["llama.rope.scaling.type"] == "linear"
    assert ModelConfig.from_model(model).rope_scale == 0.5


def test_rope_divisors_are_llama3_like():
    d = llama3_rope_divisors(64, 10000.0)
    assert d.shape == (32,) and d.dtype == np.float32
    assert np.all(d >= 1) and np.all(np.diff(d) >= 0)          # high frequencies kept, low ones divided
    assert d[0] == 1 and d[-1] == 8 and np.any((d > 1) & (d < 8))


@pytest.mark.parametrize("arch", sorted(VARIANTS))
def test_tokenizer_round_trips_ascii(written, arch):
    tok = Tokenizer.from_model(refllm.open(written[arch]))
    bos = tok.vocab.bos_id
    assert tok.vocab.text(bos) == SPECIAL_TOKENS[0] and tok.vocab.eos_id == bos
    for text in ["Hello world. The river town woke early!", "def f(x):\n\treturn x * 2\n", "  spaces  and 123"]:
        ids = tok.tokenize(text, add_special=True)
        assert ids[0] == bos and all(0 <= i < 384 for i in ids)
        assert tok.detokenize(ids, remove_special=True) == text
    # merges make multi-character tokens
    assert len(tok.tokenize(" the river", add_special=False)) < len(" the river")
    im_start = tok.vocab.token_to_id["<|im_start|>"]
    assert tok.tokenize("<|im_start|>", add_special=False, parse_special=True) == [im_start]


def test_vocabulary_layout():
    tokens, types, merges = bpe_vocabulary(300)
    assert len(tokens) == len(types) == 300 and len(set(tokens)) == 300
    assert tokens[:256] == byte_to_unicode() and len(set(tokens[:256])) == 256
    assert tokens[-3:] == list(SPECIAL_TOKENS) and types[-3:] == [3, 3, 3] and set(types[:-3]) == {1}
    for merge in merges:                                      # every merge joins two known tokens
        left, right = merge.split(" ")
        assert left in tokens and right in tokens and left + right in tokens


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_synthetic_model(tmp_path / "a.gguf", "qwen3", seed=7)
    b = write_synthetic_model(tmp_path / "b.gguf", "qwen3", seed=7)
    c = write_synthetic_model(tmp_path / "c.gguf", "qwen3", seed=8)
    assert sha256(a) == sha256(b) != sha256(c)


@pytest.mark.parametrize("arch", sorted(VARIANTS))
def test_weights_are_finite_with_the_intended_spread(written, arch):
    model = refllm.open(written[arch])
    for t in model.tensors:
        w = refllm.dequantize(model.tensor_bytes(t.name), t.ggml_type, t.shape)
        assert np.all(np.isfinite(w)), t.name
        if t.name == "rope_freqs.weight":
            continue
        if len(t.shape) == 1:
            centre, spread = (0.0, 0.2) if t.name.endswith(".bias") else (1.0, 0.1)
            assert abs(w.mean() - centre) < 0.1 and 0.5 * spread < w.std() < 1.5 * spread, t.name
        else:
            base = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
            want = 3 / np.sqrt(256) if base in ("token_embd.weight", "output.weight") else 1 / np.sqrt(t.shape[-1])
            assert abs(w.mean()) < 0.1 * want and 0.8 * want < w.std() < 1.25 * want, (t.name, w.std(), want)


def test_weight_types_override(tmp_path):
    path = write_synthetic_model(tmp_path / "m.gguf", "llama", weight_types={"attn_q.weight": "F32"})
    assert refllm.open(path).tensor("blk.0.attn_q.weight").type_name == "F32"


def test_every_type_refllm_quantizes_can_be_a_matrix():
    assert set(MATRIX_TYPES) == {"F32", *quantizable_types()} == set(FILE_TYPES)


@pytest.mark.parametrize("kind", sorted(set(MATRIX_TYPES) - FIVE_TYPES))
def test_each_quantized_type_opens_and_decodes(tmp_path, kind):
    """A model whose matrices are all `kind` (quantized by refllm.quantize) opens strictly, has that
    type for every matrix and that general.file_type, and decodes to finite values of the spread
    the module docstring promises; the same seed gives the same bytes."""
    types = {name: kind for name in DEFAULT_WEIGHT_TYPES}
    path = write_synthetic_model(tmp_path / "m.gguf", "llama", seed=3, n_layer=1, weight_types=types)
    model = refllm.open(path)
    assert model.problems == []
    assert model.metadata["general.file_type"] == FILE_TYPES[kind]
    matrices = [t for t in model.tensors if len(t.shape) == 2]
    assert len(matrices) == 9 and {t.type_name for t in matrices} == {kind}
    for t in matrices:
        w = refllm.dequantize(model.tensor_bytes(t.name), t.ggml_type, t.shape)
        assert w.shape == tuple(t.shape) and np.all(np.isfinite(w)), t.name
        base = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        want = 3 / np.sqrt(256) if base in ("token_embd.weight", "output.weight") else 1 / np.sqrt(t.shape[-1])
        assert abs(w.mean()) < 0.1 * want and 0.9 * want < w.std() < 1.1 * want, (t.name, w.std(), want)
    again = write_synthetic_model(tmp_path / "again.gguf", "llama", seed=3, n_layer=1, weight_types=types)
    assert sha256(again) == sha256(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="mamba"), "unknown architecture"),
    (dict(n_embd=250), "does not divide n_embd"),
    (dict(n_head=4, n_head_kv=3), "does not divide n_head"),
    (dict(n_ff=384), "not a multiple of Q4_K's block of 256"),
    (dict(n_embd=128, n_head=2, n_head_kv=1), "not a multiple of Q4_K's block of 256"),
    (dict(weight_types={"attn_q.weight": "IQ4_NL"}), "synthetic models use"),
    (dict(weight_types={"attn_norm.weight": "F16"}), "not weight matrices"),
    (dict(rope="yarn"), "unknown rope variant"),
    (dict(arch="qwen2", rope="rope_freqs"), "rope_freqs.weight only for"),
    (dict(arch="llama", n_swa=4), "no sliding window"),
    (dict(arch="qwen2", head_dim=32), r"head_dim \* n_head == n_embd"),
    (dict(n_vocab=259), "too small"),
    (dict(n_vocab=100_000), "too large"),
    (dict(n_layer=0), "n_layer must be between 1 and 2\\^32 - 1"),
    (dict(n_embd=2**32), "n_embd must be between 1 and 2\\^32 - 1"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(n_layer=10**6, n_embd=8192, n_ff=32768), "the model would take .* GB, more than the .* GB free in"),
])
def test_impossible_shapes_are_clear_errors(tmp_path, kwargs, message):
    kwargs = {"arch": "llama", **kwargs}
    with pytest.raises(SynthError, match=message) as err:
        write_synthetic_model(tmp_path / "m.gguf", kwargs.pop("arch"), **kwargs)
    assert isinstance(err.value, RefllmError)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.skipif(not GOLDEN.exists(), reason="golden/logits has not been made")
def test_golden_synthetic_models_rebuild_to_their_sha256(tmp_path):
    cases = json.loads(GOLDEN.read_text())["cases"]
    synthetic = {name: c for name, c in cases.items() if "synth" in c}
    assert synthetic
    for name, case in synthetic.items():
        args = dict(case["synth"])
        path = write_synthetic_model(tmp_path / case["model"], args.pop("arch"), **args)
        assert sha256(path) == case["sha256"], name


def test_cli_synth_writes_a_model_and_rejects_impossible_shapes(tmp_path, capsys):
    import refllm
    from refllm.cli import main
    from refllm.engine.config import ModelConfig

    def run(args):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        return e.value.code, capsys.readouterr().err

    code, _ = run(["synth", "qwen3", "-o", tmp_path / "m.gguf", "--layers", "3", "--type", "q8_0", "--seed", "5"])
    config = ModelConfig.from_model(refllm.open(tmp_path / "m.gguf"))
    assert code == 0 and config.arch == "qwen3" and config.n_layer == 3
    assert refllm.open(tmp_path / "m.gguf").tensor("blk.2.ffn_up.weight").type_name == "Q8_0"
    for args, message in ((["mamba"], "unknown architecture"), (["llama", "--dim", "100"], "head_dim")):
        code, err = run(["synth", args[0], "-o", tmp_path / "bad.gguf"] + args[1:])
        assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "bad.gguf").exists()
