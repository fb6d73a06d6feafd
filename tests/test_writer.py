"""GGUFWriter round trips through refllm's reader and through gguf-py's GGUFReader."""

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refllm
from refllm.formats import GGUFWriter, NestedArray, StringArray, ValueType, copy_model
from refllm.formats.values import SCALAR_DTYPES
from refllm.formats.writer import encode_value
from refllm.type_traits import GGML_TYPES_BY_NAME

INT_RANGES = {ValueType.UINT8: (0, 2**8 - 1), ValueType.INT8: (-2**7, 2**7 - 1),
              ValueType.UINT16: (0, 2**16 - 1), ValueType.INT16: (-2**15, 2**15 - 1),
              ValueType.UINT32: (0, 2**32 - 1), ValueType.INT32: (-2**31, 2**31 - 1),
              ValueType.UINT64: (0, 2**64 - 1), ValueType.INT64: (-2**63, 2**63 - 1)}
texts = st.text(max_size=30)


def scalar_values(vtype):
    if vtype in INT_RANGES:
        return st.integers(*INT_RANGES[vtype])
    if vtype == ValueType.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == ValueType.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == ValueType.BOOL:
        return st.booleans()
    return texts


SCALAR_TYPES = [t for t in ValueType if t != ValueType.ARRAY]


def array_values(depth=0):
    """(value as the reader returns it) for an array of random element type."""
    def of(elem):
        if elem == ValueType.STRING:
            return st.lists(texts, max_size=12).map(StringArray.from_strings)
        return st.lists(scalar_values(elem), max_size=12).map(
            lambda xs, e=elem: np.array(xs, dtype=SCALAR_DTYPES[e].newbyteorder("=")))
    choices = [of(t) for t in SCALAR_TYPES]
    if depth < 2:
        choices.append(st.lists(st.deferred(lambda: array_values(depth + 1)), max_size=3).map(NestedArray))
    return st.one_of(choices)


@st.composite
def kv_lists(draw):
    keys = draw(st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=10))
    kvs = []
    for key in keys:
        if key == "general.alignment":
            continue
        if draw(st.booleans()):
            vtype = draw(st.sampled_from(SCALAR_TYPES))
            kvs.append((key, vtype, draw(scalar_values(vtype))))
        else:
            kvs.append((key, ValueType.ARRAY, draw(array_values())))
    return kvs


TENSOR_TYPES = ["F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "Q4_0", "Q5_1", "Q8_0",
                "Q2_K", "Q4_K", "Q6_K", "IQ2_XXS", "IQ4_NL", "TQ1_0", "MXFP4"]


@st.composite
def tensor_lists(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=16), unique=True, max_size=5))
    out = []
    for name in names:
        row = GGML_TYPES_BY_NAME[draw(st.sampled_from(TENSOR_TYPES))]
        shape = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
        ne0 = row.block_elems * draw(st.integers(1, 2))
        shape = tuple(shape) + (ne0,)
        nbytes = int(np.prod(shape)) // row.block_elems * row.block_bytes
        out.append((name, row.name, shape, draw(st.binary(min_size=nbytes, max_size=nbytes))))
    return out


