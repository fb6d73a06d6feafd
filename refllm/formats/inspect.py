"""`refllm inspect blob`: the report as one JSON-ready dict, and its text rendering.

build_report() is the single source of truth: `--json` prints it, and render_text() draws the
same dict as tables. Its schema ("refllm.inspect/1") is documented in the README; add fields,
never rename them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from refllm.formats import ollama
from refllm.formats.checks import CHECKS
from refllm.formats.model import ModelFile
from refllm.formats.summary import default_ctx, memory_estimate, model_summary, tokenizer_summary, type_histogram
from refllm.formats.values import NestedArray, StringArray, ValueType, type_signature

SCHEMA = "refllm.inspect/1"


def json_value(value: Any, limit: int | None) -> Any:
    """A value as strict JSON: arrays become lists (the first `limit` items when limit is set),
    non-finite floats become the strings "NaN", "Infinity" and "-Infinity"."""
    if isinstance(value, dict):
        return {k: json_value(v, limit) for k, v in value.items()}
    if isinstance(value, (np.ndarray, StringArray, NestedArray, list)):
        items = value[:limit] if limit is not None else value
        if isinstance(items, np.ndarray):
            items = items.tolist()
        return [json_value(v, limit) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, np.generic):
        return json_value(value.item(), limit)
    return value


def _metadata_rows(model: ModelFile, limit: int | None) -> list[dict[str, Any]]:
    rows = []
    for key, value in model.metadata.items():
        vtype = model.kv_types[key]
        is_array = vtype == ValueType.ARRAY
        rows.append({"key": key, "type": type_signature(vtype, value), "value": json_value(value, limit),
                     "count": len(value) if is_array else None,
                     "truncated": bool(is_array and limit is not None and len(value) > limit),
                     "offset": model.kv_offsets.get(key)})
    return rows


def _tensor_rows(model: ModelFile) -> list[dict[str, Any]]:
    # Bits per weight come from the bytes actually stored, so an old legacy layout shows its own size.
    return [{"name": t.name, "type": t.type_name, "type_id": t.ggml_type, "ne": list(t.ne),
             "shape": list(t.shape), "elements": t.n_elements, "bytes": t.nbytes,
             "bits_per_weight": None if t.nbytes is None else round(8.0 * t.nbytes / t.n_elements, 4),
             "offset": t.offset, "layout": t.layout, "source_name": t.source_name}
            for t in model.tensors]


def _ollama_section(target: ollama.Target) -> dict[str, Any] | None:
    manifest = target.manifest
    if manifest is None:
        return None

    def text_of(kind: str) -> str | None:
        layers = manifest.layers_of(kind)
        return "\n".join(ollama.read_blob_text(layer) for layer in layers) if layers else None

    params_layers = manifest.layers_of("params")
    return {
        "name": str(manifest.name),
        "short_name": manifest.name.display_shortest(),
        "manifest": str(manifest.path),
        "manifest_digest": manifest.digest,
        "size": manifest.size,
        "config": {"media_type": manifest.config.media_type, "digest": manifest.config.digest,
                   "size": manifest.config.size},
        "layers": [{"media_type": layer.media_type, "kind": layer.kind, "digest": layer.digest,
                    "size": layer.size} for layer in manifest.layers],
        "template": text_of("template"),
        "system": text_of("system"),
        "params": ollama.read_params(params_layers[0]) if params_layers else None,
        "license": text_of("license"),
    }


def build_report(model: ModelFile, target: ollama.Target | None = None, *, ctx: int | None = None,
                 array_limit: int | None = 8, tensors: bool = True,
                 verify: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `inspect blob` shows, as strict-JSON-ready data (schema refllm.inspect/1)."""
    problems = model.problems          # found by the structural checks when the model was read
    failed = {p.check for p in problems}
    tensor_bytes = sum(t.nbytes or 0 for t in model.tensors)
    return json_value({
        "schema": SCHEMA,
        "target": None if target is None else {"kind": target.kind, "path": str(target.path),
                                               "digest": target.digest},
        "layout": {"container": model.container, "version": model.version,
                   "byteorder": "little" if model.byteorder == "<" else "big",
                   "alignment": model.alignment, "data_offset": model.data_offset,
                   "file_size": model.file_size, "n_kv": len(model.metadata),
                   "n_tensors": len(model.tensors), "tensor_bytes": tensor_bytes},
        "legacy": model.legacy,
        "ollama": None if target is None else _ollama_section(target),
        "metadata": _metadata_rows(model, array_limit),
        "tokenizer": tokenizer_summary(model),
        "model": model_summary(model),
        "tensors": _tensor_rows(model) if tensors else None,
        "types": type_histogram(model),
        "memory": memory_estimate(model, ctx or default_ctx(model)),
        "checks": [{"check": name, "ok": name not in failed} for name in CHECKS],
        "problems": [{"check": p.check, "message": p.message, "offset": p.offset, "tensor": p.tensor,
                      "fatal": p.fatal, "expected": p.expected} for p in problems],
        "verify": verify,
    }, None)


