"""Write the float32 sources of golden/quant_files, for make_golden.py to quantize.

Run with refllm's own Python (make_golden.py never imports refllm; it reads these files):

    python golden/quant_files/write_sources.py DIR

It writes DIR/synth-llama-f32.gguf (refllm.tools.synth, every weight F32, SOURCES["synth"])
and DIR/smollm2-f32.gguf (SmolLM2-135M-Instruct Q4_1 with every tensor decoded exactly to F32,
refllm.tools.quantize_model.write_f32_copy), and prints their sha256. tests/test_quantize_file.py
rebuilds both the same way and checks the sha256 recorded in provenance.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from refllm import fetch
from refllm.tools.synth import write_synthetic_model
from refllm.formats.files import sha256_file
from refllm.tools.quantize_model import write_f32_copy

HERE = Path(__file__).parent
SOURCES = json.loads((HERE / "sources.json").read_text(encoding="utf-8"))


def write_sources(out: Path) -> dict[str, Path]:
    """Both sources in `out`: name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    synth = dict(SOURCES["synth-llama-f32"])
    paths = {"synth-llama-f32": write_synthetic_model(out / "synth-llama-f32.gguf", synth.pop("arch"), **synth)}
    write_f32_copy(fetch.ensure_pack("smollm2", quiet=True), out / "smollm2-f32.gguf")
    paths["smollm2-f32"] = out / "smollm2-f32.gguf"
    return paths


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python golden/quant_files/write_sources.py DIR")
    for name, path in write_sources(Path(sys.argv[1])).items():
        print(sha256_file(path), path)


if __name__ == "__main__":
    main()
