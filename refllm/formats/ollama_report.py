"""What ollama's CLI prints about store models: `ollama list` and `ollama show`.

Layouts read from ollama's cmd/cmd.go (ListHandler, showInfo) and server/routes.go
(ShowHandler); tables are tablewriter's borderless ones, four spaces between columns, here
without the trailing spaces tablewriter pads the last column with.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refllm.formats.modelfile import format_modelfile, format_parameters
from refllm.formats.ollama import Manifest, StoreError, _root, blob_path, read_params, read_setup
from refllm.formats.reader import open_model
from refllm.formats.summary import human_count, parameter_count

SHOW_FIELDS = ("license", "modelfile", "parameters", "system", "template")
ERR_SHOW_FLAGS = "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"


def human_bytes(n: int) -> str:
    """ollama's format.HumanBytes: decimal units, whole numbers from 10 up, one decimal below."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            value = n / scale
            return f"{int(value)} {unit}" if value >= 10 or value == math.trunc(value) else f"{value:.1f} {unit}"
    return f"{n} B"


# (seconds in the unit, its name): format.HumanTime's steps, coarsest last
_TIME_UNITS = ((60, "second"), (3600, "minute"), (86400, "hour"), (7 * 86400, "day"), (30 * 86400, "week"),
               (365 * 86400, "month"), (math.inf, "year"))
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400,
                 "month": 30 * 86400, "year": 365 * 86400}


def human_time(then: float, now: float | None = None) -> str:
    """How long ago, as `ollama list` says it: 'Less than a second ago', 'About a minute ago',
    '3 hours ago', '2 weeks ago'."""
    seconds = max(0.0, (time.time() if now is None else now) - then)
    if seconds < 1:
        return "Less than a second ago"
    for limit, unit in _TIME_UNITS:
        if seconds < limit:
            count = int(seconds // _UNIT_SECONDS[unit])
            if count == 1:
                return {"minute": "About a minute", "hour": "About an hour"}.get(unit, f"1 {unit}") + " ago"
            return f"{count} {unit}s ago"
    return "a long time ago"


def list_rows(manifests: list[Manifest], now: float | None = None) -> list[dict[str, Any]]:
    """One row per model for `refllm list` / `inspect store`: name, id, size, modified."""
    return [{"name": m.name.display_shortest(), "full_name": str(m.name), "id": m.id, "size": m.size,
             "size_human": human_bytes(m.size), "modified": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                          time.localtime(m.modified)),
             "modified_human": human_time(m.modified, now),
             "model_blob": m.model_layer.digest if m.model_layer else None} for m in manifests]


def table(rows: list[list[str]]) -> list[str]:
    """A borderless table, columns padded and four spaces apart, as ollama's tablewriter draws it."""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(map(len, rows)))]
    return ["    ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def list_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`ollama list`: NAME ID SIZE MODIFIED."""
    return table([["NAME", "ID", "SIZE", "MODIFIED"]] +
                 [[r["name"], r["id"], r["size_human"], r["modified_human"]] for r in rows])


# -- show ----------------------------------------------------------------------------------------

@dataclass
class ShowInfo:
    """What `ollama show` knows about a store model."""
    manifest: Manifest
    config: dict[str, Any]
    metadata: dict[str, Any]
    parameter_count: int
    template: str | None          # the TEMPLATE layer (Go template)
    chat_template: str | None     # the GGUF's tokenizer.chat_template
    system: str | None
    licenses: list[str]
    parameters: dict[str, Any]
    messages: list[dict]
    model_path: Path

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", self.config.get("model_family", "")))

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def capabilities(self) -> list[str]:
        """Model.Capabilities (see model_capabilities), with those the config blob lists."""
        caps = model_capabilities(self.metadata, self.template or self.chat_template)
        return list(dict.fromkeys(caps + list(self.config.get("capabilities") or [])))


def model_capabilities(metadata: dict[str, Any], template: str | None) -> list[str]:
    """ollama's Model.Capabilities from what the files hold: an embedding model has a pooling
    type; the template tells tools, insert (.Suffix) and thinking (.Think)."""
    arch = metadata.get("general.architecture")
    caps = ["embedding" if metadata.get(f"{arch}.pooling_type") is not None else "completion"]
    for cap, marker in (("tools", "tools"), ("insert", ".Suffix"), ("thinking", ".Think")):
        if marker in (template or ""):
            caps.append(cap)
    return caps


def show_info(manifest: Manifest, root: Path | str | None = None) -> ShowInfo:
    """Read everything `show` prints from a model's layers and its model blob's header."""
    root = _root(root)
    layer = manifest.model_layer
    if layer is None:
        raise StoreError(f"model {manifest.name} has no model layer")
    path = blob_path(layer.digest, root)
    model = open_model(path)             # kept open: the metadata's arrays read from its mapping
    metadata, count = model.metadata, parameter_count(model)
    setup = read_setup(manifest, root)
    chat = metadata.get("tokenizer.chat_template")
    return ShowInfo(manifest, read_params(manifest.config, root), metadata, count, setup.template,
                    chat if isinstance(chat, str) else None, setup.system, setup.license, setup.params,
                    setup.messages, path.absolute())


def show_field(info: ShowInfo, which: str) -> str:
    """One field, printed as `ollama show --<which>` prints it (a final newline where ollama
    uses Println): the template is the TEMPLATE layer, else the GGUF's chat template."""
    if which == "template":
        return info.template if info.template is not None else (info.chat_template or "")
    if which == "system":
        return info.system or ""
    if which == "license":
        return "\n".join(info.licenses) + "\n"
    if which == "parameters":
        return format_parameters(info.parameters) + "\n"
    if which == "modelfile":
        return format_modelfile(info.manifest.name.display_shortest(), str(info.model_path),
                                template=info.template, system=info.system, parameters=info.parameters,
                                licenses=info.licenses, messages=info.messages,
                                renderer=info.config.get("renderer"), parser=info.config.get("parser")) + "\n"
    raise ValueError(f"no show field {which!r}")


def _head(text: str, n: int = 2) -> list[list[str]]:
    """showInfo's head: the first n non-empty lines, trimmed, then '...' if there are more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [["", line] for line in lines[:n]] + ([["", "..."]] if len(lines) > n else [])


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, float)) or hasattr(value, "__int__") else str(value)


def show_lines(info: ShowInfo) -> list[str]:
    """`ollama show NAME`: the Model, Capabilities, Parameters, System and License sections."""
    model = [["", "architecture", info.architecture],
             ["", "parameters", info.config.get("model_type") or human_count(info.parameter_count)]]
    for label, key in (("context length", "context_length"), ("embedding length", "embedding_length")):
        if info.arch_value(key) is not None:
            model.append(["", label, _number(info.arch_value(key))])
    model.append(["", "quantization", str(info.config.get("file_type", ""))])
    if info.config.get("requires"):
        model.append(["", "requires", info.config["requires"]])
    sections = [("Model", model), ("Capabilities", [["", c] for c in info.capabilities])]
    if info.parameters:
        lines = format_parameters(info.parameters).splitlines()
        sections.append(("Parameters", [[""] + line.split() for line in lines]))
    if info.system:
        sections.append(("System", _head(info.system)))
    if info.licenses:
        sections.append(("License", _head("\n".join(info.licenses))))
    out = []
    for header, rows in sections:
        if rows:
            out += [f"  {header}"] + table(rows) + [""]
    return out
