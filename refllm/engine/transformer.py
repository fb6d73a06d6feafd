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

import numba
import numpy as np

from refllm.engine.config import ModelConfig, ModelConfigError
from refllm.engine.kv_cache import KVCache
from refllm.engine.numerics import NUMERICS, Numerics
from refllm.engine.weights import Layer, Matrix, ModelWeights

N_BATCH = 512       # tokens evaluated together; bounds the attention scores' memory, as llama.cpp's n_batch


class Transformer:
    """A model ready to run: its configuration, its (still quantized) weights, its numerics."""

    def __init__(self, model, numerics: str = "f32"):
        """Check `model` (an opened GGUF) and map its weights. Raises ModelConfigError for an
        unsupported architecture or a missing tensor, and for an unknown numerics mode."""
        if numerics not in NUMERICS:
            raise ModelConfigError(f"unknown numerics {numerics!r} (known: {', '.join(NUMERICS)})")
        self.config = ModelConfig.from_model(model)
        self.weights = ModelWeights.from_model(model, self.config)
        self.numerics: Numerics = NUMERICS[numerics]
        cfg = self.config
        # rope: each layer rotates dimension pair i by pos * inv_freq[i]  (float64 [n_rot / 2])
        exponents = np.arange(0, cfg.n_rot, 2, dtype=np.float64) / cfg.n_rot
        divisors = 1.0 if self.weights.rope_freqs is None else self.weights.rope_freqs.astype(np.float64)
        inv_freq_global = cfg.rope_scale * cfg.rope_base ** -exponents / divisors
        inv_freq_local = cfg.rope_base_swa ** -exponents      # local layers: own base, no scaling
        self.inv_freq = [inv_freq_local if swa else inv_freq_global for swa in cfg.swa_layers]
        # decode one embedding row now: Numba's start-up (about a second) is then load time,
        # not the first prompt's time
        self.weights.token_embd.gather_rows([0])

    def new_cache(self, n_ctx: int) -> KVCache:
        """An empty KV cache for n_ctx positions, in this numerics' element type. n_ctx is at
        most the context the model was trained for (as ollama caps num_ctx), which also bounds
        the memory a mistyped size could ask for."""
        if not 1 <= n_ctx <= self.config.n_ctx_train:
            raise ModelConfigError(f"the context size must be between 1 and the model's trained context "
                                   f"{self.config.n_ctx_train}, not {n_ctx}")
        return KVCache(self.config, n_ctx, self.numerics.kv_dtype)

    # -- the forward pass ------------------------------------------------------------------------

    def forward(self, tokens, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` at the positions after the cache's, and append them to the cache.

        Returns float32 logits [len(tokens), n_vocab] with all_logits (row i scores the token
        after tokens[i]), else [1, n_vocab] for the last token only. The tokens must fit in
        the cache's free positions and be valid ids (ModelConfigError otherwise).
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
        rows = []
        # Weights are decoded ~1 MiB at a time, too little for Numba's parallel loops to pay off
        # (measured: two threads decode SmolLM2 40% slower than one, and they fight BLAS's
        # threads), so decoding is single-threaded; the products use BLAS's threads.
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            for start in range(0, len(tokens), N_BATCH):
                batch = tokens[start:start + N_BATCH]
                last_batch = start + N_BATCH >= len(tokens)
                x = self.hidden_states(batch, cache)                   # [n, n_embd]
                if all_logits or last_batch:
                    rows.append(self.logits(x if all_logits else x[-1:]))
        finally:
            numba.set_num_threads(threads)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def hidden_states(self, tokens: list[int], cache: KVCache) -> np.ndarray:
        """Run one batch through every block; returns the last block's output [n, n_embd]."""
        cfg, w = self.config, self.weights
        start = cache.n_past
        positions = np.arange(start, start + len(tokens))          # [n]

        # token embeddings: decode just the rows of these tokens  x [n, n_embd]
        x = w.token_embd.gather_rows(tokens)
        if cfg.spec.embed_scale:
            x *= np.float32(math.sqrt(cfg.n_embd))

        for il, layer in enumerate(w.layers):
            x = self.block(il, layer, x, positions, cache)
        cache.tokens.extend(tokens)
        return x

    def block(self, il: int, layer: Layer, x: np.ndarray, positions: np.ndarray, cache: KVCache) -> np.ndarray:
        """One transformer block: x [n, n_embd] -> x [n, n_embd]; stores this layer's k and v."""
        cfg, spec = self.config, self.config.spec
        n = x.shape[0]

        # attention norm
        h = rms_norm(x, layer.vector("attn_norm"), cfg.rms_eps)                  # [n, n_embd]

        # q, k, v projections, split into heads
        q = self.linear(h, layer, "attn_q").reshape(n, cfg.n_head, cfg.head_dim)
        k = self.linear(h, layer, "attn_k").reshape(n, cfg.n_head_kv, cfg.head_dim)
        v = self.linear(h, layer, "attn_v").reshape(n, cfg.n_head_kv, cfg.head_dim_v)

        # per-head q/k norm (qwen3, gemma3)
        if spec.qk_norm:
            q = rms_norm(q, layer.vector("attn_q_norm"), cfg.rms_eps)
            k = rms_norm(k, layer.vector("attn_k_norm"), cfg.rms_eps)

        # rope: rotate q and k by their positions
        q = rope(q, positions, self.inv_freq[il], spec.rope_type, cfg.n_rot)
        k = rope(k, positions, self.inv_freq[il], spec.rope_type, cfg.n_rot)

        # store k and v; attend over every cached position up to the last of this batch
        cache.store(il, int(positions[0]), k, v)
        end = int(positions[-1]) + 1
        keys = cache.k[il, :, :end]                                              # [n_kv, end, head_dim]
        values = cache.v[il, :, :end]                                            # [n_kv, end, head_dim_v]
        window = cfg.n_swa if cfg.swa_layers[il] else 0
        a = attention(q * np.float32(cfg.attn_scale), keys, values, positions, window)   # [n, n_head * head_dim_v]

        # output projection (gemma3: post-attention norm), residual
        a = self.linear(a, layer, "attn_output")
        if spec.post_norms:
            a = rms_norm(a, layer.vector("post_attention_norm"), cfg.rms_eps)
        x = x + a

        # feed-forward: norm, gated activation, down projection (gemma3: post-FFN norm), residual
        h = rms_norm(x, layer.vector("ffn_norm"), cfg.rms_eps)
        gate = self.numerics.activations[spec.activation](self.linear(h, layer, "ffn_gate"))
        f = self.linear(gate * self.linear(h, layer, "ffn_up"), layer, "ffn_down")
        if spec.post_norms:
            f = rms_norm(f, layer.vector("post_ffw_norm"), cfg.rms_eps)
        return x + f

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Final norm and output projection: x [n, n_embd] -> logits float32 [n, n_vocab]."""
        cfg, w = self.config, self.weights
        h = rms_norm(x, w.output_norm, cfg.rms_eps)
        logits = self.numerics.matmul(h, w.output)
        if w.output_bias is not None:
            logits += w.output_bias
        if cfg.final_softcap > 0:
            c = np.float32(cfg.final_softcap)
            logits = c * np.tanh(logits / c)
        return logits

    def linear(self, x: np.ndarray, layer: Layer, name: str) -> np.ndarray:
        """x [n, in] through the layer's matrix `name` [out, in], plus its bias if it has one."""
        y = self.numerics.matmul(x, layer.matrices[name])
        bias = layer.vector(name + ".bias")
        return y if bias is None else y + bias

    # -- context shift ----------------------------------------------------------------------------

    def shift(self, cache: KVCache, n_keep: int, n_discard: int) -> None:
        """Drop positions n_keep..n_keep+n_discard-1 from the cache and move the later ones
        down, rotating their keys back by n_discard positions (llama.cpp's context shift)."""
        n_moved = cache.n_past - n_keep - n_discard
        cache.discard(n_keep, n_discard)
        delta = np.full(n_moved, -n_discard)
        for il in range(self.config.n_layer):
            moved = cache.k[il, :, n_keep:n_keep + n_moved].transpose(1, 0, 2)   # [n_moved, n_kv, head_dim]
            rotated = rope(moved.astype(np.float32), delta, self.inv_freq[il], self.config.spec.rope_type,
                           self.config.n_rot)
            cache.k[il, :, n_keep:n_keep + n_moved] = rotated.transpose(1, 0, 2)


# -- the steps ----------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis (float32; the mean in float64)."""
    mean_square = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(mean_square + eps)).astype(np.float32)) * weight


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, rope_type: str, n_rot: int) -> np.ndarray:
    """Rotate each head of x [n, heads, head_dim] by its token's position.

    Pair i of the first n_rot dimensions turns by the angle positions * inv_freq[i]. "norm"
    (llama) pairs neighbours (x[2i], x[2i+1]); "neox" pairs the halves (x[i], x[i + n_rot/2]).
    """
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]          # [n, n_rot / 2]
    cos = np.cos(angles).astype(np.float32)[:, None, :]                          # [n, 1, n_rot / 2]
    sin = np.sin(angles).astype(np.float32)[:, None, :]
    if rope_type == "norm":
        first, second = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    else:
        first, second = x[..., :n_rot // 2], x[..., n_rot // 2:n_rot]
    out = x.copy()
    if rope_type == "norm":
        out[..., 0:n_rot:2] = first * cos - second * sin
        out[..., 1:n_rot:2] = first * sin + second * cos
    else:
        out[..., :n_rot // 2] = first * cos - second * sin
        out[..., n_rot // 2:n_rot] = first * sin + second * cos
    return out


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray, window: int) -> np.ndarray:
    """Causal multi-head attention with grouped KV heads.

    q [n, n_head, d] (already scaled), keys [n_kv, T, d], values [n_kv, T, dv] for positions
    0..T-1. Query head h reads KV head h // (n_head / n_kv). A query at position p sees keys at
    positions k <= p, and with a window w > 0 only those with p - k < w. Returns [n, n_head * dv].
    """
    n, n_head, d = q.shape
    n_kv, n_keys, dv = values.shape
    group = n_head // n_kv
    # scores [n_kv, group * n, T]: the group's query heads stacked so each KV head is one matmul
    q_grouped = q.transpose(1, 0, 2).reshape(n_kv, group * n, d)
    scores = (q_grouped @ keys.transpose(0, 2, 1)).reshape(n_kv, group, n, n_keys)
    key_pos = np.arange(n_keys)
    hidden = key_pos[None, :] > positions[:, None]                               # [n, T] future keys
    if window > 0:
        hidden |= positions[:, None] - key_pos[None, :] >= window
    scores[..., hidden] = -np.inf
    # softmax over the keys (every query sees at least itself, so no row is all -inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = probs.reshape(n_kv, group * n, n_keys) @ values                        # [n_kv, group * n, dv]
    return out.reshape(n_head, n, dv).transpose(1, 0, 2).reshape(n, n_head * dv)
