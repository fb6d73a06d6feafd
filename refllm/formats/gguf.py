"""GGUF decoder: versions 1 to 3, little- and big-endian.

Layout (all integers in the file's byte order; `len` is u64 in v2/v3 and u32 in v1):

    magic        4 bytes   "GGUF" (or "FUGG", a writer that byte-swapped the magic too)
    version      u32       1, 2 or 3. A byte-swapped file reads as 0x0N000000 here: its low
                           half is zero, which is how llama.cpp detects a foreign byte order.
    n_tensors    len
    n_kv         len
    n_kv × KV    key: string, value_type: u32, value
    n_tensors ×  name: string, n_dims: u32 (<= 4), ne: len × n_dims (innermost first),
      tensor       ggml_type: u32, offset: u64 (relative to the data section)
    padding      zeros up to a multiple of general.alignment (u32, default 32)
    data         each tensor at data_offset + offset

    string  = len, then that many UTF-8 bytes (no terminator)
    array   = element_type: u32, count: len, then the elements (arrays of arrays allowed)

Every count and length is checked against what remains of the file before anything is
allocated, so a corrupt header raises FormatError rather than exhausting memory.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from refllm.formats.errors import FormatError, TruncatedError, UnknownTypeError
from refllm.formats.model import ModelFile, TensorInfo, tensor_nbytes
from refllm.formats.seeker import BufferedSeeker
from refllm.formats.values import SCALAR_DTYPES, STRUCT_CODES, NestedArray, StringArray, ValueType

MAGIC = b"GGUF"
MAGIC_SWAPPED = b"FUGG"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NESTING = 16          # arrays of arrays deeper than this are refused (llama.cpp allows none)
_INT64_MAX = (1 << 63) - 1


class _Decoder:
    """Reads GGUF fields in one byte order and one version's widths."""

    def __init__(self, seeker: BufferedSeeker, byteorder: str, version: int, path: str | None):
        self.s = seeker
        self.path = path
        self.bo = byteorder
        self.len_struct = struct.Struct(byteorder + ("I" if version == 1 else "Q"))
        self.u32 = struct.Struct(byteorder + "I")
        self.u64 = struct.Struct(byteorder + "Q")
        self.scalars = {vt: struct.Struct(byteorder + code) for vt, code in STRUCT_CODES.items()}

    def error(self, message: str, offset: int, expected: str | None = None) -> FormatError:
        return FormatError(message, offset=offset, expected=expected, path=self.path)

    def read_len(self, what: str) -> int:
        return self.s.read_struct(self.len_struct, what)[0]

    def check_room(self, count: int, min_size: int, offset: int, what: str) -> None:
        """Refuse a count whose smallest possible encoding is larger than the rest of the file."""
        left = self.s.remaining()
        if left is not None and count * min_size > left:
            raise TruncatedError(f"{what} count {count} needs at least {count * min_size} bytes, "
                                 f"but only {left} remain", offset=offset, path=self.path,
                                 expected=f"a count that fits in the {left} bytes left")

    def min_size(self, vtype: ValueType) -> int:
        if vtype == ValueType.STRING:
            return self.len_struct.size
        if vtype == ValueType.ARRAY:
            return 4 + self.len_struct.size
        return SCALAR_DTYPES[vtype].itemsize

    def read_string(self, what: str) -> str:
        at = self.s.tell()
        n = self.read_len(f"the length of {what}")
        left = self.s.remaining()
        if left is not None and n > left:
            raise TruncatedError(f"{what} has length {n} but only {left} bytes remain", offset=at,
                                 expected=f"a string length of at most {left}", path=self.path)
        return self.s.read_exact(n, what).decode("utf-8", "surrogateescape")

    def read_value_type(self, what: str) -> ValueType:
        at = self.s.tell()
        raw = self.s.read_struct(self.u32, what)[0]
        try:
            return ValueType(raw)
        except ValueError:
            raise UnknownTypeError(f"unknown value type {raw} for {what}", offset=at,
                                   expected="a value type 0..12", path=self.path) from None

    def read_value(self, vtype: ValueType, what: str, depth: int = 0) -> Any:
        if vtype == ValueType.STRING:
            return self.read_string(what)
        if vtype == ValueType.ARRAY:
            return self.read_array(what, depth)
        if vtype == ValueType.BOOL:
            return self.s.read_exact(1, what)[0] != 0
        return self.s.read_struct(self.scalars[vtype], what)[0]

    def read_array(self, what: str, depth: int) -> Any:
        at = self.s.tell()
        if depth >= MAX_NESTING:
            raise self.error(f"{what}: arrays nested deeper than {MAX_NESTING}", at,
                             expected=f"at most {MAX_NESTING} levels of arrays")
        elem = self.read_value_type(f"the element type of {what}")
        count_at = self.s.tell()
        count = self.read_len(f"the element count of {what}")
        self.check_room(count, self.min_size(elem), count_at, f"{what}: element")
        if elem == ValueType.STRING:
            region, ends = self.s.read_prefixed_strings(count, self.len_struct, what)
            return StringArray(region, ends, self.len_struct.size)
        if elem == ValueType.ARRAY:
            return NestedArray(self.read_array(f"{what}[{k}]", depth + 1) for k in range(count))
        dtype = SCALAR_DTYPES[elem]
        raw = self.s.read_exact(count * dtype.itemsize, what)
        if elem == ValueType.BOOL:
            return np.frombuffer(raw, np.uint8) != 0
        values = np.frombuffer(raw, dtype.newbyteorder(self.bo), count)
        return values if self.bo == "<" else values.astype(dtype.newbyteorder("="))


