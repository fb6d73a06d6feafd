"""Write the synthetic models of golden/perplexity, for make_golden.py to run llama-perplexity on.

Run with refllm's own Python (make_golden.py never imports refllm; it reads these files):

    python golden/perplexity/write_models.py DIR

It writes DIR/synth-f32.gguf (refllm.tools.synth with SYNTH: a llama whose every weight is F32,
with an odd vocabulary of 383 tokens, so that a base-logits record has its padding value) and
DIR/synth-f32-q4_0.gguf (that model quantized to Q4_0 by refllm.tools.quantize_model, which
writes llama-quantize's bytes: the model under test for --kl-divergence), and prints their
sha256. The files are not committed: make_golden.py records each sha256 in provenance.json, and
tests/test_perplexity.py rebuilds them with `write_models` and checks the sha256.
"""

from __future__ import annotations

import sys
from pathlib import Path

from refllm.formats.files import sha256_file
from refllm.tools.quantize_model import quantize_model
from refllm.tools.synth import write_synthetic_model

SYNTH = {"arch": "llama", "seed": 0, "n_vocab": 383, "weight_types": {name: "F32" for name in (
    "token_embd.weight", "output.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
    "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")}}
MODELS = ("synth-f32", "synth-f32-q4_0")


def write_models(out: Path) -> dict[str, Path]:
    """Both models in `out`: name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    args = dict(SYNTH)
    base = write_synthetic_model(out / "synth-f32.gguf", args.pop("arch"), **args)
    quantize_model(base, out / "synth-f32-q4_0.gguf", "Q4_0")
    return {"synth-f32": base, "synth-f32-q4_0": out / "synth-f32-q4_0.gguf"}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python golden/perplexity/write_models.py DIR")
    for path in write_models(Path(sys.argv[1])).values():
        print(sha256_file(path), path)


if __name__ == "__main__":
    main()
