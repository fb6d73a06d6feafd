"""Run refllm's CUDA decoders on the CPU, to test them where no GPU is present.

The CUDA source (refllm.kernels.cuda.source()) is compiled as plain C++ by g++, after a shim
that defines the few CUDA names it uses (__global__, blockIdx, __uint_as_float, ...). A driver
runs each kernel's threads one after another. -ffp-contract=off matches NVRTC's --fmad=false.
This checks the decoders' arithmetic and indexing, not CUDA itself: the GPU tests do that.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from refllm.kernels import cuda

SHIM = r"""
#include <cstring>
#include <cstdint>
#define __global__
#define __device__
#define __forceinline__ inline
struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 blockIdx, threadIdx, blockDim;
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline double __longlong_as_double(long long u) { double f; std::memcpy(&f, &u, 8); return f; }
"""

DRIVER = r"""
extern "C" void run_{name}(const unsigned char* src, float* dst, long long n) {{
    blockDim.x = 256;
    for (long long first = 0; first < n; first += 256) {{
        blockIdx.x = (unsigned)(first / 256);
        for (unsigned t = 0; t < 256; ++t) {{ threadIdx.x = t; dequant_{name}(src, dst, n); }}
    }}
}}
"""


def compiler() -> str | None:
    return shutil.which("g++")


class Emulator:
    """Compiles the CUDA source once (cached by its hash) and runs its kernels on the CPU."""

    def __init__(self, type_names: list[str], build_dir: Path | None = None):
        text = SHIM + cuda.source() + "".join(DRIVER.format(name=n.lower()) for n in type_names)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        build_dir = build_dir or Path(tempfile.gettempdir()) / "refllm-cuda-emulator"
        build_dir.mkdir(parents=True, exist_ok=True)
        lib = build_dir / f"emu-{digest}.so"
        if not lib.exists():
            src = build_dir / f"emu-{digest}.cpp"
            src.write_text(text)
            tmp = lib.with_suffix(".tmp")
            done = subprocess.run([compiler(), "-std=c++11", "-O1", "-ffp-contract=off",
                                   "-fno-fast-math", "-shared", "-fPIC", "-o", str(tmp), str(src)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"g++ could not compile the CUDA source ({src}):\n"
                                   + done.stderr[-4000:])
            tmp.replace(lib)
        self._lib = ctypes.CDLL(str(lib))

    def dequantize(self, type_name: str, blocks: np.ndarray, block_elems: int) -> np.ndarray:
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        out = np.empty((blocks.shape[0], block_elems), dtype=np.float32)
        fn = getattr(self._lib, f"run_{type_name.lower()}")
        fn(blocks.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
           ctypes.c_longlong(out.size))
        return out
