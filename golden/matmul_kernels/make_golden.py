"""Make golden/matmul_kernels: llama.cpp's own matmul kernels on random blocks of the types refllm
cannot quantize (the IQ, TQ, MXFP4, NVFP4, Q1_0 and Q2_0 types) and of Q4_K where it is not
repacked.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment):

    /tmp/golden-venv/bin/python golden/matmul_kernels/make_golden.py

golden/matmul captures the products of a real llama.cpp run, but its models are written by
refllm, which has no quantizer for the IQ types. Here the weight matrices are random bytes
(valid blocks: every index of these formats addresses its grid, and the fp16 / E8M0 scales are
set to small finite values), and the products come from llama.cpp's compiled CPU backend
(libggml-cpu.so of the wheel) through ggml's own graph API, called with ctypes:

    ggml_init (no_alloc)  ->  ggml_new_tensor_2d(type, k, rows) for the weight, F32 (k, n) for x
    ggml_backend_alloc_ctx_tensors_from_buft(weight ctx, buffer type)
        "cpu"     the plain CPU buffer (ggml_backend_alloc_ctx_tensors): ggml_compute_forward_mul_mat
                  picks tiled.cpp (K-quant and IQ types, 8 or more tokens), llamafile's tinyBLAS
                  (IQ4_NL, two or more tokens) or the type's vec_dot, as in any llama.cpp run
        "repack"  ggml_backend_cpu_repack_buffer_type() (CPU_REPACK), which llama.cpp uses for
                  every MUL_MAT weight: ggml_backend_tensor_set repacks the matrix (IQ4_NL and
                  MXFP4 to *_8x8, Q4_K to q4_K_8x8 on AVX2) and the product runs repack.cpp's
                  gemm (rows in fours) and gemv (the last n % 4)
    ggml_mul_mat, ggml_new_graph, ggml_build_forward_expand, ggml_backend_graph_compute on
    ggml_backend_cpu_init() (2 threads; every case is also run on 1 thread and must give the
    same bits), then ggml_backend_tensor_get of the result.

The activations x float32 [n, k] are rounded to fp16 values (stored as float16, exact); llama.cpp
converts them to the weight type's vec_dot_type itself (Q8_0 / Q8_K), as in a model. Every
product uses the first n rows of one activation matrix of N_MAX rows, for each n of N_LIST.

Each type T has <T>.npz with, per case c (CASES[T]: "<buffer>-<rows>x<k>"):

    "<c>/raw"     uint8 [rows, row bytes]: the weight matrix as a GGUF stores it
    "x<k>"        float16 [N_MAX, k]: the activations (shared by the cases with that k)
    "<c>/y<n>"    float32 [n, rows]: llama.cpp's product of x<k>[:n] and the weight

Rows and activations (seeded, PCG64(SEED + type id)): every block random; row 0's sub-block
scales are set to their largest magnitude (so that its integer sums pass 2^24 and their
conversion to float32 rounds); activation row 1 is zeros and row 2 is row 0 of the weight as
ggml's own to_float dequantizes it, scaled to a largest |x| of 1000 (large integer sums), the other rows Gaussian
times exponential^2 (heavy tails). provenance.json records the versions, the build's CPU
features, what llama.cpp logged (which weights it repacked, and how), every case, and the
sha256 of every stored array.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import io
import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).parent
SEED = 20250801
N_LIST = (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33)
N_MAX = max(N_LIST)
THREADS = 2

# ggml type ids (enum ggml_type of llama.cpp@0c1e57098; checked against ggml_type_name below)
TYPE_ID = {"Q4_K": 12, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20,
           "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39,
           "NVFP4": 40, "Q1_0": 41, "Q2_0": 42}
# type -> (weights per block, bytes per block); checked against ggml_blck_size / ggml_type_size
BLOCK = {"Q4_K": (256, 144), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98),
         "IQ1_S": (256, 50), "IQ4_NL": (32, 18), "IQ3_S": (256, 110), "IQ2_S": (256, 82),
         "IQ4_XS": (256, 136), "IQ1_M": (256, 56), "TQ1_0": (256, 54), "TQ2_0": (256, 66),
         "MXFP4": (32, 17), "NVFP4": (64, 36), "Q1_0": (128, 18), "Q2_0": (64, 18)}
# type -> cases (buffer, rows, k). 40 rows: whole 8s (repackable), not whole 16s (a ragged
# tiled.cpp microtile); 36: not whole 8s; k 288: an odd number of 32-blocks (the scalar tail
# of vec_dot_iq4_nl / vec_dot_mxfp4); 576 and 640: odd numbers of NVFP4 / Q2_0 and Q1_0 blocks.
K_CASES = (("cpu", 40, 768),)
CASES = {
    "Q4_K": (("cpu", 40, 768), ("repack", 40, 768)),
    "IQ4_NL": (("cpu", 36, 288), ("cpu", 36, 256), ("repack", 40, 288)),
    "MXFP4": (("cpu", 36, 288), ("cpu", 36, 256), ("repack", 40, 288)),
    **{t: K_CASES for t in ("IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
                            "TQ1_0", "TQ2_0")},
    "NVFP4": (("cpu", 36, 576),),
    "Q1_0": (("cpu", 36, 640),),
    "Q2_0": (("cpu", 36, 576),),
}


def case_name(buffer: str, rows: int, k: int) -> str:
    return f"{buffer}-{rows}x{k}"


# -- ggml through ctypes ------------------------------------------------------------------------

LIB = Path(llama_cpp.__file__).parent / "lib"
P = ctypes.c_void_p


class InitParams(ctypes.Structure):
    """struct ggml_init_params."""
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]


class TypeTraits(ctypes.Structure):
    """struct ggml_type_traits (ggml.h), the fields up to to_float."""
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", P)]


def load_ggml():
    base = ctypes.CDLL(str(LIB / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(LIB / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    sig = {
        "ggml_init": (P, [InitParams]),
        "ggml_new_tensor_2d": (P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        "ggml_mul_mat": (P, [P, P, P]),
        "ggml_new_graph": (P, [P]),
        "ggml_build_forward_expand": (None, [P, P]),
        "ggml_backend_alloc_ctx_tensors_from_buft": (P, [P, P]),
        "ggml_backend_alloc_ctx_tensors": (P, [P, P]),
        "ggml_backend_tensor_set": (None, [P, P, ctypes.c_size_t, ctypes.c_size_t]),
        "ggml_backend_tensor_get": (None, [P, P, ctypes.c_size_t, ctypes.c_size_t]),
        "ggml_backend_graph_compute": (ctypes.c_int, [P, P]),
        "ggml_backend_buffer_free": (None, [P]),
        "ggml_backend_buffer_get_type": (P, [P]),
        "ggml_backend_buft_name": (ctypes.c_char_p, [P]),
        "ggml_free": (None, [P]),
        "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_type_size": (ctypes.c_size_t, [ctypes.c_int]),
        "ggml_blck_size": (ctypes.c_int64, [ctypes.c_int]),
        "ggml_get_type_traits": (ctypes.POINTER(TypeTraits), [ctypes.c_int]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(base, name)
        fn.restype, fn.argtypes = restype, argtypes
    cpu.ggml_backend_cpu_init.restype = P
    cpu.ggml_backend_cpu_set_n_threads.argtypes = [P, ctypes.c_int]
    repack = getattr(cpu, "_Z35ggml_backend_cpu_repack_buffer_typev")    # C++: ggml_backend_cpu_repack_buffer_type()
    repack.restype = P
    cpu.ggml_cpu_init()                                                    # fills the fp16 tables
    return base, cpu, repack


BASE, CPU, REPACK_BUFT = load_ggml()
BACKEND = CPU.ggml_backend_cpu_init()


def check_types() -> None:
    for t, tid in TYPE_ID.items():
        assert BASE.ggml_type_name(tid).decode().upper() == t, (t, BASE.ggml_type_name(tid))
        assert (BASE.ggml_blck_size(tid), BASE.ggml_type_size(tid)) == BLOCK[t], t


def dequantize(kind: str, raw_row: np.ndarray) -> np.ndarray:
    """One row of `kind` blocks as ggml's to_float (ggml_get_type_traits) dequantizes it."""
    traits = BASE.ggml_get_type_traits(TYPE_ID[kind]).contents
    fn = ctypes.CFUNCTYPE(None, P, P, ctypes.c_int64)(traits.to_float)
    k = raw_row.size // BLOCK[kind][1] * BLOCK[kind][0]
    out = np.empty(k, np.float32)
    row = np.ascontiguousarray(raw_row)
    fn(row.ctypes.data, out.ctypes.data, k)
    return out


