"""Quantize a whole model file as llama-quantize does, to the byte.

`quantize_model(src, dst, "Q4_K_M")` follows `llama_model_quantize_impl` (src/llama-quant.cpp,
llama.cpp@0c1e57098) without an importance matrix:

1. tensors in llama.cpp's order: by block number (non-block tensors first), then by name;
2. each tensor's type: kept unless `allows_quantization`; else the ftype's default type,
   changed by the mixture rules (`mixture_type`) unless `pure`, then the shape fallback;
3. metadata: every input key in order except split.*, then general.quantization_version and
   general.file_type, which llama.cpp removes and appends, so they are always the last two;
4. data: each tensor decoded exactly to float32 (F16/BF16 widen exactly; a quantized input
   needs allow_requantize) and encoded with refllm.quantize, which writes the bytes of ggml's
   `quantize_row_*_ref`; tensors whose type does not change are copied.

Only the ftypes of FTYPES are offered: the i-quants need an importance matrix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from refllm.errors import RefllmError
from refllm.formats import GGUFWriter, ValueType, open_model
from refllm.kernels.dequant import dequantize
from refllm.kernels.quantize import QuantizeError, quantizable_types, quantize
from refllm.type_traits import ggml_type

# ftype name -> (llama_ftype id written as general.file_type, its default tensor type)
FTYPES: dict[str, tuple[int, str]] = {
    "F16": (1, "F16"), "BF16": (32, "BF16"),
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q8_0": (7, "Q8_0"),
    "Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}
QUANTIZATION_VERSION = 2            # GGML_QNT_VERSION
UNQUANTIZED = ("F32", "F16", "BF16")
# When a type does not fit a tensor's rows (tensor_type_fallback); F16 if that does not fit either.
SHAPE_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# Names never quantized (tensor_allows_quantization), besides 1-D tensors and *_norm.weight.
NEVER_QUANTIZED = ("ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
                   "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
                   "time_mix_", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_",
                   ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
CHUNK_ELEMENTS = 1 << 22           # values quantized at a time (16 MiB of float32)


class QuantizeFileError(RefllmError, ValueError):
    """A model that cannot be quantized as asked; the message names the tensor and row."""


@dataclass(frozen=True)
class Plan:
    """What quantize_model will write for one tensor."""
    name: str
    shape: tuple[int, ...]          # numpy order
    source_type: str
    target_type: str


# -- which type each tensor gets --------------------------------------------------------------

def tensor_order_key(name: str) -> tuple[int, bytes]:
    """llama.cpp's weight_name_comparer: the block number of "blk.N." (-1 otherwise), then the name."""
    m = re.match(r"blk\.(-?\d+)\.", name)
    return (int(m.group(1)) if m else -1, name.encode("utf-8"))


def allows_quantization(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization: 2-D or 3-D tensors named *weight, but not norms and the
    small or special tensors of NEVER_QUANTIZED."""
    return (n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and not any(part in name for part in NEVER_QUANTIZED))


def category(name: str) -> str:
    """tensor_get_category: the tensor's role in the mixture rules (first match wins)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                      ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                      ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                      ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits: the first and last eighth, and every
    third layer in between (C integer division)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class _Counters:
    """quantize_state_impl: how many attn_v / ffn_down tensors were seen so far, and in all."""
    n_attn_v: int
    n_ffn_down: int
    i_attn_v: int = 0
    i_ffn_down: int = 0


def mixture_type(ftype: str, default: str, name: str, n_cols: int, tied: bool, arch: str,
                 n_gqa: int, n_expert: int, is_70b: bool, counters: _Counters) -> str:
    """llama_tensor_get_type_impl for the ftypes of FTYPES: the type the ftype's mixture gives
    this tensor (before the shape fallback). Updates the attn_v and ffn_down counters."""
    cat = category(name)
    new = default
    if cat == "output" or (tied and cat == "token_embd"):
        if arch == "falcon" or n_cols % ggml_type(default).block_elems:
            new = "Q8_0"
        elif default != "Q8_0":
            new = "Q6_K"
    elif cat == "token_embd":
        pass
    elif cat == "attn_v":
        i, n = counters.i_attn_v, counters.n_attn_v
        if ftype == "Q2_K":
            new = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            new = "Q5_K"
        if is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if n_expert == 8:
            new = "Q8_0"
        counters.i_attn_v += 1
    elif cat == "attn_k":
        if n_expert == 8:
            new = "Q8_0"
    elif cat == "ffn_down":
        i, n = counters.i_ffn_down, counters.n_ffn_down
        if n_expert > 1:                                   # experts: the layer from the name
            i = int(re.match(r"blk\.(\d+)\.", name).group(1))
        if ftype == "Q2_K":
            new = "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else (
                "Q4_K" if arch != "falcon" or use_more_bits(i, n) else "Q3_K")
        elif ftype == "Q3_K_L":
            new = "Q4_K" if arch == "falcon" else "Q5_K"
        elif ftype == "Q4_K_M":
            if arch == "falcon":
                new = "Q6_K" if i < n // 16 else ("Q5_K" if use_more_bits(i, n) else "Q4_K")
            elif use_more_bits(i, n):
                new = "Q6_K"
        elif ftype == "Q5_K_M" and use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and arch != "falcon" and i < n // 8:
            new = "Q5_K"
        counters.i_ffn_down += 1
    elif cat == "attn_output":
        if arch != "falcon":
            if n_expert == 8:
                if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    new = "Q5_K"
            else:
                new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, new)
        elif ftype == "Q3_K_L":
            new = "Q4_K"
    return new