# -- text ------------------------------------------------------------------------------------

def printable(text: str, width: int | None = 72) -> str:
    """One display line: control characters escaped (a model file must not drive the terminal)."""
    out = "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape",
                  "backslashreplace").decode("ascii") for ch in text)
    return out if width is None or len(out) <= width else out[:width - 1] + "…"


def _show_value(row: dict[str, Any], full: bool) -> str:
    """A metadata value on one line: cut to fit a terminal, unless `full`."""
    value = row["value"]
    if row["count"] is None:
        return printable(value if isinstance(value, str) else str(value), None if full else 72)
    shown = ", ".join(printable(repr(v), None if full else 24) for v in value)
    more = f", … +{row['count'] - len(value)} more" if row["truncated"] else ""
    return printable(f"[{shown}{more}]", None if full else 100)


def _known(value: Any) -> str:
    """A summary figure for text: "unknown" where the file does not say (None)."""
    return "unknown" if value is None else str(value)


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.2f} MiB"


def _table(headers: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> Iterator[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    yield "  " + line(headers)
    for r in cells:
        yield "  " + line(r)


def render_text(report: dict[str, Any], full_values: bool = False) -> Iterator[str]:
    """The report as readable sections, one line at a time; full_values: metadata values are
    not cut to the terminal's width (`--array-limit 0`)."""
    lay = report["layout"]
    yield "LAYOUT"
    yield (f"  container {lay['container']} v{lay['version']}, {lay['byteorder']}-endian, "
           f"alignment {lay['alignment']}")
    file_size = "unknown (read from a stream)" if lay["file_size"] is None else f"{lay['file_size']:,} bytes"
    yield (f"  {lay['n_kv']} metadata keys, {lay['n_tensors']} tensors; data starts at byte "
           f"{lay['data_offset']:,}; file size {file_size}")
    if report["target"]:
        t = report["target"]
        yield f"  {t['kind']}: {t['path']}" + (f" ({t['digest']})" if t["digest"] else "")
    if report["verify"]:
        v = report["verify"]
        yield f"  sha256 {'OK' if v['ok'] else 'MISMATCH'}: expected {v['expected']}, got {v['actual']}"
    if report["legacy"]:
        yield "  legacy header: " + ", ".join(f"{k}={v}" for k, v in report["legacy"].items())

    if report["ollama"]:
        o = report["ollama"]
        yield ""
        yield f"OLLAMA  {o['short_name']}  ({o['name']})"
        yield f"  manifest {o['manifest']} ({o['manifest_digest'][:19]}…), {_mb(o['size'])}"
        yield from _table(["kind", "media type", "digest", "bytes"],
                          [[x["kind"], x["media_type"], x["digest"][:19] + "…", f"{x['size']:,}"]
                           for x in o["layers"]], right={3})
        for label in ("template", "system", "license"):
            if o[label]:
                lines = o[label].splitlines() or [""]
                yield f"  {label}:"
                for text in lines[:12]:
                    yield "    " + printable(text, 100)
                if len(lines) > 12:
                    yield f"    … {len(lines) - 12} more lines"
        if o["params"] is not None:
            yield f"  params: {printable(str(o['params']), 100)}"

    yield ""
    yield "METADATA"
    yield from _table(["key", "type", "value"],
                      [[printable(r["key"], None if full_values else 48), r["type"], _show_value(r, full_values)]
                       for r in report["metadata"]])

    tok = report["tokenizer"]
    if tok:
        yield ""
        yield "TOKENIZER"
        yield (f"  model {_known(tok['model'])}, pre {_known(tok['pre'])}, vocab {_known(tok['vocab_size'])}"
               + (f", {tok['merges']} merges" if tok["merges"] is not None else ""))
        specials = ", ".join(f"{k} {v['id']} {printable(repr(v['text']), 24)}"
                             for k, v in tok["special_tokens"].items())
        yield f"  special: {specials or 'none'}"
        flag = lambda v: "unset" if v is None else str(v).lower()  # noqa: E731
        yield (f"  add_bos {flag(tok['add_bos'])}, add_eos {flag(tok['add_eos'])}, add_space_prefix "
               f"{flag(tok['add_space_prefix'])}, chat template {'yes' if tok['chat_template'] else 'no'}")

    m = report["model"]
    yield ""
    yield "MODEL"
    k = {key: _known(value) for key, value in m.items()}
    yield (f"  {k['architecture']} {m['name'] or ''}: {k['parameters_human']} parameters "
           f"({m['parameters']:,}), file type {k['file_type_name']}")
    yield (f"  context {k['context_length']}, embedding {k['embedding_length']}, ffn "
           f"{k['feed_forward_length']}, layers {k['layers']}, heads {k['heads']}, kv heads "
           f"{k['kv_heads']}, head dim {k['head_dim']}, rope base {k['rope_base']}, vocab {k['vocab_size']}")

    if report["tensors"] is not None:
        yield ""
        yield "TENSORS"
        layouts = any(t["layout"] for t in report["tensors"])   # legacy files in an old block layout
        rows = [[t["name"], t["type"], "×".join(map(str, t["ne"])), "×".join(map(str, t["shape"])),
                 "?" if t["bytes"] is None else f"{t['bytes']:,}",
                 "?" if t["bits_per_weight"] is None else f"{t['bits_per_weight']:.2f}",
                 f"{t['offset']:,}"] + ([t["layout"] or ""] if layouts else [])
                for t in report["tensors"]]
        yield from _table(["name", "type", "ne (ggml)", "shape (numpy)", "bytes", "bpw", "offset"]
                          + (["layout"] if layouts else []), rows, right={4, 5, 6})

    yield ""
    yield "TYPES"
    yield from _table(["type", "tensors", "elements", "bytes", "% bytes", "bpw"],
                      [[h["type"], h["tensors"], f"{h['elements']:,}", f"{h['bytes']:,}",
                        f"{h['percent_bytes']:.1f}", h["bits_per_weight"]] for h in report["types"]],
                      right={1, 2, 3, 4, 5})

    mem = report["memory"]
    yield ""
    if mem:
        yield (f"MEMORY at ctx {mem['ctx']}: weights {_mb(mem['weights_bytes'])} + {mem['kv_type']} KV "
               f"cache {_mb(mem['kv_cache_bytes'])} = {_mb(mem['total_bytes'])}")
    else:
        yield "MEMORY: the metadata does not give the layer count and head shape"

    yield ""
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    yield "CHECKS " + ("all passed: " + ", ".join(CHECKS) if not failed else
                       "FAILED: " + ", ".join(failed))
    for p in report["problems"]:
        at = f"byte {p['offset']}: " if p["offset"] is not None else ""
        yield f"  {p['check']}: {at}{p['message']}"
