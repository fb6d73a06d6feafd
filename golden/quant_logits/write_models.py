"""Write the synthetic models of golden/quant_logits, for make_golden.py to run.

Run with refllm's own Python (the golden script never imports refllm; it reads these files):

    python golden/quant_logits/write_models.py DIR

Each model DIR/<case>.gguf is a two-layer llama of refllm.tools.synth (n_embd 256, n_ff 512,
4 heads, 2 KV heads) whose matrices are then replaced by random blocks of one type (refllm
has no quantizer for most of these types): every layer matrix, and token_embd, which is also
the output matrix (tied_output: llama.cpp multiplies a second, repackable copy of it). The
blocks are random bytes with small finite scales (seeded: PCG64(SEED + index of the case)), so
every index of the formats is exercised. CASES gives each case's type and vocabulary size (384:
rows whole 8s, so llama.cpp repacks the IQ4_NL / MXFP4 / Q4_0 / Q4_K output; 388: not).

It prints each file's sha256; tests/test_quant_logits_golden.py rebuilds the files with
`write_model` and checks the sha256 that provenance.json recorded.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

import refllm
from refllm.tools.synth import write_synthetic_model
from refllm.formats.writer import GGUFWriter

SEED = 20250802
# case -> (weight type, n_vocab)
CASES: dict[str, tuple[str, int]] = {
    **{t: (t, 384) for t in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS",
                             "IQ4_NL", "MXFP4", "NVFP4", "TQ1_0", "TQ2_0", "Q4_0", "Q4_K")},
    "IQ4_NL-v388": ("IQ4_NL", 388),
}
LAYER_MATRICES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
# type -> (weights per block, bytes per block, where the block's scale is, how it is written):
#   ("f16", at): an fp16 d at byte `at`; ("e8m0", 0): MXFP4's exponent byte; ("ue4m3", 0):
#   NVFP4's four scale bytes; ("iq1m", 48): IQ1_M's fp16 in the top nibbles of 4 uint16 at 48
BLOCKS: dict[str, tuple[int, int, str, int]] = {
    "Q4_0": (32, 18, "f16", 0), "Q4_K": (256, 144, "f16", 0), "IQ4_NL": (32, 18, "f16", 0),
    "MXFP4": (32, 17, "e8m0", 0), "NVFP4": (64, 36, "ue4m3", 0),
    "IQ2_XXS": (256, 66, "f16", 0), "IQ2_XS": (256, 74, "f16", 0), "IQ2_S": (256, 82, "f16", 0),
    "IQ3_XXS": (256, 98, "f16", 0), "IQ3_S": (256, 110, "f16", 0), "IQ1_S": (256, 50, "f16", 0),
    "IQ1_M": (256, 56, "iq1m", 48), "IQ4_XS": (256, 136, "f16", 0),
    "TQ1_0": (256, 54, "f16", 52), "TQ2_0": (256, 66, "f16", 64),
}


def random_matrix(weight_type: str, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows * row bytes]: random `weight_type` blocks with small finite scales (fp16 d of
    either sign, 2^-6 .. 2^-4 in magnitude (Q4_K's dmin positive, half of it); MXFP4 exponents
    2^-10 .. 2^-6; NVFP4 UE4M3 scale bytes 0x08 .. 0x27)."""
    per, size, kind, at = BLOCKS[weight_type]
    nb = rows * (k // per)
    b = rng.integers(0, 256, (nb, size), dtype=np.uint8)
    d = (rng.choice([-1.0, 1.0], nb) * 2.0 ** rng.uniform(-6, -4, nb)).astype("<f2")
    if kind == "f16":
        b[:, at:at + 2] = d.view(np.uint8).reshape(nb, 2)
        if weight_type == "Q4_K":
            b[:, 2:4] = (np.abs(d) * np.float16(0.5)).astype("<f2").view(np.uint8).reshape(nb, 2)
    elif kind == "e8m0":
        b[:, 0] = rng.integers(118, 123, nb)
    elif kind == "ue4m3":
        b[:, 0:4] = rng.integers(0x08, 0x28, (nb, 4))
    else:
        words = b[:, at:at + 8].copy().view("<u2")
        bits = d.view("<u2")
        for i in range(4):
            words[:, i] = (words[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        b[:, at:at + 8] = words.view(np.uint8)
    return b.reshape(-1)


def write_model(case: str, directory: Path) -> Path:
    """Write DIR/<case>.gguf (atomically through GGUFWriter) and return its path. The same case
    gives the same bytes."""
    weight_type, n_vocab = CASES[case]
    directory = Path(directory)
    base = write_synthetic_model(directory / f"{case}.base.gguf", "llama", seed=3, n_layer=2, n_embd=256,
                                 n_ff=512, n_head=4, n_head_kv=2, n_vocab=n_vocab, tied_output=True,
                                 weight_types={name: "F32" for name in ("token_embd.weight",) + LAYER_MATRICES})
    model = refllm.open(base)
    rng = np.random.Generator(np.random.PCG64(SEED + list(CASES).index(case)))
    writer = GGUFWriter()
    for key, value in model.metadata.items():
        writer.add_kv(key, value, model.kv_types[key])
    for t in model.tensors:
        name = t.name
        if name == "token_embd.weight" or name.split(".", 2)[-1] in LAYER_MATRICES:
            rows, k = (int(v) for v in t.shape)
            writer.add_tensor(name, weight_type, t.shape, random_matrix(weight_type, rows, k, rng).tobytes())
        else:
            writer.add_tensor(name, t.ggml_type, t.shape, model.tensor_bytes(name))
    path = directory / f"{case}.gguf"
    writer.write(path)
    del model
    base.unlink()
    return path


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python golden/quant_logits/write_models.py DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        path = write_model(case, out)
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path, flush=True)


if __name__ == "__main__":
    main()
