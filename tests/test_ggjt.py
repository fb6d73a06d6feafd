"""The legacy llama containers (ggml, ggmf v1, ggjt v1-v3): decoding, conversion to GGUF, bad input.

The files are built by tests/legacy_files.py from the documented layout; no real legacy files
are needed.
"""

from __future__ import annotations

import io
import time

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from legacy_files import (
    F16,
    F32,
    MOSTLY_F16,
    MOSTLY_Q4_0,
    N_EMBD,
    N_FF,
    N_FF_FORMULA,
    N_HEAD,
    N_LAYER,
    N_MULT,
    N_ROT,
    N_VOCAB,
    OLD,
    Q2_K,
    Q4_0,
    Q4_1,
    Q4_2,
    Q4_3,
    Q4_K,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    TODAY,
    V3_QUANT,
    BuiltFile,
    tiny_llama,
    tiny_specs,
    tiny_vocab,
)

from refllm.formats import FormatError, StringArray, TruncatedError, UnknownTypeError, ValueType, open_model, read_model
from refllm.formats.ggjt import convert_legacy, convert_token, gguf_tensor_name

CONTAINERS = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]
LABELS = {("ggml", 0): "ggml", ("ggmf", 1): "ggmf v1", ("ggjt", 1): "ggjt v1", ("ggjt", 2): "ggjt v2",
          ("ggjt", 3): "ggjt v3"}
LAYER_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "attention_norm": "attn_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up", "ffn_norm": "ffn_norm",
}
GGUF_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}
GGUF_NAMES |= {f"layers.{i}.{old}.weight": f"blk.{i}.{new}.weight"
               for i in range(N_LAYER) for old, new in LAYER_NAMES.items()}
KV_ORDER = [
    "general.architecture", "general.name", "general.description", "general.file_type",
    "llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
    "llama.rope.dimension_count", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
]


def build(container: str, version: int, **kw) -> BuiltFile:
    if container == "ggjt" and version == 3 and "quant" not in kw:
        kw = {"quant": V3_QUANT, "ftype": MOSTLY_Q4_0, **kw}
    return tiny_llama(container, version, **kw)


def write(tmp_path, built: BuiltFile, name: str = "tiny.bin"):
    path = tmp_path / name
    path.write_bytes(built.data)
    return path


def decode(data: bytes):
    return read_model(io.BytesIO(data))


def expect_error(data: bytes, offset: int, kind=FormatError) -> FormatError:
    with pytest.raises(kind) as info:
        decode(data)
    assert info.value.offset == offset, str(info.value)
    assert info.value.expected, "every error says what was expected"
    return info.value


# -- decoding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("container,version", CONTAINERS)
def test_header_and_hparams(tmp_path, container, version):
    built = build(container, version)
    model = open_model(write(tmp_path, built))
    assert (model.container, model.version, model.byteorder) == (container, version, "<")
    assert model.alignment == (32 if container == "ggjt" else 1) and model.data_offset == 0
    assert model.file_size == len(built.data)
    assert model.legacy == dict(n_vocab=N_VOCAB, n_embd=N_EMBD, n_mult=N_MULT, n_head=N_HEAD,
                                n_layer=N_LAYER, n_rot=N_ROT,
                                ftype=MOSTLY_Q4_0 if version == 3 else MOSTLY_F16, n_ff=N_FF)
    assert model.problems == []


