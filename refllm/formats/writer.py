"""GGUF writer: version 3, little-endian, the layout refllm.formats.gguf documents.

KVs are written in the order they were added. Tensor data follows the tensor infos, each tensor
starting on the alignment (`general.alignment` if it was added, else 32) and padded with zeros
to it, as llama.cpp and gguf-py do. Tensor data can be streamed from a callable, so a file much
larger than memory can be written. The file appears atomically (temp file, then rename).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from refllm.formats.files import atomic_output
from refllm.formats.gguf import DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS
from refllm.formats.model import ModelFile, tensor_nbytes
from refllm.formats.values import (
    ENCODING,
    ERRORS,
    SCALAR_DTYPES,
    STRUCT_CODES,
    StringArray,
    ValueType,
    array_element_type,
)
from refllm.type_traits import ggml_type

TensorData = bytes | bytearray | memoryview | np.ndarray | Callable[[], Iterable[Any]]
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def infer_value_type(value: Any) -> ValueType:
    """The GGUF type refllm writes a value as when none is given (gguf-py's defaults)."""
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(value, np.generic):
        return array_element_type(np.asarray(value))
    if isinstance(value, int):
        return ValueType.INT32
    if isinstance(value, float):
        return ValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return ValueType.STRING
    if isinstance(value, (np.ndarray, StringArray, list, tuple)):
        return ValueType.ARRAY
    raise ValueError(f"no GGUF type for a {type(value).__name__}")


def _encode_string(out: list, value: str | bytes) -> None:
    raw = value.encode(ENCODING, ERRORS) if isinstance(value, str) else bytes(value)
    out += [_U64.pack(len(raw)), raw]


def _encode_array(out: list, value: Any, elem: ValueType | None) -> None:
    elem = array_element_type(value) if elem is None else elem
    out += [_U32.pack(elem), _U64.pack(len(value))]
    if elem == ValueType.STRING:
        items = value.raw_items() if isinstance(value, StringArray) else value
        for s in items:
            _encode_string(out, s)
    elif elem == ValueType.ARRAY:
        for inner in value:
            _encode_array(out, inner, None)
    else:
        dtype = SCALAR_DTYPES[elem]
        arr = np.asarray(value)
        if elem != ValueType.BOOL and arr.size and (arr.dtype.kind not in "biuf" or (
                dtype.kind in "iu" and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max))):
            raise ValueError(f"array values do not fit {elem.name}")
        out.append(arr.astype(dtype).tobytes())


def encode_value(vtype: ValueType, value: Any, elem_type: ValueType | None = None) -> bytes:
    """The bytes of one GGUF value (without its type id)."""
    out: list[bytes] = []
    if vtype == ValueType.STRING:
        _encode_string(out, value)
    elif vtype == ValueType.ARRAY:
        _encode_array(out, value, elem_type)
    elif vtype == ValueType.BOOL:
        out.append(b"\x01" if value else b"\x00")
    else:
        try:
            out.append(struct.pack("<" + STRUCT_CODES[vtype], value))
        except struct.error as e:
            raise ValueError(f"{value!r} does not fit {vtype.name}: {e}") from None
    return b"".join(out)


@dataclass
class _Tensor:
    name: str
    type_id: int
    ne: tuple[int, ...]
    nbytes: int
    data: TensorData


