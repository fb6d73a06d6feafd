"""llama.cpp's tokenizer-suite GGUFs (vocab only, many tokenizer kinds) decode as gguf-py decodes them.

gguf-py needs minutes for the biggest vocabularies (gemma-4, command-r: 256k tokens), so the
comparison runs on the 11 files up to 2.5 MB, which already cover SPM, BPE and WPM; the others are
opened and checked for structural problems only.
"""

import gguf
import numpy as np

import refllm
from refllm.formats.values import ValueType

GGUF_PY_LIMIT = 2_500_000


def test_vocab_files_decode_like_gguf_py(vocab_dir):
    paths = sorted(vocab_dir.glob("ggml-vocab-*.gguf"))
    assert len(paths) == 19
    compared = 0
    for path in paths:
        m = refllm.open(path)
        assert not m.problems and len(m.metadata["tokenizer.ggml.tokens"]) > 0, path.name
        if path.stat().st_size > GGUF_PY_LIMIT:
            continue
        r = gguf.GGUFReader(path)
        fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
        assert list(m.metadata) == list(fields), path.name
        for key, field in fields.items():
            mine = m.metadata[key]
            if m.kv_types[key] == ValueType.ARRAY:
                mine = mine.tolist() if isinstance(mine, np.ndarray) else list(mine)
            assert mine == field.contents(), (path.name, key)
        assert [(t.name, t.ggml_type, t.offset, t.nbytes) for t in m.tensors] == [
            (t.name, int(t.tensor_type), int(t.data_offset), int(t.n_bytes)) for t in r.tensors], path.name
        compared += 1
    assert compared == 11
    models = {refllm.open(p).metadata["tokenizer.ggml.model"] for p in paths}
    assert {"llama", "gpt2", "bert"} <= models


def test_suite_is_complete(vocab_dir):
    inputs = sorted(p.name[:-4] for p in vocab_dir.glob("ggml-vocab-*.gguf.inp"))
    outputs = sorted(p.name[:-4] for p in vocab_dir.glob("ggml-vocab-*.gguf.out"))
    assert inputs == outputs and len(inputs) == 15
    assert all((vocab_dir / name).exists() for name in inputs)