def ggml_mul_mat(kind: str, raw: np.ndarray, rows: int, k: int, x: np.ndarray, buffer: str,
                 threads: int) -> tuple[np.ndarray, str]:
    """llama.cpp's product x [n, k] (float32) times the `kind` matrix raw [rows, row bytes]:
    (float32 [n, rows], the name of the weight's buffer type)."""
    n = x.shape[0]
    CPU.ggml_backend_cpu_set_n_threads(BACKEND, threads)
    cw = BASE.ggml_init(InitParams(1 << 20, None, True))
    w = BASE.ggml_new_tensor_2d(cw, TYPE_ID[kind], k, rows)
    if buffer == "repack":
        bw = BASE.ggml_backend_alloc_ctx_tensors_from_buft(cw, REPACK_BUFT())
    else:
        bw = BASE.ggml_backend_alloc_ctx_tensors(cw, BACKEND)
    buft = BASE.ggml_backend_buft_name(BASE.ggml_backend_buffer_get_type(bw)).decode()
    data = np.ascontiguousarray(raw)
    BASE.ggml_backend_tensor_set(w, data.ctypes.data, 0, data.nbytes)
    ca = BASE.ggml_init(InitParams(16 << 20, None, True))
    xt = BASE.ggml_new_tensor_2d(ca, 0, k, n)                                # GGML_TYPE_F32
    y = BASE.ggml_mul_mat(ca, w, xt)
    graph = BASE.ggml_new_graph(ca)
    BASE.ggml_build_forward_expand(graph, y)
    ba = BASE.ggml_backend_alloc_ctx_tensors(ca, BACKEND)
    xs = np.ascontiguousarray(x, np.float32)
    BASE.ggml_backend_tensor_set(xt, xs.ctypes.data, 0, xs.nbytes)
    assert BASE.ggml_backend_graph_compute(BACKEND, graph) == 0
    out = np.empty((n, rows), np.float32)
    BASE.ggml_backend_tensor_get(y, out.ctypes.data, 0, out.nbytes)
    for buf in (ba, bw):
        BASE.ggml_backend_buffer_free(buf)
    for ctx in (ca, cw):
        BASE.ggml_free(ctx)
    return out, buft


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, P)   # ggml_log_callback


