"""CUDA decoders, run through CuPy. CuPy is optional (`pip install 'refllm[cuda]'`) and is
imported only when the cuda backend is first used.

The CUDA source is common.cuh, then the lookup tables of refllm/kernels/tables.py written out
as C arrays, then one .cu file per family (the same families as reference/ and cpu/). It is
compiled once per process by NVRTC. `source()` gives the whole text, so a test can compile it
with nvcc, or as plain C++ (tests/cuda_emulator.py), where no GPU is present.
"""

from __future__ import annotations

import functools
from importlib import resources

from refllm.errors import RefllmError
from refllm.type_traits import TypeTraits

COMPILE_OPTIONS = ("--fmad=false", "--std=c++11")
THREADS_PER_BLOCK = 256


class CudaUnavailable(RefllmError):
    """The cuda backend was asked for, but CuPy or a CUDA device is missing."""


def source() -> str:
    """The complete CUDA C++ source of every decoder."""
    from refllm.kernels.dequant import FAMILIES
    from refllm.kernels.tables import cuda_declarations
    parts = [_read("common.cuh"), cuda_declarations()]
    # One file per family, in the table's order (iquants.cu uses legacy.cu's nibble()).
    parts += [_read(f"{family}.cu") for family in FAMILIES]
    return "\n".join(parts)


def kernel_name(type_name: str) -> str:
    return f"dequant_{type_name.lower()}"


def gpu_status() -> tuple[bool, str]:
    """(True, device name) when CuPy and a CUDA device are usable; else (False, the reason)."""
    try:
        cp = _cupy()
    except CudaUnavailable as exc:
        return False, str(exc)
    return True, cp.cuda.runtime.getDeviceProperties(0)["name"].decode()


def run_dequant(row: TypeTraits, blocks, out=None):
    """Decode (n_blocks, block_bytes) uint8 blocks (NumPy or CuPy) on the GPU, into `out`
    (a C-contiguous CuPy float32 array of n_blocks * block_elems) or a new array.

    Returns the CuPy float32 array, left on the device.
    """
    cp = _cupy()
    src = cp.ascontiguousarray(cp.asarray(blocks))
    if out is None:
        out = cp.empty((src.shape[0], row.block_elems), dtype=cp.float32)
    n = out.size
    if n:
        kernel = _module().get_function(kernel_name(row.name))
        grid = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        kernel((grid,), (THREADS_PER_BLOCK,), (src, out, cp.int64(n)))
    return out


@functools.cache
def _module():
    return _cupy().RawModule(code=source(), options=COMPILE_OPTIONS)


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError:
        raise CudaUnavailable("the cuda backend needs CuPy: pip install 'refllm[cuda]'") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError types
        raise CudaUnavailable(f"CuPy is installed but CUDA is not usable: {exc}") from None
    if count == 0:
        raise CudaUnavailable("CuPy is installed but no CUDA device is present")
    return cupy


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()

