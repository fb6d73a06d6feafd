"""golden/matmul_kernels: llama.cpp's own compiled matmul kernels on random blocks.

golden/matmul_kernels/<T>.npz holds, for the types refllm cannot quantize (IQ*, TQ*, MXFP4, NVFP4,
Q1_0, Q2_0) and for Q4_K where llama.cpp does not repack it, random weight matrices, fp16-valued
activations and the products llama.cpp's CPU backend computed from them through ggml's graph
API, in a plain CPU
buffer (tiled.cpp, tinyBLAS or vec_dot, by batch size) or in the CPU_REPACK buffer (repack.cpp's
gemm/gemv), for batch sizes 1 to 33 (golden/matmul_kernels/make_golden.py).

Here: every file matches its provenance (every array's sha256), and every type there has a
--numerics ggml family. The families' own tests (tests/test_ggml_<family>.py) check their bits
against these products with `kernel_products` and `assert_llama_cpp_bits`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from refllm.ggml_cpu import matmul as ggml_matmul

GOLDEN = Path(__file__).parent.parent / "golden" / "matmul_kernels"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
TYPES = tuple(PROVENANCE["types"])


@dataclass(frozen=True)
class KernelProduct:
    """One stored product: llama.cpp's y = x @ W.T for the `weight_type` matrix raw.

    case:    "<buffer>-<rows>x<k>"; buffer "cpu" (not repacked) or "repack" (CPU_REPACK)
    raw:     uint8 [rows * row bytes], the matrix as a GGUF stores it
    x:       float32 [n, k] activations (fp16 values), y: float32 [n, rows]
    """
    weight_type: str
    case: str
    buffer: str
    shape: tuple[int, int]
    raw: np.ndarray
    x: np.ndarray
    y: np.ndarray

    @property
    def repacked(self) -> bool:
        return self.buffer == "repack"


@cache
def kernel_products(weight_type: str) -> tuple[KernelProduct, ...]:
    """Every product of golden/matmul_kernels/<weight_type>.npz (cached), case by case, n rising."""
    products = []
    with np.load(GOLDEN / f"{weight_type}.npz") as npz:
        for case, entry in PROVENANCE["types"][weight_type]["cases"].items():
            rows, k = entry["rows"], entry["k"]
            raw = npz[f"{case}/raw"].reshape(-1)
            x = npz[f"x{k}"].astype(np.float32)
            for n in PROVENANCE["n_list"]:
                products.append(KernelProduct(weight_type, case, entry["buffer"], (rows, k), raw, x[:n],
                                              npz[f"{case}/y{n}"]))
    return tuple(products)


def assert_llama_cpp_bits(weight_type: str, backend: str, cases: tuple[str, ...] | None = None) -> int:
    """Assert ggml_matmul.mul_mat gives every stored product of `weight_type` (those of `cases`,
    or all) bit for bit with `backend`, a repack case as a MUL_MAT weight and a cpu case as
    a matrix kept in the plain CPU buffer (mul_mat_weight=False). Returns how many products were
    checked."""
    checked = 0
    for p in kernel_products(weight_type):
        if cases is not None and p.case not in cases:
            continue
        ours = ggml_matmul.mul_mat(p.x, p.raw, weight_type, p.shape, backend=backend, mul_mat_weight=p.repacked)
        assert ours.dtype == np.float32 and ours.shape == p.y.shape
        assert np.array_equal(ours.view(np.uint32), p.y.view(np.uint32)), \
            f"{weight_type} {p.case} n={p.x.shape[0]} ({backend}): {int(np.sum(ours != p.y))} of {p.y.size} differ"
        checked += 1
    return checked


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("weight_type", TYPES)
def test_golden_file_matches_its_provenance(weight_type):
    arrays = PROVENANCE["types"][weight_type]["arrays"]
    with np.load(GOLDEN / f"{weight_type}.npz") as npz:
        assert sorted(npz.files) == sorted(arrays)
        for name, entry in arrays.items():
            a = npz[name]
            assert (str(a.dtype), list(a.shape), sha256(a)) == (entry["dtype"], entry["shape"], entry["sha256"]), name


# Types of the golden set whose kernels --numerics ggml does not reproduce yet (it falls back on
# its float32 approximation for them).
NOT_REPRODUCED: tuple[str, ...] = ()


@pytest.mark.parametrize("weight_type", TYPES)
def test_every_case_went_where_its_family_says(weight_type):
    """A repack case ran in llama.cpp's CPU_REPACK buffer (its log names the repacked layout)
    and refllm routes it to the repack family; a cpu case ran in the plain CPU buffer and refllm
    has another family for it (or none, for the types of NOT_REPRODUCED)."""
    for case, entry in PROVENANCE["types"][weight_type]["cases"].items():
        shape = (entry["rows"], entry["k"])
        if entry["buffer"] == "repack":
            assert entry["buffer_type"] == ["CPU_REPACK"] and any("repack tensor" in line for line in entry["log"])
            assert ggml_matmul.family(weight_type, shape) == "repack", case
        else:
            assert entry["buffer_type"] == ["CPU"] and not entry["log"]
            family = ggml_matmul.family(weight_type, shape, mul_mat_weight=False)
            if weight_type in NOT_REPRODUCED:
                assert family is None, case
            else:
                assert family is not None and family != "repack", case
