"""Writing ollama's model store as ollama lays it out: blobs, config and manifests written
atomically, `cp` and `rm` (refllm.tools.create_model builds a model from a Modelfile on these).

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

from refllm.formats.modelfile import go_float
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


def _media(kind: str) -> str:
    return LAYER_PREFIX + kind


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
