"""`dequantize`: the raw bytes of a tensor -> its exact float32 values, on one of three backends.

Every ggml type has three decoders that must agree bit for bit:

    backend   where                                   what it is for
    numpy     refllm/kernels/reference/<family>.py    the readable reference, vectorised over blocks
    numba     refllm/kernels/cpu/<family>.py          the fast CPU kernel (parallel over blocks)
    cuda      refllm/kernels/cuda/<family>.cu         the CUDA kernel, run through CuPy

A type's decode family (refllm/type_traits.py) names its modules (FAMILIES below), and the
type's name in lower case names the function (`Q4_K` -> `kquants.q4_k`, CUDA `dequant_q4_k`).
Every NumPy and Numba decoder takes `blocks`, a (n_blocks, block_bytes) uint8 array; the NumPy
one returns (n_blocks, block_elems) float32, the Numba one fills `out` of that shape.
"""

from __future__ import annotations

from math import prod

import numpy as np

from refllm import type_traits
from refllm.errors import RefllmError
from refllm.kernels.cpu import fp4 as fp4_numba
from refllm.kernels.cpu import iquants as iquants_numba
from refllm.kernels.cpu import kquants as kquants_numba
from refllm.kernels.cpu import legacy as legacy_numba
from refllm.kernels.cpu import plain as plain_numba
from refllm.kernels.cpu import ternary as ternary_numba
from refllm.kernels.reference import fp4, iquants, kquants, legacy, plain, ternary
from refllm.type_traits import GGML_TYPES, TypeTraits

BACKENDS = ("numpy", "numba", "cuda")

# decode family -> its decoders: (NumPy module, Numba module); the CUDA ones are cuda/<family>.cu
FAMILIES = {
    "plain": (plain, plain_numba),
    "legacy": (legacy, legacy_numba),
    "kquants": (kquants, kquants_numba),
    "iquants": (iquants, iquants_numba),
    "ternary": (ternary, ternary_numba),
    "fp4": (fp4, fp4_numba),
}


class DequantError(RefllmError, ValueError):
    """Bad input to `dequantize`: the message says what was expected."""


def supported_types() -> list[str]:
    """The names of every type `dequantize` decodes, in type-id order."""
    return [t.name for t in GGML_TYPES.values() if t.decode is not None]


def decoder_type(key: int | str) -> TypeTraits:
    """The table row for a type id or name that has decoders; DequantError otherwise."""
    try:
        row = type_traits.ggml_type(key)
    except (KeyError, ValueError, TypeError) as exc:
        raise DequantError(str(exc).strip('"')) from None
    if row.removed:
        raise DequantError(f"ggml type {row.name} (id {row.id}) was removed from ggml; "
                           "no decoder exists for it (requantize the model)")
    return row


def decoder(backend: str, type_name: str):
    """The NumPy ("numpy") or Numba ("numba") decoder function of one type."""
    numpy_module, numba_module = FAMILIES[type_traits.ggml_type(type_name).decode]
    return getattr(numpy_module if backend == "numpy" else numba_module, type_name.lower())


def dequantize(raw, ggml_type: int | str, shape=None, backend: str = "numpy", *,
               byteorder: str = "<", out=None):
    """Decode the bytes of a tensor into float32 values, exactly as ggml does.

    raw:       the tensor's bytes (bytes, memoryview or any uint8 array; a CuPy array for cuda)
    ggml_type: a type id (0..42) or name ("Q4_K", case-insensitive)
    shape:     numpy-order shape of the result (innermost = ggml's ne0), or None for 1-D;
               its last dimension must be a whole number of blocks
    backend:   "numpy" (reference), "numba" (CPU) or "cuda" (returns a CuPy array)
    byteorder: "<" or ">": the byte order of plain multi-byte types (F16, F32, I32...) as stored
    out:       optional C-contiguous float32 array of as many elements (a CuPy array for cuda)
               to fill instead of allocating one; decoding many tensors into one buffer saves
               the allocation and its page faults

    Returns a float32 array of `shape` (`out`, reshaped, when given). Raises DequantError
    (a ValueError) naming what was expected when the type is unknown or removed, the byte
    count is not a whole number of blocks, or the shape or `out` does not match.
    """
    if backend not in BACKENDS:
        raise DequantError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if byteorder not in ("<", ">"):
        raise DequantError(f"byteorder must be '<' or '>', not {byteorder!r}")
    row = decoder_type(ggml_type)
    blocks = _as_blocks(raw, row, backend)
    shape = _check_shape(shape, row, blocks.shape[0])
    if byteorder == ">" and row.decode == "plain":
        # A big-endian GGUF stores plain values byte-swapped; quantized blocks are byte
        # strings and never are.
        blocks = blocks[:, ::-1].copy()
    if out is not None:
        out = _check_out(out, blocks.shape[0] * row.block_elems, backend)
    if backend != "cuda" and blocks.shape[0] == 0:
        values = np.empty((0, row.block_elems), np.float32) if out is None else out
    elif backend == "numpy":
        with np.errstate(all="ignore"):           # inf * 0 -> NaN is part of the format
            values = decoder("numpy", row.name)(blocks)
        if out is not None:
            out.reshape(values.shape)[...] = values
            values = out
    elif backend == "numba":
        values = np.empty((blocks.shape[0], row.block_elems), np.float32) if out is None else out
        decoder("numba", row.name)(np.ascontiguousarray(blocks),
                                   values.reshape(blocks.shape[0], row.block_elems))
    else:
        from refllm.kernels.cuda import run_dequant
        values = run_dequant(row, blocks, out)
    return values.reshape(shape)


def _check_out(out, n_elems: int, backend: str):
    on_gpu = type(out).__module__.startswith("cupy")
    if on_gpu != (backend == "cuda"):
        raise DequantError(f"out must be a {'CuPy' if backend == 'cuda' else 'NumPy'} array "
                           f"for the {backend} backend")
    if out.dtype != np.float32 or out.size != n_elems or not out.flags.c_contiguous:
        raise DequantError(f"out must be a C-contiguous float32 array of {n_elems} elements, not "
                           f"{out.dtype} {tuple(out.shape)}")
    return out


def _as_blocks(raw, row: TypeTraits, backend: str):
    """raw as a (n_blocks, block_bytes) uint8 array, without copying when possible."""
    if backend == "cuda" and type(raw).__module__.startswith("cupy"):
        flat = raw.reshape(-1).view("uint8")     # a CuPy array stays on the device
    elif isinstance(raw, np.ndarray):
        flat = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    else:
        try:
            flat = np.frombuffer(raw, dtype=np.uint8)
        except TypeError:
            raise DequantError(f"raw must be bytes or a uint8 array, not {type(raw).__name__}") from None
    if flat.size % row.block_bytes:
        raise DequantError(
            f"{flat.size} bytes is not a whole number of {row.name} blocks "
            f"({row.block_bytes} bytes per block of {row.block_elems} elements)")
    return flat.reshape(-1, row.block_bytes)


def _check_shape(shape, row: TypeTraits, n_blocks: int) -> tuple[int, ...]:
    n_elems = n_blocks * row.block_elems
    if shape is None:
        return (n_elems,)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape) or prod(shape) != n_elems:
        raise DequantError(f"shape {shape} does not match the data: {n_blocks} {row.name} blocks "
                           f"hold {n_elems} elements")
    if shape and shape[-1] % row.block_elems:
        raise DequantError(f"shape {shape}: the last dimension must be a multiple of the "
                           f"{row.name} block size {row.block_elems}")
    return shape
