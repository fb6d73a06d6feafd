"""Mutated headers of the real models: only FormatError comes out, and nothing hangs.

Each example takes a real file's header (plus a little data), then flips bits, truncates it,
or writes a huge value into a real length or count field. The result must either open or
raise FormatError; when it opens, the whole inspect report must render too. The hypothesis
deadline is there to catch a hang, not to measure speed.
"""

import io
import os
import struct
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refllm
from refllm.formats import FormatError, ValueType, read_model
from refllm.formats.inspect import build_report, render_text

HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**40, 2**32 - 1, 2**32, 0]


def _length_fields(model):
    """Offsets of u64 length/count fields in a v3 header: key lengths, string lengths, array
    counts, tensor name lengths and dims."""
    offsets = [8, 16]                                        # n_tensors, n_kv
    for key, at in model.kv_offsets.items():
        offsets.append(at)                                   # key length
        value_at = at + 8 + len(key.encode()) + 4
        if model.kv_types[key] == ValueType.STRING:
            offsets.append(value_at)
        elif model.kv_types[key] == ValueType.ARRAY:
            offsets.append(value_at + 4)                     # element count
            if model.metadata[key].__class__.__name__ == "StringArray" and len(model.metadata[key]):
                offsets.append(value_at + 12)                # first string's length
    for t in model.tensors:
        offsets.append(t.info_offset)                        # name length
        dims_at = t.info_offset + 8 + len(t.name.encode()) + 4
        offsets += [dims_at + 8 * j for j in range(len(t.ne))]
    return offsets


class Header(tuple):
    def __repr__(self):
        return f"<header of {len(self[0])} bytes>"


@pytest.fixture(scope="session")
def header(real_model_path):
    path = real_model_path
    model = refllm.open(path)
    with open(path, "rb") as f:
        head = f.read(model.data_offset + 4096)
    return Header((head, _length_fields(model)))


def _must_open_or_raise_format_error(data: bytes) -> None:
    try:
        model = read_model(io.BytesIO(data), strict=False)
    except FormatError:
        return
    report = build_report(model, array_limit=8)
    for _ in render_text(report):
        pass


FUZZ = settings(max_examples=int(os.environ.get("REFLLM_FUZZ_EXAMPLES", 40)), deadline=timedelta(seconds=10),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_bit_flips(header, data):
    head, _ = header
    buf = bytearray(head)
    for _ in range(data.draw(st.integers(1, 8))):
        # Half the flips land in the first 64 KiB, where the counts and small KVs live.
        limit = data.draw(st.sampled_from([min(len(buf), 1 << 16), len(buf)]))
        pos = data.draw(st.integers(0, limit - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    _must_open_or_raise_format_error(bytes(buf))


@FUZZ
@given(data=st.data())
def test_truncation(header, data):
    head, fields = header
    cut = data.draw(st.one_of(st.integers(0, len(head)), st.sampled_from(fields)))
    _must_open_or_raise_format_error(head[:cut])


@FUZZ
@given(data=st.data())
def test_length_fields_set_huge(header, data):
    head, fields = header
    buf = bytearray(head)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(fields))
        struct.pack_into("<Q", buf, at, data.draw(st.sampled_from(HUGE + [len(buf), len(buf) + 1])))
    _must_open_or_raise_format_error(bytes(buf))