def detect_byteorder(head: bytes) -> tuple[str, int] | None:
    """(byteorder, version) from the first 8 bytes, or None if they are not a GGUF header."""
    magic = head[:4]
    if magic == MAGIC_SWAPPED:
        return ">", int.from_bytes(head[4:8], "big")
    if magic != MAGIC:
        return None
    version = int.from_bytes(head[4:8], "little")
    if version & 0xFFFF == 0 and version:
        return ">", int.from_bytes(head[4:8], "big")
    return "<", version


def read_gguf(seeker: BufferedSeeker, path: str | None = None) -> ModelFile:
    """Decode a GGUF header from `seeker`, positioned at the magic.

    Raises FormatError for anything that stops the header from being read. Problems in the
    tensor table that do not (unknown types, overlaps, ...) are left to refllm.formats.checks.
    """
    start = seeker.tell()
    head = seeker.read_exact(8, "the GGUF magic and version")
    found = detect_byteorder(head)
    if found is None:
        raise FormatError(f"bad magic {head[:4]!r}", offset=start, expected="b'GGUF'", path=path)
    byteorder, version = found
    if version not in (1, 2, 3):
        raise FormatError(f"unsupported GGUF version {version}", offset=start + 4,
                          expected="version 1, 2 or 3", path=path)
    d = _Decoder(seeker, byteorder, version, path)

    # Header counts.
    counts_at = seeker.tell()
    n_tensors = d.read_len("the tensor count")
    n_kv = d.read_len("the metadata KV count")
    width = d.len_struct.size
    d.check_room(n_kv, width + 4 + 1, counts_at + width, "metadata KV")
    d.check_room(n_tensors, width + 4 + 4 + 8, counts_at, "tensor info")

    # Metadata key-value pairs, in file order.
    metadata: dict[str, Any] = {}
    kv_types: dict[str, ValueType] = {}
    kv_offsets: dict[str, int] = {}
    for i in range(n_kv):
        at = seeker.tell()
        key = d.read_string(f"the key of KV {i}")
        if key in metadata:
            raise d.error(f"duplicate metadata key {key!r}", at, expected="each key once")
        vtype = d.read_value_type(f"KV {key!r}")
        metadata[key] = d.read_value(vtype, f"KV {key!r}")
        kv_types[key] = vtype
        kv_offsets[key] = at

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        at = kv_offsets["general.alignment"]
        if kv_types["general.alignment"] != ValueType.UINT32:
            raise d.error(f"general.alignment has type {kv_types['general.alignment'].name}", at,
                          expected="a UINT32")
        alignment = metadata["general.alignment"]
        if alignment == 0 or alignment & (alignment - 1):
            raise d.error(f"general.alignment is {alignment}", at, expected="a power of two")

    # Tensor infos. Offsets are relative to the data section, which starts after them.
    records = []
    for i in range(n_tensors):
        info_at = seeker.tell()
        name = d.read_string(f"the name of tensor {i}")
        dims_at = seeker.tell()
        n_dims = seeker.read_struct(d.u32, f"the dimension count of tensor {name!r}")[0]
        if n_dims > MAX_DIMS:
            raise d.error(f"tensor {name!r} has {n_dims} dimensions", dims_at,
                          expected=f"at most {MAX_DIMS}")
        ne = []
        for j in range(n_dims):
            at = seeker.tell()
            dim = d.read_len(f"dimension {j} of tensor {name!r}")
            if dim == 0 or dim > _INT64_MAX:
                shown = dim - (1 << 64) if dim > _INT64_MAX else dim
                raise d.error(f"tensor {name!r} dimension {j} is {shown}", at,
                              expected="a dimension from 1 to 2^63-1")
            ne.append(dim)
        n_elements = 1
        for dim in ne:
            n_elements *= dim
        if n_elements > _INT64_MAX:
            raise d.error(f"tensor {name!r} has {n_elements} elements (ne={ne})", dims_at,
                          expected="at most 2^63-1 elements")
        type_id = seeker.read_struct(d.u32, f"the type of tensor {name!r}")[0]
        rel = seeker.read_struct(d.u64, f"the offset of tensor {name!r}")[0]
        records.append((name, type_id, tuple(ne), rel, info_at))

    data_offset = -(-seeker.tell() // alignment) * alignment
    tensors = [TensorInfo(name=name, ggml_type=type_id, shape=tuple(reversed(ne)),
                          offset=data_offset + rel, nbytes=tensor_nbytes(type_id, ne), info_offset=at)
               for name, type_id, ne, rel, at in records]
    return ModelFile(path=path, container="gguf", version=version, byteorder=byteorder,
                     alignment=alignment, data_offset=data_offset, file_size=seeker.size,
                     metadata=metadata, kv_types=kv_types, kv_offsets=kv_offsets, tensors=tensors)
