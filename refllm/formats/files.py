"""Files: atomic output and content hashing.

Atomic output writes to a temporary file beside the target, then renames it over the target:
a reader never sees a half-written file, and a failed or interrupted write leaves the old file
(or nothing) in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, on_chunk: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file's bytes, read 1 MiB at a time; on_chunk(n) is called after each read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; on normal exit it is flushed, synced and renamed to `path`.
    On an exception the temporary file is removed and `path` is untouched."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():     # say so about the path asked for, not the temporary file
        raise FileNotFoundError(2, "no such folder to write into", str(folder))
    if target.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file to write", str(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; the result should look like any new file
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
