"""Errors raised while decoding a model file. Each one names the byte offset and what was expected there."""

from __future__ import annotations

from refllm.errors import RefllmError


class FormatError(RefllmError, ValueError):
    """The bytes do not follow the format.

    offset:   absolute byte offset in the file where the problem was found (None if it is not about one place)
    expected: what the format requires there, in words
    path:     the file, when known
    """

    def __init__(self, message: str, *, offset: int | None = None, expected: str | None = None,
                 path: str | None = None):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.expected = expected
        self.path = path

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        at = f"at byte {self.offset}: " if self.offset is not None else ""
        wanted = f" (expected {self.expected})" if self.expected else ""
        return f"{where}{at}{self.message}{wanted}"


class TruncatedError(FormatError):
    """The file ends before a field that the format says is there."""


class UnknownTypeError(FormatError):
    """A value-type id or a ggml tensor-type id that no known format version defines."""


class LFSPointerError(FormatError):
    """The file is a git-LFS pointer, not the model: the download fetched the pointer instead of the object."""
