"""What a decoded model file is, whatever its container: metadata, a tensor table, and the bytes.

GGUF and the legacy GGML containers both decode into a ModelFile. Legacy files are presented
in GGUF terms (GGUF keys, GGUF tensor names), with the original header kept in `legacy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refllm.formats.errors import FormatError
from refllm.formats.values import ValueType
from refllm.type_traits import GGML_TYPES, type_name


@dataclass
class TensorInfo:
    """One entry of the tensor table.

    shape       numpy order, outermost first: a [n_vocab, n_embd] embedding has shape (n_vocab, n_embd)
    ne          GGML order, innermost first: the reverse of shape
    offset      absolute file offset of the tensor's first byte
    nbytes      size of the data; None when the type or row length makes it unknowable
    info_offset where this tensor's record starts in the header
    layout      for legacy files only: the name of an older block layout that today's decoders
                cannot read (None means the bytes are in today's layout for ggml_type)
    source_name for legacy files only: the tensor's name in the old file
    """

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int | None
    info_offset: int
    layout: str | None = None
    source_name: str | None = None

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int | None:
        return None if self.nbytes is None else self.offset + self.nbytes


@dataclass(frozen=True)
class Problem:
    """A structural check that failed. `fatal` problems make a strict open raise."""

    check: str            # unknown-type, removed-type, row-size, duplicate-name, misaligned, truncated, overlap, gap
    message: str
    offset: int | None
    tensor: str | None = None
    fatal: bool = True
    expected: str | None = None

    def error(self, path: str | None) -> FormatError:
        return FormatError(self.message, offset=self.offset, expected=self.expected, path=path)


@dataclass
class ModelFile:
    """A decoded model file.

    metadata    key -> value, in file order (see refllm.formats.values for the Python types)
    kv_types    key -> ValueType of the value (ARRAY for arrays; the element type is in the value)
    kv_offsets  key -> offset of the KV record in the header
    tensors     the tensor table in file order
    problems    failed structural checks (a strict open raises on the first fatal one instead)
    """

    path: str | None
    container: str            # "gguf", "ggml", "ggmf" or "ggjt"
    version: int              # 1..3 for GGUF and ggjt, 1 for ggmf, 0 for the unversioned ggml
    byteorder: str            # "<" little-endian or ">" big-endian
    alignment: int
    data_offset: int          # where tensor data starts (GGUF: offsets are relative to this)
    file_size: int | None     # None when read from a pipe
    metadata: dict[str, Any]
    kv_types: dict[str, ValueType]
    kv_offsets: dict[str, int]
    tensors: list[TensorInfo]
    problems: list[Problem] = field(default_factory=list)
    legacy: dict[str, Any] | None = None   # legacy containers: the original hparams and vocab size
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)
    _data: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        for t in self.tensors:
            self._by_name.setdefault(t.name, t)

    # -- lookups ----------------------------------------------------------------------------

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called `name` (the first, if duplicated). KeyError lists nothing: use .tensors."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {self.path or 'this file'}") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a read-only uint8 view into a memmap of the file (no copy)."""
        t = self.tensor(name)
        if t.nbytes is None:
            raise FormatError(f"tensor {name!r} has no known size ({t.type_name}, ne={t.ne})",
                              offset=t.info_offset, path=self.path)
        if self.file_size is not None and t.end > self.file_size:
            raise FormatError(f"tensor {name!r} ends at byte {t.end}, past the end of the file",
                              offset=t.offset, expected=f"at most {self.file_size} bytes", path=self.path)
        return self.data()[t.offset:t.offset + t.nbytes]

    def data(self) -> np.ndarray:
        """The whole file as a read-only uint8 memmap (opened on first use)."""
        if self._data is None:
            if self.path is None or self.file_size is None:
                raise FormatError("tensor data needs a regular file; this one was read from a stream",
                                  path=self.path)
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r") if self.file_size else \
                np.zeros(0, np.uint8)
        return self._data

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        """`<arch>.<suffix>` from the metadata, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def close(self) -> None:
        self._data = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_nbytes(ggml_type_id: int, ne: tuple[int, ...]) -> int | None:
    """Bytes of a tensor with GGML dims `ne`, or None when the type is unknown or ne0 is not a
    whole number of blocks."""
    row = GGML_TYPES.get(ggml_type_id)
    if row is None:
        return None
    ne0 = ne[0] if ne else 1          # a 0-dim tensor holds one element
    if ne0 % row.block_elems:
        return None
    return math.prod(ne) // row.block_elems * row.block_bytes
