"""A model's weights as the forward pass uses them: matrices stay quantized in the mmapped file.

A `Matrix` is a view of a weight tensor's bytes in the file (no copy, nothing decoded). The
forward pass asks it for float32 rows a chunk at a time (`dequantize_rows`), so a float32 copy
of the whole model never exists; at most one chunk per matmul does. Vectors (norm weights,
biases, rope divisors) are tiny and decoded once, at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refllm.engine.config import ModelConfig
from refllm.kernels import dequantize


@dataclass(frozen=True)
class Matrix:
    """A [rows, cols] weight matrix, still in its file encoding (GGUF: W is [out, in], y = W x)."""
    name: str
    raw: np.ndarray          # uint8 [rows * row_bytes], a view into the file's memmap
    ggml_type: int
    shape: tuple[int, int]   # (rows, cols) = (out_features, in_features)
    byteorder: str

    @property
    def row_bytes(self) -> int:
        return self.raw.size // self.shape[0]

    def dequantize_rows(self, start: int, stop: int, out: np.ndarray | None = None,
                        backend: str = "numba") -> np.ndarray:
        """Rows start..stop-1 as float32 [stop - start, cols], bit-exact as ggml decodes them
        (decoded into `out` when given)."""
        raw = self.raw[start * self.row_bytes:stop * self.row_bytes]
        return dequantize(raw, self.ggml_type, (stop - start, self.shape[1]), backend,
                          byteorder=self.byteorder, out=out)

    def gather_rows(self, ids, backend: str = "numba") -> np.ndarray:
        """Rows `ids` as float32 [len(ids), cols]: an embedding lookup that decodes only those rows."""
        out = np.empty((len(ids), self.shape[1]), np.float32)
        for k, row in enumerate(ids):
            self.dequantize_rows(int(row), int(row) + 1, out[k:k + 1], backend)
        return out


@dataclass(frozen=True)
class Layer:
    """One transformer block's weights, by GGUF name without the "blk.N." prefix."""
    matrices: dict[str, Matrix]           # attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down
    vectors: dict[str, np.ndarray]        # norms and biases, float32, e.g. "attn_norm", "attn_q.bias"

    def vector(self, name: str) -> np.ndarray | None:
        """A norm weight or bias, or None when the file has none."""
        return self.vectors.get(name)


@dataclass(frozen=True)
class ModelWeights:
    """Every weight the forward pass reads."""
    token_embd: Matrix                    # [n_vocab, n_embd]
    output: Matrix                        # [n_vocab, n_embd]; token_embd itself when tied
    output_norm: np.ndarray               # [n_embd]
    output_bias: np.ndarray | None        # [n_vocab]
    rope_freqs: np.ndarray | None         # [n_rot / 2]: llama3's per-dimension frequency divisors
    layers: tuple[Layer, ...]

    @classmethod
    def from_model(cls, model, config: ModelConfig) -> ModelWeights:
        """Map the weights of an opened model whose tensors `config` has already checked."""
        present = {t.name for t in model.tensors}

        def matrix(name: str) -> Matrix:
            t = model.tensor(name)
            return Matrix(name, model.tensor_bytes(name), t.ggml_type, tuple(t.shape), model.byteorder)

        def vector(name: str) -> np.ndarray | None:
            if name not in present:
                return None
            t = model.tensor(name)
            return dequantize(model.tensor_bytes(name), t.ggml_type, t.shape, "numpy", byteorder=model.byteorder)

        layers = []
        for il in range(config.n_layer):
            prefix = f"blk.{il}."
            matrices, vectors = {}, {}
            for name in sorted(n for n in present if n.startswith(prefix)):
                short = name[len(prefix):].removesuffix(".weight")       # "attn_q", "attn_q.bias"
                if len(model.tensor(name).shape) == 2:
                    matrices[short] = matrix(name)
                else:
                    vectors[short] = vector(name)
            layers.append(Layer(matrices, vectors))
        token_embd = matrix("token_embd.weight")
        return cls(
            token_embd=token_embd,
            output=token_embd if config.tied_output else matrix("output.weight"),
            output_norm=vector("output_norm.weight"),
            output_bias=vector("output.bias"),
            rope_freqs=vector("rope_freqs.weight"),
            layers=tuple(layers),
        )
