"""Make golden/chat_templates/expected.json: chat templates rendered by llama-cpp-python.

Run with a Python that has llama-cpp-python==0.3.36 (never refllm's own environment):

    python golden/chat_templates/make_golden.py SMOLLM2.gguf GEMMA3.gguf [VOCAB.gguf ...]

(the files `refllm pull smollm2` and `refllm pull gemma3` print; the extra files are the
llama.cpp test vocabularies of `refllm pull llama-vocab` that carry a chat template: command-r,
gemma-4, phi-3, qwen2, qwen35). Each file is loaded vocab-only, and every template in its
metadata (`tokenizer.chat_template` as "default", `tokenizer.chat_template.NAME` as NAME) is
set up the way `Llama.__init__` does it: a `Jinja2ChatFormatter` with the text of the BOS and
EOS tokens. Each conversation of conversations.json is rendered with add_generation_prompt
False and True, `tools` as tools= and `extra` as keyword arguments, and the prompt is recorded,
or the exception's type and message when the template fails. The templates written for
refllm's tests (conversations.json's "templates") are rendered the same way. A file without a
template is recorded with none. The output carries its provenance: versions, the command, and
each file's sha256.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

HERE = Path(__file__).parent
TEMPLATE_KEY = "tokenizer.chat_template"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_all(source: str, bos_token: str, eos_token: str, conversations: dict) -> dict:
    """Every conversation through one template, with add_generation_prompt False and True."""
    renders = {}
    for key, conv in conversations.items():
        renders[key] = {}
        for agp in (False, True):
            formatter = Jinja2ChatFormatter(template=source, eos_token=eos_token, bos_token=bos_token,
                                            add_generation_prompt=agp)
            try:
                result = {"prompt": formatter(messages=conv["messages"], tools=conv.get("tools"),
                                              **conv.get("extra", {})).prompt}
            except Exception as e:  # the template refused or failed: record how
                result = {"error": type(e).__name__, "message": str(e)}
            renders[key][f"add_generation_prompt={agp}"] = result
    return renders


def model_templates(path: Path, conversations: dict) -> dict:
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    # As Llama.__init__ does: the token texts, "" where the vocabulary has no such token.
    bos_id, eos_id = llm.token_bos(), llm.token_eos()
    bos_token = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    eos_token = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
    templates = {}
    for key, source in llm.metadata.items():
        if key == TEMPLATE_KEY or key.startswith(TEMPLATE_KEY + "."):
            name = "default" if key == TEMPLATE_KEY else key[len(TEMPLATE_KEY) + 1:]
            templates[name] = {"sha256": sha256_bytes(source.encode("utf-8")),
                               "renders": render_all(source, bos_token, eos_token, conversations)}
    entry = {"sha256": sha256_file(path), "bos_token": bos_token, "eos_token": eos_token,
             "templates": dict(sorted(templates.items()))}
    if not templates:
        entry["note"] = (f"no {TEMPLATE_KEY} in the metadata; llama-cpp-python falls back to its "
                         f"built-in chat_format {llm.chat_format!r}")
    return entry


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    spec = json.loads((HERE / "conversations.json").read_text(encoding="utf-8"))
    conversations = spec["conversations"]
    models = {Path(arg).name: model_templates(Path(arg), conversations) for arg in sys.argv[1:]}
    own = {name: {"sha256": sha256_bytes(t["source"].encode("utf-8")),
                  "renders": render_all(t["source"], t["bos_token"], t["eos_token"], conversations)}
           for name, t in spec["templates"].items()}
    out = {
        "provenance": {
            "made_by": "golden/chat_templates/make_golden.py",
            "command": "python golden/chat_templates/make_golden.py "
                       + " ".join(Path(a).name for a in sys.argv[1:]),
            "llama_cpp_python": llama_cpp.__version__,
            "jinja2": version("jinja2"),
            "markupsafe": version("markupsafe"),
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
            "conversations_sha256": sha256_file(HERE / "conversations.json"),
            "settings": "Llama(model_path, vocab_only=True); for each template in its metadata, "
                        "Jinja2ChatFormatter(template, eos_token, bos_token, add_generation_prompt) "
                        "with the texts of token_bos()/token_eos(); formatter(messages=..., tools=..., "
                        "**extra).prompt",
        },
        "models": models,
        "test_templates": own,
    }
    tmp = HERE / "expected.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(HERE / "expected.json")


if __name__ == "__main__":
    main()
