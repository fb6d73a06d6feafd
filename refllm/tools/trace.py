"""Traces: every intermediate tensor of a forward pass, named as llama.cpp's graph names it.

    trace = run_trace(Transformer(model, "ggml", decode_step=False), tokens)
    trace.names                      # ['embd', 'norm-0', 'attn_norm-0', 'Qcur-0', 'Qcur-0#2', ...]
    trace.tensors["l_out-3"]         # float32 [n_tokens, n_embd]
    save_trace("trace.npz", trace)
    first_difference(load_trace("a.npz"), load_trace("b.npz"))   # where two engines part

llama.cpp names its graph's tensors with cb(tensor, "name", layer) in src/models/<arch>.cpp:
"Qcur-0" is layer 0's query. A name can be given more than once (Qcur-0 is the projection, its
reshape into heads and, after rope, the rotated heads; norm-0 every RMS norm of layer 0); a
trace numbers the repeats as golden/trace does: "Qcur-0", "Qcur-0#2", "Qcur-0#3". Tensors
llama.cpp leaves unnamed are left out (qwen2's, qwen3's and gemma3's attention output
projection), and so are views and the cache writes. Shapes are numpy's (llama.cpp's ne
reversed), leading ones dropped: [n_tokens, n_embd], heads [n_tokens, n_head, head_dim], the
attention scores kq and kq_soft_max [n_head, n_tokens, keys], kqv [n_head, n_tokens, dv]. The
scores span the keys up to the last token's position (llama.cpp's span its padded KV view;
golden/trace keeps the same cells).

With flash attention llama.cpp computes kq, kq_soft_max and kqv inside one unnamed op: a trace
then has kqv_out, and not those three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refllm.errors import RefllmError
from refllm.formats.files import atomic_output

F32 = np.float32

# refllm's names for what the Transformer shows -> llama.cpp's; None: llama.cpp leaves it unnamed
NAMES = {
    "attn_q": "Qcur", "attn_k": "Kcur", "attn_v": "Vcur", "attn_output": "attn_out",
    "attn_q_norm": "Qcur_normed", "attn_k_norm": "Kcur_normed", "post_attention_norm": "attn_post_norm",
    "post_ffw_norm": "ffn_post_norm", "output_norm": "result_norm", "ffn_down": "ffn_out",
    "ffn_silu": "ffn_swiglu", "ffn_gelu_tanh": "ffn_geglu",
}
# what each architecture's graph names otherwise (src/models/qwen2.cpp, qwen3.cpp, gemma3.cpp)
ARCH_NAMES = {
    "llama": {},
    "qwen2": {"attn_output": None},
    "qwen3": {"attn_output": None},
    "gemma3": {"attn_output": None, "ffn_inp": "sa_out"},
}
# the RMS norms whose "norm" carries no layer number (gemma3's post-FFN norm is built with il -1)
UNNUMBERED_NORMS = {"gemma3": {"post_ffw_norm"}}
SCORES = ("kq-", "kq_soft_max-", "kqv-")          # [n_head, n_tokens, .]: the tokens on axis 1


class TraceError(RefllmError, ValueError):
    """A trace file that is not one, or two traces that cannot be compared; the message says which."""


@dataclass
class Trace:
    """A forward pass's named tensors, in the order they were computed."""
    tokens: list[int]
    meta: dict = field(default_factory=dict)            # model, numerics, flash_attn, arch
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)   # each tensor's ggml op

    @property
    def names(self) -> list[str]:
        return list(self.tensors)


def token_axis(name: str) -> int:
    """The axis of a traced tensor that runs over the tokens."""
    return 1 if name.startswith(SCORES) else 0


def layer_of(name: str) -> int | None:
    """The layer a traced tensor's name says (None outside the layers)."""
    head, _, tail = name.split("#")[0].rpartition("-")
    return int(tail) if head and tail.isdigit() else None


class Recorder:
    """The Transformer's trace callback: names each tensor as llama.cpp's graph for `arch` does
    and keeps a float32 copy."""

    def __init__(self, trace: Trace, arch: str):
        self.trace = trace
        self.names = {**NAMES, **ARCH_NAMES.get(arch, {})}
        self.unnumbered = UNNUMBERED_NORMS.get(arch, set())
        self.seen: dict[str, int] = {}

    def __call__(self, name: str, il: int | None, y: np.ndarray, op: str) -> None:
        if name.startswith("norm."):                   # the RMS norm under a norm weight
            if name[5:] in self.unnumbered:
                il = None
            name = "norm"
        else:
            name = self.names.get(name, name)
            if name is None:
                return
        base = name if il is None else f"{name}-{il}"
        self.seen[base] = self.seen.get(base, 0) + 1
        key = base if self.seen[base] == 1 else f"{base}#{self.seen[base]}"
        self.trace.tensors[key] = np.array(y, dtype=F32, copy=True)
        self.trace.ops[key] = op


def run_trace(net, tokens: list[int], n_ctx: int | None = None) -> Trace:
    """Evaluate `tokens` (one batch, a fresh cache of n_ctx positions: default the tokens) with
    `net` (a Transformer) and return every intermediate tensor. The net's decode step is
    bypassed while tracing, so a single token goes through block() too (the same bits)."""
    tokens = [int(t) for t in tokens]
    cfg = net.config
    trace = Trace(tokens, {"arch": cfg.arch, "numerics": net.numerics.name, "flash_attn": net.flash_attn})
    net.trace = Recorder(trace, cfg.arch)
    try:
        cache = net.new_cache(n_ctx or len(tokens), n_batch=max(len(tokens), 1))
        net.forward(tokens, cache, all_logits=True)
    finally:
        net.trace = None
    return trace