def shape_fallback(type_name: str, n_cols: int) -> str:
    """tensor_type_fallback: a type whose blocks divide the rows, else F16."""
    if n_cols % ggml_type(type_name).block_elems == 0:
        return type_name
    fallback = SHAPE_FALLBACK.get(type_name, type_name)
    return fallback if n_cols % ggml_type(fallback).block_elems == 0 else "F16"


def plan_types(model, ftype: str, pure: bool = False, output_type: str | None = None,
               token_embedding_type: str | None = None) -> list[Plan]:
    """Every tensor of `model`, in llama.cpp's output order, with the type it will be written as."""
    if ftype not in FTYPES:
        raise QuantizeFileError(f"unknown ftype {ftype!r}; refllm quantizes to {', '.join(FTYPES)}")
    default = FTYPES[ftype][1]
    md = model.metadata
    arch = md.get("general.architecture", "")
    n_layer = int(md.get(f"{arch}.block_count", 0))
    n_head = md.get(f"{arch}.attention.head_count", 0)
    n_head_kv = md.get(f"{arch}.attention.head_count_kv", n_head)
    n_gqa = n_head // n_head_kv if isinstance(n_head, int) and isinstance(n_head_kv, int) and n_head_kv else 0
    n_expert = int(md.get(f"{arch}.expert_count", 0))
    is_70b = arch == "llama" and n_layer == 80 and n_gqa > 1
    tensors = sorted(model.tensors, key=lambda t: tensor_order_key(t.name))
    names = [t.name for t in tensors]
    counters = _Counters(n_attn_v=sum(category(n) == "attn_v" for n in names), n_ffn_down=n_layer)
    tied = "output.weight" not in names

    plans = []
    for t in tensors:
        target = t.type_name
        n_cols = t.shape[-1]
        if allows_quantization(t.name, len(t.shape)):
            cat = category(t.name)
            if token_embedding_type and cat == "token_embd":
                target = token_embedding_type
            elif output_type and cat == "output":
                target = output_type
            else:
                target = default
                if default not in UNQUANTIZED:
                    if not pure:
                        target = mixture_type(ftype, default, t.name, n_cols, tied, arch, n_gqa,
                                              n_expert, is_70b, counters)
                        if output_type and (cat == "output" or (tied and cat == "token_embd")):
                            target = output_type
                    target = shape_fallback(target, n_cols)
        plans.append(Plan(t.name, tuple(t.shape), t.type_name, target))
    return plans


# -- writing --------------------------------------------------------------------------------------

