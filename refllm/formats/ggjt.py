"""Legacy GGML containers: the llama files llama.cpp wrote before GGUF (ggml, ggmf, ggjt v1-v3).

Layout (all little-endian, u32 = uint32):

    magic        u32       "ggml" 0x67676d6c, "ggmf" 0x67676d66 or "ggjt" 0x67676a74, so the
                           bytes on disk read b"lmgg", b"fmgg", b"tjgg"
    version      u32       ggmf: 1; ggjt: 1, 2 or 3; the unversioned ggml has no version field
    hparams      7 × u32   n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    n_vocab ×    len: u32, text: len bytes, score: f32 (no score in the unversioned ggml)
      token
    tensors      records until the end of the file, each:
                   n_dims: u32 (1..4), name_len: u32, ggml_type: u32,
                   ne: n_dims × u32 (innermost first), name: name_len bytes,
                   padding (ggjt only) up to the next multiple of 32 of the absolute file offset,
                   data: the tensor's bytes

There is no tensor count and there are no offsets: tensor k is found by walking past the data
of every tensor before it, so the size of each one must be known to read the next record.

Block layouts changed while these containers were current. ggjt v2 reordered the bits of every
quantized type, and ggjt v3 made the Q4_0/Q4_1/Q8_0 scales f16 (the K-quants came after v3).
A tensor in an older layout keeps its old size, and TensorInfo.layout names the layout, because
today's decoders (and GGUF) cannot read it.

The decoded ModelFile is presented in GGUF terms: GGUF tensor names and the metadata that
llama.cpp's convert-llama-ggml-to-gguf.py writes, so convert_legacy only has to write it out.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refllm.formats.errors import FormatError, TruncatedError, UnknownTypeError
from refllm.formats.model import ModelFile, TensorInfo
from refllm.formats.seeker import BufferedSeeker
from refllm.formats.values import StringArray, ValueType
from refllm.formats.writer import GGUFWriter
from refllm.type_traits import GGML_TYPES, type_name

LEGACY_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}
ACCEPTED_VERSIONS = {"ggmf": (1,), "ggjt": (1, 2, 3)}   # ggml has no version field
GGJT_ALIGNMENT = 32
MAX_DIMS = 4
HPARAM_NAMES = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")

_U32 = struct.Struct("<I")
_F32 = struct.Struct("<f")
_READ_PAST = 1 << 20   # tensors up to this size are read past, not seeked past (see _Reader.skip)


# -- block layouts by era ----------------------------------------------------------------------

# Which layouts a file holds depends on its container and version. Three eras matter.
ERAS = {("ggml", 0): "pre-v2", ("ggmf", 1): "pre-v2", ("ggjt", 1): "pre-v2",
        ("ggjt", 2): "v2", ("ggjt", 3): "v3"}


@dataclass(frozen=True)
class OldLayout:
    """A block layout that ggml has since changed: same type id, different bytes."""

    block_elems: int
    block_bytes: int
    change: str        # how it differs from today's layout of the same type id


OLD_LAYOUTS: dict[tuple[str, int], OldLayout] = {
    ("pre-v2", 2): OldLayout(32, 20, "f32 scale, old nibble order"),            # Q4_0
    ("pre-v2", 3): OldLayout(32, 24, "f32 scale and min, old nibble order"),    # Q4_1
    ("pre-v2", 4): OldLayout(16, 10, "f16 scale, removed in ggjt v2"),          # Q4_2
    ("pre-v2", 5): OldLayout(16, 12, "f16 scale and min, removed in ggjt v2"),  # Q4_3
    ("pre-v2", 6): OldLayout(32, 22, "old bit order"),                          # Q5_0
    ("pre-v2", 7): OldLayout(32, 24, "old bit order"),                          # Q5_1
    ("pre-v2", 8): OldLayout(32, 36, "f32 scale"),                              # Q8_0
    ("v2", 2): OldLayout(32, 20, "f32 scale"),                                  # Q4_0
    ("v2", 3): OldLayout(32, 24, "f32 scale and min"),                          # Q4_1
    ("v2", 8): OldLayout(32, 36, "f32 scale"),                                  # Q8_0
}

# The type ids each era stored in today's layout. An id in neither table is unknown to that era
# (Q8_1 and Q8_K were only ever scratch types for dot products, never stored).
TODAYS_LAYOUTS: dict[str, frozenset[int]] = {
    "pre-v2": frozenset({0, 1}),                                    # F32, F16
    "v2": frozenset({0, 1, 6, 7}),                                  # + Q5_0, Q5_1
    "v3": frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14}),     # + Q4_0, Q4_1, Q8_0, Q2_K..Q6_K
}


def file_label(container: str, version: int) -> str:
    """How a legacy container is named in messages: 'ggml' (unversioned) or e.g. 'ggjt v3'."""
    return container if container == "ggml" else f"{container} v{version}"


def _block_layout(era: str, type_id: int) -> tuple[int, int, OldLayout | None] | None:
    """(weights per block, bytes per block, old layout or None) of a type in an era; None if
    the era has no such type."""
    old = OLD_LAYOUTS.get((era, type_id))
    if old is not None:
        return old.block_elems, old.block_bytes, old
    if type_id in TODAYS_LAYOUTS[era]:
        row = GGML_TYPES[type_id]
        return row.block_elems, row.block_bytes, None
    return None


# -- names and tokens, as llama.cpp's converter maps them -------------------------------------

_GLOBAL_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_LAYER_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output", "attention_norm": "attn_norm",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
    "ffn_norm": "ffn_norm",
}
_LAYER_PREFIX = re.compile(r"layers\.([0-9]+)\.(.+)")


def gguf_tensor_name(source_name: str) -> str:
    """The GGUF name of a legacy llama tensor ('layers.3.attention.wq.weight' ->
    'blk.3.attn_q.weight'). A name with no GGUF counterpart comes back unchanged."""
    stem, _, suffix = source_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return source_name
    layer = _LAYER_PREFIX.fullmatch(stem)
    if layer:
        part = _LAYER_NAMES.get(layer[2])
        mapped = f"blk.{layer[1]}.{part}" if part else None
    else:
        mapped = _GLOBAL_NAMES.get(stem)
    return f"{mapped}.{suffix}" if mapped else source_name


# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
_SPECIAL_TOKENS = {0: (b"<unk>", UNKNOWN), 1: (b"<s>", CONTROL), 2: (b"</s>", CONTROL)}
_FIRST_BYTE_TOKEN, _LAST_BYTE_TOKEN = 3, 258     # llama's <0x00>..<0xFF>
_SPACE, _SENTENCEPIECE_SPACE = b" ", "\u2581".encode()


def convert_token(token_id: int, text: bytes) -> tuple[bytes, int]:
    """(text, token type) of a legacy vocab entry as llama.cpp's converter stores it in GGUF:
    ids 0-2 become <unk>, <s>, </s>; single bytes among ids 3..258 become '<0xXX>'; spaces
    become '▁'. Other bytes are kept as they are, valid UTF-8 or not."""
    if token_id in _SPECIAL_TOKENS:
        return _SPECIAL_TOKENS[token_id]
    if not text:
        return text, CONTROL
    if _FIRST_BYTE_TOKEN <= token_id <= _LAST_BYTE_TOKEN and len(text) == 1:
        return f"<0x{text[0]:02X}>".encode(), BYTE
    return text.replace(_SPACE, _SENTENCEPIECE_SPACE), NORMAL


# llama_ftype names as the converter prints them in general.description
FTYPE_NAMES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 4: "MOSTLY_Q4_1_SOME_F16",
    5: "MOSTLY_Q4_2", 6: "MOSTLY_Q4_3", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
}


def default_description(container: str, version: int, ftype: int) -> str:
    """general.description of a converted file, e.g. 'converted from legacy ggjt v3 MOSTLY_Q4_0 format'."""
    ftype_name = FTYPE_NAMES.get(ftype, f"UNKNOWN_FTYPE_{ftype}")
    return f"converted from legacy {file_label(container, version)} {ftype_name} format"


# -- the GGUF view -------------------------------------------------------------------------------

DEFAULT_CONTEXT_LENGTH = 2048   # legacy files do not record it; 2048 was LLaMA-1's
DEFAULT_RMS_EPS = 5e-6          # nor this; the converter's default
_FF_TENSOR = "layers.0.feed_forward.w1.weight"


def _n_ff(n_embd: int, n_mult: int, tensors: list[TensorInfo]) -> int:
    """The feed-forward width: ne1 of the first layer's w1 if there is one, else llama's formula."""
    w1 = next((t for t in tensors if t.source_name == _FF_TENSOR and len(t.ne) >= 2), None)
    if w1 is not None:
        return w1.ne[1]
    return (2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult * n_mult


def _gguf_kvs(hparams: dict[str, int], tokens: StringArray, scores: np.ndarray,
              token_types: np.ndarray, *, name: str | None, description: str,
              context_length: int, eps: float, n_head_kv: int) -> list[tuple[str, ValueType, Any]]:
    """(key, type, value) of every KV, in the order llama.cpp's converter writes them."""
    u32, f32, string = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING
    n_head = hparams["n_head"]
    kvs = [("general.architecture", string, "llama")]
    if name is not None:
        kvs.append(("general.name", string, name))
    kvs += [
        ("general.description", string, description),
        ("general.file_type", u32, hparams["ftype"]),
        ("llama.context_length", u32, context_length),
        ("llama.embedding_length", u32, hparams["n_embd"]),
        ("llama.block_count", u32, hparams["n_layer"]),
        ("llama.feed_forward_length", u32, hparams["n_ff"]),
        ("llama.rope.dimension_count", u32, hparams["n_embd"] // n_head),
        ("llama.attention.head_count", u32, n_head),
        ("llama.attention.head_count_kv", u32, n_head_kv),
        # Stored as the f32 it becomes in the file, so a written-and-read-back value compares equal.
        ("llama.attention.layer_norm_rms_epsilon", f32, float(np.float32(eps))),
        ("tokenizer.ggml.model", string, "llama"),
        ("tokenizer.ggml.pre", string, "default"),
        ("tokenizer.ggml.tokens", ValueType.ARRAY, tokens),
        ("tokenizer.ggml.scores", ValueType.ARRAY, scores),
        ("tokenizer.ggml.token_type", ValueType.ARRAY, token_types),
        ("tokenizer.ggml.unknown_token_id", u32, 0),
        ("tokenizer.ggml.bos_token_id", u32, 1),
        ("tokenizer.ggml.eos_token_id", u32, 2),
    ]
    return kvs


# -- the decoder -------------------------------------------------------------------------------

def _one_of(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


class _Reader:
    """Reads the fields of one legacy file, with the offsets its errors report."""

    def __init__(self, seeker: BufferedSeeker, path: str | None):
        self.s = seeker
        self.path = path

    def error(self, message: str, offset: int, expected: str | None = None) -> FormatError:
        return FormatError(message, offset=offset, expected=expected, path=self.path)

    def u32(self, what: str) -> tuple[int, int]:
        """(value, offset) of the next u32."""
        at = self.s.tell()
        return self.s.read_struct(_U32, what)[0], at

    def check_length(self, length: int, at: int, what: str) -> None:
        """Refuse a length field (at offset `at`) that claims more bytes than the file has left."""
        left = self.s.remaining()
        if left is not None and length > left:
            raise TruncatedError(f"{what} has length {length} but only {left} bytes remain",
                                 offset=at, expected=f"a length of at most {left}", path=self.path)

    def more(self) -> bool:
        """Whether any bytes are left (for a pipe, by looking)."""
        left = self.s.remaining()
        return left > 0 if left is not None else bool(self.s.peek(1))

    def skip(self, n: int, what: str) -> None:
        # A seek throws the buffer away, and small tensors (the norms) are in it already; and a
        # pipe cannot seek at all. Both read past in bounded chunks instead.
        if self.s.size is not None and n > _READ_PAST:
            self.s.seek(n, io.SEEK_CUR)
            return
        while n:
            chunk = min(n, _READ_PAST)
            self.s.read_exact(chunk, what)
            n -= chunk

    def header(self) -> tuple[str, int]:
        """(container, version) from the magic and version fields."""
        at = self.s.tell()
        magic = self.s.read_exact(4, "the magic")
        container = LEGACY_MAGICS.get(magic)
        if container is None:
            raise self.error(f"bad magic {magic!r}", at, expected="b'lmgg', b'fmgg' or b'tjgg'")
        if container not in ACCEPTED_VERSIONS:
            return container, 0
        version, version_at = self.u32(f"the {container} version")
        accepted = ACCEPTED_VERSIONS[container]
        if version not in accepted:
            raise self.error(f"unsupported {container} version {version}", version_at,
                             expected=f"version {_one_of([str(v) for v in accepted])}")
        return container, version

    def hparams(self) -> dict[str, int]:
        hparams, offsets = {}, {}
        for name in HPARAM_NAMES:
            hparams[name], offsets[name] = self.u32(f"hparam {name}")
        # Both are divisors below: rope.dimension_count, and n_ff when there is no w1 tensor.
        for name in ("n_head", "n_mult"):
            if hparams[name] == 0:
                raise self.error(f"hparam {name} is 0", offsets[name], expected=f"{name} of at least 1")
        return hparams

    def vocab(self, n_vocab: int, n_vocab_at: int, with_scores: bool) -> tuple[list[bytes], list[float]]:
        """Token texts and scores (0.0 where the container has none)."""
        entry_min = _U32.size + (_F32.size if with_scores else 0)
        left = self.s.remaining()
        if left is not None and n_vocab * entry_min > left:
            raise TruncatedError(f"n_vocab {n_vocab} needs at least {n_vocab * entry_min} bytes, "
                                 f"but only {left} remain", offset=n_vocab_at, path=self.path,
                                 expected=f"a vocab that fits in the {left} bytes left")
        texts, scores = [], []
        for token_id in range(n_vocab):
            length, at = self.u32(f"the length of token {token_id}")
            self.check_length(length, at, f"token {token_id}")
            texts.append(self.s.read_exact(length, f"the text of token {token_id}"))
            scores.append(self.s.read_struct(_F32, f"the score of token {token_id}")[0]
                          if with_scores else 0.0)
        return texts, scores

    def tensor(self, index: int, container: str, version: int) -> TensorInfo:
        """One tensor record; leaves the position after the tensor's data."""
        era = ERAS[(container, version)]
        info_at = self.s.tell()
        what = f"tensor {index}"                     # its name comes after the dims
        n_dims, n_dims_at = self.u32(f"the dimension count of {what}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.error(f"{what} has {n_dims} dimensions", n_dims_at,
                             expected=f"1 to {MAX_DIMS} dimensions")
        name_len, name_len_at = self.u32(f"the name length of {what}")
        type_id, type_at = self.u32(f"the type of {what}")
        layout = _block_layout(era, type_id)
        if layout is None:
            held = sorted(TODAYS_LAYOUTS[era] | {t for (e, t) in OLD_LAYOUTS if e == era})
            known = f"type {type_name(type_id)} (id {type_id})" if type_id in GGML_TYPES else \
                f"unknown ggml type id {type_id}"
            raise UnknownTypeError(f"{what} has {known}, which {file_label(container, version)} "
                                   "files do not hold", offset=type_at,
                                   expected=f"one of {_one_of([type_name(t) for t in held])}",
                                   path=self.path)
        block_elems, block_bytes, old = layout
        ne, ne_at = [], self.s.tell()
        for j in range(n_dims):
            dim, dim_at = self.u32(f"dimension {j} of {what}")
            if dim == 0:
                raise self.error(f"{what} dimension {j} is 0", dim_at, expected="a dimension of at least 1")
            ne.append(dim)
        self.check_length(name_len, name_len_at, f"the name of {what}")
        source_name = self.s.read_exact(name_len, f"the name of {what}").decode("utf-8", "surrogateescape")

        what = f"tensor {source_name!r}"
        if ne[0] % block_elems:
            raise self.error(f"{what} has rows of {ne[0]} weights, not a whole number of "
                             f"{type_name(type_id)} blocks", ne_at,
                             expected=f"ne0 a multiple of {block_elems}")
        nbytes = math.prod(ne) // block_elems * block_bytes
        here = self.s.tell()
        data_at = -(-here // GGJT_ALIGNMENT) * GGJT_ALIGNMENT if container == "ggjt" else here
        left = self.s.remaining()
        if left is not None and data_at - here + nbytes > left:
            raise TruncatedError(f"file ends inside the data of {what}: {nbytes} bytes needed "
                                 f"from byte {data_at}, only {max(0, here + left - data_at)} remain",
                                 offset=data_at, expected=f"{nbytes} bytes of tensor data",
                                 path=self.path)
        self.skip(data_at - here + nbytes, f"the data of {what}")

        layout_name = None if old is None else (
            f"{file_label(container, version)} {type_name(type_id)} "
            f"({old.change}, {old.block_bytes} bytes per {old.block_elems} weights)")
        return TensorInfo(name=gguf_tensor_name(source_name), ggml_type=type_id,
                          shape=tuple(reversed(ne)), offset=data_at, nbytes=nbytes,
                          info_offset=info_at, layout=layout_name, source_name=source_name)


def read_legacy(seeker: BufferedSeeker, path: str | None = None) -> ModelFile:
    """Decode a legacy llama file (ggml, ggmf v1, ggjt v1-v3) from `seeker`, positioned at the magic.

    Promises: a ModelFile in GGUF terms (GGUF tensor names, the metadata llama.cpp's converter
    would write, the original hparams plus n_ff in `legacy`), with every tensor's offset and
    size; tensors in a pre-ggjt-v3 block layout have it named in TensorInfo.layout. Anything
    that stops the file from being walked to its end raises FormatError (UnknownTypeError for
    a type id the file's era does not have) naming the offset; nothing is allocated beyond what
    the file holds. Structural checks (overlaps, alignment, ...) are left to refllm.formats.checks.
    """
    r = _Reader(seeker, path)
    container, version = r.header()
    hparams_at = seeker.tell()
    hparams = r.hparams()
    vocab_at = seeker.tell()
    # n_vocab is the first hparam, so its offset is hparams_at.
    texts, scores = r.vocab(hparams["n_vocab"], hparams_at, with_scores=container != "ggml")
    tensors = []
    while r.more():
        tensors.append(r.tensor(len(tensors), container, version))

    converted = [convert_token(token_id, text) for token_id, text in enumerate(texts)]
    legacy = {**hparams, "n_ff": _n_ff(hparams["n_embd"], hparams["n_mult"], tensors)}
    kvs = _gguf_kvs(
        legacy,
        StringArray.from_strings([text for text, _ in converted]),
        np.array(scores, dtype=np.float32),
        np.array([token_type for _, token_type in converted], dtype=np.int32),
        name=Path(path).stem if path else None,
        description=default_description(container, version, hparams["ftype"]),
        context_length=DEFAULT_CONTEXT_LENGTH, eps=DEFAULT_RMS_EPS, n_head_kv=hparams["n_head"])
    return ModelFile(
        path=path, container=container, version=version, byteorder="<",
        # ggjt aligns absolute offsets, so data_offset 0 lets the alignment check use them as they are.
        alignment=GGJT_ALIGNMENT if container == "ggjt" else 1, data_offset=0,
        file_size=seeker.size,
        metadata={key: value for key, _, value in kvs},
        kv_types={key: vtype for key, vtype, _ in kvs},
        # The KVs are derived, not stored: tokenizer keys point at the vocab, the rest at the hparams.
        kv_offsets={key: vocab_at if key.startswith("tokenizer.") else hparams_at for key, _, _ in kvs},
        tensors=tensors, legacy=legacy)


# -- conversion ----------------------------------------------------------------------------------

def convert_legacy(src: str | os.PathLike, dst: str | os.PathLike, *,
                   context_length: int = DEFAULT_CONTEXT_LENGTH, eps: float = DEFAULT_RMS_EPS,
                   gqa: int = 1, name: str | None = None, description: str | None = None) -> ModelFile:
    """Write the legacy llama model `src` as the GGUF v3 file `dst`, as llama.cpp's
    convert-llama-ggml-to-gguf.py does, and return the opened source model.

    The KVs are read_legacy's, with llama.context_length, the RMS-norm epsilon, the name and
    the description replaced by the options, and head_count_kv = n_head // gqa. Tensors are
    copied byte for byte under their GGUF names.

    Promises: dst is written (atomically) or left untouched. FormatError if src is not a legacy
    file (a GGUF one included), if a tensor is in an old block layout that GGUF cannot hold
    (naming the tensor and the layout), or if gqa does not divide n_head.
    """
    from refllm.formats.reader import open_model  # here, because reader imports this module

    model = open_model(src)
    if model.container not in LEGACY_MAGICS.values():
        raise FormatError(f"this is already a {model.container.upper()} v{model.version} file; "
                          "there is nothing to convert", offset=0,
                          expected="a legacy ggml, ggmf or ggjt file", path=model.path)
    old = next((t for t in model.tensors if t.layout is not None), None)
    if old is not None:
        raise FormatError(f"tensor {old.source_name!r} is in the old block layout {old.layout}, "
                          "which GGUF cannot hold; re-quantize the model from its original "
                          "weights", offset=old.info_offset,
                          expected="today's block layouts (ggjt v3, or F32/F16 tensors)", path=model.path)
    n_head = model.legacy["n_head"]
    if gqa < 1 or n_head % gqa:
        raise FormatError(f"gqa {gqa} does not divide n_head {n_head}", path=model.path,
                          expected=f"a gqa that divides {n_head} exactly")

    meta = model.metadata
    kvs = _gguf_kvs(
        model.legacy, meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
        meta["tokenizer.ggml.token_type"],
        name=name if name is not None else meta.get("general.name"),
        description=description if description is not None else meta["general.description"],
        context_length=context_length, eps=eps, n_head_kv=n_head // gqa)
    writer = GGUFWriter()
    for key, vtype, value in kvs:
        writer.add_kv(key, value, vtype)
    for t in model.tensors:
        writer.add_tensor(t.name, t.ggml_type, t.shape, model.tensor_bytes(t.name))
    writer.write(dst)
    return model