def save_trace(path, trace: Trace) -> None:
    """Write a trace as .npz, atomically: one array per tensor under its name, "tokens", and
    "meta" (JSON: meta, the names in order, their ops)."""
    meta = json.dumps({**trace.meta, "names": trace.names, "ops": trace.ops})
    arrays = {f"t:{name}": value for name, value in trace.tensors.items()}
    with atomic_output(Path(path)) as out:
        np.savez(out, tokens=np.asarray(trace.tokens, np.int32), meta=np.array(meta), **arrays)


def load_trace(path) -> Trace:
    """Read a trace written by save_trace; TraceError if the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tensors = {name: z[f"t:{name}"] for name in meta.pop("names")}
            ops = meta.pop("ops")
            return Trace(z["tokens"].tolist(), meta, tensors, ops)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TraceError(f"{path}: not a refllm trace (.npz with tokens, meta and t:<name> arrays): {e}") from None


@dataclass(frozen=True)
class Difference:
    """Where two traces first differ: the tensor (in the first trace's order), its layer, the
    token position of its first differing element, and how far apart the whole tensor is."""
    name: str
    layer: int | None
    position: int
    max_abs: float
    max_rel: float            # max |a - b| / max |a|
    differing: int            # elements that differ
    size: int

    def describe(self) -> str:
        where = "outside the layers" if self.layer is None else f"layer {self.layer}"
        return (f"first difference: {self.name} ({where}), token position {self.position}: "
                f"{self.differing} of {self.size} values differ, max |a - b| {self.max_abs:.6g} "
                f"({self.max_rel:.3g} of max |a|)")


def first_difference(a: Trace, b: Trace) -> Difference | None:
    """The first tensor of `a` (in its order) whose values differ from `b`'s tensor of the same
    name, bit for bit; None if every tensor they share is equal. TraceError if their tokens
    differ, if they share no tensor, or a shared tensor has another shape."""
    if a.tokens != b.tokens:
        raise TraceError(f"the traces evaluate different tokens ({len(a.tokens)} and {len(b.tokens)} ids)")
    shared = [name for name in a.names if name in b.tensors]
    if not shared:
        raise TraceError("the traces share no tensor name (one of another architecture, or flash attention?)")
    for name in shared:
        x, y = a.tensors[name], b.tensors[name]
        if x.shape != y.shape:
            raise TraceError(f"{name}: shapes differ, {list(x.shape)} and {list(y.shape)}")
        same = (x.view(np.uint32) == y.view(np.uint32)) | (np.isnan(x) & np.isnan(y))
        if same.all():
            continue
        where = np.argwhere(~same)[0]
        diff = np.abs(x.astype(np.float64) - y)
        scale = float(np.abs(x).max()) or 1.0
        return Difference(name, layer_of(name), int(where[token_axis(name)]), float(np.nanmax(diff)),
                          float(np.nanmax(diff)) / scale, int((~same).sum()), x.size)
    return None


def stats_lines(trace: Trace, n: int = 3) -> list[str]:
    """llama.cpp's eval-callback printout (common/debug.cpp) of every tensor: a header with the
    name, type, op and ggml's shape (ne, four dims, innermost first), the first and last n
    values along each of the three inner dims ("%12.4f"), and the float32 sum in memory order.
    The header leaves out the sources llama.cpp names (refllm has none)."""
    lines = []
    for name, value in trace.tensors.items():
        ne = list(value.shape[::-1]) + [1] * (4 - value.ndim)
        lines.append(f"common_debug_cb_eval: {name:>24} = (f32) {trace.ops.get(name, ''):>10}(...) = "
                     f"{{{', '.join(map(str, ne))}}}")
        lines += _values(value.reshape(ne[::-1]), n)
    return lines


def _values(x: np.ndarray, n: int) -> list[str]:
    """common_debug_print_tensor's layout for x [ne3, ne2, ne1, ne0]."""
    def cut(size: int) -> list[int | None]:       # the indices printed, None for "..."
        return list(range(size)) if size <= 2 * n else [*range(n), None, *range(size - n, size)]

    lines = []
    total = np.cumsum(x.reshape(-1), dtype=F32)[-1] if x.size else F32(0)       # in memory order, in float
    for i3 in range(x.shape[0]):
        lines.append("    [")
        for i2 in cut(x.shape[1]):
            if i2 is None:
                lines.append("        ..., ")
                continue
            lines.append("        [")
            for i1 in cut(x.shape[2]):
                if i1 is None:
                    lines.append("            ..., ")
                    continue
                cells = ["   ..., " if i0 is None else f"{x[i3, i2, i1, i0]:12.4f}" for i0 in cut(x.shape[3])]
                text = ""
                for k, c in enumerate(cells):
                    text += c if c.endswith(", ") else c + (", " if k < len(cells) - 1 else "")
                lines.append("            [" + text + "  ],")
            lines.append("        ],")
        lines.append("    ]")
        lines.append(f"    sum = {total:f}")
    return lines
