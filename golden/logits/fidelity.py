"""How close refllm's logits are to llama.cpp's on every golden/logits case: the table of
golden/RESULTS.md.

    python golden/logits/fidelity.py [--numerics f32|ggml]

Runs with refllm's own Python (it never imports llama-cpp-python). For each case it rebuilds or
fetches the model, evaluates the case's ids as llama.cpp did (in one batch; token by token for a
case with "n_batch": 1) and compares with llama.cpp's stored rows (KLD statistics and NMSE over
the full rows; top-1 over every position, from the stored top-k), next to llama.cpp's own
variation recorded in provenance.json: for a batched case its n_batch 1 run, for an n_batch 1
case its batched run (n_batch 512), and for both an f32 KV cache.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import refllm
from refllm import fetch
from refllm.tools.compare import compare_logits, per_position_coarse_kld
from refllm.engine.session import prompt_logits
from refllm.tools.synth import write_synthetic_model
from refllm.engine.transformer import Transformer
from refllm.formats.files import sha256_file

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numerics", default="f32")
    args = ap.parse_args()
    provenance = json.loads((HERE / "provenance.json").read_text(encoding="utf-8"))
    spec = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))["cases"]
    variation = provenance["llama_cpp_self_variation"]["cases"]
    print(f"numerics {args.numerics}\n")
    print("| case | tokens | full rows | mean KLD | max KLD | NMSE | same top-1 (full rows) | "
          "top-1 where margin ≥ 1 | coarse KLD, every position | identical float16 rows | "
          "positions with llama.cpp's top-32 logits exactly | llama.cpp other n_batch KLD / NMSE | "
          "llama.cpp f32 KV KLD / NMSE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in sorted(provenance["cases"].items()):
            if "synth" in entry:
                synth = dict(entry["synth"])
                path = write_synthetic_model(Path(tmp) / f"{name}.gguf", synth.pop("arch"), **synth)
            else:
                path = fetch.ensure_pack(spec[name]["model"], quiet=True)
            if sha256_file(path) != entry["sha256"]:
                raise SystemExit(f"{name}: {path} is not the model file the golden logits came from")
            golden = dict(np.load(HERE / f"{name}.npz"))
            tokens = golden["tokens"].tolist()
            net = Transformer(refllm.open(path), args.numerics)
            ours = prompt_logits(net, tokens, n_batch=spec[name].get("n_batch"))
            stats = compare_logits(golden["rows"].astype(np.float32), ours[golden["positions"]],
                                   ref_precision=np.float16)
            exact_top = np.all(np.take_along_axis(ours, golden["topk_ids"], axis=1) == golden["topk_logits"], axis=1)
            margin = golden["topk_logits"][:, 0] - golden["topk_logits"][:, 1]
            sure = margin >= 1.0
            agree = ours[sure].argmax(axis=1) == golden["topk_ids"][sure, 0]
            coarse = per_position_coarse_kld(golden["topk_ids"], golden["topk_logits"], golden["logsumexp"], ours)
            var = variation.get(name)
            other = var and (var["n_batch=512"] if "n_batch=512" in var else var["n_batch=1"])
            noise = ("| {:.2e} / {:.2e} | {:.2e} / {:.2e} |".format(
                other["kld_mean"], other["nmse"],
                var["f32_kv_cache"]["kld_mean"], var["f32_kv_cache"]["nmse"]) if var else "| - | - |")
            print(f"| {name} | {len(tokens)} | {golden['positions'].size} | {stats['kld_mean']:.2e} | "
                  f"{stats['kld_max']:.2e} | {stats['nmse']:.2e} | {stats['same_top1_pct']:.1f} % | "
                  f"{agree.sum()}/{sure.sum()} | {coarse.mean():.2e} | {stats['identical_rows']}/{golden['positions'].size} | "
                  f"{exact_top.sum()}/{len(tokens)} {noise}", flush=True)


if __name__ == "__main__":
    main()
