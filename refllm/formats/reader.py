"""open_model: one entry point for every container refllm reads.

It sniffs the first bytes, hands the file to the GGUF or legacy decoder, then runs the
structural checks. Files that are not models at all (a git-LFS pointer, a zip, an HTML error
page, safetensors) are named for what they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from refllm.formats.checks import check_tensor_table
from refllm.formats.errors import FormatError, LFSPointerError, TruncatedError
from refllm.formats.ggjt import LEGACY_MAGICS, read_legacy
from refllm.formats.gguf import MAGIC, MAGIC_SWAPPED, read_gguf
from refllm.formats.model import ModelFile
from refllm.formats.seeker import BufferedSeeker

_LFS_POINTER = b"version https://git-lfs"
_NOT_MODELS = [  # (lower-cased prefix, what it is)
    (b"pk\x03\x04", "a zip archive (a wheel or a zipped model?)"),
    (b"<!doctype", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"{", "a JSON document (an ollama manifest or config?)"),
]


def _sniff(head: bytes, path: str | None) -> None:
    """Raise a FormatError that names what a non-model file is."""
    if len(head) < 4:
        raise TruncatedError("the file is empty" if not head else f"the file ends inside the magic "
                             f"({len(head)} bytes)", offset=0, expected="a 4-byte GGUF or GGML magic",
                             path=path)
    if head.startswith(_LFS_POINTER):
        raise LFSPointerError("this is a git-LFS pointer file, not the model: fetch the object with "
                              "`git lfs pull` or download the file itself", offset=0,
                              expected="a GGUF or GGML magic", path=path)
    for prefix, what in _NOT_MODELS:
        if head.lstrip().lower().startswith(prefix):
            raise FormatError(f"this is {what}, not a model file", offset=0,
                              expected="a GGUF or GGML magic", path=path)
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 32:
        raise FormatError("this looks like a safetensors file, not GGUF: convert it with llama.cpp's "
                          "convert_hf_to_gguf.py", offset=0, expected="a GGUF or GGML magic", path=path)
    raise FormatError(f"bad magic {head[:4]!r}", offset=0,
                      expected="b'GGUF' or a legacy magic (b'lmgg', b'fmgg', b'tjgg')", path=path)


def read_model(stream: BinaryIO, path: str | None = None, *, strict: bool = True) -> ModelFile:
    """Decode the model whose header starts at the current position of a binary stream.

    Tensor data is only reachable (ModelFile.tensor_bytes) when `path` names a regular file.
    strict=True raises the first fatal structural problem as a FormatError; strict=False keeps
    them all in ModelFile.problems.
    """
    seeker = BufferedSeeker(stream)
    head = seeker.peek(64)
    try:
        if head[:4] in (MAGIC, MAGIC_SWAPPED):
            model = read_gguf(seeker, path)
        elif head[:4] in LEGACY_MAGICS:
            model = read_legacy(seeker, path)
        else:
            _sniff(head, path)
    except FormatError as e:
        e.path = e.path or path     # the seeker does not know the file's name
        raise
    model.problems = check_tensor_table(model)
    if strict and model.fatal_problems:
        raise model.fatal_problems[0].error(path)
    return model


def open_model(source: str | os.PathLike | BinaryIO, *, strict: bool = True) -> ModelFile:
    """Open a GGUF (v1-v3, either byte order) or legacy GGML/GGMF/GGJT model.

    Promises: the header is fully decoded and checked, or FormatError is raised naming the
    byte offset and what was expected there. Tensor data is not read: ModelFile.tensor_bytes
    maps it on demand, without copying.
    """
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return read_model(source, name if isinstance(name, str) else None, strict=strict)
    path = os.fspath(source)
    if Path(path).is_dir():
        raise FormatError("this is a directory, not a model file", path=path)
    with open(path, "rb") as f:
        return read_model(f, path, strict=strict)
