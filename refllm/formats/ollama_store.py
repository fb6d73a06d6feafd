"""Writing ollama's model store: `create` from a Modelfile, `cp`, `rm`, as ollama lays them out.

    create_model("mine:q4", read_modelfile("Modelfile"), quantize="Q4_K_M")
    copy_model("mine:q4", "backup/mine:q4")
    remove_model("mine:q4")

What a create writes (ollama's server/create.go, createModel and its set* helpers, at the HEAD
read in shared/research/ollama.md; file formats in refllm.formats.ollama):

    blobs/sha256-<hex>  the GGUF (the FROM file, or what -q made of it), one text blob per
                        TEMPLATE, SYSTEM and LICENSE, the params JSON, the messages JSON, the
                        config JSON; each under the sha256 of its bytes, never rewritten
    manifests/<host>/<namespace>/<model>/<tag>
                        layers in ollama's order: the model (and an ADAPTER), then template,
                        system, license(s), params, messages; the manifest is written last

FROM a model already in the store starts from its layers (each marked "from" that model), and
each Modelfile instruction replaces the layer of its kind, except LICENSE, which adds one, and
PARAMETER, which merges into the inherited values. JSON is written as Go's encoding/json writes
it: compact, keys of a map sorted, '<', '>' and '&' escaped, a newline at the end.

Every file appears atomically: it is written to a temporary file in blobs/ (named
.refllm-tmp-<pid>-...), synced, and renamed into place. If a create fails, the blobs it wrote
are removed again and no manifest changes; if it is killed, only temporary files are left,
and the next create removes those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refllm.formats.modelfile import Modelfile, expand_path, go_float
from refllm.formats.ollama import (
    Layer,
    Manifest,
    ModelName,
    StoreError,
    _existing_spelling,
    _root,
    blob_path,
    find_manifest,
    list_manifests,
    read_manifest,
    read_params,
)
from refllm.formats.reader import open_model
from refllm.formats.summary import human_count, parameter_count
from refllm.type_traits import file_type_name

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."
TMP_PREFIX = ".refllm-tmp-"
# ollama creates only from these (server/create.go); refllm quantizes to every ftype it knows
QUANTIZABLE_SOURCES = ("F32", "F16", "BF16")
ERR_QUANTIZE_SOURCE = "quantization is only supported for F16, BF16 and F32 models"

Progress = Callable[[str, int], Any]     # (label, total bytes) -> an object with update(n) and close()
Status = Callable[[str], None]           # one status line, as ollama's create prints them


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(label: str, total: int) -> _Silent:
    return _Silent()


# -- Go's encoding/json -------------------------------------------------------------------------

_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> str:
    """`value` as Go's json.Encoder writes it, without the final newline: compact; a Python
    dict keeps its order (sort a map's keys first: Go sorts them); np.float32 is a float32,
    float a float64; '<', '>', '&', U+2028 and U+2029 escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.float32):
        return go_float(float(value), 32, json=True)
    if isinstance(value, float):
        return go_float(value, 64, json=True)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return "".join(_HTML_ESCAPES.get(ch, ch) for ch in text)
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_json(str(k))}:{go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"no JSON form for a {type(value).__name__}")


def encode(value: Any) -> bytes:
    """The bytes json.NewEncoder(w).Encode(value) writes: go_json and a newline."""
    return (go_json(value) + "\n").encode("utf-8")


def params_json(params: dict[str, Any]) -> bytes:
    """The params layer: keys sorted, PARAMETER floats as float32, `stop` a list."""
    typed = {k: np.float32(v) if isinstance(v, float) and float(np.float32(v)) == v else v
             for k, v in sorted(params.items())}
    return encode(typed)


def manifest_json(config: Layer, layers: list[Layer]) -> bytes:
    """A manifest as ollama's WriteManifest encodes it (Docker v2 schema 2)."""
    return encode({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                   "config": _layer_json(config), "layers": [_layer_json(la) for la in layers]})


def _layer_json(layer: Layer) -> dict:
    entry = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
    if layer.from_:
        entry["from"] = layer.from_
    if layer.name:
        entry["name"] = layer.name
    return entry