def same(a, b):
    if isinstance(a, NestedArray):
        return isinstance(b, NestedArray) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, StringArray):
        return isinstance(b, StringArray) and list(a) == list(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b and type(a) is type(b)


def gguf_py_view(value):
    """What gguf-py's ReaderField.contents() gives for a value refllm reads."""
    if isinstance(value, (StringArray, NestedArray)):
        return [gguf_py_view(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(kvs=kv_lists(), tensors=tensor_lists(), alignment=st.sampled_from([None, 1, 8, 64]))
def test_round_trip_through_refllm_and_gguf_py(tmp_path, kvs, tensors, alignment):
    w = GGUFWriter()
    if alignment:
        w.add_kv("general.alignment", alignment, ValueType.UINT32)
    for key, vtype, value in kvs:
        w.add_kv(key, value, vtype)
    for name, type_name, shape, data in tensors:
        w.add_tensor(name, type_name, shape, data)
    path = tmp_path / "rt.gguf"
    w.write(path)

    m = refllm.open(path)
    assert m.version == 3 and m.byteorder == "<" and not m.problems
    expected_keys = (["general.alignment"] if alignment else []) + [k for k, _, _ in kvs]
    assert list(m.metadata) == expected_keys                      # KV order kept
    for key, vtype, value in kvs:
        assert m.kv_types[key] == vtype
        assert same(value, m.metadata[key]), key
    for (name, type_name, shape, data), t in zip(tensors, m.tensors):
        assert (t.name, t.type_name, t.shape) == (name, type_name, shape)
        assert t.offset % (alignment or 32) == 0
        assert bytes(m.tensor_bytes(name)) == data

    r = gguf.GGUFReader(path)
    for key, vtype, value in kvs:
        field = r.fields[key]
        assert field.types[0] == vtype
        if isinstance(value, NestedArray):
            # gguf-py's contents() flattens arrays of arrays (and drops empty ones), so check
            # that it parsed exactly the bytes refllm wrote for this field instead.
            raw = b"".join(np.asarray(part).tobytes() for part in field.parts)
            assert raw.endswith(encode_value(vtype, value)), key
        else:
            assert field.contents() == gguf_py_view(value), key
    assert [t.name for t in r.tensors] == [name for name, *_ in tensors]
    for (_name, type_name, shape, data), rt in zip(tensors, r.tensors):
        assert rt.tensor_type.name == type_name and tuple(int(d) for d in rt.shape) == shape[::-1]
        assert bytes(np.asarray(rt.data).reshape(-1).view(np.uint8)) == data


def test_copy_of_a_real_model_is_byte_identical(tmp_path, smollm2_path):
    """Copying every KV and tensor of a llama.cpp-written file reproduces it byte for byte."""
    out = tmp_path / "copy.gguf"
    copy_model(refllm.open(smollm2_path)).write(out)
    assert out.read_bytes() == smollm2_path.read_bytes()


def test_streamed_tensor_data(tmp_path):
    w = GGUFWriter()
    chunks = [np.arange(1000, dtype=np.float32), np.arange(24, dtype=np.float32)]
    w.add_tensor("big", "F32", (1024,), lambda: iter(chunks))
    w.write(tmp_path / "s.gguf")
    m = refllm.open(tmp_path / "s.gguf")
    assert m.tensor_bytes("big").view("<f4").tolist() == list(range(1000)) + list(range(24))


@pytest.mark.parametrize("call,match", [
    (lambda w: w.add_kv("k", 2**40, ValueType.UINT32), "does not fit UINT32"),
    (lambda w: w.add_kv("k", [1, -1], ValueType.ARRAY, ValueType.UINT8), "do not fit UINT8"),
    (lambda w: w.add_kv("k", [], ValueType.ARRAY), "element type"),
    (lambda w: w.add_kv("general.alignment", 48, ValueType.UINT32), "power of two"),
    (lambda w: w.add_tensor("t", "Q8_0", (4, 48), bytes(4 * 51)), "whole Q8_0 blocks"),
    (lambda w: w.add_tensor("t", "F32", (4,), bytes(15)), "15 bytes given"),
    (lambda w: w.add_tensor("t", "F32", (1, 1, 1, 1, 1), bytes(4)), "dims"),
    (lambda w: w.add_tensor("t", "Q4_0_4_4", (32,), bytes(18)), "removed"),
    (lambda w: w.add_tensor("t", "nope", (32,), bytes(18)), "unknown ggml type"),
])
def test_writer_refuses_bad_input(call, match):
    with pytest.raises((ValueError, KeyError), match=match):
        call(GGUFWriter())


def test_duplicates_are_refused():
    w = GGUFWriter()
    w.add_kv("k", 1)
    with pytest.raises(ValueError, match="twice"):
        w.add_kv("k", 2)
    w.add_tensor("t", "F32", (1,), bytes(4))
    with pytest.raises(ValueError, match="twice"):
        w.add_tensor("t", "F32", (1,), bytes(4))


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    w = GGUFWriter()
    w.add_tensor("t", "F32", (4,), lambda: iter([bytes(8)]))   # gives 8 of 16 bytes
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    with pytest.raises(ValueError, match="gave 8 bytes"):
        w.write(out)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_names_that_are_not_utf8_round_trip(tmp_path):
    from gguf_bytes import STRING, build_gguf
    src = tmp_path / "src.gguf"
    src.write_bytes(bytes(build_gguf([(b"key\xff", STRING, b"v\xfe")],
                                     [(b"t\x80", 0, (4,), bytes(16))]).data))
    out = tmp_path / "out.gguf"
    copy_model(refllm.open(src)).write(out)
    assert out.read_bytes() == src.read_bytes()
