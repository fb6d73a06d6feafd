"""Small random-weight models that refllm and llama.cpp can both load: test material for the
forward pass, with golden logits from llama.cpp (golden/logits/).

    from refllm.tools.synth import write_synthetic_model
    path = write_synthetic_model("tiny.gguf", "qwen2", seed=1)

A synthetic model is a real GGUF file of one of the architectures of refllm.engine.config, with
the metadata keys llama.cpp reads, every tensor the architecture needs (named by config.py's
LAYER_TENSORS, so the project has one list of tensor names) and a small working BPE tokenizer.
Its weights are random but shaped like a trained model's, so that its logits are not degenerate:

    matrices            ~ N(0, 1/n_in)          n_in = the row length (what the matrix multiplies)
    token_embd, output  ~ N(0, 9/n_embd)        logits spread about 3 (tied or not), like a
                                                trained model's
    norm weights        ~ 1 + N(0, 0.1^2)
    biases              ~ N(0, 0.2^2)

With tied_output the embeddings are the output matrix too, and a random model then often
predicts its input token again (the token's own embedding is in the residual stream); gemma3,
whose embeddings are multiplied by sqrt(n_embd), nearly always does, so give it an output.weight.

A matrix may be of any type refllm quantizes to, or F32 (MATRIX_TYPES). The five types of the
default mix (F32, F16, Q8_0, Q4_0, Q4_K) are written as random blocks, not by quantizing: random
quants, with the fp16 scales chosen so that the decoded values have about the spread above (see
`_BLOCK_WRITERS`; these bytes are fixed, golden files depend on them). Every other type (BF16,
Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, Q6_K) is written by drawing float32 normal values of that
spread and encoding them with `refllm.quantize`, llama-quantize's exact bytes (`_QUANTIZED`).
The same arguments always give the same bytes: every random number comes from one
numpy Generator(PCG64(seed)), drawn in file order.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from refllm.engine.config import ARCHITECTURES, LAYER_BIASES, LAYER_TENSORS
from refllm.errors import RefllmError
from refllm.formats import GGUFWriter, ValueType
from refllm.kernels import quantize
from refllm.type_traits import ggml_type


class SynthError(RefllmError, ValueError):
    """Arguments that describe no model llama.cpp could load (the message says which and why)."""


# -- what each architecture gets ------------------------------------------------------------------

# The optional bias tensors llama.cpp loads for each architecture (qwen2 has q/k/v biases). A
# tensor llama.cpp does not load makes it refuse the file ("wrong number of tensors").
ARCH_BIASES: dict[str, tuple[str, ...]] = {
    "llama": (), "qwen2": ("attn_q.bias", "attn_k.bias", "attn_v.bias"), "qwen3": (), "gemma3": (),
}
# Architectures whose q/k/v widths llama.cpp fixes at n_embd (no attention.key_length of their own).
FIXED_HEAD_DIM = ("qwen2",)
# Architectures for which llama.cpp loads `rope_freqs.weight`.
ROPE_FREQS_ARCHS = ("llama",)
# tokenizer.ggml.pre per architecture: a pre-tokenizer llama.cpp and refllm both know.
PRE_TOKENIZER = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "gemma3": "llama-bpe"}

# The rope variants: "plain" (rope as the architecture has it), "linear" (positions divided by
# rope_factor: rope.scaling.type/factor) and "rope_freqs" (llama3's per-dimension divisors).
ROPE_VARIANTS = ("plain", "linear", "rope_freqs")
# llama3's rope_freqs recipe (convert_hf_to_gguf.py), with the original context scaled down from
# 8192 to 64 so that a short input already reaches the dimensions it divides.
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context": 64}

# The type of each weight matrix unless `weight_types` says otherwise: every model has all five
# types. 1-D tensors (norms, biases, rope_freqs) are always F32.
DEFAULT_WEIGHT_TYPES: dict[str, str] = {
    "token_embd.weight": "Q8_0", "output.weight": "F16",
    "attn_q.weight": "Q4_K", "attn_k.weight": "Q4_0", "attn_v.weight": "F16",
    "attn_output.weight": "Q8_0", "ffn_gate.weight": "Q4_K", "ffn_up.weight": "Q4_0",
    "ffn_down.weight": "Q4_K",
}
# general.file_type for the type holding the most weights: its LLAMA_FTYPE_* (llama.h). A K-quant
# gets its _M ftype (Q3_K_M, Q4_K_M, Q5_K_M), the one llama-quantize names by that type.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
              "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32}

# Special tokens, at the end of the vocabulary. The first is BOS and EOS.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3          # tokenizer.ggml.token_type values

RMS_EPS = 1e-6


def write_synthetic_model(path, arch: str, *, seed: int = 0, n_layer: int = 2, n_embd: int = 256,
                          n_head: int = 4, n_head_kv: int = 2, n_ff: int = 512, n_vocab: int = 384,
                          head_dim: int | None = None, rope: str = "plain", rope_factor: float = 2.0,
                          rope_base: float = 10000.0, n_swa: int = 0, swa_pattern: int = 6,
                          n_ctx_train: int = 2048, tied_output: bool = False,
                          weight_types: dict[str, str] | None = None) -> Path:
    """Write a random-weight `arch` model to `path` (atomically) and return the path.

    arch is a key of refllm.engine.config.ARCHITECTURES. head_dim is the per-head width of q, k
    and v (default n_embd // n_head; written as attention.key_length/value_length, always for
    gemma3). rope is one of ROPE_VARIANTS; rope_factor is the linear scaling factor. n_swa > 0
    (gemma3 only) gives a sliding window of n_swa positions to all but the last layer of every
    group of swa_pattern layers. tied_output leaves out output.weight (the embeddings are the
    output matrix). weight_types maps a matrix name ("attn_q.weight", "token_embd.weight", ...)
    to one of MATRIX_TYPES (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
    Q6_K), overriding DEFAULT_WEIGHT_TYPES.

    The same arguments give the same bytes. Raises SynthError, saying why, for a shape or
    option llama.cpp could not load: an unknown architecture or rope variant, heads that do
    not divide the widths, a row length that is not whole blocks of its type, a vocabulary
    too small for the byte tokens or too large for the built-in merges.
    """
    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise SynthError(f"unknown architecture {arch!r} (expected one of {', '.join(ARCHITECTURES)})")
    if rope not in ROPE_VARIANTS:
        raise SynthError(f"unknown rope variant {rope!r} (expected one of {', '.join(ROPE_VARIANTS)})")
    if rope == "rope_freqs" and arch not in ROPE_FREQS_ARCHS:
        raise SynthError(f"llama.cpp loads rope_freqs.weight only for {', '.join(ROPE_FREQS_ARCHS)}, not {arch}")
    if rope == "linear" and not rope_factor > 0:
        raise SynthError(f"rope_factor must be > 0, not {rope_factor}")
    if n_swa and not spec.sliding_window:
        raise SynthError(f"{arch} has no sliding window (n_swa must be 0)")
    if n_swa < 0 or swa_pattern < 1:
        raise SynthError(f"n_swa must be >= 0 and swa_pattern >= 1, not {n_swa} and {swa_pattern}")
    for name, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head),
                        ("n_head_kv", n_head_kv), ("n_ff", n_ff), ("n_ctx_train", n_ctx_train)):
        if not 1 <= value < 2**32:
            raise SynthError(f"{name} must be between 1 and 2^32 - 1 (a GGUF uint32), not {value}")
    if seed < 0:
        raise SynthError(f"seed must be >= 0, not {seed}")
    if n_head % n_head_kv:
        raise SynthError(f"n_head_kv {n_head_kv} does not divide n_head {n_head}")
    if head_dim is None:
        if n_embd % n_head:
            raise SynthError(f"n_head {n_head} does not divide n_embd {n_embd} (or give head_dim)")
        head_dim = n_embd // n_head
    elif arch in FIXED_HEAD_DIM and head_dim * n_head != n_embd:
        raise SynthError(f"{arch} needs head_dim * n_head == n_embd ({head_dim} * {n_head} != {n_embd})")
    if head_dim % 2:
        raise SynthError(f"head_dim {head_dim} must be even (rope rotates pairs)")

    sizes = {"n_embd": n_embd, "n_ff": n_ff, "n_head": n_head, "n_head_kv": n_head_kv,
             "head_dim": head_dim, "head_dim_v": head_dim, "n_vocab": n_vocab}
    types = {**DEFAULT_WEIGHT_TYPES, **(weight_types or {})}
    unknown = set(types) - set(DEFAULT_WEIGHT_TYPES)
    if unknown:
        raise SynthError(f"weight_types names {', '.join(sorted(unknown))}, which are not weight matrices "
                         f"(expected some of {', '.join(DEFAULT_WEIGHT_TYPES)})")
    bad = {name: t for name, t in types.items() if t not in MATRIX_TYPES}
    if bad:
        raise SynthError(f"weight_types {bad}: synthetic models use {', '.join(MATRIX_TYPES)}")

    _check_room(path, arch, n_layer, sizes, rope, tied_output, types)
    tensors = _tensor_list(arch, n_layer, sizes, rope, tied_output)   # [(name, numpy shape)]
    for name, shape in tensors:
        kind = _type_of(name, shape, types)
        block = ggml_type(kind).block_elems
        if shape[-1] % block:
            raise SynthError(f"{name} has rows of {shape[-1]}, not a multiple of {kind}'s block of {block} "
                             f"(choose other sizes, or another type in weight_types)")

    tokens, token_types, merges = bpe_vocabulary(n_vocab)

    w = GGUFWriter()
    u32, f32, s = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING
    kvs = [
        ("general.architecture", arch, s),
        ("general.name", f"refllm synthetic {arch}, seed {seed}", s),
        ("general.file_type", _file_type(tensors, types), u32),
        (f"{arch}.context_length", n_ctx_train, u32),
        (f"{arch}.embedding_length", n_embd, u32),
        (f"{arch}.block_count", n_layer, u32),
        (f"{arch}.feed_forward_length", n_ff, u32),
        (f"{arch}.attention.head_count", n_head, u32),
        (f"{arch}.attention.head_count_kv", n_head_kv, u32),
        (f"{arch}.attention.layer_norm_rms_epsilon", RMS_EPS, f32),
        (f"{arch}.rope.freq_base", rope_base, f32),
    ]
    if arch == "gemma3" or head_dim * n_head != n_embd:
        kvs += [(f"{arch}.attention.key_length", head_dim, u32),
                (f"{arch}.attention.value_length", head_dim, u32)]
    if n_swa:
        kvs += [(f"{arch}.attention.sliding_window", n_swa, u32),
                (f"{arch}.attention.sliding_window_pattern", swa_pattern, u32)]
    if rope == "linear":
        kvs += [(f"{arch}.rope.scaling.type", "linear", s), (f"{arch}.rope.scaling.factor", rope_factor, f32)]
    bos = tokens.index(SPECIAL_TOKENS[0])
    kvs += [
        ("tokenizer.ggml.model", "gpt2", s),
        ("tokenizer.ggml.pre", PRE_TOKENIZER[arch], s),
        ("tokenizer.ggml.bos_token_id", bos, u32),
        ("tokenizer.ggml.eos_token_id", bos, u32),
        ("tokenizer.ggml.add_bos_token", True, ValueType.BOOL),
        ("tokenizer.ggml.add_eos_token", False, ValueType.BOOL),
    ]
    for key, value, vtype in kvs:
        w.add_kv(key, value, vtype)
    w.add_kv("tokenizer.ggml.tokens", tokens, ValueType.ARRAY, s)
    w.add_kv("tokenizer.ggml.token_type", np.array(token_types, np.int32), ValueType.ARRAY, ValueType.INT32)
    w.add_kv("tokenizer.ggml.merges", merges, ValueType.ARRAY, s)

    rng = np.random.Generator(np.random.PCG64(seed))

    def tensor_data(name: str, shape: tuple[int, ...], kind: str):
        # drawn while the file is written, one tensor at a time and in file order, so a model
        # far larger than memory can be written and the random stream is the same either way
        def data():
            if name == "rope_freqs.weight":
                yield llama3_rope_divisors(head_dim, rope_base)
            elif len(shape) == 1:
                yield _vector(rng, name, shape[0])
            else:
                yield _MATRIX_WRITERS[kind](rng, shape, _matrix_std(name, shape, n_embd))
        return data

    for name, shape in tensors:
        kind = _type_of(name, shape, types)
        w.add_tensor(name, kind, shape, tensor_data(name, shape, kind))
    w.write(path)
    return Path(path)


def _tensor_list(arch: str, n_layer: int, sizes: dict[str, int], rope: str,
                 tied_output: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the file, in file order: (GGUF name, numpy shape)."""
    spec = ARCHITECTURES[arch]
    dim = lambda expr: math.prod(sizes[f] for f in expr.split("*"))   # noqa: E731  "n_head*head_dim"
    out = [("token_embd.weight", (sizes["n_vocab"], sizes["n_embd"]))]
    if rope == "rope_freqs":
        out.append(("rope_freqs.weight", (sizes["head_dim"] // 2,)))
    biases = dict(LAYER_BIASES)
    for il in range(n_layer):
        for name, shape, needed_if in LAYER_TENSORS:
            if needed_if is None or getattr(spec, needed_if):
                out.append((f"blk.{il}.{name}", tuple(dim(d) for d in shape)))
        for name in ARCH_BIASES[arch]:
            out.append((f"blk.{il}.{name}", tuple(dim(d) for d in biases[name])))
    out.append(("output_norm.weight", (sizes["n_embd"],)))
    if not tied_output:
        out.append(("output.weight", (sizes["n_vocab"], sizes["n_embd"])))
    return out


def _check_room(path, arch: str, n_layer: int, sizes: dict[str, int], rope: str, tied_output: bool,
                types: dict[str, str]) -> None:
    """SynthError when the model would not fit in the free space of path's folder (computed from
    one layer, before the tensor list of every layer is made)."""
    one_layer = _tensor_list(arch, 1, sizes, rope, tied_output)
    per_layer = other = 0
    for name, shape in one_layer:
        row = ggml_type(_type_of(name, shape, types))
        nbytes = math.prod(shape) // row.block_elems * row.block_bytes
        if name.startswith("blk."):
            per_layer += nbytes
        else:
            other += nbytes
    total = other + n_layer * per_layer
    folder = Path(path).resolve().parent
    free = shutil.disk_usage(folder).free if folder.is_dir() else None
    if free is not None and total > free:
        raise SynthError(f"the model would take {total / 1e9:,.1f} GB, more than the {free / 1e9:,.1f} GB "
                         f"free in {folder}")


def _base_name(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'attn_q.weight' (names outside blocks are unchanged)."""
    return re.sub(r"^blk\.\d+\.", "", name)


def _type_of(name: str, shape: tuple[int, ...], types: dict[str, str]) -> str:
    """The type a tensor is written as: F32 for 1-D tensors, else its entry of `types`."""
    return "F32" if len(shape) == 1 else types[_base_name(name)]


def _file_type(tensors, types) -> int:
    """general.file_type: the llama_ftype of the type that holds the most weights."""
    count: Counter[str] = Counter()
    for name, shape in tensors:
        count[_type_of(name, shape, types)] += math.prod(shape)
    return FILE_TYPES[count.most_common(1)[0][0]]


def _matrix_std(name: str, shape: tuple[int, ...], n_embd: int) -> float:
    """The spread a weight matrix is drawn with (see the module docstring)."""
    if _base_name(name) in ("token_embd.weight", "output.weight"):
        return 3.0 / math.sqrt(n_embd)
    return 1.0 / math.sqrt(shape[-1])


def _vector(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """A 1-D tensor, float32 [n]: norm weights near 1, biases near 0."""
    if name.endswith(".bias"):
        return (0.2 * rng.standard_normal(n)).astype(np.float32)
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def llama3_rope_divisors(n_rot: int, rope_base: float) -> np.ndarray:
    """llama3's rope_freqs.weight, float32 [n_rot/2]: each dimension pair's frequency divisor.

    Pairs whose wavelength is short next to the original context keep their frequency
    (divisor 1), long ones are divided by `factor`, and those in between are blended
    (LLAMA3_ROPE, as convert_hf_to_gguf.py writes llama 3.1's). Every divisor is >= 1.
    """
    p = LLAMA3_ROPE
    freqs = rope_base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)     # [n_rot/2]
    wavelen = 2 * np.pi / freqs
    # smooth: 1 for short wavelengths, 0 for long ones, linear in 1/wavelength between
    smooth = (p["original_context"] / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
    smooth = np.clip(smooth, 0.0, 1.0)
    return (1.0 / ((1.0 - smooth) / p["factor"] + smooth)).astype(np.float32)


# -- random blocks ------------------------------------------------------------------------------
# Each writer takes (rng, numpy shape (rows, cols), wanted std) and returns the tensor's bytes
# as uint8 [n_blocks, block_bytes]. Quants are uniform random; the scales set the spread.

def _block_scales(rng: np.random.Generator, n_blocks: int, scale: float) -> np.ndarray:
    """fp16 [n_blocks, 1] scales around `scale` (x 0.75 .. 1.25, as blocks of a real model vary)."""
    return (scale * (0.75 + 0.5 * rng.random((n_blocks, 1)))).astype("<f2")


def _plain(dtype: str):
    def write(rng, shape, std):
        return (std * rng.standard_normal(shape)).astype(dtype)     # (rows, cols)
    return write


def _q8_0(rng, shape, std):
    """block_q8_0: fp16 d, int8 qs[32]; y = q * d. q uniform in -127..127 has std 73.6."""
    n = math.prod(shape) // 32
    d = _block_scales(rng, n, std / 73.6)                                   # (n, 1) f16
    qs = rng.integers(-127, 128, size=(n, 32)).astype(np.int8)              # (n, 32)
    return np.concatenate([d.view(np.uint8), qs.view(np.uint8)], axis=1)     # (n, 34)


def _q4_0(rng, shape, std):
    """block_q4_0: fp16 d, 16 bytes of nibbles; y = (q - 8) * d. The nibbles are drawn in 1..15,
    so that q - 8 is uniform in -7..7: centred, std 4.32."""
    n = math.prod(shape) // 32
    d = _block_scales(rng, n, std / 4.32)                                   # (n, 1) f16
    q = rng.integers(1, 16, size=(n, 2, 16)).astype(np.uint8)               # (n, 2, 16) nibbles
    qs = q[:, 0] | (q[:, 1] << 4)                                           # (n, 16)
    return np.concatenate([d.view(np.uint8), qs], axis=1)                   # (n, 18)


def _q4_k(rng, shape, std):
    """block_q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles;
    y = (d * sc) * q - dmin * m per sub-block of 32.

    sc is drawn in 32..63 and m = sc // 2 with dmin = 15 d, so that dmin * m is about the mean
    of d * sc * q (q uniform in 0..15: mean 7.5, std 4.61): the values are centred, with std
    about d * 48 * 4.61.
    """
    n = math.prod(shape) // 256
    d = _block_scales(rng, n, std / (48 * 4.61))                            # (n, 1) f16
    dmin = (15 * d.astype(np.float32)).astype("<f2")                        # (n, 1) f16
    sc = rng.integers(32, 64, size=(n, 8)).astype(np.uint8)                 # (n, 8) 6-bit
    m = sc >> 1                                                             # (n, 8) 6-bit
    # the inverse of kquants._scale_min_k4: bytes 0..3 and 4..7 hold sc[0..3] and m[0..3] with
    # the top 2 bits of sc[4..7] and m[4..7] above them; bytes 8..11 the low nibbles of both
    packed = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
                             m[:, :4] | ((m[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], axis=1)   # (n, 12)
    qs = rng.integers(0, 256, size=(n, 128)).astype(np.uint8)               # (n, 128)
    return np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs], axis=1)   # (n, 144)


# The random-block writers of the default mix. They are not refllm.quantize: their quants are
# drawn at random, not rounded from values (and F16 rounds float64 values straight to fp16), so
# they give other bytes; they stay, since golden files record the sha256 of models made with them.
_BLOCK_WRITERS = {"F32": _plain("<f4"), "F16": _plain("<f2"), "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_K": _q4_k}


def _quantized(kind: str):
    """A writer for `kind`: float32 N(0, std^2) values, as llama-quantize would encode them."""
    def write(rng, shape, std):
        x = (std * rng.standard_normal(shape)).astype(np.float32)          # (rows, cols)
        return quantize(x, kind)                                            # (rows, row_bytes)
    write.__doc__ = f"{kind}: float32 N(0, std^2) values encoded by refllm.quantize."
    return write


# The types written by quantizing random values (every type refllm.quantize writes, but those above).
_QUANTIZED = ("BF16", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q6_K")
_MATRIX_WRITERS = {**_BLOCK_WRITERS, **{kind: _quantized(kind) for kind in _QUANTIZED}}
# The types a weight matrix may have, in ggml type-id order.
MATRIX_TYPES: tuple[str, ...] = tuple(sorted(_MATRIX_WRITERS, key=lambda k: ggml_type(k).id))


# -- the tokenizer ------------------------------------------------------------------------------

# The text the merges are learned from (original; a little prose and a little code).
TRAINING_TEXT = """\
The river town woke early. Before the sun cleared the hills, the baker had lit the ovens and the
ferry was already crossing with its first load of milk, letters and sleepy workers. Nobody in the
town could remember a morning when the ferry had not crossed, although the older people liked to
say that the river had once frozen so hard that the children walked to the other side and back.
In the market, the sellers set out their tables: apples and pears, honey in small jars, warm bread,
and a great many things that nobody needed but everybody wanted to look at. A clock in the square
struck seven, then eight, and the streets filled with the sound of people talking, bargaining and
laughing. By the afternoon the town was quiet again, and the river carried the light down to the sea.

def count_words(text):
    counts = {}
    for word in text.split():
        word = word.strip(".,;:!?").lower()
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts

for number in range(10):
    print(number, number * number, "squares and counting")
"""
# GPT-2's pre-tokenizer, for ASCII text: words with their leading space, numbers, punctuation, spaces.
_WORDS = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def byte_to_unicode() -> list[str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the others
    (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def bpe_vocabulary(n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """A gpt2-style BPE vocabulary of n_vocab tokens: (tokens, token types, merges).

    Ids 0..255 are the 256 byte characters (byte_to_unicode) in byte order; then the token each
    merge makes (once: two merges can make the same text), the merges learned from TRAINING_TEXT
    by plain BPE (most frequent pair first, ties to the smaller pair); then SPECIAL_TOKENS, as
    CONTROL tokens. Raises SynthError when n_vocab leaves no room for a merge, or asks for more
    merges than TRAINING_TEXT can give.
    """
    n_merges = n_vocab - 256 - len(SPECIAL_TOKENS)
    if n_merges < 1:
        raise SynthError(f"n_vocab {n_vocab} is too small: the byte tokens and {len(SPECIAL_TOKENS)} special "
                         f"tokens need {256 + len(SPECIAL_TOKENS)}, and at least one merge one more")
    chars = byte_to_unicode()
    words = Counter(tuple(chars[b] for b in w.encode("utf-8")) for w in _WORDS.findall(TRAINING_TEXT))
    merges: list[str] = []
    merged: list[str] = []          # the new tokens; a merge may rebuild a token an earlier one made
    while len(merged) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            raise SynthError(f"n_vocab {n_vocab} is too large: the training text gives only {len(merged)} "
                             f"merged tokens (n_vocab at most {256 + len(SPECIAL_TOKENS) + len(merged)})")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        if best[0] + best[1] not in merged:
            merged.append(best[0] + best[1])
        words = Counter({_merge(word, best): count for word, count in words.items()})
    tokens = chars + merged + list(SPECIAL_TOKENS)
    types = [TOKEN_NORMAL] * (256 + n_merges) + [TOKEN_CONTROL] * len(SPECIAL_TOKENS)
    return tokens, types, merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`word` with every occurrence of `pair` (left to right) joined into one symbol."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