# -- the config blob ----------------------------------------------------------------------------

# ConfigV2's fields in declaration order (types/model/config.go): (key, omitted when empty).
# `rootfs` is gone: ollama stopped writing it on 2026-08-08 (#17619).
CONFIG_FIELDS = (("model_format", False), ("model_family", False), ("model_families", False),
                 ("model_type", False), ("file_type", False), ("renderer", True), ("parser", True),
                 ("requires", True), ("remote_host", True), ("remote_model", True), ("capabilities", True),
                 ("context_length", True), ("embedding_length", True), ("base_name", True), ("draft", True),
                 ("architecture", False), ("os", False))


def config_json(config: dict[str, Any]) -> bytes:
    """The config blob: ConfigV2's fields in order, the omitempty ones left out when empty."""
    out = {}
    for key, omit_empty in CONFIG_FIELDS:
        value = config.get(key)
        if omit_empty and not value:
            continue
        out[key] = "" if value is None and key not in ("model_families",) else value
    return encode(out)


def gguf_config(path: Path) -> dict[str, Any]:
    """What createModel takes from a model layer's GGUF: format, family, families, the
    parameter count as ollama prints it (HumanNumber) and the file type's name."""
    model = open_model(path)
    if model.container != "gguf":
        raise StoreError(f"{path}: supplied file was not in GGUF format (it is a legacy {model.container} file; "
                         "`refllm convert` makes a GGUF of it)")
    arch = model.metadata.get("general.architecture", "")
    file_type = model.metadata.get("general.file_type")
    return {"model_format": "gguf", "model_family": arch, "model_families": [arch],
            "model_type": human_count(parameter_count(model)),
            "file_type": file_type_name(int(file_type)) if file_type is not None else "unknown"}


# -- atomic files ------------------------------------------------------------------------------

def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(root: Path | None = None) -> list[Path]:
    """Remove the temporary files that creates killed midway left in blobs/ (those whose
    process is gone); returns what was removed. A running create's files are left alone."""
    folder = _root(root) / "blobs"
    removed = []
    for path in folder.glob(f"*{TMP_PREFIX}*") if folder.is_dir() else ():
        pid = path.name.lstrip(".").removeprefix(TMP_PREFIX[1:]).split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@dataclass
class _Writes:
    """What one create has written so far, so that a failure can take it back."""
    root: Path
    blobs: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    temps: list[Path] = field(default_factory=list)

    def mkdir(self, folder: Path) -> None:
        """Make `folder` and its missing parents, remembering which were made."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            f.mkdir()
            self.folders.append(f)

    def temp(self) -> Path:
        self.mkdir(self.root / "blobs")
        path = self.root / "blobs" / _temp_name()
        self.temps.append(path)
        return path

    def publish(self, temp: Path, digest: str) -> None:
        """Rename a finished temporary file to its blob name, unless that blob exists (an
        existing blob is never rewritten)."""
        target = blob_path(digest, self.root)
        if target.exists():
            temp.unlink()
            return
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        self.blobs.append(target)
        _fsync_dir(target.parent)

    def undo(self) -> None:
        """Remove what was written: temporary files, new blobs, new empty folders."""
        for path in self.temps + self.blobs:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _write_bytes(writes: _Writes, data: bytes, media_type: str) -> Layer:
    """Store `data` as a blob (if it is new) and return its layer."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not blob_path(digest, writes.root).exists():
        temp = writes.temp()
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        writes.publish(temp, digest)
    return Layer(media_type, digest, len(data))


