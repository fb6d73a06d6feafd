"""Write the synthetic models of golden/matmul, one per weight type, for make_golden.py to run.

Run with refllm's own Python (the golden script never imports refllm; it reads these files):

    python golden/matmul/write_models.py DIR

For each type T of TYPES it writes DIR/<T>.gguf: a one-layer llama of
`refllm.tools.synth.write_synthetic_model(path, **model_args(T))`, whose seven layer matrices
(attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down) are all T, with token_embd F32
and output Q8_0 in every model (so that the output matmul is the same kind of product in all of
them, and the embeddings the layer reads are exact). It prints each file's sha256. The files
are not committed: make_golden.py records each sha256 and its arguments in provenance.json, and
tests/test_matmul_golden.py rebuilds them and checks the sha256.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


# Every type a synthetic matrix can have (refllm.tools.synth.MATRIX_TYPES), in ggml type-id order.
TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "BF16")
LAYER_MATRICES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
FIXED_TYPES = {"token_embd.weight": "F32", "output.weight": "Q8_0"}
SEED = 20240601


def model_args(kind: str) -> dict:
    """The write_synthetic_model arguments (arch included) of the model whose layer is all `kind`."""
    return dict(arch="llama", seed=SEED, n_layer=1, n_embd=256, n_ff=512, n_head=4, n_head_kv=2,
                n_vocab=384, weight_types={**FIXED_TYPES, **{name: kind for name in LAYER_MATRICES}})


def main() -> None:
    # imported here, not at the top: make_golden.py (llama-cpp-python's venv, no refllm) reads
    # TYPES and model_args from this module
    from refllm.tools.synth import write_synthetic_model

    if len(sys.argv) != 2:
        sys.exit("usage: python golden/matmul/write_models.py DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for kind in TYPES:
        args = model_args(kind)
        path = write_synthetic_model(out / f"{kind}.gguf", args.pop("arch"), **args)
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path, flush=True)


if __name__ == "__main__":
    main()
