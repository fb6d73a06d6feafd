"""The one table of ggml tensor types and of GGUF file types (`general.file_type`).

Every part of refllm that needs a block size asks this table: the readers (to size and check
tensors), `inspect` (names, bits per weight) and the kernels (which decoder to run).

A tensor of a block-quantized type is a sequence of blocks along its innermost dimension (ne0):
`block_elems` weights packed into `block_bytes` bytes. Plain types (F32, F16, I8, ...) are
"blocks" of one element. A row of ne0 elements must be a whole number of blocks.

Ids that ggml once had and removed are kept, marked removed, so a file that uses one is named
for what it is rather than reported as unknown. Q4_2 and Q4_3 keep their old sizes because
pre-GGUF (ggjt v1) files may hold them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_elems: int   # weights per block
    block_bytes: int   # bytes per block
    removed: bool = False


_K = 256  # QK_K: weights per super-block of the K- and IQ-quants

#            id  name          block  bytes  removed
_TABLE = [
    GGMLType(0, "F32", 1, 4),
    GGMLType(1, "F16", 1, 2),
    GGMLType(2, "Q4_0", 32, 18),
    GGMLType(3, "Q4_1", 32, 20),
    GGMLType(4, "Q4_2", 16, 10, removed=True),     # ggjt v1 only: f16 d + 8 bytes
    GGMLType(5, "Q4_3", 16, 12, removed=True),     # ggjt v1 only: f16 d, f16 m + 8 bytes
    GGMLType(6, "Q5_0", 32, 22),
    GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34),
    GGMLType(9, "Q8_1", 32, 36),
    GGMLType(10, "Q2_K", _K, 84),
    GGMLType(11, "Q3_K", _K, 110),
    GGMLType(12, "Q4_K", _K, 144),
    GGMLType(13, "Q5_K", _K, 176),
    GGMLType(14, "Q6_K", _K, 210),
    GGMLType(15, "Q8_K", _K, 292),
    GGMLType(16, "IQ2_XXS", _K, 66),
    GGMLType(17, "IQ2_XS", _K, 74),
    GGMLType(18, "IQ3_XXS", _K, 98),
    GGMLType(19, "IQ1_S", _K, 50),
    GGMLType(20, "IQ4_NL", 32, 18),
    GGMLType(21, "IQ3_S", _K, 110),
    GGMLType(22, "IQ2_S", _K, 82),
    GGMLType(23, "IQ4_XS", _K, 136),
    GGMLType(24, "I8", 1, 1),
    GGMLType(25, "I16", 1, 2),
    GGMLType(26, "I32", 1, 4),
    GGMLType(27, "I64", 1, 8),
    GGMLType(28, "F64", 1, 8),
    GGMLType(29, "IQ1_M", _K, 56),
    GGMLType(30, "BF16", 1, 2),
    GGMLType(31, "Q4_0_4_4", 32, 18, removed=True),  # repacked at load time since 2024-12
    GGMLType(32, "Q4_0_4_8", 32, 18, removed=True),
    GGMLType(33, "Q4_0_8_8", 32, 18, removed=True),
    GGMLType(34, "TQ1_0", _K, 54),
    GGMLType(35, "TQ2_0", _K, 66),
    GGMLType(36, "IQ4_NL_4_4", 32, 18, removed=True),
    GGMLType(37, "IQ4_NL_4_8", 32, 18, removed=True),
    GGMLType(38, "IQ4_NL_8_8", 32, 18, removed=True),
    GGMLType(39, "MXFP4", 32, 17),
    GGMLType(40, "NVFP4", 64, 36),
    GGMLType(41, "Q1_0", 128, 18),
    GGMLType(42, "Q2_0", 64, 18),
]

GGML_TYPES: dict[int, GGMLType] = {t.id: t for t in _TABLE}
GGML_TYPES_BY_NAME: dict[str, GGMLType] = {t.name: t for t in _TABLE}
assert list(GGML_TYPES) == list(range(len(_TABLE))), "the table must list ids 0..N in order"


def ggml_type(key: int | str) -> GGMLType:
    """The table row for a type id or name (case-insensitive). Raises KeyError naming the valid range."""
    if isinstance(key, str):
        row = GGML_TYPES_BY_NAME.get(key.upper())
        if row is None:
            raise KeyError(f"unknown ggml type name {key!r}; known: {', '.join(GGML_TYPES_BY_NAME)}")
        return row
    row = GGML_TYPES.get(int(key))
    if row is None:
        raise KeyError(f"unknown ggml type id {key}; known ids are 0..{len(_TABLE) - 1}")
    return row


def type_name(type_id: int) -> str:
    """A display name for any id: the table's name, or 'unknown(N)'."""
    row = GGML_TYPES.get(type_id)
    return row.name if row else f"unknown({type_id})"


# `general.file_type` (llama_ftype): what the file was quantized to as a whole.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16",
    5: "Q4_2 (removed)", 6: "Q4_3 (removed)",
    7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L",
    14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    33: "Q4_0_4_4 (removed)", 34: "Q4_0_4_8 (removed)", 35: "Q4_0_8_8 (removed)",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}


def file_type_name(file_type: int | None) -> str | None:
    if file_type is None:
        return None
    return FILE_TYPES.get(int(file_type), f"unknown({file_type})")
