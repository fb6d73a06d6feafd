import io
import os
import threading

import gguf
import numpy as np
import pytest
from gguf_bytes import small_model

import refllm
from refllm.formats import FormatError, NestedArray, StringArray, ValueType, read_model


def _write(tmp_path, built, name="m.gguf"):
    path = tmp_path / name
    path.write_bytes(bytes(built.data))
    return path


def _check_small_model(m, built):
    assert m.container == "gguf"
    md = m.metadata
    assert list(md)[:3] == ["general.architecture", "general.name", "llama.block_count"]  # file order
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 2
    assert m.kv_types["llama.block_count"] == ValueType.UINT32
    assert md["llama.rope.freq_base"] == 10000.0 and md["some.bool"] is True
    assert md["some.i64"] == -5 and md["some.f64"] == 0.25
    assert isinstance(md["tokenizer.ggml.tokens"], StringArray)
    assert list(md["tokenizer.ggml.tokens"]) == ["<unk>", "<s>", "</s>", "a", "héllo"]
    assert md["tokenizer.ggml.scores"].dtype == np.float32
    assert md["tokenizer.ggml.scores"].tolist() == [0.0, -1.0, -2.0, -3.5, 4.25]
    nested = md["nested"]
    assert isinstance(nested, NestedArray) and len(nested) == 3
    assert nested[0].tolist() == [1, 2, 3] and nested[0].dtype == np.uint32
    assert list(nested[1]) == ["x", "yz"] and isinstance(nested[2], NestedArray) and not nested[2]
    assert [t.name for t in m.tensors] == ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"]
    emb, norm, q = m.tensors
    assert emb.shape == (5, 64) and emb.ne == (64, 5) and emb.type_name == "F32" and emb.nbytes == 1280
    assert norm.shape == (64,) and norm.type_name == "F16" and norm.nbytes == 128
    assert q.shape == (64, 64) and q.type_name == "Q8_0" and q.nbytes == 64 * 2 * 34
    for t in m.tensors:
        assert t.offset == built.offsets[f"data:{t.name}"]
        assert bytes(m.tensor_bytes(t.name)) == bytes(built.data[t.offset:t.offset + t.nbytes])
        assert t.info_offset == built.offsets[f"ti:{t.name}"]
    assert m.data_offset == built.offsets["data"]
    assert not m.problems


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_version_little_endian(tmp_path, version):
    built = small_model(version=version)
    m = refllm.open(_write(tmp_path, built))
    assert m.version == version and m.byteorder == "<"
    _check_small_model(m, built)


@pytest.mark.parametrize("magic", [b"GGUF", b"FUGG"])
def test_big_endian_by_version_check_or_swapped_magic(tmp_path, magic):
    built = small_model(byteorder=">", magic=magic)
    m = refllm.open(_write(tmp_path, built))
    assert m.byteorder == ">" and m.version == 3
    _check_small_model(m, built)
    # numeric arrays come back in native order, with the same values
    assert m.metadata["tokenizer.ggml.scores"].dtype.isnative


def test_big_endian_file_written_by_gguf_py(tmp_path):
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("llama.block_count", 7)
    w.add_array("tokenizer.ggml.scores", [1.5, -2.0])
    w.add_tensor("x", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = refllm.open(path)
    assert m.byteorder == ">" and m.metadata["llama.block_count"] == 7
    assert m.metadata["tokenizer.ggml.scores"].tolist() == [1.5, -2.0]
    x = m.tensor("x")
    assert x.shape == (3, 4)
    assert m.tensor_bytes("x").view(">f4").tolist() == list(range(12))


def test_gguf_py_reads_the_same_as_refllm(tmp_path):
    built = small_model()
    path = _write(tmp_path, built)
    m, r = refllm.open(path), gguf.GGUFReader(path)
    keys = [k for k in r.fields if not k.startswith("GGUF.") and k != "nested"]
    for k in keys:
        expected, mine = r.fields[k].contents(), m.metadata[k]
        assert (list(mine) if isinstance(mine, (np.ndarray, StringArray)) else mine) == expected, k
    for t, rt in zip(m.tensors, r.tensors):
        assert (t.name, t.ggml_type, t.ne, t.offset, t.nbytes) == (
            rt.name, int(rt.tensor_type), tuple(int(d) for d in rt.shape), int(rt.data_offset), int(rt.n_bytes))


def test_read_header_from_a_pipe():
    built = small_model()
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w, bytes(built.data)), os.close(w)))
    t.start()
    with os.fdopen(r, "rb") as f:
        m = read_model(f)
    t.join()
    assert m.file_size is None and len(m.tensors) == 3
    assert list(m.metadata["tokenizer.ggml.tokens"])[-1] == "héllo"
    with pytest.raises(FormatError, match="regular file"):
        m.tensor_bytes("token_embd.weight")


def test_open_accepts_a_file_object_and_a_pathlike(tmp_path):
    built = small_model()
    path = _write(tmp_path, built)
    with open(path, "rb") as f:
        assert len(refllm.open(f).tensors) == 3
    assert refllm.open(str(path)).metadata["general.name"] == "tiny"
    assert read_model(io.BytesIO(bytes(built.data))).metadata["general.name"] == "tiny"


def test_tensor_bytes_is_a_zero_copy_view(tmp_path):
    m = refllm.open(_write(tmp_path, small_model()))
    view = m.tensor_bytes("blk.0.attn_q.weight")
    assert view.dtype == np.uint8 and not view.flags.writeable
    assert isinstance(view.base, np.memmap) or isinstance(view, np.memmap)


def test_invalid_utf8_survives_a_round_trip(tmp_path):
    from gguf_bytes import STRING, build_gguf
    built = build_gguf([("k", STRING, b"ok\xff\xfe"), ("arr", 9, (STRING, [b"\x80", b"fine"]))])
    m = refllm.open(_write(tmp_path, built))
    assert m.metadata["k"].encode("utf-8", "surrogateescape") == b"ok\xff\xfe"
    assert m.metadata["arr"].raw(0) == b"\x80"
