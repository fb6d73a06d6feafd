"""GGUF metadata value types, and the containers refllm decodes arrays into.

A GGUF value is one of 13 types. Scalars decode to Python int, float, bool or str. Arrays decode
by element type, so the element type can always be read back from the value:

    numeric or bool elements  ->  numpy array of that dtype (native byte order)
    string elements           ->  StringArray: lazy, decodes an element only when asked
    array elements            ->  NestedArray: a list whose items are themselves arrays
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import overload

import numpy as np


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size types: numpy dtype (little-endian spelling) and short display name.
SCALAR_DTYPES: dict[ValueType, np.dtype] = {
    ValueType.UINT8: np.dtype("<u1"), ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"), ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.UINT64: np.dtype("<u8"), ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.FLOAT64: np.dtype("<f8"),
    ValueType.BOOL: np.dtype("bool"),
}
# struct codes for the same types (numpy's dtype.char says 'l' for int64, which struct reads as 4 bytes).
STRUCT_CODES: dict[ValueType, str] = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.UINT64: "Q", ValueType.INT64: "q",
    ValueType.FLOAT32: "f", ValueType.FLOAT64: "d", ValueType.BOOL: "?",
}
SHORT_NAMES: dict[ValueType, str] = {
    ValueType.UINT8: "u8", ValueType.INT8: "i8", ValueType.UINT16: "u16", ValueType.INT16: "i16",
    ValueType.UINT32: "u32", ValueType.INT32: "i32", ValueType.UINT64: "u64", ValueType.INT64: "i64",
    ValueType.FLOAT32: "f32", ValueType.FLOAT64: "f64", ValueType.BOOL: "bool",
    ValueType.STRING: "str", ValueType.ARRAY: "arr",
}
_DTYPE_TO_TYPE = {dt.newbyteorder("="): vt for vt, dt in SCALAR_DTYPES.items()}

# Strings are UTF-8 by the spec, but files in the wild hold stray bytes. surrogateescape keeps
# them, so decoding then encoding gives back the same bytes.
ENCODING, ERRORS = "utf-8", "surrogateescape"


class StringArray(Sequence[str]):
    """A GGUF string array, decoded one element at a time.

    `region` is the array's bytes as stored (each string behind its length prefix of
    `prefix` bytes); `ends[k]` is the offset in region just past string k.
    """

    __slots__ = ("_region", "_ends", "_prefix")

    def __init__(self, region: bytes, ends: list[int], prefix: int):
        self._region, self._ends, self._prefix = region, ends, prefix

    @classmethod
    def from_strings(cls, items: Sequence[str | bytes]) -> StringArray:
        parts, ends, pos = [], [], 0
        for s in items:
            b = s.encode(ENCODING, ERRORS) if isinstance(s, str) else bytes(s)
            parts += [len(b).to_bytes(8, "little"), b]
            pos += 8 + len(b)
            ends.append(pos)
        return cls(b"".join(parts), ends, 8)

    def __len__(self) -> int:
        return len(self._ends)

    def raw(self, k: int) -> bytes:
        """String k as stored, undecoded."""
        k = range(len(self._ends))[k]
        start = (self._ends[k - 1] if k else 0) + self._prefix
        return self._region[start:self._ends[k]]

    def raw_items(self) -> Iterator[bytes]:
        """Every string as stored, undecoded."""
        region, prefix, start = self._region, self._prefix, 0
        for end in self._ends:
            yield region[start + prefix:end]
            start = end

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> list[str]: ...

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(len(self))[k]]
        return self.raw(k).decode(ENCODING, ERRORS)

    def __iter__(self) -> Iterator[str]:
        for raw in self.raw_items():
            yield raw.decode(ENCODING, ERRORS)

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        more = f", ... ({len(self)} strings)" if len(self) > 3 else ""
        return f"StringArray([{head}{more}])"


class NestedArray(list):
    """A GGUF array whose elements are arrays. Each element keeps its own element type."""


def array_element_type(value) -> ValueType:
    """The GGUF element type of a decoded array value (numpy array, StringArray or NestedArray),
    or of a plain list by its first item. Raises ValueError when it cannot be told."""
    if isinstance(value, np.ndarray):
        vt = _DTYPE_TO_TYPE.get(value.dtype.newbyteorder("="))
        if vt is None:
            raise ValueError(f"numpy dtype {value.dtype} has no GGUF value type")
        return vt
    if isinstance(value, StringArray):
        return ValueType.STRING
    if isinstance(value, NestedArray):
        return ValueType.ARRAY
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, (str, bytes)):
            return ValueType.STRING
        if isinstance(first, (bool, np.bool_)):
            return ValueType.BOOL
        if isinstance(first, (int, np.integer)):
            return ValueType.INT32
        if isinstance(first, (float, np.floating)):
            return ValueType.FLOAT32
        if isinstance(first, (np.ndarray, StringArray, list, tuple)):
            return ValueType.ARRAY
    raise ValueError(f"cannot tell the element type of {type(value).__name__} {value!r:.60}")


def type_signature(vtype: ValueType, value) -> str:
    """A short display type: 'u32', 'str', '[str × 262144]', or '[arr × 2]' for arrays of arrays."""
    if vtype != ValueType.ARRAY:
        return SHORT_NAMES[vtype]
    try:
        elem = array_element_type(value)
    except ValueError:          # an empty plain list says nothing about its elements
        elem = ValueType.ARRAY
    return f"[{SHORT_NAMES[elem]} × {len(value)}]"
