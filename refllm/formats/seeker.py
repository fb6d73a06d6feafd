"""BufferedSeeker: buffered, bounds-checked reads over any binary file object.

Headers are decoded through it, so a header can come from a regular file or from a pipe.
It keeps a *logical* position: the offset in the file of the next byte the caller will get,
whatever sits in the buffer. Every read either returns exactly what was asked or raises a
TruncatedError naming the offset, and no read allocates more than what the file still holds
(for a pipe, whose size is unknown, more than what actually arrives).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from typing import BinaryIO

from refllm.formats.errors import TruncatedError

DEFAULT_BUFFER = 1 << 20   # 1 MiB: a few refills cover the largest vocabularies
_FIRST_FILL = 4096         # the first read after a seek: a seek usually skips to a small record
_MAX_CHUNK = 64 << 20      # never ask a pipe for more than this at once


def _size_of(raw: BinaryIO) -> int | None:
    """The size of a regular file, or None for a pipe or anything else without one."""
    try:
        st = os.fstat(raw.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        if isinstance(raw, io.BytesIO):
            return len(raw.getbuffer())
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class BufferedSeeker:
    """Buffered reads with a logical position over `raw`.

    tell()             the logical position (raw position minus the bytes still buffered)
    seek(off, whence)  moves the logical position and discards the buffer; SEEK_CUR is
                       relative to the logical position, so buffered bytes are accounted for
    read_exact(n)      exactly n bytes, or TruncatedError at the offset where they were due
    size               the file size, or None when unknown (pipes)
    """

    def __init__(self, raw: BinaryIO, buffer_size: int = DEFAULT_BUFFER):
        self._raw = raw
        self._buffer_size = buffer_size
        self._fill = min(_FIRST_FILL, buffer_size)   # next refill size: doubles up to buffer_size
        self._buf = b""      # bytes read from raw and not yet all consumed
        self._i = 0          # index in _buf of the next byte to hand out
        try:
            self._base = raw.tell()   # logical offset of _buf[0]
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._base = 0
        self.size = _size_of(raw)

    # -- position ---------------------------------------------------------------------------

    def tell(self) -> int:
        return self._base + self._i

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            target = self.tell() + offset
        elif whence == io.SEEK_END:
            if self.size is None:
                raise io.UnsupportedOperation("SEEK_END needs a file of known size")
            target = self.size + offset
        else:
            target = offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._raw.seek(target)
        self._buf, self._i, self._base = b"", 0, target
        self._fill = min(_FIRST_FILL, self._buffer_size)
        return target

    def remaining(self) -> int | None:
        """Bytes between the logical position and the end of the file; None when unknown."""
        return None if self.size is None else max(0, self.size - self.tell())

    # -- reads ------------------------------------------------------------------------------

    def _truncated(self, n: int, what: str) -> TruncatedError:
        left = self.remaining()
        found = f"only {left} remain" if left is not None else "the stream ended first"
        return TruncatedError(f"file ends inside {what}: {n} bytes needed, {found}",
                              offset=self.tell(), expected=f"{n} bytes of {what}")

    def ensure(self, n: int, what: str) -> None:
        """Make sure n unread bytes are buffered, or raise TruncatedError (checked before allocating)."""
        have = len(self._buf) - self._i
        if have >= n:
            return
        left = self.remaining()
        if left is not None and n > left:
            raise self._truncated(n, what)
        parts = [self._buf[self._i:]]
        self._base += self._i
        self._buf, self._i = b"", 0
        while have < n:
            want = min(max(n - have, self._fill), _MAX_CHUNK)
            self._fill = min(2 * self._fill, self._buffer_size)
            chunk = self._raw.read(want)
            if not chunk:
                self._buf = b"".join(parts)
                raise self._truncated(n, what)
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)

    def peek(self, n: int) -> bytes:
        """Up to n bytes from the logical position, without advancing (fewer only at the end)."""
        left = self.remaining()
        try:
            self.ensure(n if left is None else min(n, left), "a peek")
        except TruncatedError:
            pass
        return self._buf[self._i:self._i + n]

    def read_exact(self, n: int, what: str = "a field") -> bytes:
        """Exactly n bytes from the logical position, which advances by n."""
        i = self._i
        if len(self._buf) - i < n:
            self.ensure(n, what)
            i = self._i
        self._i = i + n
        return self._buf[i:i + n]

    def read_struct(self, fmt: struct.Struct, what: str) -> tuple:
        """Unpack one struct at the logical position."""
        i = self._i
        if len(self._buf) - i < fmt.size:
            self.ensure(fmt.size, what)
            i = self._i
        self._i = i + fmt.size
        return fmt.unpack_from(self._buf, i)

    def read_prefixed_strings(self, count: int, length: struct.Struct, what: str) -> tuple[bytes, list[int]]:
        """Read `count` strings, each a `length` prefix then that many bytes.

        Returns (region, ends): region holds the records as they are in the file (prefixes
        included) and ends[k] is the offset in region just past record k. This walk is the
        hot loop of opening a model (262k tokens for Gemma-3), so it works on the buffer
        directly and decodes nothing.
        """
        unpack = length.unpack_from
        width = length.size
        parts: list[bytes] = []
        ends: list[int] = []
        append = ends.append
        region_len = 0                 # bytes of region already moved into `parts`
        buf, i, start = self._buf, self._i, self._i
        while len(ends) < count:
            # Walk records until one does not fit in the buffer. unpack_from raises once a
            # length prefix runs past the end (OverflowError if a huge length pushed the
            # position past what an offset can be), so the loop itself checks nothing.
            shift = region_len - start
            try:
                for _ in range(count - len(ends)):
                    i += width + unpack(buf, i)[0]
                    append(i + shift)
            except (struct.error, OverflowError):
                pass
            if ends and ends[-1] - shift > len(buf):   # the last record's bytes ran past the buffer
                ends.pop()
                i = max(start, ends[-1] - shift) if ends else start
            if len(ends) == count:
                break
            # Record len(ends) crosses the end of the buffer: keep what was walked, then refill.
            parts.append(buf[start:i])
            region_len += i - start
            self._i = i
            need = width if i + width > len(buf) else width + unpack(buf, i)[0]
            self.ensure(need, f"string {len(ends)} of {what}")
            buf, i = self._buf, self._i
            start = i
        parts.append(buf[start:i])
        self._i = i
        return b"".join(parts), ends
