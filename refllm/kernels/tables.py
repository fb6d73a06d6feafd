"""Lookup tables the decoders share: one definition, used by NumPy, Numba and CUDA alike.

Each table is a NumPy array (the IQ grids live in iq_grids.py). `CUDA_TABLES` lists the ones
the CUDA source needs, with their C element type; `cuda_declarations()` writes them as C arrays
into that source.
"""

from __future__ import annotations

import numpy as np

from refllm.kernels import iq_grids

# kvalues_mxfp4: the 16 values of an E2M1 (fp4) nibble, doubled so they are integers
# (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives); MXFP4 and NVFP4 halve their scales to match.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)

# kvalues_iq4nl: the 16 non-uniform levels of an IQ4_NL / IQ4_XS nibble.
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                          1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)

# name in the CUDA source -> (C element type, array). The IQ grids are packed as ggml packs
# them: one row = the bytes of one integer, byte j = weight j of a group of 8 (or 4, IQ3).
CUDA_TABLES: dict[str, tuple[str, np.ndarray]] = {
    "kvalues_mxfp4": ("signed char", KVALUES_MXFP4),
    "kvalues_iq4nl": ("signed char", KVALUES_IQ4NL),
    "ksigns_iq2xs": ("unsigned char", iq_grids.KSIGNS_IQ2XS),
    "iq2xxs_grid": ("unsigned long long", iq_grids.IQ2XXS_GRID),
    "iq2xs_grid": ("unsigned long long", iq_grids.IQ2XS_GRID),
    "iq2s_grid": ("unsigned long long", iq_grids.IQ2S_GRID),
    "iq3xxs_grid": ("unsigned int", iq_grids.IQ3XXS_GRID),
    "iq3s_grid": ("unsigned int", iq_grids.IQ3S_GRID),
    "iq1s_grid": ("unsigned long long", iq_grids.IQ1S_GRID),
}


def cuda_declarations() -> str:
    """Every table in CUDA_TABLES as `static __device__ const T name[N] = {...};`."""
    lines = []
    for name, (c_type, array) in CUDA_TABLES.items():
        flat = array.reshape(-1)
        values = ", ".join(_c_literal(v, c_type) for v in flat.tolist())
        lines.append(f"static __device__ const {c_type} {name}[{flat.size}] = {{{values}}};")
    return "\n".join(lines) + "\n"


def _c_literal(value, c_type: str) -> str:
    if c_type.startswith("unsigned long long"):
        return f"{int(value)}ull"
    if c_type.startswith("unsigned"):
        return f"{int(value)}u"
    return str(int(value))
