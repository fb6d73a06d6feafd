import io
import os
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refllm.formats.errors import TruncatedError
from refllm.formats.seeker import BufferedSeeker


def test_tell_is_logical_position_despite_buffering():
    s = BufferedSeeker(io.BytesIO(bytes(range(100))), buffer_size=64)
    assert s.read_exact(3) == b"\x00\x01\x02"
    assert s.tell() == 3                     # the raw file is already 64 bytes in
    s.seek(5, io.SEEK_CUR)                   # relative to the logical position, not the raw one
    assert s.tell() == 8
    assert s.read_exact(2) == b"\x08\x09"
    s.seek(-1, io.SEEK_END)
    assert s.read_exact(1) == b"\x63"
    s.seek(0)
    assert s.read_exact(1) == b"\x00"


def test_read_exact_raises_at_the_offset_of_the_missing_field():
    s = BufferedSeeker(io.BytesIO(b"abcdef"))
    s.read_exact(4)
    with pytest.raises(TruncatedError) as e:
        s.read_exact(5, "a test field")
    assert e.value.offset == 4
    assert "a test field" in str(e.value) and "only 2 remain" in str(e.value)


def test_a_huge_read_is_refused_before_allocating():
    s = BufferedSeeker(io.BytesIO(b"abc"))
    with pytest.raises(TruncatedError):
        s.read_exact(1 << 62)


def test_reads_from_a_pipe():
    r, w = os.pipe()
    payload = bytes(range(256)) * 40

    def writer():
        with os.fdopen(w, "wb") as f:
            for i in range(0, len(payload), 1000):   # arrives in pieces
                f.write(payload[i:i + 1000])
                f.flush()

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        s = BufferedSeeker(f, buffer_size=100)
        assert s.size is None and s.remaining() is None
        assert s.read_exact(5000) == payload[:5000]
        assert s.tell() == 5000
        assert s.read_exact(len(payload) - 5000) == payload[5000:]
        with pytest.raises(TruncatedError) as e:
            s.read_exact(1, "one more byte")
        assert e.value.offset == len(payload) and "stream ended" in str(e.value)
    t.join()


def _records(strings, width):
    fmt = struct.Struct("<" + ("I" if width == 4 else "Q"))
    return b"".join(fmt.pack(len(s)) + s for s in strings), fmt


@settings(max_examples=200, deadline=None)
@given(strings=st.lists(st.binary(max_size=40), max_size=60), width=st.sampled_from([4, 8]),
       buffer_size=st.integers(1, 64), lead=st.binary(max_size=10))
def test_prefixed_strings_across_any_buffer_boundary(strings, width, buffer_size, lead):
    body, fmt = _records(strings, width)
    s = BufferedSeeker(io.BytesIO(lead + body + b"tail"), buffer_size=buffer_size)
    s.read_exact(len(lead))
    region, ends = s.read_prefixed_strings(len(strings), fmt, "test strings")
    assert region == body
    starts = [0] + ends[:-1]
    assert [region[a + width:b] for a, b in zip(starts, ends)] == strings
    assert s.tell() == len(lead) + len(body)
    assert s.read_exact(4) == b"tail"


@settings(max_examples=100, deadline=None)
@given(strings=st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=20),
       cut=st.integers(0, 10_000), buffer_size=st.integers(1, 64))
def test_prefixed_strings_truncated_anywhere(strings, cut, buffer_size):
    body, fmt = _records(strings, 8)
    cut %= len(body)
    s = BufferedSeeker(io.BytesIO(body[:cut]), buffer_size=buffer_size)
    with pytest.raises(TruncatedError) as e:
        s.read_prefixed_strings(len(strings), fmt, "test strings")
    record_starts = [0]
    for x in strings:
        record_starts.append(record_starts[-1] + 8 + len(x))
    assert e.value.offset == max(a for a in record_starts if a <= cut)   # the record that did not fit


@pytest.mark.parametrize("length", [1 << 62, 2**64 - 9])   # the second pushes the position past 2^63
def test_a_huge_string_length_is_refused_before_allocating(length):
    fmt = struct.Struct("<Q")
    s = BufferedSeeker(io.BytesIO(fmt.pack(3) + b"abc" + fmt.pack(length) + b"x" * 20))
    with pytest.raises(TruncatedError) as e:
        s.read_prefixed_strings(3, fmt, "tokens")
    assert e.value.offset == 11 and "string 1 of tokens" in str(e.value)
