"""refllm.open and `refllm inspect blob --json` agree with gguf-py on both real models."""

import json
import math

import gguf
import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.formats.values import ValueType


def _gguf_py_fields(reader):
    return {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_open_agrees_with_gguf_py(real_model_path):
    m = refllm.open(real_model_path)
    r = gguf.GGUFReader(real_model_path)
    fields = _gguf_py_fields(r)
    assert list(m.metadata) == list(fields)
    for key, field in fields.items():
        assert m.kv_types[key] == field.types[0], key
        mine = m.metadata[key]
        if m.kv_types[key] == ValueType.ARRAY:
            assert len(mine) == len(field.data), key
            mine = mine.tolist() if isinstance(mine, np.ndarray) else list(mine)
        assert mine == field.contents(), key
    assert len(m.tensors) == len(r.tensors)
    for t, rt in zip(m.tensors, r.tensors):
        assert t.name == rt.name
        assert t.ggml_type == int(rt.tensor_type)
        assert t.ne == tuple(int(d) for d in rt.shape)
        assert t.offset == int(rt.data_offset)
        assert t.nbytes == int(rt.n_bytes)
        assert t.n_elements == int(rt.n_elements)
    assert not m.problems


def test_inspect_json_agrees_with_gguf_py(real_model_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["inspect", "blob", str(real_model_path), "--json", "--array-limit", "0"])
    assert e.value.code == 0
    report = json.loads(capsys.readouterr().out)
    r = gguf.GGUFReader(real_model_path)
    fields = _gguf_py_fields(r)
    assert [row["key"] for row in report["metadata"]] == list(fields)
    for row in report["metadata"]:
        expected = fields[row["key"]].contents()
        assert row["count"] == (len(expected) if isinstance(expected, list) else None)
        if isinstance(expected, list):
            assert len(row["value"]) == len(expected) and not row["truncated"]
            assert all(_same(a, b) for a, b in zip(row["value"], expected)), row["key"]
        else:
            assert _same(row["value"], expected), row["key"]
    assert [(t["name"], t["type_id"], t["ne"], t["offset"], t["bytes"]) for t in report["tensors"]] == [
        (rt.name, int(rt.tensor_type), [int(d) for d in rt.shape], int(rt.data_offset), int(rt.n_bytes))
        for rt in r.tensors]
    layout = report["layout"]
    assert layout["data_offset"] == r.data_offset and layout["n_tensors"] == len(r.tensors)
    assert all(c["ok"] for c in report["checks"]) and report["problems"] == []


def test_model_summaries(smollm2_path, gemma3_path):
    from refllm.formats.summary import memory_estimate, model_summary, tokenizer_summary
    smol, gemma = refllm.open(smollm2_path), refllm.open(gemma3_path)
    s = model_summary(smol)
    assert (s["architecture"], s["layers"], s["heads"], s["kv_heads"], s["head_dim"]) == ("llama", 30, 9, 3, 64)
    assert s["file_type_name"] == "Q4_1" and s["parameters_human"] == "134.52M"
    g = model_summary(gemma)
    assert (g["architecture"], g["layers"], g["heads"], g["kv_heads"], g["head_dim"]) == ("gemma3", 18, 4, 1, 256)
    assert g["file_type_name"] == "Q4_K_M" and g["rope_base"] == 1_000_000.0
    t = tokenizer_summary(gemma)
    assert (t["model"], t["vocab_size"], t["special_tokens"]["bos"]["text"]) == ("llama", 262144, "<bos>")
    # f16 KV: 18 layers x 4096 cells x 1 kv head x (256 + 256) x 2 bytes
    assert memory_estimate(gemma, 4096)["kv_cache_bytes"] == 18 * 4096 * 512 * 2
