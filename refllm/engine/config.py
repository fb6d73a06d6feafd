"""A model's shape and the variant of the transformer it uses, read from GGUF metadata.

`ModelConfig.from_model(model)` reads the keys llama.cpp reads at load time
(`llama_model::load_hparams`, llama.cpp@0c1e57098) and checks that every tensor the forward
pass needs is there with the shape it needs. The differences between the supported
architectures are one row each of ARCHITECTURES, not code paths of their own:

    arch    rope   q/k norm  post-norms  embeddings x sqrt(n_embd)  FFN        sliding window  scale
    llama   norm   -         -           -                           SiLU gate  -               scores
    qwen2   neox   -         -           -                           SiLU gate  -               scores
    qwen3   neox   yes       -           -                           SiLU gate  -               scores
    gemma3  neox   yes       yes         yes                         GELU gate  5 of every 6    q

(scale: llama.cpp multiplies the scores q·k by attn_scale inside its softmax, but gemma3's graph
scales q before q·k; with an f16 KV cache q is rounded to f16 for q·k, so the order shows.)

Optional tensors are used wherever a file has them, whatever the architecture, as llama.cpp
does: q/k/v/output biases (qwen2 has q/k/v ones), FFN biases, `output.weight` (absent means
the embeddings are tied and `token_embd.weight` is the output matrix too), `output.bias`,
and llama3's per-dimension rope divisors `rope_freqs.weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from refllm.errors import RefllmError


class ModelConfigError(RefllmError, ValueError):
    """A model refllm cannot run: an unsupported architecture, a missing key or tensor."""


@dataclass(frozen=True)
class ArchSpec:
    """How one architecture's block differs from the plain llama block."""
    rope_type: str          # "norm": rotate pairs (x[2i], x[2i+1]); "neox": pairs (x[i], x[i + n_rot/2])
    qk_norm: bool           # RMSNorm over each head of q and k (attn_q_norm, attn_k_norm), before rope
    post_norms: bool        # RMSNorm on each block's output before the residual add
    embed_scale: bool       # token embeddings multiplied by sqrt(n_embd)
    activation: str         # the gate's activation in the FFN: "silu" or "gelu_tanh"
    sliding_window: bool    # some layers attend only to the last n_swa positions
    scale_q: bool           # q is multiplied by attn_scale before q·k; else the scores after it


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama":  ArchSpec(rope_type="norm", qk_norm=False, post_norms=False, embed_scale=False,
                       activation="silu", sliding_window=False, scale_q=False),
    "qwen2":  ArchSpec(rope_type="neox", qk_norm=False, post_norms=False, embed_scale=False,
                       activation="silu", sliding_window=False, scale_q=False),
    "qwen3":  ArchSpec(rope_type="neox", qk_norm=True, post_norms=False, embed_scale=False,
                       activation="silu", sliding_window=False, scale_q=False),
    "gemma3": ArchSpec(rope_type="neox", qk_norm=True, post_norms=True, embed_scale=True,
                       activation="gelu_tanh", sliding_window=True, scale_q=True),
}

# Per-layer tensors, GGUF names: (name, numpy shape in config fields, which ArchSpec flag makes it
# required: None = always). A shape entry is a ModelConfig attribute name or a product "a*b".
LAYER_TENSORS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("attn_norm.weight",           ("n_embd",),                   None),
    ("attn_q.weight",              ("n_head*head_dim", "n_embd"),    None),
    ("attn_k.weight",              ("n_head_kv*head_dim", "n_embd"), None),
    ("attn_v.weight",              ("n_head_kv*head_dim_v", "n_embd"), None),
    ("attn_output.weight",         ("n_embd", "n_head*head_dim_v"), None),
    ("attn_q_norm.weight",         ("head_dim",),                 "qk_norm"),
    ("attn_k_norm.weight",         ("head_dim",),                 "qk_norm"),
    ("post_attention_norm.weight", ("n_embd",),                   "post_norms"),
    ("ffn_norm.weight",            ("n_embd",),                   None),
    ("ffn_gate.weight",            ("n_ff", "n_embd"),            None),
    ("ffn_up.weight",              ("n_ff", "n_embd"),            None),
    ("ffn_down.weight",            ("n_embd", "n_ff"),            None),
    ("post_ffw_norm.weight",       ("n_embd",),                   "post_norms"),
)
# Optional per-layer tensors and their shapes, used when present.
LAYER_BIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn_q.bias", ("n_head*head_dim",)), ("attn_k.bias", ("n_head_kv*head_dim",)),
    ("attn_v.bias", ("n_head_kv*head_dim_v",)), ("attn_output.bias", ("n_embd",)),
    ("ffn_gate.bias", ("n_ff",)), ("ffn_up.bias", ("n_ff",)), ("ffn_down.bias", ("n_embd",)),
)