class Log:
    """ggml's log (ggml_log_set), kept so that provenance can say what was repacked, and how."""

    def __init__(self):
        self.lines: list[str] = []
        self.callback = LOG_CALLBACK(self._callback)                          # kept alive here
        BASE.ggml_log_set.argtypes = [LOG_CALLBACK, P]
        BASE.ggml_log_set(self.callback, None)

    def _callback(self, level, text, _user_data) -> None:
        line = text.decode("utf-8", "replace").strip()
        if line:
            self.lines.append(line)


# -- random blocks ------------------------------------------------------------------------------

def f16_bytes(values) -> np.ndarray:
    return np.frombuffer(np.asarray(values, "<f2").tobytes(), np.uint8).reshape(-1, 2)


def random_blocks(kind: str, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, nb, block bytes]: random bytes, with every scale small and finite; row 0's
    sub-block scales at their largest magnitude."""
    per, size = BLOCK[kind]
    nb = k // per
    b = rng.integers(0, 256, (rows, nb, size), dtype=np.uint8)
    d = rng.choice([-1.0, 1.0], (rows, nb)) * 10.0 ** rng.uniform(-3, -1.7, (rows, nb))
    d[0] = 0.02
    dh = f16_bytes(d.ravel()).reshape(rows, nb, 2)
    if kind == "Q4_K":                       # block_q4_K { d; dmin; scales[12]; qs[128] }
        b[:, :, 0:2] = dh
        b[:, :, 2:4] = f16_bytes(np.abs(d.ravel()) * 0.5).reshape(rows, nb, 2)
        b[0, :, 4:16] = 0xFF                 # 6-bit scales and mins 63
    elif kind == "MXFP4":                    # block_mxfp4 { uint8 e; qs[16] }
        b[:, :, 0] = rng.integers(118, 128, (rows, nb))
        b[0, :, 0] = 127
    elif kind == "NVFP4":                    # block_nvfp4 { uint8 d[4] (UE4M3); qs[32] }: any byte is finite
        b[0, :, 0:4] = 0x7E                  # the largest scale, 240 (/ 2)
    elif kind in ("TQ1_0", "TQ2_0"):         # ... ggml_half d last
        b[:, :, size - 2:size] = dh
    elif kind == "IQ1_M":                    # block_iq1_m { qs[32]; qh[16]; uint16 scales[4] }: d in the top nibbles
        d_bits = dh.copy().view("<u2")[..., 0].astype(np.uint16)                     # [rows, nb]
        sc = b[:, :, 48:56].copy().view("<u2").astype(np.uint16)                      # [rows, nb, 4]
        sc[0] |= 0x0FFF                                                                # 3-bit scales 7
        for i in range(4):
            sc[:, :, i] = (sc[:, :, i] & 0x0FFF) | (((d_bits >> (4 * i)) & 0xF) << 12)
        b[:, :, 48:56] = sc.astype("<u2").view(np.uint8).reshape(rows, nb, 8)
    else:                                    # every other type begins with ggml_half d
        b[:, :, 0:2] = dh
        if kind == "IQ2_XXS":                # qs: 8 groups of 8 bytes, scale in bits 28-31 of bytes 4-7
            b[0, :, 2 + 7:66:8] |= 0xF0
        elif kind == "IQ3_XXS":              # 8 uint32 at 66: scale in bits 28-31
            b[0, :, 66 + 3:98:4] |= 0xF0
        elif kind == "IQ2_XS":               # scales[8] at 66
            b[0, :, 66:74] = 0xFF
        elif kind == "IQ2_S":                # scales[8] at 74
            b[0, :, 74:82] = 0xFF
        elif kind == "IQ3_S":                # scales[4] at 106
            b[0, :, 106:110] = 0xFF
        elif kind == "IQ1_S":                # uint16 qh[8] at 34: scale in bits 12-14
            b[0, :, 34 + 1:50:2] |= 0x70
        elif kind == "IQ4_XS":               # scales_h at 2, scales_l at 4: ls = 0 -> ls - 32 = -32
            b[0, :, 2:8] = 0
    return b


def activations(kind: str, w0: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """float16 [N_MAX, k]: heavy-tailed rows; row 1 zeros, row 2 weight row 0 scaled to a largest |x| of 1000."""
    x = rng.standard_normal((N_MAX, k)) * rng.exponential(1.0, (N_MAX, k)) ** 2
    x[1] = 0
    x[2] = 1000 * w0[:k] / max(1e-30, float(np.abs(w0[:k]).max()))
    x = np.clip(x, -6e4, 6e4).astype(np.float16)
    assert np.all(np.isfinite(x))
    return x


# -- the golden set -----------------------------------------------------------------------------

def make_type(kind: str, log: Log) -> tuple[dict, dict]:
    """(arrays for <kind>.npz, provenance entry)."""
    rng = np.random.Generator(np.random.PCG64(SEED + TYPE_ID[kind]))
    arrays: dict[str, np.ndarray] = {}
    entry = {"type_id": TYPE_ID[kind], "seed": SEED + TYPE_ID[kind], "cases": {}}
    for buffer, rows, k in CASES[kind]:
        c = case_name(buffer, rows, k)
        blocks = random_blocks(kind, rows, k, rng)
        raw = blocks.reshape(rows, -1)
        w0 = dequantize(kind, raw[0])
        assert np.all(np.isfinite(w0)), kind
        if f"x{k}" not in arrays:
            arrays[f"x{k}"] = activations(kind, w0, k, rng)
        x = arrays[f"x{k}"].astype(np.float32)
        arrays[f"{c}/raw"] = raw
        log.lines.clear()
        bufts = set()
        for n in N_LIST:
            y, buft = ggml_mul_mat(kind, raw, rows, k, x[:n], buffer, THREADS)
            again, _ = ggml_mul_mat(kind, raw, rows, k, x[:n], buffer, 1)
            assert np.array_equal(y.view(np.uint32), again.view(np.uint32)), (kind, c, n, "threads")
            assert np.all(np.isfinite(y)), (kind, c, n)
            arrays[f"{c}/y{n}"] = y
            bufts.add(buft)
        entry["cases"][c] = {"buffer": buffer, "buffer_type": sorted(bufts), "rows": rows, "k": k,
                             "log": sorted(set(log.lines))}
    return arrays, entry


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main() -> None:
    check_types()
    log = Log()
    types = {}
    for kind in CASES:
        arrays, entry = make_type(kind, log)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        write_atomic(HERE / f"{kind}.npz", buf.getvalue())
        with np.load(HERE / f"{kind}.npz") as back:                     # reads back bit for bit
            assert sorted(back.files) == sorted(arrays)
            for name, a in arrays.items():
                assert back[name].dtype == a.dtype and np.array_equal(back[name].view(np.uint8), a.view(np.uint8))
        entry["arrays"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": sha256(a)}
                           for name, a in arrays.items()}
        types[kind] = entry
        print(kind, f"{len(buf.getvalue())} bytes", flush=True)
    provenance = {
        "made_by": "golden/matmul_kernels/make_golden.py",
        "command": "/tmp/golden-venv/bin/python golden/matmul_kernels/make_golden.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "libraries": {name: str(LIB / name) for name in ("libggml-base.so", "libggml-cpu.so")},
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "threads": THREADS,
        "n_list": list(N_LIST),
        "seed": SEED,
        "types": types,
    }
    write_atomic(HERE / "provenance.json", (json.dumps(provenance, indent=1) + "\n").encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
