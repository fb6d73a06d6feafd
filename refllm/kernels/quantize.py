"""`quantize`: float32 rows -> the bytes llama.cpp's reference quantizers write for them.

Without an importance matrix, llama-quantize encodes every tensor with ggml's deterministic
`quantize_row_*_ref` functions (ggml-quants.c), block by block. refllm reproduces them bit for
bit, with C's float32 semantics: sequential float32 sums, no FMA, round-half-to-even where C
calls nearest_int and half-away-from-zero where it calls roundf, truncation where it casts,
and K-quants re-reading their fp16-rounded scales.

Every type has two quantizers that must agree byte for byte:

    backend   where                                          what it is for
    numpy     refllm/kernels/reference/quant_<family>.py     the readable reference, with the C
                                                             function it follows in its docstring
    numba     refllm/kernels/cpu/quant_<family>.py           the fast CPU kernel

A type's quantize family (refllm/type_traits.py) names its modules (FAMILIES below), and the
type's name in lower case names the function (`Q4_K` -> `kquants_quant.q4_k`). Both take `x`,
a float32 (n_blocks, block_elems) array; the NumPy one returns (n_blocks, block_bytes) uint8,
the Numba one fills `out` of that shape.
"""

from __future__ import annotations

import numpy as np

from refllm import type_traits
from refllm.errors import RefllmError
from refllm.kernels.cpu import kquants_quant as kquants_numba
from refllm.kernels.cpu import legacy_quant as legacy_numba
from refllm.kernels.cpu import plain_quant as plain_numba
from refllm.kernels.reference import kquants_quant, legacy_quant, plain_quant
from refllm.type_traits import GGML_TYPES, TypeTraits

QUANT_BACKENDS = ("numpy", "numba")

# quantize family -> its quantizers: (NumPy module, Numba module)
FAMILIES = {
    "plain": (plain_quant, plain_numba),
    "legacy": (legacy_quant, legacy_numba),
    "kquants": (kquants_quant, kquants_numba),
}


class QuantizeError(RefllmError, ValueError):
    """Bad input to `quantize`: the message says what was expected."""


def quantizable_types() -> list[str]:
    """The names of the types `quantize` writes, in type-id order."""
    return [t.name for t in GGML_TYPES.values() if t.quantize is not None]


def quantizer(backend: str, type_name: str):
    """The NumPy ("numpy") or Numba ("numba") quantizer function of one type."""
    numpy_module, numba_module = FAMILIES[type_traits.ggml_type(type_name).quantize]
    return getattr(numpy_module if backend == "numpy" else numba_module, type_name.lower())


def quantize(x, ggml_type: int | str, backend: str = "numba") -> np.ndarray:
    """Encode float32 rows as llama.cpp's reference quantizer for `ggml_type` does.

    x:         float32 [rows, n_per_row] (or [n_per_row]); n_per_row must be a whole number of
               the type's blocks
    ggml_type: a type id or name of `quantizable_types()` ("Q4_K", case-insensitive)
    backend:   "numpy" (the reference) or "numba"; both give the same bytes

    Returns uint8 [rows, row_bytes]: each row's blocks, as they are stored in a GGUF file.
    Raises QuantizeError naming what was expected for an unknown or unsupported type, a row
    length that is not whole blocks, or non-finite values (naming the first bad row).
    """
    if backend not in QUANT_BACKENDS:
        raise QuantizeError(f"unknown backend {backend!r}; expected one of {', '.join(QUANT_BACKENDS)}")
    row_type = _quantizer_type(ggml_type)
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise QuantizeError(f"quantize takes float32 values, not {x.dtype}")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if x2.ndim != 2:
        raise QuantizeError(f"quantize takes [rows, n_per_row] or [n_per_row], not shape {x.shape}")
    rows, n_per_row = x2.shape
    if n_per_row % row_type.block_elems:
        raise QuantizeError(f"rows of {n_per_row} values are not a whole number of {row_type.name} "
                            f"blocks of {row_type.block_elems}")
    finite = np.isfinite(x2).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise QuantizeError(f"row {bad} holds NaN or infinite values; ggml's quantizers need finite input")
    blocks = np.ascontiguousarray(x2).reshape(-1, row_type.block_elems)       # [n_blocks, block_elems]
    if backend == "numpy":
        with np.errstate(all="ignore"):       # C's float arithmetic overflows quietly; so does ours
            raw = quantizer("numpy", row_type.name)(blocks)
    else:
        raw = np.empty((blocks.shape[0], row_type.block_bytes), np.uint8)
        quantizer("numba", row_type.name)(blocks, raw)
    return raw.reshape(rows, -1)


def _quantizer_type(key: int | str) -> TypeTraits:
    try:
        row = type_traits.ggml_type(key)
    except (KeyError, ValueError, TypeError) as exc:
        raise QuantizeError(str(exc).strip('"')) from None
    if row.quantize is None:
        raise QuantizeError(f"refllm cannot write {row.name}; it quantizes to "
                            f"{', '.join(quantizable_types())}")
    return row