@pytest.mark.parametrize("container,version", CONTAINERS)
def test_vocab_is_converted_like_llama_cpp(container, version):
    model = decode(build(container, version).data)
    tokens = model.metadata["tokenizer.ggml.tokens"]
    types = model.metadata["tokenizer.ggml.token_type"]
    scores = model.metadata["tokenizer.ggml.scores"]
    assert isinstance(tokens, StringArray) and len(tokens) == N_VOCAB
    assert types.dtype == np.int32 and scores.dtype == np.float32
    raw = list(tokens.raw_items())
    assert raw[:3] == [b"<unk>", b"<s>", b"</s>"] and list(types[:3]) == [2, 3, 3]
    assert raw[3:259] == [b"<0x%02X>" % b for b in range(256)] and set(types[3:259]) == {6}
    #                 b" the"           b"a"  b""  b"hello world"        b"\xff\xfe"  b"\xe2\x96\x81x"   b"  "
    assert raw[259:266] == ["▁the".encode(), b"a", b"", "hello▁world".encode(), b"\xff\xfe",
                            "▁x".encode(), "▁▁".encode()]
    assert list(types[259:266]) == [1, 1, 3, 1, 1, 1, 1]
    assert raw[266] == "▁w0".encode() and set(types[266:]) == {1}
    if container == "ggml":
        assert not scores.any()                      # unversioned ggml has no scores
    else:
        assert scores.tolist() == [score for _, score in tiny_vocab()]


def test_convert_token_rules():
    assert convert_token(0, b"anything") == (b"<unk>", 2)
    assert convert_token(2, b"") == (b"</s>", 3)
    assert convert_token(3, b"\n") == (b"<0x0A>", 6)
    assert convert_token(258, b"\xff") == (b"<0xFF>", 6)
    assert convert_token(259, b"\xff") == (b"\xff", 1)          # past the byte tokens
    assert convert_token(10, b"ab") == (b"ab", 1)
    assert convert_token(300, b"") == (b"", 3)
    assert convert_token(300, b" a b") == ("▁a▁b".encode(), 1)


def test_tensor_names_map_to_gguf():
    for source, name in GGUF_NAMES.items():
        assert gguf_tensor_name(source) == name
    for unmapped in ["rope.freqs", "layers.0.attention.inner_attention.rope.freqs", "norm",
                     "layers.x.ffn_norm.weight", "tok_embeddings.scale", "layers.0.mystery.weight"]:
        assert gguf_tensor_name(unmapped) == unmapped
    assert gguf_tensor_name("layers.12.attention.wq.bias") == "blk.12.attn_q.bias"


@pytest.mark.parametrize("container,version", CONTAINERS)
def test_tensor_table(tmp_path, container, version):
    built = build(container, version)
    model = open_model(write(tmp_path, built))
    specs = tiny_specs()
    assert [t.source_name for t in model.tensors] == [name for name, _ in specs]
    for t, (source, ne) in zip(model.tensors, specs):
        offset, data = built.tensor_data[source]
        assert t.name == GGUF_NAMES[source]
        assert t.ne == ne and t.shape == tuple(reversed(ne))
        assert t.info_offset == built.offset(f"tensor {specs.index((source, ne))} n_dims")
        assert (t.offset, t.nbytes, t.layout) == (offset, len(data), None)
        if container == "ggjt":
            assert t.offset % 32 == 0
        assert model.tensor_bytes(t.name).tobytes() == data
    expected_types = {name: type_id for name, (type_id, _) in V3_QUANT.items()} if version == 3 else {}
    for t, (source, ne) in zip(model.tensors, specs):
        assert t.ggml_type == expected_types.get(source, F32 if len(ne) == 1 else F16)


def test_ggjt_v3_quants_have_todays_sizes():
    model = decode(build("ggjt", 3).data)
    q = {t.source_name: t for t in model.tensors}
    assert q["layers.0.attention.wq.weight"].nbytes == 64 * 64 // 32 * 18          # Q4_0, f16 scale
    assert q["layers.0.attention.wk.weight"].nbytes == 64 * 64 // 32 * 34          # Q8_0, f16 scale
    assert q["layers.0.feed_forward.w2.weight"].nbytes == 256 * 64 // 256 * 144    # Q4_K
    assert all(t.layout is None for t in model.tensors)