ROPE_SCALING_TYPES = ("none", "linear")      # llama.cpp also has yarn and longrope: not implemented


@dataclass(frozen=True)
class ModelConfig:
    """Everything the forward pass needs to know about a model's shape, from its metadata."""
    arch: str
    spec: ArchSpec
    n_vocab: int
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int                   # per-head width of q and k (attention.key_length)
    head_dim_v: int                 # per-head width of v (attention.value_length)
    n_rot: int                      # how many of each head's dimensions rope rotates
    n_ctx_train: int
    rms_eps: float
    rope_base: float                # theta_i = pos * rope_scale * rope_base^(-2i/n_rot)
    rope_scale: float               # 1 / rope.scaling.factor (linear scaling), else 1
    rope_base_swa: float            # rope base of the sliding-window layers
    n_swa: int                      # sliding window: query p sees keys p - n_swa < k <= p; 0 = none
    swa_layers: tuple[bool, ...]    # per layer: does it use the sliding window?
    attn_scale: float               # the scores q·k are scaled by this (1/sqrt(head_dim) by default)
    final_softcap: float            # logits -> c * tanh(logits / c) when > 0
    tied_output: bool               # no output.weight: token_embd.weight is the output matrix
    has_rope_freqs: bool            # rope_freqs.weight divides each dimension's frequency

    @classmethod
    def from_model(cls, model) -> ModelConfig:
        """The configuration of an opened model (refllm.open), checked against its tensors.

        Raises ModelConfigError listing the supported architectures for any other, naming a
        missing or badly typed key, or listing every missing or misshapen tensor.
        """
        md = model.metadata
        arch = md.get("general.architecture")
        spec = ARCHITECTURES.get(arch) if isinstance(arch, str) else None
        if spec is None:
            raise ModelConfigError(f"architecture {arch!r} is not supported "
                                   f"(refllm runs {', '.join(ARCHITECTURES)})")
        key = _Keys(md, arch)

        n_embd = key.integer("embedding_length")
        n_head = key.integer("attention.head_count")
        n_head_kv = key.integer("attention.head_count_kv", n_head)
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
            raise ModelConfigError(f"{arch}.attention.head_count {n_head} is not a positive multiple "
                                   f"of head_count_kv {n_head_kv}")
        head_dim = key.integer("attention.key_length", n_embd // n_head)
        head_dim_v = key.integer("attention.value_length", n_embd // n_head)
        n_rot = key.integer("rope.dimension_count", head_dim)
        if n_rot > head_dim or n_rot % 2:
            raise ModelConfigError(f"{arch}.rope.dimension_count {n_rot} must be even and at most "
                                   f"the head width {head_dim}")
        n_layer = key.integer("block_count")

        rope_scaling = key.string("rope.scaling.type", "linear")
        if rope_scaling not in ROPE_SCALING_TYPES:
            raise ModelConfigError(f"{arch}.rope.scaling.type {rope_scaling!r} is not supported "
                                   f"(refllm implements {', '.join(ROPE_SCALING_TYPES)})")
        factor = key.number("rope.scaling.factor", key.number("rope.scale_linear", 0.0))

        n_swa = key.integer("attention.sliding_window", 0) if spec.sliding_window else 0
        pattern = key.integer("attention.sliding_window_pattern", 6)
        # llama.cpp's set_swa_pattern: in each group of `pattern` layers all but the last are local
        swa_layers = tuple(n_swa > 0 and (pattern == 0 or il % pattern < pattern - 1) for il in range(n_layer))

        tensors = {t.name: t for t in model.tensors}
        if "token_embd.weight" not in tensors:
            raise ModelConfigError("the model has no token_embd.weight tensor")
        n_vocab = tensors["token_embd.weight"].shape[0]

        attn_scale = 1.0 / math.sqrt(head_dim)
        if arch == "gemma3" and n_layer == 62:       # Gemma-3 27B scales by n_embd / n_head instead
            attn_scale = 1.0 / math.sqrt(n_embd // n_head)

        config = cls(
            arch=arch, spec=spec, n_vocab=n_vocab, n_layer=n_layer, n_embd=n_embd,
            n_ff=key.integer("feed_forward_length"), n_head=n_head, n_head_kv=n_head_kv,
            head_dim=head_dim, head_dim_v=head_dim_v, n_rot=n_rot,
            n_ctx_train=key.integer("context_length"),
            rms_eps=key.number("attention.layer_norm_rms_epsilon"),
            rope_base=key.number("rope.freq_base", 10000.0),
            rope_scale=1.0 / factor if factor else 1.0,
            rope_base_swa=key.number("rope.freq_base_swa", 10000.0),
            n_swa=n_swa, swa_layers=swa_layers, attn_scale=attn_scale,
            final_softcap=key.number("final_logit_softcapping", 0.0),
            tied_output="output.weight" not in tensors,
            has_rope_freqs="rope_freqs.weight" in tensors,
        )
        config.check_tensors(tensors)
        return config

    def dim(self, expr: str) -> int:
        """A shape entry of LAYER_TENSORS: a field name, or a product of two ("n_head*head_dim")."""
        return math.prod(getattr(self, name) for name in expr.split("*"))

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward pass requires, GGUF name -> numpy shape."""
        want = {"token_embd.weight": (self.n_vocab, self.n_embd), "output_norm.weight": (self.n_embd,)}
        if not self.tied_output:
            want["output.weight"] = (self.n_vocab, self.n_embd)
        if self.has_rope_freqs:
            want["rope_freqs.weight"] = (self.n_rot // 2,)
        for il in range(self.n_layer):
            for name, shape, needed_if in LAYER_TENSORS:
                if needed_if is None or getattr(self.spec, needed_if):
                    want[f"blk.{il}.{name}"] = tuple(self.dim(d) for d in shape)
        return want

    def optional_tensors(self) -> dict[str, tuple[int, ...]]:
        """Tensors used when present, GGUF name -> numpy shape."""
        have = {"output.bias": (self.n_vocab,)}
        for il in range(self.n_layer):
            for name, shape in LAYER_BIASES:
                have[f"blk.{il}.{name}"] = tuple(self.dim(d) for d in shape)
        return have

    def check_tensors(self, tensors: dict) -> None:
        """Raise ModelConfigError listing every required tensor that is missing, and every tensor
        (required or optional) whose shape is not what this configuration needs."""
        problems = []
        optional = self.optional_tensors()
        for name, shape in {**self.expected_tensors(), **optional}.items():
            t = tensors.get(name)
            if t is None:
                if name not in optional:
                    problems.append(f"{name} is missing")
            elif tuple(t.shape) != shape:
                problems.append(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        if problems:
            shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise ModelConfigError(f"this {self.arch} model cannot be run: {shown}")


class _Keys:
    """Typed reads of `<arch>.<suffix>` keys, with errors that name the key."""

    def __init__(self, metadata: dict[str, Any], arch: str):
        self.metadata, self.arch = metadata, arch

    def _get(self, suffix: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        key = f"{self.arch}.{suffix}"
        value = self.metadata.get(key, default)
        if value is _REQUIRED:
            raise ModelConfigError(f"the metadata key {key} is missing")
        if isinstance(value, bool) or not isinstance(value, types):
            raise ModelConfigError(f"the metadata key {key} is {value!r}, expected {what}")
        return value

    def integer(self, suffix: str, default: Any = None) -> int:
        value = self._get(suffix, _REQUIRED if default is None else default, (int,), "an integer")
        if value < 0:
            raise ModelConfigError(f"the metadata key {self.arch}.{suffix} is {value}, expected a count >= 0")
        return int(value)

    def number(self, suffix: str, default: Any = None) -> float:
        value = float(self._get(suffix, _REQUIRED if default is None else default, (int, float), "a number"))
        if not math.isfinite(value):
            raise ModelConfigError(f"the metadata key {self.arch}.{suffix} is {value}, expected a finite number")
        return value

    def string(self, suffix: str, default: str) -> str:
        return self._get(suffix, default, (str,), "a string")


_REQUIRED = object()
