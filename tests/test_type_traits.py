"""refllm/type_traits.py, the one table of ggml types: every row resolves, on every backend it
claims, to code that exists, and its columns agree with one another."""

from __future__ import annotations

import pytest

from refllm.ggml_cpu import matmul
from refllm.ggml_cpu.reference.repack import REPACK_BLOCKS
from refllm.kernels import cuda, dequant
from refllm.kernels.quantize import FAMILIES as QUANTIZE_FAMILIES
from refllm.type_traits import GGML_TYPES, ggml_type

ROWS = list(GGML_TYPES.values())


def test_ids_run_from_zero_in_order_and_names_are_unique():
    assert [row.id for row in ROWS] == list(range(len(ROWS)))
    assert len({row.name for row in ROWS}) == len(ROWS)
    assert ggml_type("q4_k") is ggml_type(12) is GGML_TYPES[12]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_every_row_resolves_on_every_backend_it_claims(row):
    if row.removed:
        assert (row.quantize, row.vec_dot_type, row.matmul, row.repack_rows) == (None, None, None, 0)
        return
    function = row.name.lower()
    for module in dequant.FAMILIES[row.decode]:                       # NumPy and Numba decoders
        assert callable(getattr(module, function)), (module.__name__, function)
    assert f"DEQUANT_KERNEL({function}," in cuda.source()
    if row.quantize is not None:
        for module in QUANTIZE_FAMILIES[row.quantize]:
            assert callable(getattr(module, function)), (module.__name__, function)
    if row.matmul is not None:
        assert row.vec_dot_type in ("F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K")
        for module in matmul.FAMILIES[row.matmul]:
            assert callable(module.mul_mat), module.__name__
    if row.repack_rows:
        assert row.matmul is not None and row.name in REPACK_BLOCKS
        assert matmul.family(row.name, (row.repack_rows, row.block_elems)) == "repack"
        assert matmul.family(row.name, (row.repack_rows + 1, row.block_elems)) == row.matmul


def test_every_family_of_every_role_is_used():
    """No module is listed in a dispatcher that no row reaches."""
    assert set(dequant.FAMILIES) == {row.decode for row in ROWS if row.decode}
    assert set(QUANTIZE_FAMILIES) == {row.quantize for row in ROWS if row.quantize}
    assert set(matmul.FAMILIES) == {row.matmul for row in ROWS if row.matmul} | {"repack"}