def test_metadata_is_the_converter_view(tmp_path):
    model = open_model(write(tmp_path, build("ggjt", 3), "llama-tiny.ggmlv3.q4_0.bin"))
    assert list(model.metadata) == KV_ORDER
    md, types = model.metadata, model.kv_types
    scalars = {
        "general.architecture": "llama", "general.name": "llama-tiny.ggmlv3.q4_0",
        "general.description": "converted from legacy ggjt v3 MOSTLY_Q4_0 format",
        "general.file_type": MOSTLY_Q4_0, "llama.context_length": 2048, "llama.embedding_length": N_EMBD,
        "llama.block_count": N_LAYER, "llama.feed_forward_length": N_FF,
        "llama.rope.dimension_count": N_EMBD // N_HEAD, "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_HEAD,
        "llama.attention.layer_norm_rms_epsilon": float(np.float32(5e-6)),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    for key, value in scalars.items():
        assert md[key] == value, key
        expected_type = {str: ValueType.STRING, float: ValueType.FLOAT32}.get(type(value), ValueType.UINT32)
        assert types[key] == expected_type, key
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"]:
        assert types[key] == ValueType.ARRAY
    hparams_at = 8
    assert model.kv_offsets["llama.block_count"] == hparams_at
    assert model.kv_offsets["tokenizer.ggml.tokens"] == hparams_at + 7 * 4


def test_n_ff_falls_back_to_llamas_formula_without_w1():
    model = decode(build("ggjt", 3, with_w1=False).data)
    assert model.metadata["llama.feed_forward_length"] == N_FF_FORMULA == model.legacy["n_ff"]


def test_stream_without_seek_or_size_decodes_the_same():
    data = build("ggjt", 3).data

    class Pipe:                       # only read(): no seek, no tell, no fileno
        def __init__(self):
            self._f = io.BytesIO(data)

        def read(self, n=-1):
            return self._f.read(n)

    from_pipe, from_bytes = read_model(Pipe()), decode(data)
    assert from_pipe.file_size is None
    assert from_pipe.tensors == from_bytes.tensors


# -- old block layouts ----------------------------------------------------------------------------

def _old_layout_cases():
    """(container, version, {source name: (type id, (weights, bytes) per block, layout name)})."""
    a0, a1 = "layers.0.attention.", "layers.1.attention."
    pre_v2 = {
        a0 + "wq.weight": (Q4_0, OLD[Q4_0], "Q4_0 (f32 scale, old nibble order, 20 bytes per 32 weights)"),
        a0 + "wk.weight": (Q4_1, OLD[Q4_1],
                           "Q4_1 (f32 scale and min, old nibble order, 24 bytes per 32 weights)"),
        a0 + "wv.weight": (Q4_2, OLD[Q4_2], "Q4_2 (f16 scale, removed in ggjt v2, 10 bytes per 16 weights)"),
        a0 + "wo.weight": (Q4_3, OLD[Q4_3],
                           "Q4_3 (f16 scale and min, removed in ggjt v2, 12 bytes per 16 weights)"),
        a1 + "wq.weight": (Q5_0, OLD[Q5_0], "Q5_0 (old bit order, 22 bytes per 32 weights)"),
        a1 + "wk.weight": (Q5_1, OLD[Q5_1], "Q5_1 (old bit order, 24 bytes per 32 weights)"),
        a1 + "wv.weight": (Q8_0, OLD[Q8_0], "Q8_0 (f32 scale, 36 bytes per 32 weights)"),
    }
    v2 = {
        a0 + "wq.weight": (Q4_0, OLD[Q4_0], "Q4_0 (f32 scale, 20 bytes per 32 weights)"),
        a0 + "wk.weight": (Q4_1, OLD[Q4_1], "Q4_1 (f32 scale and min, 24 bytes per 32 weights)"),
        a0 + "wv.weight": (Q8_0, OLD[Q8_0], "Q8_0 (f32 scale, 36 bytes per 32 weights)"),
        a1 + "wq.weight": (Q5_0, TODAY[Q5_0], None),        # ggjt v2's Q5 layouts are today's
        a1 + "wk.weight": (Q5_1, TODAY[Q5_1], None),
    }
    return [("ggml", 0, pre_v2), ("ggmf", 1, pre_v2), ("ggjt", 1, pre_v2), ("ggjt", 2, v2)]


@pytest.mark.parametrize("container,version,quant", _old_layout_cases())
def test_old_layouts_are_named_and_sized(tmp_path, container, version, quant):
    built = build(container, version, quant={k: v[:2] for k, v in quant.items()})
    model = open_model(write(tmp_path, built))
    assert len(model.tensors) == len(tiny_specs())          # the walk reached the end of the file
    for t in model.tensors:
        offset, data = built.tensor_data[t.source_name]
        assert (t.offset, t.nbytes) == (offset, len(data))
        type_id, _, layout = quant.get(t.source_name, (t.ggml_type, None, None))
        assert t.ggml_type == type_id
        assert t.layout == (None if layout is None else f"{LABELS[container, version]} {layout}")
        assert model.tensor_bytes(t.name).tobytes() == data


# -- conversion -----------------------------------------------------------------------------------

def _assert_same_value(vtype, got, want, key):
    if vtype != ValueType.ARRAY:
        assert got == want and type(got) is type(want), key
    elif isinstance(want, StringArray):
        assert list(got.raw_items()) == list(want.raw_items()), key
    else:
        assert got.dtype == want.dtype and np.array_equal(got, want), key


def _assert_gguf_reader_agrees(path, metadata, kv_types, tensors, source):
    """gguf-py's reader sees the same KVs (raw bytes for strings) and tensors as `metadata`/`tensors`."""
    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(metadata)
    for key, f in fields.items():
        vtype, want = kv_types[key], metadata[key]
        assert f.types[0] == vtype, key
        if vtype == ValueType.STRING:
            assert bytes(f.parts[-1]) == want.encode(), key
        elif vtype == ValueType.ARRAY and isinstance(want, StringArray):
            assert f.types[-1] == ValueType.STRING
            assert [bytes(f.parts[i]) for i in f.data] == list(want.raw_items()), key
        elif vtype == ValueType.ARRAY:
            got = np.concatenate([f.parts[i] for i in f.data])
            assert got.dtype == want.dtype and np.array_equal(got, want), key
        else:
            assert f.parts[-1][0] == np.asarray(want, f.parts[-1].dtype), key
    assert [t.name for t in reader.tensors] == [t.name for t in tensors]
    for rt, t in zip(reader.tensors, tensors):
        assert int(rt.tensor_type) == t.ggml_type
        assert tuple(int(d) for d in rt.shape) == t.ne
        assert rt.data.tobytes() == source.tensor_bytes(t.name).tobytes()


@pytest.mark.parametrize("container,version", CONTAINERS)
def test_convert_round_trips_through_both_readers(tmp_path, container, version):
    src = write(tmp_path, build(container, version), "tiny.bin")
    dst = tmp_path / "tiny.gguf"
    source = convert_legacy(src, dst)
    assert source.container == container
    out = open_model(dst)
    assert (out.container, out.version) == ("gguf", 3)
    assert list(out.metadata) == list(source.metadata) == KV_ORDER
    for key, value in source.metadata.items():
        assert out.kv_types[key] == source.kv_types[key], key
        _assert_same_value(source.kv_types[key], out.metadata[key], value, key)
    assert [(t.name, t.ggml_type, t.shape, t.nbytes) for t in out.tensors] == \
        [(t.name, t.ggml_type, t.shape, t.nbytes) for t in source.tensors]
    for t in source.tensors:
        assert out.tensor_bytes(t.name).tobytes() == source.tensor_bytes(t.name).tobytes()
    _assert_gguf_reader_agrees(dst, source.metadata, source.kv_types, source.tensors, source)


def test_convert_applies_the_options(tmp_path):
    src = write(tmp_path, build("ggjt", 3), "tiny.bin")
    dst = tmp_path / "tiny.gguf"
    convert_legacy(src, dst, context_length=4096, eps=1e-5, gqa=2, name="Tiny", description="a tiny llama")
    out = open_model(dst)
    md = out.metadata
    assert list(md) == KV_ORDER
    assert md["general.name"] == "Tiny" and md["general.description"] == "a tiny llama"
    assert md["llama.context_length"] == 4096
    assert md["llama.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-5))
    assert md["llama.attention.head_count"] == N_HEAD and md["llama.attention.head_count_kv"] == N_HEAD // 2
    _assert_gguf_reader_agrees(dst, md, out.kv_types, out.tensors, out)


@pytest.mark.parametrize("container,version,source_name", [
    ("ggjt", 1, "layers.0.attention.wq.weight"), ("ggml", 0, "layers.0.attention.wq.weight"),
    ("ggjt", 2, "layers.0.attention.wv.weight")])
def test_convert_refuses_old_layouts(tmp_path, container, version, source_name):
    quant = {source_name: (Q8_0, OLD[Q8_0])}
    src = write(tmp_path, build(container, version, quant=quant))
    dst = tmp_path / "out.gguf"
    with pytest.raises(FormatError) as info:
        convert_legacy(src, dst)
    assert source_name in str(info.value) and f"{LABELS[container, version]} Q8_0" in str(info.value)
    assert info.value.offset == open_model(src).tensor(gguf_tensor_name(source_name)).info_offset
    assert not dst.exists()


def test_convert_accepts_ggjt_v2_q5(tmp_path):
    quant = {"layers.0.attention.wq.weight": (Q5_0, TODAY[Q5_0]),
             "layers.0.attention.wk.weight": (Q5_1, TODAY[Q5_1])}
    src = write(tmp_path, build("ggjt", 2, quant=quant))
    convert_legacy(src, tmp_path / "out.gguf")
    assert open_model(tmp_path / "out.gguf").tensor("blk.0.attn_q.weight").type_name == "Q5_0"


@pytest.mark.parametrize("gqa", [0, 3, -1, 8])
def test_convert_refuses_a_gqa_that_does_not_divide_n_head(tmp_path, gqa):
    src = write(tmp_path, build("ggjt", 3))
    with pytest.raises(FormatError, match="gqa"):
        convert_legacy(src, tmp_path / "out.gguf", gqa=gqa)
    assert not (tmp_path / "out.gguf").exists()


def test_convert_refuses_gguf_and_non_models(tmp_path):
    src = write(tmp_path, build("ggjt", 3))
    convert_legacy(src, tmp_path / "once.gguf")
    with pytest.raises(FormatError, match="already a GGUF"):
        convert_legacy(tmp_path / "once.gguf", tmp_path / "twice.gguf")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(FormatError, match="bad magic"):
        convert_legacy(tmp_path / "junk.bin", tmp_path / "junk.gguf")
    assert not (tmp_path / "twice.gguf").exists() and not (tmp_path / "junk.gguf").exists()


# -- bad input ------------------------------------------------------------------------------------

V3 = build("ggjt", 3)
GGML = build("ggml", 0)


def _padded_tensor(built: BuiltFile) -> int:
    return next(k for k in range(len(tiny_specs())) if built.fields[f"tensor {k} padding"][1] >= 2)


# (file, field the cut falls inside, field whose offset the error names). A cut early in the
# vocab leaves less than n_vocab entries' minimum size, so the count is refused before any token.
_V3_FIELDS = ["version", "n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype",
              "token 299 length", "token 298 score", "token 299 score", "tensor 0 n_dims",
              "tensor 0 name_len", "tensor 0 type", "tensor 0 dim 0", "tensor 0 dim 1", "tensor 0 data",
              "tensor 20 data"]
_CUTS = [(V3, f, f) for f in _V3_FIELDS]
_CUTS += [(V3, "magic", "magic"), (V3, "token 0 length", "n_vocab"), (V3, "token 100 text", "n_vocab"),
          (V3, "token 290 text", "token 290 length"), (V3, "tensor 0 name", "tensor 0 name_len"),
          (V3, f"tensor {_padded_tensor(V3)} padding", f"tensor {_padded_tensor(V3)} data")]
_CUTS += [(GGML, f, f) for f in ["n_vocab", "ftype", "token 299 length", "tensor 0 type", "tensor 3 dim 0",
                                 "tensor 0 data"]]
_CUTS += [(GGML, "token 0 length", "n_vocab"), (GGML, "token 295 text", "token 295 length"),
          (GGML, "tensor 2 name", "tensor 2 name_len")]


@pytest.mark.parametrize("built,cut_in,named", _CUTS,
                         ids=[f"{'ggml' if b is GGML else 'ggjt3'}-{cut}" for b, cut, _ in _CUTS])
def test_truncated_inside_a_field(built, cut_in, named):
    at, size = built.fields[cut_in]
    expect_error(built.data[:at + size // 2], built.offset(named), TruncatedError)


@pytest.mark.parametrize("container,version", [("ggmf", 2), ("ggmf", 0), ("ggjt", 0), ("ggjt", 4)])
def test_bad_version(container, version):
    built = build(container, 1)
    error = expect_error(built.patched("version", version), 4)
    assert f"version {version}" in str(error)
    assert error.expected == ("version 1" if container == "ggmf" else "version 1, 2 or 3")


@pytest.mark.parametrize("n_dims", [0, 5, 0xFFFFFFFF])
def test_bad_dimension_count(n_dims):
    expect_error(V3.patched("tensor 1 n_dims", n_dims), V3.offset("tensor 1 n_dims"))


@pytest.mark.parametrize("container,version,type_id", [
    ("ggjt", 3, 99), ("ggjt", 3, Q8_1), ("ggjt", 3, Q4_2), ("ggjt", 3, 20), ("ggjt", 2, Q2_K),
    ("ggjt", 2, Q4_2), ("ggml", 0, Q4_K)])
def test_type_unknown_to_the_files_era(container, version, type_id):
    built = build(container, version)
    error = expect_error(built.patched("tensor 4 type", type_id), built.offset("tensor 4 type"),
                         UnknownTypeError)
    assert LABELS[container, version] in str(error)


def test_huge_name_length():
    expect_error(V3.patched("tensor 2 name_len", 0xFFFFFFFF), V3.offset("tensor 2 name_len"),
                 TruncatedError)


def test_huge_token_length():
    expect_error(V3.patched("token 7 length", 0xFFFFFFF0), V3.offset("token 7 length"), TruncatedError)


def test_huge_vocab_count():
    expect_error(V3.patched("n_vocab", 0xFFFFFFFF), V3.offset("n_vocab"), TruncatedError)


@pytest.mark.parametrize("hparam", ["n_head", "n_mult"])
def test_zero_divisor_hparams(hparam):
    expect_error(V3.patched(hparam, 0), V3.offset(hparam))


def test_zero_dimension():
    expect_error(V3.patched("tensor 1 dim 0", 0), V3.offset("tensor 1 dim 0"))


def test_rows_not_whole_blocks():
    # tensor 3 is layers.0.attention.wq, Q4_0: 48 is not a whole number of 32-weight blocks
    at, size = V3.fields["tensor 3 name"]
    assert V3.data[at:at + size] == b"layers.0.attention.wq.weight"
    expect_error(V3.patched("tensor 3 dim 0", 48), V3.offset("tensor 3 dim 0"))


def test_tensor_data_past_the_end():
    # a bigger second dim makes tensor 0's data run past the end of the file
    error = expect_error(V3.patched("tensor 0 dim 1", 10**6), V3.offset("tensor 0 data"), TruncatedError)
    assert "tok_embeddings.weight" in str(error)


# -- fuzzing --------------------------------------------------------------------------------------

# Every byte that is not tensor data: the header, the vocab and the tensor records. Cuts are
# drawn from anywhere, and from up to the last of these bytes, where most fields are.
_STRUCTURE = np.array([i for name, (at, size) in V3.fields.items() if not name.endswith(" data")
                       for i in range(at, at + size)])


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.one_of(st.integers(0, _STRUCTURE[-1] + 1), st.integers(0, len(V3.data))),
       flips=st.lists(st.tuples(st.integers(0, len(_STRUCTURE) - 1), st.integers(1, 255)), max_size=4))
def test_corruption_only_ever_raises_format_error(cut, flips):
    data = bytearray(V3.data)
    for index, mask in flips:
        data[_STRUCTURE[index]] ^= mask
    started = time.perf_counter()
    try:
        model = decode(bytes(data[:cut]))
    except FormatError:
        pass
    else:
        assert all(t.end <= cut for t in model.tensors)
    assert time.perf_counter() - started < 0.5
