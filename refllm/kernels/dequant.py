"""`dequantize`: the raw bytes of a tensor -> its exact float32 values, on one of three backends.

Every ggml type has three decoders that must agree bit for bit:

    backend   where                                   what it is for
    numpy     refllm/kernels/reference/<family>.py    the readable reference, vectorised over blocks
    numba     refllm/kernels/cpu/<family>.py          the fast CPU kernel (parallel over blocks)
    cuda      refllm/kernels/cuda/<family>.cu         the CUDA kernel, run through CuPy

A decoder is found by convention: the type's family (the table below) names the module, and the
type's name in lower case names the function (`Q4_K` -> `kquants.q4_k`, CUDA `dequant_q4_k`).
Every NumPy and Numba decoder takes `blocks`, a (n_blocks, block_bytes) uint8 array; the NumPy
one returns (n_blocks, block_elems) float32, the Numba one fills `out` of that shape.
"""

from __future__ import annotations

import importlib
from math import prod

import numpy as np

from refllm.errors import RefllmError
from refllm.formats import ggml_types
from refllm.formats.ggml_types import GGML_TYPES, GGMLType

BACKENDS = ("numpy", "numba", "cuda")

# type name -> family module. A type missing here has no decoder (the removed ids).
FAMILY: dict[str, str] = {
    "F32": "plain", "F16": "plain", "BF16": "plain", "F64": "plain",
    "I8": "plain", "I16": "plain", "I32": "plain", "I64": "plain",
    "Q4_0": "legacy", "Q4_1": "legacy", "Q5_0": "legacy", "Q5_1": "legacy",
    "Q8_0": "legacy", "Q8_1": "legacy", "Q1_0": "legacy", "Q2_0": "legacy",
    "Q2_K": "kquants", "Q3_K": "kquants", "Q4_K": "kquants", "Q5_K": "kquants",
    "Q6_K": "kquants", "Q8_K": "kquants",
    "IQ1_S": "iquants", "IQ1_M": "iquants", "IQ2_XXS": "iquants", "IQ2_XS": "iquants",
    "IQ2_S": "iquants", "IQ3_XXS": "iquants", "IQ3_S": "iquants", "IQ4_NL": "iquants",
    "IQ4_XS": "iquants",
    "TQ1_0": "ternary", "TQ2_0": "ternary",
    "MXFP4": "fp4", "NVFP4": "fp4",
}


class DequantError(RefllmError, ValueError):
    """Bad input to `dequantize`: the message says what was expected."""


def supported_types() -> list[str]:
    """The names of every type `dequantize` decodes, in type-id order."""
    return [t.name for t in GGML_TYPES.values() if t.name in FAMILY]


def decoder_type(key: int | str) -> GGMLType:
    """The table row for a type id or name that has decoders; DequantError otherwise."""
    try:
        row = ggml_types.ggml_type(key)
    except (KeyError, ValueError, TypeError) as exc:
        raise DequantError(str(exc).strip('"')) from None
    if row.removed:
        raise DequantError(f"ggml type {row.name} (id {row.id}) was removed from ggml; "
                           "no decoder exists for it (requantize the model)")
    return row


_BACKEND_PACKAGE = {"numpy": "reference", "numba": "cpu"}


def decoder(backend: str, type_name: str):
    """The NumPy or Numba decoder function for one type (see the module docstring)."""
    module = importlib.import_module(f"refllm.kernels.{_BACKEND_PACKAGE[backend]}.{FAMILY[type_name]}")
    return getattr(module, type_name.lower())


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
    if byteorder == ">" and FAMILY[row.name] == "plain":
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


def _as_blocks(raw, row: GGMLType, backend: str):
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


def _check_shape(shape, row: GGMLType, n_blocks: int) -> tuple[int, ...]:
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