class GGUFWriter:
    """Collects KVs and tensors, then writes them as one GGUF v3 little-endian file.

    add_kv(key, value, vtype=None, elem_type=None)
        Keys keep the order they are added in; adding a key twice is an error. vtype defaults
        to infer_value_type(value); for a plain list, elem_type says what its items are.
    add_tensor(name, type, shape, data)
        shape is numpy order (outermost first). data is bytes-like, a numpy array (its raw
        bytes), or a callable returning an iterable of bytes-like chunks, read only while
        writing. Its length must be exactly the type's size for the shape.
    write(path)
        Writes atomically and returns the data offset.
    """

    def __init__(self) -> None:
        self._kvs: dict[str, bytes] = {}
        self._alignment = DEFAULT_ALIGNMENT
        self._tensors: dict[str, _Tensor] = {}

    def add_kv(self, key: str, value: Any, vtype: ValueType | None = None,
               elem_type: ValueType | None = None) -> None:
        if key in self._kvs:
            raise ValueError(f"metadata key {key!r} added twice")
        vtype = ValueType(vtype) if vtype is not None else infer_value_type(value)
        if key == "general.alignment":
            if vtype != ValueType.UINT32 or not isinstance(value, (int, np.integer)) or value <= 0 \
                    or value & (value - 1):
                raise ValueError(f"general.alignment must be a UINT32 power of two, not {value!r}")
            self._alignment = int(value)
        try:
            body = encode_value(vtype, value, elem_type)
        except ValueError as e:
            raise ValueError(f"metadata key {key!r}: {e}") from None
        raw_key = key.encode(ENCODING, ERRORS)
        self._kvs[key] = _U64.pack(len(raw_key)) + raw_key + _U32.pack(vtype) + body

    def add_tensor(self, name: str, ggml_type_: int | str, shape: tuple[int, ...], data: TensorData) -> None:
        row = ggml_type(ggml_type_)
        if row.removed:
            raise ValueError(f"tensor {name!r}: ggml has removed type {row.name}")
        if name in self._tensors:
            raise ValueError(f"tensor {name!r} added twice")
        shape = tuple(int(d) for d in shape)
        if len(shape) > MAX_DIMS or any(d < 1 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape} needs 0..{MAX_DIMS} dims, each >= 1")
        ne = tuple(reversed(shape))
        nbytes = tensor_nbytes(row.id, ne)
        if nbytes is None:
            raise ValueError(f"tensor {name!r}: rows of {ne[0]} are not whole {row.name} blocks "
                             f"of {row.block_elems}")
        if not callable(data):
            size = data.nbytes if isinstance(data, (np.ndarray, memoryview)) else len(data)
            if size != nbytes:
                raise ValueError(f"tensor {name!r}: {size} bytes given, {row.name} {shape} needs {nbytes}")
        self._tensors[name] = _Tensor(name, row.id, ne, nbytes, data)

    def write(self, path: str | os.PathLike) -> int:
        align = self._alignment
        pad = lambda n: -n % align  # noqa: E731  bytes of zero padding after n bytes

        infos, rel = [], 0
        for t in self._tensors.values():
            name = t.name.encode(ENCODING, ERRORS)
            infos.append(b"".join([_U64.pack(len(name)), name, _U32.pack(len(t.ne)),
                                   *(_U64.pack(d) for d in t.ne), _U32.pack(t.type_id), _U64.pack(rel)]))
            rel += t.nbytes + pad(t.nbytes)
        header = b"".join([MAGIC, _U32.pack(3), _U64.pack(len(self._tensors)), _U64.pack(len(self._kvs)),
                           *self._kvs.values(), *infos])
        data_offset = len(header) + pad(len(header))

        with atomic_output(path) as f:
            f.write(header + bytes(pad(len(header))))
            for t in self._tensors.values():
                written = _write_data(f, t.data)
                if written != t.nbytes:
                    raise ValueError(f"tensor {t.name!r}: its data source gave {written} bytes, "
                                     f"expected {t.nbytes}")
                f.write(bytes(pad(t.nbytes)))
        return data_offset


def _write_data(f, data: TensorData) -> int:
    chunks = data() if callable(data) else (data,)
    written = 0
    for chunk in chunks:
        view = memoryview(np.ascontiguousarray(chunk) if isinstance(chunk, np.ndarray) else chunk).cast("B")
        f.write(view)
        written += view.nbytes
    return written


def copy_model(model: ModelFile, writer: GGUFWriter | None = None) -> GGUFWriter:
    """A writer holding every KV and tensor of `model` (tensor data is read from its memmap when
    written). Used by `refllm convert` and the round-trip tests."""
    writer = writer or GGUFWriter()
    for key, value in model.metadata.items():
        writer.add_kv(key, value, model.kv_types[key])
    for t in model.tensors:
        writer.add_tensor(t.name, t.ggml_type, t.shape, model.tensor_bytes(t.name))
    return writer

