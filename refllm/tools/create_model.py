"""Creating a model in ollama's store from a Modelfile, as `ollama create` does.

    create_model("mine:q4", read_modelfile("Modelfile"), quantize="Q4_K_M")

A whole-model tool on top of refllm.formats.ollama_store, which writes the blobs, config and
manifest atomically (its docstring has the layout and the layer order). FROM is a GGUF file or a
store model; `quantize` runs refllm's quantizer (refllm.tools.quantize_model) on an F32, F16 or
BF16 FROM, to any ftype it writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refllm.formats.modelfile import Modelfile, expand_path
from refllm.formats.ollama import Layer, Manifest, StoreError, _root, blob_path, find_manifest, read_params
from refllm.formats.ollama_store import (
    CONFIG_MEDIA_TYPE,
    ERR_QUANTIZE_SOURCE,
    QUANTIZABLE_SOURCES,
    Progress,
    Status,
    _existing_manifest,
    _media,
    _no_progress,
    _remove_unreferenced,
    _target_name,
    _write_bytes,
    _write_file,
    _write_manifest,
    _Writes,
    clean_stale_temps,
    config_json,
    encode,
    gguf_config,
    params_json,
)
from refllm.tools.quantize_model import FTYPES, quantize_model

# -- create ------------------------------------------------------------------------------------

def _quantize(writes: _Writes, source: Path, ftype: str, progress: Progress, status: Status) -> Layer | None:
    """The model layer of `source` quantized to `ftype` with refllm's quantizer (the bytes
    `refllm quantize` writes); None when the source already has that type."""
    have = gguf_config(source)["file_type"]
    if have not in QUANTIZABLE_SOURCES:
        raise StoreError(f"{ERR_QUANTIZE_SOURCE} (this one is {have})")
    if have == ftype:
        return None
    status(f"quantizing {have} model to {ftype}")
    temp = writes.temp()
    bar = progress(f"quantizing {have} to {ftype}", source.stat().st_size)
    try:
        quantize_model(source, temp, ftype, on_bytes=bar.update)
    finally:
        bar.close()
    # the quantizer writes through its own temporary file (.<temp name>.XXXX.tmp), also swept up
    writes.temps.extend(temp.parent.glob(f".{temp.name}.*"))
    return _write_file_owned(writes, temp)


def _write_file_owned(writes: _Writes, temp: Path) -> Layer:
    """A finished temporary file of ours published under its sha256."""
    h = hashlib.sha256()
    with open(temp, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    size = temp.stat().st_size
    writes.publish(temp, digest)
    return Layer(_media("model"), digest, size)


@dataclass
class _Base:
    """Where a create starts: the layers it inherits and the config it fills in."""
    layers: list[Layer]
    config: dict[str, Any]
    model_path: Path           # the GGUF of the model layer


def _from_file(writes: _Writes, path: Path, ftype: str | None, progress: Progress, status: Status) -> _Base:
    status("parsing GGUF")
    gguf_config(path)                       # a GGUF, or a clear error before anything is written
    layer = _quantize(writes, path, ftype, progress, status) if ftype else None
    if layer is None:
        layer = _write_file(writes, path, _media("model"), progress, from_=path.name)
    model = blob_path(layer.digest, writes.root)
    return _Base([layer], gguf_config(model), model)


def _from_model(writes: _Writes, manifest: Manifest, ftype: str | None, progress: Progress,
                status: Status) -> _Base:
    """ollama's parseFromModel: every layer of the model, marked as coming from it."""
    root, short = writes.root, manifest.name.display_shortest()
    model_layer = manifest.model_layer
    if model_layer is None:
        raise StoreError(f"model {manifest.name} has no model layer to build on")
    layers = [Layer(la.media_type, la.digest, la.size, from_=short, name=la.name) for la in manifest.layers]
    for la in manifest.layers + [manifest.config]:
        if not blob_path(la.digest, root).is_file():
            raise StoreError(f"model {manifest.name}: its {la.kind} blob {la.digest} is missing")
    if ftype:
        quantized = _quantize(writes, blob_path(model_layer.digest, root), ftype, progress, status)
        if quantized is not None:
            layers = [quantized if la.digest == model_layer.digest and la.kind == "model" else la for la in layers]
    model = next(la for la in layers if la.kind == "model")
    config = gguf_config(blob_path(model.digest, root))
    try:
        base = read_params(manifest.config, root)
    except StoreError:
        base = {}
    for key in ("renderer", "parser", "requires", "capabilities"):
        if base.get(key):
            config[key] = base[key]
    return _Base(layers, config, blob_path(model.digest, root))


