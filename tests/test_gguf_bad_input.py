"""Every kind of broken GGUF raises FormatError naming the offset and what was expected."""

import pytest
from gguf_bytes import ARRAY, STRING, build_gguf, small_model

import refllm
from refllm.formats import FormatError, LFSPointerError, TruncatedError, UnknownTypeError


def _open(tmp_path, data, **kw):
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    return refllm.open(path, **kw)


def _fails(tmp_path, data, offset, match=None, error=FormatError):
    with pytest.raises(error) as e:
        _open(tmp_path, data)
    assert e.value.offset == offset, str(e.value)
    assert e.value.expected, "every error says what was expected"
    if match:
        assert match in str(e.value)
    return e.value


def _header_cuts():
    built = small_model()
    marks = sorted(set(v for k, v in built.offsets.items() if not k.startswith("data")))
    cuts = sorted(set(marks + [m + 1 for m in marks] + [m + 3 for m in marks]))
    return built, [c for c in cuts if c < built.offsets["data"]]


_BUILT, _CUTS = _header_cuts()


@pytest.mark.parametrize("cut", _CUTS)
def test_truncation_at_every_header_field(tmp_path, cut):
    with pytest.raises(TruncatedError) as e:
        _open(tmp_path, _BUILT.data[:cut])
    marks = set(_BUILT.offsets.values())
    assert e.value.offset <= cut and e.value.offset in marks, (cut, str(e.value))


def test_truncated_tensor_data(tmp_path):
    built = small_model()
    last = built.offsets["data:blk.0.attn_q.weight"]
    e = _fails(tmp_path, built.data[:last + 100], last, "blk.0.attn_q.weight")
    assert "past" in str(e) or "needs bytes" in str(e)


def test_empty_file(tmp_path):
    _fails(tmp_path, b"", 0, "empty", TruncatedError)


def test_bad_magic(tmp_path):
    _fails(tmp_path, b"GGUG" + bytes(60), 0, "bad magic")


@pytest.mark.parametrize("head,what", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-LFS pointer"),
    (b"PK\x03\x04" + bytes(40), "zip"),
    (b"<!DOCTYPE html><html>", "HTML"),
    ((120).to_bytes(8, "little") + b'{"__metadata__":{}}', "safetensors"),
])
def test_not_a_model_is_named(tmp_path, head, what):
    e = _fails(tmp_path, head, 0, what, LFSPointerError if "LFS" in what else FormatError)
    assert isinstance(e, FormatError)


@pytest.mark.parametrize("version", [0, 4, 0x0400])
def test_unsupported_version(tmp_path, version):
    built = small_model()
    built.patch("version", "<I", version)
    _fails(tmp_path, built.data, 4, "unsupported GGUF version")


def test_unknown_value_type(tmp_path):
    built = small_model()
    built.patch("kv:llama.block_count:type", "<I", 13)
    _fails(tmp_path, built.data, built.offsets["kv:llama.block_count:type"], "unknown value type 13",
           UnknownTypeError)


def test_unknown_array_element_type(tmp_path):
    built = small_model()
    built.patch("kv:tokenizer.ggml.scores:elem", "<I", 99)
    _fails(tmp_path, built.data, built.offsets["kv:tokenizer.ggml.scores:elem"], "unknown value type 99",
           UnknownTypeError)


def test_string_longer_than_the_file(tmp_path):
    built = small_model()
    built.patch("kv:general.name:len", "<Q", 1 << 60)
    _fails(tmp_path, built.data, built.offsets["kv:general.name:len"], "length 1152921504606846976")


def test_key_longer_than_the_file(tmp_path):
    built = small_model()
    built.patch("kv:general.name", "<Q", 2**64 - 1)
    _fails(tmp_path, built.data, built.offsets["kv:general.name"], "bytes remain")


@pytest.mark.parametrize("field", ["kv:tokenizer.ggml.tokens:count", "kv:tokenizer.ggml.scores:count",
                                   "kv:nested:count"])
def test_array_count_larger_than_the_file(tmp_path, field):
    built = small_model()
    built.patch(field, "<Q", 1 << 50)
    _fails(tmp_path, built.data, built.offsets[field], "count 1125899906842624")


def test_string_in_array_longer_than_the_file(tmp_path):
    built = small_model()
    built.patch("kv:tokenizer.ggml.tokens[3]:len", "<Q", 1 << 40)
    _fails(tmp_path, built.data, built.offsets["kv:tokenizer.ggml.tokens[3]:len"], "string 3")


@pytest.mark.parametrize("field", ["n_kv", "n_tensors"])
def test_header_counts_larger_than_the_file(tmp_path, field):
    built = small_model()
    built.patch(field, "<Q", 1 << 40)
    e = _fails(tmp_path, built.data, built.offsets[field])
    assert "count" in str(e)


def test_tensor_name_longer_than_the_file(tmp_path):
    built = small_model()
    built.patch("ti:output_norm.weight", "<Q", 1 << 33)
    _fails(tmp_path, built.data, built.offsets["ti:output_norm.weight"], "name of tensor 1")


def test_more_than_four_dims(tmp_path):
    built = small_model()
    built.patch("ti:output_norm.weight:n_dims", "<I", 5)
    _fails(tmp_path, built.data, built.offsets["ti:output_norm.weight:n_dims"], "5 dimensions")