def _write_file(writes: _Writes, path: Path, media_type: str, progress: Progress, from_: str | None = None) -> Layer:
    """Store a file as a blob: hashed first; copied (and hashed again as it is copied, so a
    file changed meanwhile is caught) only when its blob is not there yet."""
    size = path.stat().st_size
    bar = progress(f"hashing {path.name}", size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            bar.update(len(chunk))
    bar.close()
    digest = "sha256:" + h.hexdigest()
    if not blob_path(digest, writes.root).exists():
        temp, h2 = writes.temp(), hashlib.sha256()
        bar = progress(f"copying {path.name}", size)
        with open(path, "rb") as src, open(temp, "wb") as dst:
            while chunk := src.read(1 << 20):
                h2.update(chunk)
                dst.write(chunk)
                bar.update(len(chunk))
            dst.flush()
            os.fsync(dst.fileno())
        bar.close()
        if "sha256:" + h2.hexdigest() != digest:
            raise StoreError(f"{path} changed while it was being copied into the store; try again")
        writes.publish(temp, digest)
    return Layer(media_type, digest, size, from_=from_)


# -- create ------------------------------------------------------------------------------------

def _media(kind: str) -> str:
    return LAYER_PREFIX + kind


def _quantize(writes: _Writes, source: Path, ftype: str, progress: Progress, status: Status) -> Layer | None:
    """The model layer of `source` quantized to `ftype` with refllm's quantizer (the bytes
    `refllm quantize` writes); None when the source already has that type."""
    from refllm.tools.quantize_model import quantize_model  # a tool: loaded only when -q asks for it

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


def _target_name(name: str, root: Path) -> ModelName:
    """The name to write: each part spelled as an existing manifest spells it (ollama's
    getExistingName), so that `Mine` replaces `mine` instead of sitting beside it."""
    wanted = ModelName.parse(name)
    folder, parts = root / "manifests", []
    for part in (wanted.host, wanted.namespace, wanted.model, wanted.tag):
        spelled = _existing_spelling(folder, part) or part
        parts.append(spelled)
        folder = folder / spelled
    return ModelName(*parts)


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
        from refllm.tools.quantize_model import FTYPES
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


def _existing_manifest(name: ModelName, root: Path) -> Manifest | None:
    path = root / name.manifest_relpath()
    return read_manifest(path, name) if path.is_file() else None


def _write_manifest(writes: _Writes, name: ModelName, config: Layer, layers: list[Layer]) -> None:
    """The manifest, last: a temporary file in blobs/, renamed over manifests/.../<tag>."""
    target = writes.root / name.manifest_relpath()
    writes.mkdir(target.parent)
    temp = writes.temp()
    with open(temp, "wb") as f:
        f.write(manifest_json(config, layers))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, 0o644)
    os.replace(temp, target)
    _fsync_dir(target.parent)


# -- cp, rm ------------------------------------------------------------------------------------

def copy_model(src: str, dst: str, root: Path | str | None = None) -> Manifest:
    """`ollama cp`: a second manifest with the same bytes, under `dst` (replacing a model of
    that name). Blobs are shared, not copied. Raises StoreError if `src` is missing or a name
    is invalid."""
    root = _root(root)
    source = find_manifest(src, root)
    target = _target_name(dst, root)
    old = _existing_manifest(target, root)
    writes = _Writes(root)
    try:
        path = root / target.manifest_relpath()
        writes.mkdir(path.parent)
        temp = writes.temp()
        temp.write_bytes(source.path.read_bytes())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        writes.undo()
        raise
    if old is not None and old.path != source.path:
        _remove_unreferenced(old, root)
    return find_manifest(str(target), root)


def remove_model(name: str, root: Path | str | None = None) -> list[str]:
    """`ollama rm`: delete the model's manifest, then each of its blobs that no other manifest
    references, then the manifest folders left empty (up to manifests/). Returns the removed
    digests. Raises StoreError if the model is not in the store."""
    root = _root(root)
    manifest = find_manifest(name, root)
    manifest.path.unlink()
    folder = manifest.path.parent
    while folder != root / "manifests" and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
    return _remove_unreferenced(manifest, root)


def _remove_unreferenced(manifest: Manifest, root: Path) -> list[str]:
    """ollama's RemoveLayers: the manifest's blobs that no manifest in the store references."""
    used = {la.digest for m in list_manifests(root) for la in m.layers + [m.config]}
    removed = []
    for layer in manifest.layers + [manifest.config]:
        if layer.digest not in used and layer.digest not in removed:
            with contextlib.suppress(FileNotFoundError):
                blob_path(layer.digest, root).unlink()
                removed.append(layer.digest)
    return removed
