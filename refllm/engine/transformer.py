"""The forward pass of a llama-family transformer, in the order the data flows.

    model = refllm.open("SmolLM2-135M-Instruct.Q4_1.gguf")
    net = Transformer(model)                      # checks the tensors; decodes nothing big
    cache = net.new_cache(n_ctx=2048)
    logits = net.forward([1, 2, 3], cache)        # float32 [1, n_vocab]: the next token's scores

One block, for every architecture (the differences are flags of config.ArchSpec):

    x = embed(tokens)                     (gemma3: * sqrt(n_embd))
    for each layer:
        h = rms_norm(x) * attn_norm
        q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)
        q, k = rms_norm per head           (qwen3, gemma3)
        q, k = rope(q), rope(k)            (at each token's position)
        store k, v in the cache
        a = softmax(q k^T * scale + mask) v      (mask: causal; gemma3's local layers also a window)
        a = a Wo (+bo)                     (gemma3: rms_norm(a) * post_attention_norm)
        x = x + a
        h = rms_norm(x) * ffn_norm
        f = (act(h Wgate) * (h Wup)) Wdown   (act: SiLU, or GELU for gemma3)
        x = x + f                          (gemma3: rms_norm(f) * post_ffw_norm first)
    logits = (rms_norm(x) * output_norm) Wout

This follows llama.cpp's graphs (src/models/llama.cpp, qwen2.cpp, qwen3.cpp, gemma3.cpp at
llama.cpp@0c1e57098). The arithmetic (matmul, KV storage, activations) goes through a
numerics.Numerics, so that another numerics mode changes none of this file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np

from refllm.engine.config import ModelConfig, ModelConfigError
from refllm.engine.decode import DecodeStep
from refllm.engine.kv_cache import KVCache, as_stored
from refllm.engine.numerics import NUMERICS, Numerics
from refllm.engine.weights import Layer, ModelWeights
from refllm.ggml_cpu.flash_attn import flash_attention

N_BATCH = 512       # tokens evaluated together; bounds the attention scores' memory, as llama.cpp's n_batch


class Transformer:
    """A model ready to run: its configuration, its (still quantized) weights, its numerics."""

    def __init__(self, model, numerics: str = "f32", decode_step: bool = True, flash_attn: bool = True,
                 threads: int | None = None):
        """Check `model` (an opened GGUF) and map its weights. Raises ModelConfigError for an
        unsupported architecture or a missing tensor, for an unknown numerics mode and for a
        thread count below 1.
        decode_step: evaluate a single token with refllm.engine.decode's compiled step (the
        same results; False runs block(), the reference, for every batch).
        flash_attn: under --numerics ggml, attention as llama.cpp's flash attention rounds it
        (its CPU default, -fa auto, turns it on), else as its softmax-matrix path (-fa off). f32
        computes the same attention either way.
        threads: llama.cpp's thread count (--threads) to reproduce: its flash attention splits
        one token's attention over 512 cells or more among them (default: Numba's threads)."""
        if numerics not in NUMERICS:
            raise ModelConfigError(f"unknown numerics {numerics!r} (known: {', '.join(NUMERICS)})")
        if threads is not None and threads < 1:
            raise ModelConfigError(f"the thread count must be at least 1, not {threads}")
        self.flash_attn = flash_attn and numerics == "ggml"
        self.threads = threads or numba.get_num_threads()
        self.config = ModelConfig.from_model(model)
        self.weights = ModelWeights.from_model(model, self.config)
        self.numerics: Numerics = NUMERICS[numerics]
        # the matrices whose products this numerics mode computes only approximately
        self.inexact_matrices: list[str] = self.numerics.inexact_matrices(self.weights)
        cfg = self.config
        # rope: each layer's base, scale and divisors (gemma3's local layers: own base, no scaling)
        divisors = self.weights.rope_freqs
        cos_sin = self.numerics.cos_sin
        rope_global = RopeFrequencies(cfg.rope_base, cfg.rope_scale, divisors, cfg.n_rot, cos_sin)
        rope_local = RopeFrequencies(cfg.rope_base_swa, 1.0, None, cfg.n_rot, cos_sin)
        self.rope = [rope_local if swa else rope_global for swa in cfg.swa_layers]
        # decode one embedding row now: Numba's start-up (about a second) is then load time,
        # not the first prompt's time
        self.weights.token_embd.gather_rows([0])
        self.decode_step = DecodeStep(self) if decode_step else None
        # trace(name, layer, array) sees every intermediate tensor (refllm.tools.trace sets it;
        # the decode step is then bypassed, so that every batch goes through block())
        self.trace: Callable[[str, int | None, np.ndarray, str], None] | None = None

    def new_cache(self, n_ctx: int, n_batch: int = N_BATCH, swa_full: bool = False) -> KVCache:
        """An empty KV cache for n_ctx positions, in this numerics' element type, that `forward`
        fills n_batch tokens at a time (its sliding-window rings hold a batch and a window;
        swa_full makes every layer full-size instead, as llama.cpp's --swa-full). n_ctx is at
        most the context the model was trained for (as ollama caps num_ctx), which also bounds
        the memory a mistyped size could ask for."""
        if not 1 <= n_ctx <= self.config.n_ctx_train:
            raise ModelConfigError(f"the context size must be between 1 and the model's trained context "
                                   f"{self.config.n_ctx_train}, not {n_ctx}")
        return KVCache(self.config, n_ctx, n_batch, self.numerics.kv_dtype, swa_full)

    # -- the forward pass ------------------------------------------------------------------------

    def forward(self, tokens, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` at the positions after the cache's, and append them to the cache.

        Returns float32 logits [len(tokens), n_vocab] with all_logits (row i scores the token
        after tokens[i]), else [1, n_vocab] for the last token only: then, as llama.cpp with one
        output (its inp_out_ids), the last block's feed-forward runs on that token's row alone,
        which picks the one-row kernels. The tokens are evaluated in batches of the cache's
        n_batch. They must fit in the cache's free positions and be valid ids (ModelConfigError
        otherwise).
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ModelConfigError("nothing to evaluate: the token list is empty")
        if len(tokens) > cache.n_free:
            raise ModelConfigError(f"{len(tokens)} tokens do not fit in the {cache.n_free} free positions "
                                   f"of a {cache.n_ctx}-token context")
        bad = [t for t in tokens if not 0 <= t < self.config.n_vocab]
        if bad:
            raise ModelConfigError(f"token id {bad[0]} is out of range for a vocabulary of {self.config.n_vocab}")
        if len(tokens) == 1 and self.decode_step is not None and self.trace is None:
            return self.decode_step(tokens[0], cache)
        rows = []
        step = cache.n_batch
        for start in range(0, len(tokens), step):
            batch = tokens[start:start + step]
            last_batch = start + step >= len(tokens)
            if all_logits:
                rows.append(self.logits(self.hidden_states(batch, cache)))          # [n, n_vocab]
            elif last_batch:
                last_row = np.array([len(batch) - 1])
                rows.append(self.logits(self.hidden_states(batch, cache, last_row)))  # [1, n_vocab]
            else:
                self.hidden_states(batch, cache)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def hidden_states(self, tokens: list[int], cache: KVCache, out_rows: np.ndarray | None = None) -> np.ndarray:
        """Run one batch through every block; returns the last block's output [n, n_embd], or
        with out_rows (indices into the batch) only those rows [len(out_rows), n_embd]: the last
        block then drops the others after attention, as llama.cpp's graphs do with the rows
        that give no output (inp_out_ids), so its feed-forward multiplies only the kept rows."""
        cfg, w = self.config, self.weights
        start = cache.n_past
        positions = np.arange(start, start + len(tokens))          # [n]

        # token embeddings: decode just the rows of these tokens  x [n, n_embd]
        x = w.token_embd.gather_rows(tokens)
        self.show("embd", None, x, "GET_ROWS")
        if cfg.spec.embed_scale:
            x *= np.float32(math.sqrt(cfg.n_embd))
            self.show("inp_scaled", None, x, "SCALE")

        last = len(w.layers) - 1
        for il, layer in enumerate(w.layers):
            x = self.block(il, layer, x, positions, cache, out_rows if il == last else None)
        cache.tokens.extend(tokens)
        return x

    def block(self, il: int, layer: Layer, x: np.ndarray, positions: np.ndarray, cache: KVCache,
              out_rows: np.ndarray | None = None) -> np.ndarray:
        """One transformer block: x [n, n_embd] -> x [n, n_embd]; stores this layer's k and v.
        out_rows: keep only these rows after attention (x [len(out_rows), n_embd] out)."""
        cfg, spec = self.config, self.config.spec
        n = x.shape[0]

        # attention norm
        h = self.norm(x, layer, "attn_norm", il)                                   # [n, n_embd]

        # q, k, v projections, split into heads
        q, k, v = self.linears(h, layer, ("attn_q", "attn_k", "attn_v"), il)
        q = q.reshape(n, cfg.n_head, cfg.head_dim)
        k = k.reshape(n, cfg.n_head_kv, cfg.head_dim)
        v = v.reshape(n, cfg.n_head_kv, cfg.head_dim_v)
        for name, y in (("Qcur", q), ("Kcur", k), ("Vcur", v)):
            self.show(name, il, y, "RESHAPE")

        # per-head q/k norm (qwen3, gemma3)
        if spec.qk_norm:
            q = self.norm(q, layer, "attn_q_norm", il)
            k = self.norm(k, layer, "attn_k_norm", il)

        # rope: rotate q and k by their positions
        q = rope(q, positions, self.rope[il], spec.rope_type, self.numerics.rotate)
        k = rope(k, positions, self.rope[il], spec.rope_type, self.numerics.rotate)
        self.show("Qcur", il, q, "ROPE")
        self.show("Kcur", il, k, "ROPE")

        # store k and v; attend over the cached positions first..the last of this batch (read in
        # whole runs of cells, the ones past it masked; first > 0 where a ring has dropped the
        # positions before the window)
        cache.store(il, int(positions[0]), k, v)
        keys, values, first = cache.keys_values(il, int(positions[0]), int(positions[-1]) + 1)  # [n_kv, T, *]
        window = cfg.n_swa if cfg.swa_layers[il] else 0
        scale = np.float32(cfg.attn_scale)
        if spec.scale_q:
            q, scale = q * scale, np.float32(1)
        if self.flash_attn:
            n_view = cache.llama_view(il, int(positions[-1]) + 1)
            a = flash_attention(q, as_stored(keys), as_stored(values), positions, first, window, scale, n_view,
                                self.threads)                                              # [n, n_head * head_dim_v]
        else:
            show = (lambda name, y, op: self.show(name, il, y, op)) if self.trace else None
            a = attention(q, keys, values, positions, window, scale, self.numerics, first, show)  # [n, n_head * dv]
        self.show("kqv_out", il, a, "RESHAPE" if self.flash_attn else "CONT")

        # output projection (gemma3: post-attention norm), residual
        a = self.linear(a, layer, "attn_output", il)
        if spec.post_norms:
            a = self.norm(a, layer, "post_attention_norm", il)
        x = x + a
        if out_rows is not None:
            x = x[out_rows]
        self.show("ffn_inp", il, x, "ADD")

        # feed-forward: norm, gated activation, down projection (gemma3: post-FFN norm), residual
        h = self.norm(x, layer, "ffn_norm", il)
        gate, up = self.linears(h, layer, ("ffn_gate", "ffn_up"), il)
        g = self.numerics.activations[spec.activation](gate) * up
        self.show("ffn_" + spec.activation, il, g, "GLU")
        f = self.linear(g, layer, "ffn_down", il)
        if spec.post_norms:
            f = self.norm(f, layer, "post_ffw_norm", il)
        x = x + f
        self.show("l_out", il, x, "ADD")
        return x

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Final norm and output projection: x [n, n_embd] -> logits float32 [n, n_vocab]."""
        cfg, w = self.config, self.weights
        h = self.norm(x, None, "output_norm", None)
        logits = self.numerics.matmuls(h, [w.output])[0]
        if w.output_bias is not None:
            logits += w.output_bias
        self.show("result_output", None, logits, "MUL_MAT")
        if cfg.final_softcap > 0:
            c = np.float32(cfg.final_softcap)
            logits = c * np.tanh(logits / c)
        return logits

    def linear(self, x: np.ndarray, layer: Layer, name: str, il: int | None = None) -> np.ndarray:
        """x [n, in] through the layer's matrix `name` [out, in], plus its bias if it has one."""
        return self.linears(x, layer, (name,), il)[0]

    def linears(self, x: np.ndarray, layer: Layer, names: tuple[str, ...], il: int | None = None) -> list[np.ndarray]:
        """x [n, in] through each of the layer's matrices `names`, plus their biases (one
        input: the numerics may convert it once for all of them). il: the layer, for traces."""
        ys = self.numerics.matmuls(x, [layer.matrices[name] for name in names])
        out = []
        for name, y in zip(names, ys):
            self.show(name, il, y, "MUL_MAT")
            bias = layer.vector(name + ".bias")
            if bias is not None:
                y = y + bias
                self.show(name, il, y, "ADD")
            out.append(y)
        return out

    def norm(self, x: np.ndarray, layer: Layer | None, name: str, il: int | None) -> np.ndarray:
        """rms_norm(x) times the norm weight `name` (the layer's, or the model's output_norm)."""
        cfg = self.config
        weight = self.weights.output_norm if layer is None else layer.vector(name)
        normed = rms_normalize(x, cfg.rms_eps)
        self.show("norm." + name, il, normed, "RMS_NORM")
        h = normed * weight
        self.show(name, il, h, "MUL")
        return h

    def show(self, name: str, il: int | None, y: np.ndarray, op: str) -> None:
        """Hand an intermediate tensor, and the ggml op llama.cpp computes it with, to the trace,
        if one is set (refllm.tools.trace names it as llama.cpp's graph does)."""
        if self.trace is not None:
            self.trace(name, il, y, op)

    # -- context shift ----------------------------------------------------------------------------

    def shift(self, cache: KVCache, n_keep: int, n_discard: int) -> None:
        """Drop positions n_keep..n_keep+n_discard-1 from the cache and move the later ones
        down, rotating their keys back by n_discard positions (llama.cpp's context shift).
        ValueError where a sliding-window ring lacks kept positions the next token would see
        (KVCache.discard)."""
        def rotate_back(il: int, keys: np.ndarray) -> np.ndarray:     # [n, n_kv, head_dim] float32
            delta = np.full(len(keys), -n_discard)
            return rope(keys, delta, self.rope[il], self.config.spec.rope_type, self.numerics.rotate)
        cache.discard(n_keep, n_discard, rotate_back)


# -- the steps ----------------------------------------------------------------------------------

F32 = np.float32


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (rms_normalize, then the weight)."""
    return rms_normalize(x, eps) * weight


def rms_normalize(x: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) over the last axis, as ggml's RMS_NORM computes it: the
    squares in float32 summed in order in float64 (a running sum: cumsum's last element), the
    mean and 1/sqrtf(mean + eps) in float32."""
    total = np.cumsum(np.square(x).astype(np.float64), axis=-1)[..., -1:]
    mean_square = (total / x.shape[-1]).astype(F32)
    scale = F32(1) / np.sqrt(mean_square + F32(eps))
    return x * scale


class RopeFrequencies:
    """One layer's rope angles, computed as ggml's rope cache computes them (ops.cpp,
    ggml_rope_cache_init): in float32, the angle of pair i is
        theta_i = pos * theta_scale^i      (a running product, rounded at every step)
        angle_i = freq_scale * (theta_i / divisor_i),  theta_scale = powf(base, -2 / n_rot)
    For f32 numerics this is as good as float64 angles (1e-6 of an angle); for --numerics ggml
    it has to be ggml's to the bit, since q and k are rounded to f16 and Q8 downstream.
    cos_sin: the numerics' cos and sin of float32 angles."""

    def __init__(self, base: float, freq_scale: float, divisors: np.ndarray | None, n_rot: int,
                 cos_sin: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
        self.n_rot = n_rot
        self.trig = cos_sin
        exponent = F32(-2.0) / F32(n_rot)
        self.theta_scale = F32(np.float64(F32(base)) ** np.float64(exponent))     # powf, correctly rounded
        self.freq_scale = F32(freq_scale)
        self.divisors = None if divisors is None else divisors.astype(F32)
        self._last: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None

    def angles(self, positions: np.ndarray) -> np.ndarray:
        """The angle of every pair at every position: float32 [n, n_rot / 2]."""
        angles = np.empty((len(positions), self.n_rot // 2), F32)
        theta = positions.astype(F32)                                              # [n]
        for i in range(self.n_rot // 2):
            extrapolated = theta if self.divisors is None else theta / self.divisors[i]
            angles[:, i] = self.freq_scale * extrapolated
            theta = theta * self.theta_scale
        return angles

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin of every angle: float32 [n, n_rot / 2] each. The last result is kept:
        every layer's q and k ask for the same positions."""
        if self._last is None or not np.array_equal(self._last[0], positions):
            self._last = (np.array(positions), self.trig(self.angles(positions)))
        return self._last[1]


def rope(x: np.ndarray, positions: np.ndarray, freqs: RopeFrequencies, rope_type: str,
         rotate: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rotate each head of x [n, heads, head_dim] by its token's position.

    Pair i of the first n_rot dimensions turns by its angle at the token's position (freqs),
    computed by the numerics' `rotate`. "norm" (llama) pairs neighbours (x[2i], x[2i+1]);
    "neox" pairs the halves (x[i], x[i + n_rot/2]).
    """
    n_rot = freqs.n_rot
    cos, sin = freqs.cos_sin(positions)
    cos, sin = cos[:, None, :], sin[:, None, :]                                  # [n, 1, n_rot / 2]
    if rope_type == "norm":
        first, second = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    else:
        first, second = x[..., :n_rot // 2], x[..., n_rot // 2:n_rot]
    out = x.copy()
    rotated_first, rotated_second = rotate(first, second, cos, sin)
    if rope_type == "norm":
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = rotated_first, rotated_second
    else:
        out[..., :n_rot // 2], out[..., n_rot // 2:n_rot] = rotated_first, rotated_second
    return out


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray, window: int,
              scale: np.float32, numerics: Numerics, first: int = 0,
              show: Callable[[str, np.ndarray, str], None] | None = None) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads, as ggml's non-flash path computes it.

    q [n, n_head, d] float32 at `positions`; keys [n_kv, T, d] and values [n_kv, T, dv] for
    positions first..first+T-1 (first <= positions[0]), in the KV cache's element type. Query
    head h reads KV head h // (n_head / n_kv). A query at position p sees keys at positions
    k <= p, and with a window w > 0 only those with p - k < w. Returns float32 [n, n_head * dv].

    Like ggml, the cache is multiplied by its operand converted to the cache's type: q is
    rounded to it for q·k and the probabilities are rounded to it for probs·v (f16 for an f16
    cache, no change for float32). The products and the softmax (scores * scale + mask) are
    the numerics' own. show(name, array, op), if given, sees llama.cpp's kq and kq_soft_max
    [n_head, n, keys up to the last query's position] and kqv [n_head, n, dv] (every score is
    then computed, the masked ones too, as llama.cpp's kq holds them).
    """
    n, n_head, d = q.shape
    n_kv, n_keys, dv = values.shape
    group = n_head // n_kv
    key_pos = first + np.arange(n_keys)                                          # [T]
    hidden = key_pos[None, :] > positions[:, None]                               # [n, T] future keys
    if window > 0:
        hidden |= positions[:, None] - key_pos[None, :] >= window
    # a query sees no key past its own position: the scores past it (key cells p + 1 - first
    # onward) are masked and their probabilities 0, which the products may skip
    seen = np.tile(np.minimum(positions + 1 - first, n_keys), group)          # [group * n]
    out = np.empty((n_head, n, dv), F32)
    shown = {name: np.empty((n_head, n, n_keys), F32) for name in ("kq", "kq_soft_max")} if show else {}
    for g in range(n_kv):
        # the group's query heads stacked: one product per KV head  [group * n, d]
        heads = slice(g * group, (g + 1) * group)
        q_group = q[:, heads].transpose(1, 0, 2).reshape(group * n, d)
        q_group = numerics.to_kv_type(q_group)
        needed = None if show else seen
        scores = numerics.cache_matmul(keys[g].astype(F32, copy=False), q_group, n, needed=needed)  # [group * n, T]
        probs = numerics.soft_max(scores.reshape(group, n, n_keys), scale, hidden)     # [group, n, T]
        if show:
            shown["kq"][heads], shown["kq_soft_max"][heads] = scores.reshape(group, n, n_keys), probs
        probs = numerics.to_kv_type(probs.reshape(group * n, n_keys))
        v_rows = np.ascontiguousarray(values[g].T, dtype=F32)                          # [dv, T]
        out[heads] = numerics.cache_matmul(v_rows, probs, n, nonzero=seen).reshape(group, n, dv)
    if show:
        end = int(positions[-1]) + 1 - first                                          # keys past it: padding
        show("kq", shown["kq"][..., :end], "MUL_MAT")
        show("kq_soft_max", shown["kq_soft_max"][..., :end], "SOFT_MAX")
        show("kqv", out, "MUL_MAT")
    return out.transpose(1, 0, 2).reshape(n, n_head * dv)