@pytest.mark.parametrize("value,shown", [(0, "is 0"), (2**64 - 1, "is -1"), (2**63, "is -9223372036854775808")])
def test_zero_or_negative_dim(tmp_path, value, shown):
    built = small_model()
    built.patch("ti:token_embd.weight:dim1", "<Q", value)
    _fails(tmp_path, built.data, built.offsets["ti:token_embd.weight:dim1"], shown)


def test_overflowing_dims(tmp_path):
    built = small_model()
    built.patch("ti:token_embd.weight:dim0", "<Q", 2**40)
    built.patch("ti:token_embd.weight:dim1", "<Q", 2**40)
    _fails(tmp_path, built.data, built.offsets["ti:token_embd.weight:n_dims"], "elements")


def test_unknown_tensor_type(tmp_path):
    built = small_model()
    built.patch("ti:output_norm.weight:type", "<I", 77)
    _fails(tmp_path, built.data, built.offsets["ti:output_norm.weight"], "unknown ggml type id 77")


def test_removed_tensor_type_is_named_not_unknown(tmp_path):
    built = small_model()
    built.patch("ti:blk.0.attn_q.weight:type", "<I", 31)
    _fails(tmp_path, built.data, built.offsets["ti:blk.0.attn_q.weight"], "Q4_0_4_4")


def test_row_not_a_whole_number_of_blocks(tmp_path):
    built = small_model()
    built.patch("ti:blk.0.attn_q.weight:dim0", "<Q", 48)   # Q8_0 blocks are 32 wide
    _fails(tmp_path, built.data, built.offsets["ti:blk.0.attn_q.weight"], "not a whole number")


def test_overlapping_tensors(tmp_path):
    built = small_model()
    built.patch("ti:output_norm.weight:offset", "<Q", 1024)   # inside token_embd (1280 bytes at 0)
    _fails(tmp_path, built.data, built.offsets["data"] + 1024, "inside 'token_embd.weight'")


def test_misaligned_tensor(tmp_path):
    built = small_model()
    start = built.offsets["data:blk.0.attn_q.weight"] - built.offsets["data"]
    built.patch("ti:blk.0.attn_q.weight:offset", "<Q", start + 4)
    _fails(tmp_path, built.data, built.offsets["data"] + start + 4, "32-byte boundary")


def test_duplicate_tensor_names(tmp_path):
    import numpy as np
    data = np.zeros(32, "<f4").tobytes()
    built = build_gguf([], [("a", 0, (32,), data), ("a", 0, (32,), data)])
    # The builder keeps the last offset recorded under a name: the second record, the duplicate.
    _fails(tmp_path, built.data, built.offsets["ti:a"], "appears more than once")


def test_duplicate_keys(tmp_path):
    built = build_gguf([("k", 4, 1), ("k", 4, 2)])
    _fails(tmp_path, built.data, built.offsets["kv:k"], "duplicate metadata key 'k'")   # the second record


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_not_a_power_of_two(tmp_path, alignment):
    built = build_gguf([("general.alignment", 4, alignment)])
    _fails(tmp_path, built.data, built.offsets["kv:general.alignment"], "power of two")


def test_alignment_of_the_wrong_type(tmp_path):
    built = build_gguf([("general.alignment", 10, 32)])
    _fails(tmp_path, built.data, built.offsets["kv:general.alignment"], "UINT64")


def test_custom_alignment_is_honoured(tmp_path):
    import numpy as np
    built = build_gguf([("general.alignment", 4, 64)], [("a", 0, (3,), np.ones(3, "<f4").tobytes()),
                                                        ("b", 0, (3,), np.ones(3, "<f4").tobytes())],
                       alignment=64)
    m = _open(tmp_path, built.data)
    assert m.alignment == 64 and m.data_offset % 64 == 0 and m.tensor("b").offset % 64 == 0


def test_arrays_nested_too_deep(tmp_path):
    value = (4, [1])
    for _ in range(20):
        value = (ARRAY, [value])
    built = build_gguf([("deep", ARRAY, value)])
    with pytest.raises(FormatError, match="nested deeper"):
        _open(tmp_path, built.data)


def test_gap_is_reported_but_not_fatal(tmp_path):
    import numpy as np
    built = build_gguf([], [("a", 0, (8,), np.ones(8, "<f4").tobytes()),
                            ("b", 0, (8,), np.ones(8, "<f4").tobytes())])
    built.patch("ti:b:offset", "<Q", 64)                       # 32 unused bytes after a's padding
    data = built.data + bytes(64)
    m = _open(tmp_path, data)
    assert [p.check for p in m.problems] == ["gap"] and not m.problems[0].fatal


def test_lenient_open_collects_every_problem(tmp_path):
    built = small_model()
    built.patch("ti:output_norm.weight:type", "<I", 77)
    built.patch("ti:blk.0.attn_q.weight:dim0", "<Q", 48)
    m = _open(tmp_path, built.data, strict=False)
    assert {p.check for p in m.problems} == {"unknown-type", "row-size"}
    assert all(p.fatal for p in m.problems)


def test_string_value_from_v1_uses_32bit_lengths(tmp_path):
    built = small_model(version=1)
    built.patch("kv:general.name:len", "<I", 0xFFFFFFF0)
    _fails(tmp_path, built.data, built.offsets["kv:general.name:len"], "bytes remain")


def test_strings_are_kept_even_when_not_utf8(tmp_path):
    built = build_gguf([("k", STRING, b"\xff")])
    assert _open(tmp_path, built.data).metadata["k"] == "\udcff"