def quantize_model(src, dst, ftype: str, *, pure: bool = False, output_type: str | None = None,
                   token_embedding_type: str | None = None, allow_requantize: bool = False,
                   on_bytes: Callable[[int], None] | None = None) -> list[Plan]:
    """Write `src` quantized to `ftype` as `dst` (atomically), byte-identical to llama-quantize
    without an importance matrix. Returns the plan it followed.

    Raises QuantizeFileError for an unknown ftype or type, a quantized input without
    allow_requantize, and NaN or infinite weights (naming the tensor and the row).
    `on_bytes(n)` is called as source bytes are processed (for a progress bar).
    """
    for option, value in (("output tensor type", output_type), ("token embedding type", token_embedding_type)):
        if value is not None and value not in _writable_types():
            raise QuantizeFileError(f"unknown {option} {value!r}; refllm writes {', '.join(_writable_types())}")
    model = open_model(src)
    plans = plan_types(model, ftype, pure, output_type, token_embedding_type)
    requantized = [p.name for p in plans if p.source_type != p.target_type and p.source_type not in UNQUANTIZED]
    if requantized and not allow_requantize:
        raise QuantizeFileError(f"{requantized[0]} is already quantized ({_plan(plans, requantized[0]).source_type}); "
                                "requantizing loses quality, pass --allow-requantize to do it anyway")

    writer = GGUFWriter()
    last = ("general.quantization_version", "general.file_type")
    for key, value in model.metadata.items():
        if key not in last and not key.startswith("split."):
            writer.add_kv(key, value, model.kv_types[key])
    writer.add_kv("general.quantization_version", QUANTIZATION_VERSION, ValueType.UINT32)
    writer.add_kv("general.file_type", FTYPES[ftype][0], ValueType.UINT32)
    for plan in plans:
        t = model.tensor(plan.name)
        if plan.target_type == plan.source_type:
            raw = model.tensor_bytes(plan.name)
            writer.add_tensor(plan.name, plan.target_type, plan.shape, _copied(raw, on_bytes))
        else:
            writer.add_tensor(plan.name, plan.target_type, plan.shape, _converted(model, t, plan, on_bytes))
    writer.write(dst)
    return plans


def _writable_types() -> list[str]:
    return ["F32"] + quantizable_types()


def _plan(plans: list[Plan], name: str) -> Plan:
    return next(p for p in plans if p.name == name)


def _copied(raw: np.ndarray, on_bytes) -> Callable[[], Iterator[np.ndarray]]:
    def chunks():
        step = 1 << 26
        for start in range(0, raw.size, step):
            chunk = raw[start:start + step]
            if on_bytes:
                on_bytes(chunk.size)
            yield chunk
    return chunks


def _converted(model, t, plan: Plan, on_bytes) -> Callable[[], Iterator[np.ndarray]]:
    """The tensor's rows decoded to float32 and encoded as the target type, a chunk at a time."""
    def chunks():
        n_cols = plan.shape[-1]
        n_rows = math.prod(plan.shape[:-1])
        raw = model.tensor_bytes(plan.name)
        row_bytes = raw.size // n_rows
        step = max(1, CHUNK_ELEMENTS // n_cols)
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            values = dequantize(raw[start * row_bytes:stop * row_bytes], t.ggml_type, (stop - start, n_cols),
                                "numba", byteorder=model.byteorder)
            if plan.target_type == "F32":
                encoded = values.astype("<f4").view(np.uint8)
            else:
                try:
                    encoded = quantize(values, plan.target_type)
                except QuantizeError as e:
                    row = re.search(r"row (\d+)", str(e))
                    where = f"row {start + int(row.group(1))}" if row else f"rows {start}..{stop - 1}"
                    raise QuantizeFileError(f"tensor {plan.name}: {where} holds NaN or infinite values "
                                            "(expected finite weights)") from None
            if on_bytes:
                on_bytes((stop - start) * row_bytes)
            yield encoded
    return chunks


def write_f32_copy(src, dst) -> None:
    """Write `src` with every tensor decoded to F32, in the same order and with the same
    metadata (general.file_type becomes 0, ALL_F32, in place): the unquantized source that
    refllm and llama-quantize both start from in the tests."""
    model = open_model(src)
    writer = GGUFWriter()
    for key, value in model.metadata.items():
        writer.add_kv(key, 0 if key == "general.file_type" else value, model.kv_types[key])
    for t in model.tensors:
        plan = Plan(t.name, tuple(t.shape), t.type_name, "F32")
        data = model.tensor_bytes(t.name) if t.type_name == "F32" else _converted(model, t, plan, None)
        writer.add_tensor(t.name, "F32", t.shape, data)
    writer.write(dst)
