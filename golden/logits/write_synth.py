"""Write the synthetic models of golden/logits/cases.json, for make_golden.py to run.

Run with refllm's own Python (the golden script never imports refllm; it reads these files):

    python golden/logits/write_synth.py DIR

For each case with a "synth" entry it writes DIR/<case>.gguf with
`refllm.tools.synth.write_synthetic_model(path, **synth)` and prints its sha256. An n_batch 1
case (<case>-nb1) has its batched sibling's synth args, so its file has the same bytes under its
own name. The files are not committed: make_golden.py records each sha256 and its arguments in
provenance.json, and tests/test_synth.py rebuilds them and checks the sha256.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from refllm.tools.synth import write_synthetic_model

HERE = Path(__file__).parent


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python golden/logits/write_synth.py DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))["cases"]
    for name, case in cases.items():
        if "synth" not in case:
            continue
        args = dict(case["synth"])
        path = write_synthetic_model(out / f"{name}.gguf", args.pop("arch"), **args)
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path)


if __name__ == "__main__":
    main()
