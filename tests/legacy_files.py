"""Builds legacy llama files (ggml, ggmf, ggjt) for the tests, from the documented layout.

It shares no code with refllm.formats.ggjt on purpose: it is what the decoder is checked
against. It records the offset and size of every field it writes, so a test can cut a file
inside any field or corrupt exactly one.

    magic, version (not in ggml), 7 × u32 hparams,
    n_vocab × (u32 length, text, f32 score (not in ggml)),
    tensors × (u32 n_dims, u32 name_len, u32 type, n_dims × u32 ne, name,
               ggjt only: zero padding to a multiple of 32 of the file offset, data)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

MAGICS = {"ggml": b"lmgg", "ggmf": b"fmgg", "ggjt": b"tjgg"}
HPARAM_NAMES = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")

# ggml type ids and llama ftypes used by the tests
F32, F16, Q4_0, Q4_1, Q4_2, Q4_3, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q4_K = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12
ALL_F32, MOSTLY_F16, MOSTLY_Q4_0 = 0, 1, 2

# (weights, bytes) per block: today's layouts, and the layouts before ggjt v3 (from the format notes)
TODAY = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
         Q8_0: (32, 34), Q4_K: (256, 144)}
OLD = {Q4_0: (32, 20), Q4_1: (32, 24), Q4_2: (16, 10), Q4_3: (16, 12), Q5_0: (32, 22),
       Q5_1: (32, 24), Q8_0: (32, 36)}

# the tiny llama
N_VOCAB, N_EMBD, N_MULT, N_HEAD, N_LAYER, N_ROT = 300, 64, 32, 4, 2, 16
N_FF = 256                 # what the w1 tensor says; llama's formula would give 192
N_FF_FORMULA = 192


@dataclass
class LegacyTensor:
    name: bytes
    type_id: int
    ne: tuple[int, ...]    # GGML order, innermost first
    data: bytes


@dataclass
class BuiltFile:
    data: bytes
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)   # name -> (offset, size)
    tensor_data: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # source name -> (offset, bytes)

    def offset(self, name: str) -> int:
        return self.fields[name][0]

    def patched(self, name: str, value: int) -> bytes:
        """The file with the u32 field `name` replaced by `value`."""
        at, size = self.fields[name]
        assert size == 4
        return self.data[:at] + struct.pack("<I", value) + self.data[at + 4:]


class _Out:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.fields: dict[str, tuple[int, int]] = {}

    def put(self, name: str, raw: bytes) -> int:
        at = self.size
        self.fields[name] = (at, len(raw))
        self.parts.append(raw)
        self.size += len(raw)
        return at


def build_legacy(container: str, version: int, hparams: dict[str, int],
                 vocab: list[tuple[bytes, float]], tensors: list[LegacyTensor]) -> BuiltFile:
    """A legacy file with these contents. Field names: 'magic', 'version', each hparam name,
    'token {i} length|text|score', 'tensor {k} n_dims|name_len|type|dim {j}|name|padding|data'."""
    out = _Out()
    u32 = lambda v: struct.pack("<I", v)  # noqa: E731
    out.put("magic", MAGICS[container])
    if container != "ggml":
        out.put("version", u32(version))
    for name in HPARAM_NAMES:
        out.put(name, u32(hparams[name]))
    for i, (text, score) in enumerate(vocab):
        out.put(f"token {i} length", u32(len(text)))
        out.put(f"token {i} text", text)
        if container != "ggml":
            out.put(f"token {i} score", struct.pack("<f", score))
    tensor_data = {}
    for k, t in enumerate(tensors):
        out.put(f"tensor {k} n_dims", u32(len(t.ne)))
        out.put(f"tensor {k} name_len", u32(len(t.name)))
        out.put(f"tensor {k} type", u32(t.type_id))
        for j, dim in enumerate(t.ne):
            out.put(f"tensor {k} dim {j}", u32(dim))
        out.put(f"tensor {k} name", t.name)
        if container == "ggjt":
            out.put(f"tensor {k} padding", bytes(-out.size % 32))
        at = out.put(f"tensor {k} data", t.data)
        tensor_data[t.name.decode()] = (at, t.data)
    return BuiltFile(b"".join(out.parts), out.fields, tensor_data)


# -- the tiny llama --------------------------------------------------------------------------------

SPECIAL_TEXTS = [b" \xe2\x81\x87 ", b"\n<s>\n", b"\n</s>\n"]   # what old llama files held at ids 0..2
EXTRA_TOKENS = [b" the", b"a", b"", b"hello world", b"\xff\xfe", b"\xe2\x96\x81x", b"  "]


def tiny_vocab() -> list[tuple[bytes, float]]:
    """300 tokens: the 3 specials, the 256 byte tokens, a few odd ones, then plain words.
    Scores are exact in f32."""
    texts = SPECIAL_TEXTS + [bytes([b]) for b in range(256)] + EXTRA_TOKENS
    texts += [b" w%d" % i for i in range(N_VOCAB - len(texts))]
    return [(text, i * 0.25 - 40.0) for i, text in enumerate(texts)]


def tiny_specs(n_ff: int = N_FF, with_w1: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """(source name, ne) of every tensor of the tiny llama, in the order llama files had them."""
    specs = [("tok_embeddings.weight", (N_EMBD, N_VOCAB)), ("norm.weight", (N_EMBD,)),
             ("output.weight", (N_EMBD, N_VOCAB))]
    for i in range(N_LAYER):
        p = f"layers.{i}."
        specs += [(p + f"attention.{w}.weight", (N_EMBD, N_EMBD)) for w in ("wq", "wk", "wv", "wo")]
        specs += [(p + "feed_forward.w1.weight", (N_EMBD, n_ff)),
                  (p + "feed_forward.w2.weight", (n_ff, N_EMBD)),
                  (p + "feed_forward.w3.weight", (N_EMBD, n_ff)),
                  (p + "attention_norm.weight", (N_EMBD,)), (p + "ffn_norm.weight", (N_EMBD,))]
    if not with_w1:
        specs = [(name, ne) for name, ne in specs if "feed_forward.w1" not in name]
    return specs


def tiny_llama(container: str, version: int, *, quant: dict[str, tuple[int, tuple[int, int]]] | None = None,
               ftype: int = MOSTLY_F16, seed: int = 0, n_ff: int = N_FF, with_w1: bool = True,
               extra: list[tuple[str, tuple[int, ...]]] = ()) -> BuiltFile:
    """The tiny llama: F32 norms, F16 matrices, except the tensors named in `quant`, which get
    (type id, (weights, bytes) per block). Data is random bytes of the right size."""
    rng = np.random.default_rng(seed)
    quant = quant or {}
    tensors = []
    for name, ne in tiny_specs(n_ff, with_w1) + list(extra):
        type_id, (elems, nbytes) = quant.get(name, (F32, TODAY[F32]) if len(ne) == 1 else (F16, TODAY[F16]))
        size = math.prod(ne) // elems * nbytes
        tensors.append(LegacyTensor(name.encode(), type_id, ne, rng.bytes(size)))
    hparams = dict(n_vocab=N_VOCAB, n_embd=N_EMBD, n_mult=N_MULT, n_head=N_HEAD, n_layer=N_LAYER,
                   n_rot=N_ROT, ftype=ftype)
    return build_legacy(container, version, hparams, tiny_vocab(), tensors)


# ggjt v3 quantized: today's Q4_0, Q8_0 and Q4_K (w2's rows are 256 = one Q4_K block)
V3_QUANT = {
    "layers.0.attention.wq.weight": (Q4_0, TODAY[Q4_0]),
    "layers.0.attention.wk.weight": (Q8_0, TODAY[Q8_0]),
    "layers.0.feed_forward.w2.weight": (Q4_K, TODAY[Q4_K]),
    "layers.1.feed_forward.w2.weight": (Q4_K, TODAY[Q4_K]),
    "output.weight": (Q8_0, TODAY[Q8_0]),
}
