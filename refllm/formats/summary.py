"""What a model file says about itself, summarised: tokenizer, model shape, types, memory.

Pure functions over a ModelFile. They read only the header, never tensor data.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from refllm.formats.model import ModelFile
from refllm.formats.values import StringArray
from refllm.type_traits import file_type_name

# tokenizer.ggml.<name>_token_id keys llama.cpp reads ("seperator" is llama.cpp's spelling).
SPECIAL_TOKEN_KEYS = ["bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask"]


def human_count(n: int) -> str:
    """A parameter count the way ollama prints it: 8.0B, 135M, 268.10M, 12K."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if n >= scale:
            x = n / scale
            return f"{x:.{0 if x == int(x) else decimals}f}{suffix}"
    return str(n)


def _count(value: Any) -> int | list[int] | None:
    """A shape number from the metadata: an int, or a per-layer array of ints (one int when all
    layers agree). Anything else, as a malformed file may hold, is None."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.ndim == 1 and value.size:
        values = [int(v) for v in value.tolist()]
        return values[0] if len(set(values)) == 1 else values
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    return bool(value) if isinstance(value, (bool, np.bool_)) else None


def _number(value: Any) -> float | int | None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return value if ok else None


def _tokens(model: ModelFile) -> StringArray | None:
    tokens = model.metadata.get("tokenizer.ggml.tokens")
    return tokens if isinstance(tokens, StringArray) else None


def parameter_count(model: ModelFile) -> int:
    """The sum of elements over all tensors (ollama's definition: norms and embeddings included)."""
    return sum(t.n_elements for t in model.tensors)


def tokenizer_summary(model: ModelFile) -> dict[str, Any] | None:
    """Tokenizer model and pre-tokenizer, vocab size, special token ids (with their text) and
    the add_bos / add_eos / add_space_prefix flags. None when the file has no tokenizer.
    A value of the wrong type (a malformed file) shows as None rather than failing."""
    md = model.metadata
    if "tokenizer.ggml.model" not in md and "tokenizer.ggml.tokens" not in md:
        return None
    tokens = _tokens(model)
    specials = {}
    for name in SPECIAL_TOKEN_KEYS:
        token_id = _count(md.get(f"tokenizer.ggml.{name}_token_id"))
        if isinstance(token_id, int):
            text = tokens[token_id] if tokens is not None and 0 <= token_id < len(tokens) else None
            specials[name] = {"id": token_id, "text": text}
    merges = md.get("tokenizer.ggml.merges")
    return {
        "model": _text(md.get("tokenizer.ggml.model")),
        "pre": _text(md.get("tokenizer.ggml.pre")),
        "vocab_size": None if tokens is None else len(tokens),
        "merges": len(merges) if isinstance(merges, StringArray) else None,
        "special_tokens": specials,
        "add_bos": _flag(md.get("tokenizer.ggml.add_bos_token")),
        "add_eos": _flag(md.get("tokenizer.ggml.add_eos_token")),
        "add_space_prefix": _flag(md.get("tokenizer.ggml.add_space_prefix")),
        "chat_template": isinstance(md.get("tokenizer.chat_template"), str),
    }


def model_summary(model: ModelFile) -> dict[str, Any]:
    """Architecture and shape: parameters, file type, context length, layers, heads, head dim, rope
    base. A value of the wrong type (a malformed file) shows as None rather than failing."""
    md = model.metadata
    n_embd = _count(model.arch_value("embedding_length"))
    n_head = _count(model.arch_value("attention.head_count"))
    n_head_kv = _count(model.arch_value("attention.head_count_kv")) or n_head
    head_dim = _count(model.arch_value("attention.key_length"))
    if head_dim is None and isinstance(n_embd, int) and isinstance(n_head, int) and n_head:
        head_dim = n_embd // n_head
    value_dim = _count(model.arch_value("attention.value_length")) or head_dim
    params = parameter_count(model)
    file_type = _count(md.get("general.file_type"))
    tokens = _tokens(model)
    return {
        "architecture": _text(model.architecture),
        "name": _text(md.get("general.name")),
        "parameters": params,
        "parameters_human": human_count(params),
        "file_type": file_type if isinstance(file_type, int) else None,
        "file_type_name": file_type_name(file_type) if isinstance(file_type, int) else None,
        "context_length": _count(model.arch_value("context_length")),
        "embedding_length": n_embd,
        "feed_forward_length": _count(model.arch_value("feed_forward_length")),
        "layers": _count(model.arch_value("block_count")),
        "heads": n_head,
        "kv_heads": n_head_kv,
        "head_dim": head_dim,
        "value_dim": value_dim,
        "rope_base": _number(model.arch_value("rope.freq_base")),
        "vocab_size": _count(model.arch_value("vocab_size")) or (None if tokens is None else len(tokens)),
    }


def type_histogram(model: ModelFile) -> list[dict[str, Any]]:
    """Per ggml type: tensor count, elements, bytes and share of all tensor bytes; biggest first."""
    tensors, elements, nbytes = Counter(), Counter(), Counter()
    for t in model.tensors:
        tensors[t.type_name] += 1
        elements[t.type_name] += t.n_elements
        nbytes[t.type_name] += t.nbytes or 0
    total = sum(nbytes.values()) or 1
    return [{"type": name, "tensors": tensors[name], "elements": elements[name], "bytes": nbytes[name],
             "percent_bytes": round(100.0 * nbytes[name] / total, 2),
             "bits_per_weight": round(8.0 * nbytes[name] / elements[name], 4) if elements[name] else None}
            for name in sorted(tensors, key=lambda n: -nbytes[n])]


def memory_estimate(model: ModelFile, ctx: int, kv_bytes_per_element: int = 2) -> dict[str, Any] | None:
    """Bytes to run the model at context `ctx`: the weights as stored (mmapped) plus an f16 KV cache
    of ctx cells in every layer: 2 (K and V) x ctx x kv_heads x head_dim x 2 bytes, per layer.
    None when the metadata lacks the shape (no block_count or heads)."""
    s = model_summary(model)
    layers, kv_heads, dk, dv = s["layers"], s["kv_heads"], s["head_dim"], s["value_dim"]
    weights = sum(t.nbytes or 0 for t in model.tensors)
    if not all(isinstance(x, int) and x > 0 for x in (layers, dk, dv)) or kv_heads is None:
        return None
    per_layer_heads = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    kv = sum(ctx * h * (dk + dv) * kv_bytes_per_element for h in per_layer_heads)
    return {"ctx": ctx, "kv_type": "f16", "weights_bytes": weights, "kv_cache_bytes": kv,
            "total_bytes": weights + kv}


def default_ctx(model: ModelFile) -> int:
    """The context `inspect` estimates memory for when none is given: the trained length, capped at 4096."""
    trained = _count(model.arch_value("context_length"))
    return min(trained, 4096) if isinstance(trained, int) and trained > 0 else 4096
