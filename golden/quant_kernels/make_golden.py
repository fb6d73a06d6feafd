"""Make golden/quant_kernels: the bytes libggml's quantizers write for a fixed float32 input.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment):

    python golden/quant_kernels/make_golden.py

llama-cpp-python ships libggml-base.so in its package folder; the script loads it with ctypes
and calls `ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix=NULL)`, the call
llama-quantize makes for every tensor when no importance matrix is given (it dispatches to
`quantize_row_<type>_ref`, and to `ggml_fp32_to_fp16_row` / `ggml_fp32_to_bf16_row_ref` for F16
and BF16). Every type refllm writes (refllm.kernels.quantize.QUANT_FAMILY) gets the same input:

    inputs.npz   edge        float32 [n_edge, 256]   one row per hard case, named in edge_names:
                                                     zeros, a single nonzero, +-1e30 and 3e38,
                                                     1e-30 and subnormals, constant rows, exact
                                                     ties, heavy tails (Student-t, Cauchy), a
                                                     negative-dominant row, all-zero sub-blocks,
                                                     scales that overflow or underflow fp16, ...
                 edge_names  str     [n_edge]
                 normal      float32 [200, 512]      rows 0..99 N(0, 1); rows 100..199 N(mu, s)
                                                     with s = 10**U(-4, 2), mu = s * N(0, 0.5)
    <TYPE>.npz   edge        uint8   [n_edge, row_bytes(256)]   libggml's bytes for each row
                 normal      uint8   [200, row_bytes(512)]

All random values come from numpy.random.default_rng(SEED) in the order written below, so the
input is the same on every machine. provenance.json holds the library versions, ggml's own
version and commit strings, the build (the sha256 of libggml-base.so and whether it holds FMA
instructions, which would change the K-quants' last bits), the system, and the sha256 of every
file written.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).parent
SEED = 20240607
N_NORMAL, NORMAL_ROW = 200, 512

# ggml type ids (ggml.h enum ggml_type) of every type refllm quantizes to.
TYPES = {"F16": 1, "BF16": 30, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
         "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def lib_path() -> Path:
    return Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"


def load_ggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for name in ("ggml_version", "ggml_commit"):
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def quantize(lib: ctypes.CDLL, type_id: int, x: np.ndarray) -> np.ndarray:
    """libggml's bytes for the float32 rows x: uint8 [rows, row_bytes]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n_per_row = x.shape
    row_bytes = lib.ggml_row_size(type_id, n_per_row)
    out = np.zeros((rows, row_bytes), np.uint8)
    written = lib.ggml_quantize_chunk(type_id, x.ctypes.data, out.ctypes.data, 0, rows, n_per_row, None)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def edge_rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The hard cases, one 256-value row each (float32)."""
    n = 256
    normal = lambda: rng.standard_normal(n)                        # noqa: E731
    signs = lambda: rng.choice([-1.0, 1.0], n)                     # noqa: E731
    rows: dict[str, np.ndarray] = {}
    rows["zeros"] = np.zeros(n)
    rows["negative_zeros"] = np.full(n, -0.0)
    for name, at, value in (("one_nonzero_pos", 37, 1.0), ("one_nonzero_neg", 200, -3.5),
                            ("one_nonzero_tiny", 5, 1e-20), ("one_nonzero_huge", 255, 1e30)):
        rows[name] = np.zeros(n)
        rows[name][at] = value
    rows["huge_pm1e30"] = signs() * 1e30
    mixed = normal()
    mixed[rng.choice(n, 4, replace=False)] = [1e30, -1e30, 1e30, -1e30]
    rows["normal_with_pm1e30"] = mixed
    rows["huge_pm3e38"] = signs() * 3e38
    rows["huge_1e20_normal"] = normal() * 1e20
    rows["tiny_1e30_normal"] = normal() * 1e-30
    subnormal_bits = rng.integers(1, 0x800000, n).astype(np.uint32) | (rng.integers(0, 2, n).astype(np.uint32) << 31)
    rows["subnormals"] = subnormal_bits.view(np.float32).astype(np.float64)
    tiny = normal() * 1e-38
    tiny[rng.random(n) < 0.5] = 0.0
    rows["tiny_subnormal_and_zero"] = tiny
    rows["const_one"] = np.ones(n)
    rows["const_minus_two"] = np.full(n, -2.0)
    rows["const_1e-3"] = np.full(n, 1e-3)
    rows["const_7e4"] = np.full(n, 7e4)
    rows["ties_halves"] = np.arange(-128, 128) * 0.5
    rows["ties_integer_grid"] = (np.arange(n) % 16) - 8.0
    rows["ties_quarter_grid"] = (np.arange(n) % 8) * 0.25 - 1.0
    rows["ties_int_plus_half"] = (np.arange(n) % 32) - 15.5
    rows["ties_small_ints"] = rng.integers(-4, 4, n).astype(np.float64)
    rows["ties_0_to_3"] = rng.integers(0, 4, n).astype(np.float64)
    rows["ramp"] = np.linspace(-1.0, 1.0, n)
    rows["ramp_positive"] = np.linspace(0.0, 1.0, n)
    rows["student_t_df1"] = rng.standard_t(1, n)
    rows["student_t_df1_b"] = rng.standard_t(1, n)
    rows["student_t_df2"] = rng.standard_t(2, n)
    rows["student_t_df3"] = rng.standard_t(3, n)
    rows["cauchy_x1e3"] = rng.standard_cauchy(n) * 1e3
    neg = -np.abs(normal()) * 2.0 - 1.0
    neg[123] = -50.0
    rows["negative_dominant"] = neg
    rows["negative_with_small_positive"] = -np.abs(normal()) + 0.05 * (rng.random(n) < 0.1)
    rows["positive_only"] = np.abs(normal())
    half = normal()
    half[:128] = 0.0
    rows["first_half_zero"] = half
    alt = normal()
    alt.reshape(16, 16)[::2] = 0.0
    rows["every_other_16_zero"] = alt
    outlier = normal()
    outlier[100] = 1000.0
    rows["normal_with_outlier_1e3"] = outlier
    for exp in (4, 5, 6, 7, 8, 9):
        rows[f"normal_x1e{exp}"] = normal() * 10.0 ** exp
    for exp in (4, 5, 6, 7, 8, 10):
        rows[f"normal_x1e-{exp}"] = normal() * 10.0 ** -exp
    for k in range(4):
        rows[f"wild_sub_block_scales_{k}"] = normal() * np.repeat(10.0 ** rng.uniform(-6, 6, 16), 16)
    rows["wild_scales_x32"] = normal() * np.repeat(10.0 ** rng.uniform(-3, 3, 8), 32)
    rows["uniform_pm1"] = rng.uniform(-1.0, 1.0, n)
    rows["uniform_0_1"] = rng.uniform(0.0, 1.0, n)
    rows["powers_of_two"] = signs() * 2.0 ** rng.integers(-12, 12, n)
    rows["fp16_exact"] = normal().astype(np.float16).astype(np.float64)
    sparse = normal()
    sparse[rng.random(n) < 0.9] = 0.0
    rows["sparse_90pct_zero"] = sparse
    rows["near_fp16_max"] = rng.uniform(65000.0, 66000.0, n) * signs()
    return {k: v.astype(np.float32) for k, v in rows.items()}


def normal_rows(rng: np.random.Generator) -> np.ndarray:
    plain = rng.standard_normal((N_NORMAL // 2, NORMAL_ROW))
    scale = 10.0 ** rng.uniform(-4, 2, (N_NORMAL // 2, 1))
    mean = scale * rng.normal(0.0, 0.5, (N_NORMAL // 2, 1))
    varied = mean + scale * rng.standard_normal((N_NORMAL // 2, NORMAL_ROW))
    return np.concatenate([plain, varied]).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fma_instructions(path: Path) -> int | None:
    """How many vfmadd*/vfmsub*/vfnmadd* instructions the library holds (None: no objdump)."""
    try:
        text = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(1 for line in text.splitlines() if "\tvfm" in line or "\tvfnm" in line)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def save_npz(path: Path, **arrays) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def main() -> None:
    lib = load_ggml()
    rng = np.random.default_rng(SEED)
    edges = edge_rows(rng)
    edge = np.stack(list(edges.values()))
    normal = normal_rows(rng)
    assert np.isfinite(edge).all() and np.isfinite(normal).all()
    save_npz(HERE / "inputs.npz", edge=edge, edge_names=np.array(list(edges)), normal=normal)
    for name, type_id in TYPES.items():
        save_npz(HERE / f"{name}.npz", edge=quantize(lib, type_id, edge), normal=quantize(lib, type_id, normal))

    files = ["inputs.npz"] + [f"{name}.npz" for name in TYPES]
    provenance = {
        "made_by": "golden/quant_kernels/make_golden.py",
        "command": "python golden/quant_kernels/make_golden.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "ggml_version": lib.ggml_version().decode(),
        "ggml_commit": lib.ggml_commit().decode(),
        "library": {"file": "llama_cpp/lib/libggml-base.so", "sha256": sha256(lib_path()),
                    "fma_instructions": fma_instructions(lib_path())},
        "call": "ggml_quantize_chunk(type, src, dst, start=0, nrows, n_per_row, imatrix=NULL) for all "
                "rows of each array at once",
        "types": TYPES,
        "input": {
            "seed": SEED,
            "generator": "numpy.random.default_rng(seed), drawn in the order of edge_rows() then "
                         "normal_rows() in make_golden.py; values made in float64, stored as float32",
            "edge": f"{len(edges)} rows of 256, one per hard case, named by edge_names",
            "normal": f"{N_NORMAL} rows of {NORMAL_ROW}: rows 0..99 N(0, 1); rows 100..199 mu + s * N(0, 1) "
                      "with s = 10**U(-4, 2) and mu = s * N(0, 0.5) per row",
        },
        "numpy": np.__version__,
        "python": platform.python_version(),
        "system": {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model()},
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python_dist": version("llama_cpp_python"),
        "sha256": {f: sha256(HERE / f) for f in files},
    }
    tmp = HERE / "provenance.json.tmp"
    tmp.write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    tmp.replace(HERE / "provenance.json")


if __name__ == "__main__":
    main()
