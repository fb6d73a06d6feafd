"""The one table of ggml's tensor types: for each, everything refllm needs to know about it,
one row per type, as ggml's `type_traits` (and ggml-cpu's `type_traits_cpu`).

    column        what it says                                         who reads it
    block_elems   weights per block                                    the readers, the writer,
    block_bytes   bytes per block                                      inspect, every kernel
    decode        the family of its decoders (None: removed)           kernels/dequant.py
    quantize      the family of its quantizers (None: not writable)    kernels/quantize.py
    vec_dot_type  what llama.cpp's CPU backend converts the            ggml_cpu/vec_dot.py
                  activations of a matmul to (None: no CPU matmul)
    matmul        the family of llama.cpp's x86 matmul kernels that    ggml_cpu/matmul.py
                  refllm reproduces (None: not reproduced)
    repack_rows   llama.cpp's AVX2 build repacks a MUL_MAT weight of   ggml_cpu/matmul.py
                  this type whose rows are a multiple of this (0: never)

A family is a module per backend: decode family F is kernels/reference/F.py (NumPy), kernels/
cpu/F.py (Numba) and kernels/cuda/F.cu; quantize family F is kernels/{reference,cpu}/F_quant.py;
matmul family F is ggml_cpu/{reference,cpu}/F.py. The modules of a role are imported by name in
that role's dispatcher (the files above), and within a module a type's function is its name in
lower case (Q4_K -> q4_k). Family names agree across roles where the types agree: plain, legacy,
kquants; the matmul families group the types by the x86 kernels that multiply them (lut4: the
4-bit lookup-table types; lowbit: Q1_0, Q2_0; iquants: the i-quants and TQ) and repack holds
whatever llama.cpp repacks.

A tensor of a block-quantized type is a sequence of blocks along its innermost dimension (ne0):
`block_elems` weights packed into `block_bytes` bytes. Plain types (F32, F16, I8, ...) are
"blocks" of one element. A row of ne0 elements must be a whole number of blocks.

Ids that ggml once had and removed are kept, marked removed, so a file that uses one is named
for what it is rather than reported as unknown. Q4_2 and Q4_3 keep their old sizes because
pre-GGUF (ggjt v1) files may hold them.

Also here: GGUF's file types (`general.file_type`, llama_ftype), by id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TypeTraits:
    id: int
    name: str
    block_elems: int                  # weights per block
    block_bytes: int                  # bytes per block
    decode: str | None = None         # decode family; None for a removed type
    quantize: str | None = None       # quantize family; None: refllm cannot write the type
    vec_dot_type: str | None = None   # activation type of a CPU matmul (type_traits_cpu[].vec_dot_type)
    matmul: str | None = None         # x86 matmul family when the matrix is not repacked
    repack_rows: int = 0              # rows multiple at which a MUL_MAT weight is repacked; 0: never

    @property
    def removed(self) -> bool:
        """ggml dropped the type: no decoder, and no writer, exists for it."""
        return self.decode is None


_K = 256  # QK_K: weights per super-block of the K- and IQ-quants
T = TypeTraits

_TABLE = [
    #  id  name       block bytes decode      quantize   vec_dot  matmul     repack_rows
    T(0,  "F32",      1,   4,   "plain",    None,      "F32",   "plain"),
    T(1,  "F16",      1,   2,   "plain",    "plain",   "F16",   "plain"),
    T(2,  "Q4_0",     32,  18,  "legacy",   "legacy",  "Q8_0",  "legacy",  repack_rows=8),
    T(3,  "Q4_1",     32,  20,  "legacy",   "legacy",  "Q8_1",  "legacy"),
    T(4,  "Q4_2",     16,  10),                   # removed; ggjt v1 only: f16 d + 8 bytes
    T(5,  "Q4_3",     16,  12),                   # removed; ggjt v1 only: f16 d, f16 m + 8 bytes
    T(6,  "Q5_0",     32,  22,  "legacy",   "legacy",  "Q8_0",  "legacy"),
    T(7,  "Q5_1",     32,  24,  "legacy",   "legacy",  "Q8_1",  "legacy"),
    T(8,  "Q8_0",     32,  34,  "legacy",   "legacy",  "Q8_0",  "legacy"),
    T(9,  "Q8_1",     32,  36,  "legacy"),
    T(10, "Q2_K",     _K,  84,  "kquants",  "kquants", "Q8_K",  "kquants"),
    T(11, "Q3_K",     _K,  110, "kquants",  "kquants", "Q8_K",  "kquants"),
    T(12, "Q4_K",     _K,  144, "kquants",  "kquants", "Q8_K",  "kquants", repack_rows=8),
    T(13, "Q5_K",     _K,  176, "kquants",  "kquants", "Q8_K",  "kquants"),
    T(14, "Q6_K",     _K,  210, "kquants",  "kquants", "Q8_K",  "kquants"),
    T(15, "Q8_K",     _K,  292, "kquants"),
    T(16, "IQ2_XXS",  _K,  66,  "iquants",  None,      "Q8_K",  "iquants"),
    T(17, "IQ2_XS",   _K,  74,  "iquants",  None,      "Q8_K",  "iquants"),
    T(18, "IQ3_XXS",  _K,  98,  "iquants",  None,      "Q8_K",  "iquants"),
    T(19, "IQ1_S",    _K,  50,  "iquants",  None,      "Q8_K",  "iquants"),
    T(20, "IQ4_NL",   32,  18,  "iquants",  None,      "Q8_0",  "lut4",    repack_rows=8),
    T(21, "IQ3_S",    _K,  110, "iquants",  None,      "Q8_K",  "iquants"),
    T(22, "IQ2_S",    _K,  82,  "iquants",  None,      "Q8_K",  "iquants"),
    T(23, "IQ4_XS",   _K,  136, "iquants",  None,      "Q8_K",  "iquants"),
    T(24, "I8",       1,   1,   "plain"),
    T(25, "I16",      1,   2,   "plain"),
    T(26, "I32",      1,   4,   "plain"),
    T(27, "I64",      1,   8,   "plain"),
    T(28, "F64",      1,   8,   "plain"),
    T(29, "IQ1_M",    _K,  56,  "iquants",  None,      "Q8_K",  "iquants"),
    T(30, "BF16",     1,   2,   "plain",    "plain",   "BF16",  "plain"),
    T(31, "Q4_0_4_4", 32,  18),                   # removed: repacked at load time since 2024-12
    T(32, "Q4_0_4_8", 32,  18),                   # removed
    T(33, "Q4_0_8_8", 32,  18),                   # removed
    T(34, "TQ1_0",    _K,  54,  "ternary",  None,      "Q8_K",  "iquants"),
    T(35, "TQ2_0",    _K,  66,  "ternary",  None,      "Q8_K",  "iquants"),
    T(36, "IQ4_NL_4_4", 32, 18),                  # removed
    T(37, "IQ4_NL_4_8", 32, 18),                  # removed
    T(38, "IQ4_NL_8_8", 32, 18),                  # removed
    T(39, "MXFP4",    32,  17,  "fp4",      None,      "Q8_0",  "lut4",    repack_rows=8),
    T(40, "NVFP4",    64,  36,  "fp4",      None,      "Q8_0",  "lut4"),
    T(41, "Q1_0",     128, 18,  "legacy",   None,      "Q8_0",  "lowbit"),
    T(42, "Q2_0",     64,  18,  "legacy",   None,      "Q8_0",  "lowbit"),
]

GGML_TYPES: dict[int, TypeTraits] = {t.id: t for t in _TABLE}
GGML_TYPES_BY_NAME: dict[str, TypeTraits] = {t.name: t for t in _TABLE}
assert list(GGML_TYPES) == list(range(len(_TABLE))), "the table must list ids 0..N in order"


def ggml_type(key: int | str) -> TypeTraits:
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