def _resolve_from(modelfile: Modelfile, root: Path) -> Path | Manifest:
    """FROM as ollama's client reads it: an existing file (relative to the Modelfile), else a
    model name in the store."""
    froms = modelfile.args("model")
    if len(froms) > 1:
        raise StoreError(f"the Modelfile has {len(froms)} FROM lines; refllm creates from one GGUF "
                         "(projectors and split GGUFs are not supported)")
    arg = froms[0]
    path = expand_path(arg, modelfile.folder)
    if path.is_dir():
        raise StoreError(f"FROM {arg}: {path} is a folder; refllm creates from a GGUF file "
                         "(safetensors folders are not supported)")
    if path.is_file():
        return path
    if arg.startswith(("/", "./", "../", "~")) or arg.endswith((".gguf", ".bin")):
        raise StoreError(f"FROM {arg}: no such file {path}")
    try:
        return find_manifest(arg, root)
    except StoreError as e:
        raise StoreError(f"FROM {arg}: no file {path}, and no such model in the store: {e}") from None


def _replace(layers: list[Layer], kinds: tuple[str, ...], new: Layer) -> list[Layer]:
    """ollama's removeLayer + append: the new layer goes last, replacing those of its kind."""
    return [la for la in layers if la.media_type not in tuple(_media(k) for k in kinds)] + [new]


def _modelfile_layers(writes: _Writes, base: list[Layer], modelfile: Modelfile, progress: Progress,
                      status: Status) -> list[Layer]:
    """createModel's overlay: adapter, then template, system, license(s), params, messages."""
    layers = list(base)
    for arg in modelfile.args("adapter"):
        path = expand_path(arg, modelfile.folder)
        if not path.is_file():
            raise StoreError(f"ADAPTER {arg}: no such file {path}")
        with open(path, "rb") as f:
            if f.read(4) not in (b"GGUF", b"FUGG"):
                raise StoreError(f"ADAPTER {arg}: supplied file was not in GGUF format")
        status("refllm stores the ADAPTER as a layer but does not apply LoRA adapters when it runs the model")
        layers.append(_write_file(writes, path, _media("adapter"), progress, from_=path.name))
    template = modelfile.last("template")
    if template:
        layers = _replace(layers, ("template", "prompt"), _write_bytes(writes, template.encode(), _media("template")))
    system = modelfile.last("system")
    if system:
        layers = _replace(layers, ("system",), _write_bytes(writes, system.encode(), _media("system")))
    for text in modelfile.args("license"):
        if text:
            layers.append(_write_bytes(writes, text.encode(), _media("license")))
    params = modelfile.parameters
    inherited = _inherited_params(layers, writes.root)
    if params or inherited:
        merged = {**inherited, **params}
        layers = _replace(layers, ("params",), _write_bytes(writes, params_json(merged), _media("params")))
    if modelfile.messages:
        layers = _replace(layers, ("messages",), _write_bytes(writes, encode(modelfile.messages), _media("messages")))
    return layers


def _inherited_params(layers: list[Layer], root: Path) -> dict[str, Any]:
    """The values of inherited params layers (the first one wins for a key, as in setParameters)."""
    values: dict[str, Any] = {}
    for la in layers:
        if la.kind == "params":
            for k, v in read_params(la, root).items():
                values.setdefault(k, v)
    return values


def create_model(name: str, modelfile: Modelfile, root: Path | str | None = None, quantize: str | None = None,
                 progress: Progress | None = None, status: Status | None = None) -> Manifest:
    """Create (or replace) model `name` in the store from a parsed Modelfile, as `ollama create`.

    Promises: blobs, config and manifest laid out as ollama writes them (module docstring);
    `quantize` (any ftype of refllm.tools.quantize_model.FTYPES) quantizes an F32/F16/BF16
    FROM to the bytes `refllm quantize` writes; existing blobs are not rewritten. On any error
    the store is left as it was (StoreError or RefllmError says why). A model replaced under
    the same name loses the blobs that nothing else references, as with ollama.
    `progress(label, total)` makes a progress bar; `status(line)` gets ollama's status lines.
    """
    root = _root(root)
    progress, status = progress or _no_progress, status or (lambda line: None)
    target = _target_name(name, root)
    ftype = quantize.upper() if quantize else None
    if ftype:
        if ftype not in FTYPES:
            raise StoreError(f"unsupported quantization type {ftype} - supported types are {', '.join(FTYPES)}")
    if modelfile.args("draft"):
        raise StoreError("DRAFT models are not supported by refllm")
    for warning in modelfile.warnings:
        status(f"warning: {warning}")
    clean_stale_temps(root)
    old = _existing_manifest(target, root)
    writes = _Writes(root)
    try:
        source = _resolve_from(modelfile, root)
        if isinstance(source, Manifest):
            base = _from_model(writes, source, ftype, progress, status)
        else:
            base = _from_file(writes, source, ftype, progress, status)
        layers = _modelfile_layers(writes, base.layers, modelfile, progress, status)
        config = {**base.config, "architecture": "amd64", "os": "linux"}
        for key in ("renderer", "parser"):
            if modelfile.last(key):
                config[key] = modelfile.last(key)
        if modelfile.requires:
            config["requires"] = modelfile.requires
        config_layer = _write_bytes(writes, config_json(config), CONFIG_MEDIA_TYPE)
        status("writing manifest")
        _write_manifest(writes, target, config_layer, layers)
    except BaseException:
        writes.undo()
        raise
    if old is not None:
        _remove_unreferenced(old, root)
    status("success")
    return find_manifest(str(target), root)


