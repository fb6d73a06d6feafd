"""The IQ grids and sign table (refllm/kernels/iq_grids.py) equal gguf-py's copies (gguf==0.19.0).

gguf-py keeps each grid as a hex string of 2- or 3-bit indices into the class's `grid_map`;
`init_grid()` turns it into the float32 values (1, 1, rows, per_row). We compare both our packed
tables (what the CUDA source gets) and the unpacked views the NumPy and Numba decoders read.
"""

from __future__ import annotations

import numpy as np
import pytest

from refllm.kernels import iq_grids
from refllm.kernels.tables import CUDA_TABLES, KVALUES_IQ4NL

gguf_quants = pytest.importorskip("gguf.quants")

# gguf-py class -> (our packed table, our unpacked view, its name in CUDA_TABLES)
GRIDS = {
    "IQ2_XXS": (iq_grids.IQ2XXS_GRID, iq_grids.IQ2XXS_GRID8, "iq2xxs_grid"),
    "IQ2_XS": (iq_grids.IQ2XS_GRID, iq_grids.IQ2XS_GRID8, "iq2xs_grid"),
    "IQ2_S": (iq_grids.IQ2S_GRID, iq_grids.IQ2S_GRID8, "iq2s_grid"),
    "IQ3_XXS": (iq_grids.IQ3XXS_GRID, iq_grids.IQ3XXS_GRID8, "iq3xxs_grid"),
    "IQ3_S": (iq_grids.IQ3S_GRID, iq_grids.IQ3S_GRID8, "iq3s_grid"),
    "IQ1_S": (iq_grids.IQ1S_GRID, iq_grids.IQ1S_GRID8, "iq1s_grid"),
    "IQ1_M": (iq_grids.IQ1S_GRID, iq_grids.IQ1S_GRID8, "iq1s_grid"),
}


def gguf_grid(name: str) -> np.ndarray:
    """gguf-py's grid for a type as integers, (rows, per_row), every value one of its grid_map."""
    cls = getattr(gguf_quants, name)
    cls.init_grid()
    values = np.asarray(cls.grid).reshape(cls.grid_shape)
    assert np.isin(values, np.array(cls.grid_map, dtype=np.float32)).all(), name
    return values.astype(np.int64)


def pack(values: np.ndarray) -> np.ndarray:
    """(rows, per_row) byte values (int8 ones as their two's complement) -> ggml's integers."""
    shifts = np.arange(0, 8 * values.shape[1], 8, dtype=np.uint64)
    return ((values.astype(np.uint64) & np.uint64(0xFF)) << shifts).sum(axis=1, dtype=np.uint64)


@pytest.mark.parametrize("name", list(GRIDS))
def test_packed_grid_equals_gguf_py(name):
    packed, _, _ = GRIDS[name]
    expected = pack(gguf_grid(name))
    assert packed.shape == expected.shape, name
    bad = np.flatnonzero(packed.astype(np.uint64) != expected)
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{name}: {bad.size} rows differ; row {i} is 0x{int(packed[i]):016x}, "
                             f"gguf-py's is 0x{int(expected[i]):016x}")


@pytest.mark.parametrize("name", list(GRIDS))
def test_unpacked_grid_equals_gguf_py(name):
    _, unpacked, _ = GRIDS[name]
    expected = gguf_grid(name)
    assert unpacked.shape == expected.shape, name
    assert np.array_equal(unpacked.astype(np.int64), expected), name


@pytest.mark.parametrize("name", list(GRIDS))
def test_cuda_gets_the_packed_grid(name):
    packed, _, cuda_name = GRIDS[name]
    c_type, array = CUDA_TABLES[cuda_name]
    assert array is packed, cuda_name
    assert c_type == {8: "unsigned long long", 4: "unsigned int"}[packed.itemsize], cuda_name


def test_ksigns_equals_gguf_py():
    expected = np.frombuffer(gguf_quants.IQ2_XXS.ksigns, dtype=np.uint8)
    assert iq_grids.KSIGNS_IQ2XS.dtype == np.uint8
    assert np.array_equal(iq_grids.KSIGNS_IQ2XS, expected)
    c_type, array = CUDA_TABLES["ksigns_iq2xs"]
    assert c_type == "unsigned char" and array is iq_grids.KSIGNS_IQ2XS


def test_ksigns_is_seven_bits_plus_even_parity():
    i = np.arange(128)
    parity = np.array([bin(v).count("1") & 1 for v in i])
    assert np.array_equal(iq_grids.KSIGNS_IQ2XS, i | (parity << 7))


def test_iq1_delta_equals_gguf_py():
    assert iq_grids.IQ1S_DELTA.dtype == np.float32
    assert iq_grids.IQ1S_DELTA == gguf_quants.IQ1_S.delta == gguf_quants.IQ1_M.delta


def test_kvalues_iq4nl_equals_gguf_py():
    assert KVALUES_IQ4NL.tolist() == list(gguf_quants.IQ4_NL.kvalues)
