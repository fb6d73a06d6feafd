"""Make golden/tokens/expected.json: the token ids llama.cpp gives for corpus.json.

Run with a Python that has llama-cpp-python==0.3.36 (never refllm's own environment):

    python golden/tokens/make_golden.py SMOLLM2.gguf GEMMA3.gguf

(the two files `refllm pull smollm2` and `refllm pull gemma3` print). For each model and each
text it records `Llama.tokenize(text, add_bos=True, special=parse_special)` for parse_special
False and True, with the model loaded vocab-only. llama-cpp-python's `add_bos` is llama.cpp's
`add_special`: BOS (and EOS) are added only where the model's vocabulary says so; SmolLM2's
says no BOS, Gemma-3's says BOS. The output carries its provenance: versions,
the command, and each model's sha256.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import sys
from pathlib import Path

import llama_cpp

HERE = Path(__file__).parent


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    corpus = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))["texts"]
    models = {}
    for arg in sys.argv[1:]:
        path = Path(arg)
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        cases = {}
        for key, text in corpus.items():
            cases[key] = {
                f"parse_special={special}": llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
                for special in (False, True)
            }
        models[path.name] = {"sha256": sha256(path), "add_special": True, "cases": cases}
    out = {
        "provenance": {
            "made_by": "golden/tokens/make_golden.py",
            "command": "python golden/tokens/make_golden.py " + " ".join(Path(a).name for a in sys.argv[1:]),
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
            "settings": "Llama(model_path, vocab_only=True); tokenize(text.encode('utf-8'), "
                        "add_bos=True, special=parse_special), i.e. llama_tokenize(add_special=true, "
                        "parse_special)",
        },
        "models": models,
    }
    tmp = HERE / "expected.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(HERE / "expected.json")


if __name__ == "__main__":
    main()
