"""Build GGUF bytes field by field, for tests: any version (1-3), either byte order, and the
offset of every field recorded, so a test can corrupt one field and check the error names
that offset. Written from the format description, independently of refllm's own writer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# value type id -> struct code for fixed-size scalars
SCALAR_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class Built:
    data: bytearray
    offsets: dict[str, int] = field(default_factory=dict)

    def patch(self, name: str, fmt: str, value) -> Built:
        """Overwrite the field recorded as `name` with struct `fmt` (byte order included)."""
        struct.pack_into(fmt, self.data, self.offsets[name], value)
        return self


class _Out:
    def __init__(self, bo: str, version: int):
        self.bo, self.v1 = bo, version == 1
        self.buf = bytearray()
        self.offsets: dict[str, int] = {}

    def mark(self, name: str) -> None:
        self.offsets[name] = len(self.buf)

    def put(self, fmt: str, *values) -> None:
        self.buf += struct.pack(self.bo + fmt, *values)

    def length(self, n: int) -> None:
        self.put("I" if self.v1 else "Q", n)

    def string(self, s: str | bytes, name: str | None = None) -> None:
        raw = s.encode() if isinstance(s, str) else s
        if name:
            self.mark(name)
        self.length(len(raw))
        self.buf += raw

    def value(self, vtype: int, value, name: str) -> None:
        if vtype == STRING:
            self.string(value, name + ":len")
        elif vtype == ARRAY:
            elem, items = value
            self.mark(name + ":elem")
            self.put("I", elem)
            self.mark(name + ":count")
            self.length(len(items))
            for k, item in enumerate(items):
                self.value(elem, item, f"{name}[{k}]")
        else:
            self.mark(name + ":value")
            self.put(SCALAR_CODES[vtype], value)


def build_gguf(kvs: list[tuple[str, int, object]], tensors: list[tuple[str, int, tuple[int, ...], bytes]] = (),
               *, version: int = 3, byteorder: str = "<", alignment: int = 32, magic: bytes = b"GGUF",
               pad_tensors: bool = True) -> Built:
    """kvs: (key, value type id, value); an ARRAY value is (element type id, items).
    tensors: (name, ggml type id, ne in GGML order, data). Offsets are recorded as
    'magic', 'version', 'n_tensors', 'n_kv', 'kv:KEY', 'kv:KEY:type', 'kv:KEY:len|count|elem|value',
    'ti:NAME', 'ti:NAME:n_dims', 'ti:NAME:dim{j}', 'ti:NAME:type', 'ti:NAME:offset', 'data',
    'data:NAME'."""
    out = _Out(byteorder, version)
    out.mark("magic")
    out.buf += magic
    out.mark("version")
    out.put("I", version)
    out.mark("n_tensors")
    out.length(len(tensors))
    out.mark("n_kv")
    out.length(len(kvs))
    for key, vtype, value in kvs:
        out.string(key, f"kv:{key}")
        out.mark(f"kv:{key}:type")
        out.put("I", vtype)
        out.value(vtype, value, f"kv:{key}")
    rel = 0
    placements = []
    for name, type_id, ne, data in tensors:
        out.string(name, f"ti:{name}")
        out.mark(f"ti:{name}:n_dims")
        out.put("I", len(ne))
        for j, d in enumerate(ne):
            out.mark(f"ti:{name}:dim{j}")
            out.length(d)
        out.mark(f"ti:{name}:type")
        out.put("I", type_id)
        out.mark(f"ti:{name}:offset")
        out.put("Q", rel)
        placements.append((name, rel, data))
        rel += len(data) + ((-len(data)) % alignment if pad_tensors else 0)
    out.buf += bytes(-len(out.buf) % alignment)
    out.mark("data")
    start = len(out.buf)
    for name, r, data in placements:
        out.offsets[f"data:{name}"] = start + r
        out.buf += bytes(start + r - len(out.buf))
        out.buf += data
    if pad_tensors:
        out.buf += bytes(-len(out.buf) % alignment)
    return Built(out.buf, out.offsets)


def small_model(**kw) -> Built:
    """A small valid model: a handful of KVs of every kind and three tensors (F32, F16, Q8_0)."""
    rng = np.random.default_rng(0)
    kvs = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "tiny"),
        ("llama.block_count", 4, 2),
        ("llama.embedding_length", 4, 64),
        ("llama.attention.head_count", 4, 4),
        ("llama.rope.freq_base", 6, 10000.0),
        ("some.bool", 7, True),
        ("some.i64", 11, -5),
        ("some.f64", 12, 0.25),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "<s>", "</s>", "a", "héllo"])),
        ("tokenizer.ggml.scores", ARRAY, (6, [0.0, -1.0, -2.0, -3.5, 4.25])),
        ("nested", ARRAY, (ARRAY, [(4, [1, 2, 3]), (STRING, ["x", "yz"]), (ARRAY, [])])),
    ]
    tensors = [
        ("token_embd.weight", 0, (64, 5), rng.standard_normal(320).astype("<f4").tobytes()),
        ("output_norm.weight", 1, (64,), rng.standard_normal(64).astype("<f2").tobytes()),
        ("blk.0.attn_q.weight", 8, (64, 64), rng.integers(0, 256, 64 * 2 * 34, dtype=np.uint8).tobytes()),
    ]
    if kw.get("byteorder") == ">":
        tensors = [(n, t, ne, _swap(t, d)) for n, t, ne, d in tensors]
    return build_gguf(kvs, tensors, **kw)


def _swap(type_id: int, data: bytes) -> bytes:
    code = {0: "f4", 1: "f2"}.get(type_id)
    return np.frombuffer(data, "<" + code).astype(">" + code).tobytes() if code else data
