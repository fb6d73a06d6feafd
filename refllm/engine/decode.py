"""The decode step: one token through every block, as a few compiled calls per layer.

Generation runs the forward pass one token at a time. For one token, Transformer.block (the
reference, readable NumPy for any batch) spends more time in its few dozen NumPy calls per
layer than in the layer's arithmetic. DecodeStep does the same work with the kernels of
refllm.ggml_cpu.one_token, into buffers it allocates once:

    h = rms_norm(x) * attn_norm                       (the previous layer's last call)
    q, k, v = h Wq, h Wk, h Wv (+ biases)             numerics.matmuls: h converted once
    q, k = per-head norm, rope                        qk_norm_rope, for each
    store k, v; a = softmax(q k^T * scale) v          cache.store, attend_one
    a = a Wo (+ bias)                                 numerics.matmuls
    x += a (post-norm); h = rms_norm(x) * ffn_norm    add_rms_norm
    f = act(h Wgate) * (h Wup)                        numerics.matmuls, silu_times / *gelu*_times
    f = f Wdown                                       numerics.matmuls
    x += f (post-norm); h = next layer's attn norm    add_rms_norm

The results are block()'s: bit for bit under --numerics ggml (the kernels compute ggml's x86
operations in the same order), and under f32 the same formulas summed in another order
(tests/test_decode.py checks both, for every architecture).
"""

from __future__ import annotations

import math

import numpy as np

from refllm.engine.kv_cache import KVCache, as_stored
from refllm.engine.numerics import gelu_table
from refllm.ggml_cpu import one_token
from refllm.ggml_cpu.flash_attn import flash_attention
from refllm.ggml_cpu.threads import shared

F32 = np.float32
NONE = np.empty(0, F32)              # "no weight": a norm the architecture does not have


class DecodeStep:
    """One token's forward pass for a Transformer (`net`), into buffers made once."""

    def __init__(self, net):
        cfg = net.config
        self.net = net
        self.exact = net.numerics.name == "ggml"
        self.x = np.empty(cfg.n_embd, F32)                       # the residual stream
        self.h = np.empty(cfg.n_embd, F32)                       # its norm, the next product's input
        self.attn = np.empty((cfg.n_head, cfg.head_dim_v), F32)  # attention's output, per head
        self.probs = np.empty((cfg.n_head, 0), F32)              # attention's scratch, grown as needed
        self.gelu = gelu_table() if self.exact and cfg.spec.activation == "gelu_tanh" else None

    def __call__(self, token: int, cache: KVCache) -> np.ndarray:
        """Evaluate `token` at the position after the cache's and append it to the cache:
        float32 logits [1, n_vocab], as Transformer.forward([token], cache)."""
        net, cfg, spec = self.net, self.net.config, self.net.config.spec
        w, x, h = net.weights, self.x, self.h
        pos = cache.n_past
        positions = np.array([pos])

        x[:] = w.token_embd.gather_rows([token])[0]
        if spec.embed_scale:
            x *= F32(math.sqrt(cfg.n_embd))
        one_token.rms_norm_into(x, w.layers[0].vector("attn_norm"), F32(cfg.rms_eps), h)
        for il, layer in enumerate(w.layers):
            # q, k, v projections, split into heads
            q, k, v = net.linears(h[None], layer, ("attn_q", "attn_k", "attn_v"))
            q = q.reshape(cfg.n_head, cfg.head_dim)
            k = k.reshape(cfg.n_head_kv, cfg.head_dim)
            v = v.reshape(cfg.n_head_kv, cfg.head_dim_v)

            # per-head norms (qwen3, gemma3) and rope
            cos, sin = net.rope[il].cos_sin(positions)
            neox = spec.rope_type == "neox"
            for y, norm in ((q, "attn_q_norm"), (k, "attn_k_norm")):
                weight = layer.vector(norm) if spec.qk_norm else NONE
                one_token.qk_norm_rope(y, weight, F32(cfg.rms_eps), cos[0], sin[0], neox, self.exact)

            # store k and v; attend over the cached positions
            cache.store(il, pos, k[None], v[None])
            scale = F32(cfg.attn_scale)
            if spec.scale_q:
                q *= scale
                scale = F32(1)
            window = cfg.n_swa if cfg.swa_layers[il] else 0
            if self.probs.shape[1] < pos + 64:
                self.probs = np.empty((cfg.n_head, max(pos + 64, 2 * self.probs.shape[1])), F32)
            visible = min(pos + 1, window or pos + 1)
            if net.flash_attn:
                keys, values, first = cache.keys_values(il, pos, pos + 1)
                self.attn[:] = flash_attention(q[None], as_stored(keys), as_stored(values), positions, first, window,
                                               scale, cache.llama_view(il, pos + 1), net.threads,
                                               shared(2 * visible * keys[:, 0].nbytes)).reshape(self.attn.shape)
            else:
                cache_k, cache_v = as_stored(cache.k[il]), as_stored(cache.v[il])
                vector = one_token.USE_AVX2 and cfg.head_dim % 8 == 0 and cfg.head_dim_v % 8 == 0
                one_token.attend_one(q, cache_k, cache_v, pos, window, scale, self.exact, vector, self.probs,
                                     self.attn, shared(2 * visible * cache_k[:, 0].nbytes))

            # output projection; residual (gemma3: post-attention norm first); FFN norm
            a = net.linear(self.attn.reshape(1, -1), layer, "attn_output")[0]
            post = layer.vector("post_attention_norm") if spec.post_norms else NONE
            one_token.add_rms_norm(x, a, post, layer.vector("ffn_norm"), F32(cfg.rms_eps), h)

            # feed-forward: gated activation, down projection; residual; the next layer's norm
            gate, up = net.linears(h[None], layer, ("ffn_gate", "ffn_up"))
            f = self.activation(gate[0], up[0])
            f = net.linear(f[None], layer, "ffn_down")[0]
            post = layer.vector("post_ffw_norm") if spec.post_norms else NONE
            following = w.layers[il + 1].vector("attn_norm") if il + 1 < len(w.layers) else NONE
            one_token.add_rms_norm(x, f, post, following, F32(cfg.rms_eps), h)
        cache.tokens.append(int(token))
        return net.logits(x[None])

    def activation(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """act(gate) * up for one token, float32 [n_ff], in the numerics' arithmetic."""
        out = np.empty_like(gate)
        if self.net.config.spec.activation == "silu":
            one_token.silu_times(gate, up, self.exact, out)
        elif self.gelu is not None:
            one_token.table_gelu_times(gate, up, self.gelu, out)
        else:
            one_token.gelu_tanh_times(gate, up, out)
        return out

