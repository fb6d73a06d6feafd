"""Which model file a request's `model` names: never a path, always a name.

    registry = Registry(files={"tiny": Path("tiny.gguf")})    # refllm serve --model tiny=tiny.gguf
    entry = registry.resolve("smollm2")                        # -> Entry, or UnknownModel (404)
    registry.entries()                                         # what /api/tags lists

A name is looked up, in this order, among
    1. the models given to `refllm serve --model` at start-up (NAME=PATH, or PATH named by its stem);
    2. the ollama store ($OLLAMA_MODELS or ~/.ollama/models), by ollama's name rules;
    3. refllm's packs (`smollm2`, `gemma3`), once `refllm pull` has fetched them.
Names compare as ollama's do: ignoring case, with ":latest" when no tag is given. A request can
only reach the files the server was started with, the store's blobs and the pack cache: a name
that looks like a path ('/', '..', '~', a backslash) is refused before any lookup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from refllm import fetch
from refllm.errors import RefllmError
from refllm.formats import ollama as store


class UnknownModel(RefllmError):
    """No model of that name: HTTP 404."""


class BadModelName(RefllmError):
    """A name no model can have (empty, a path): HTTP 400."""


@dataclass
class Entry:
    """A model the server can run."""
    name: str                       # as listed and echoed: 'smollm2:latest', 'user/model:tag'
    path: Path                      # the GGUF file
    source: str                     # 'file' (--model), 'store' or 'pack'
    digest: str                     # sha256 hex: the manifest's (store), else the file's
    size: int
    modified: float                 # mtime, seconds since the epoch
    setup: store.ModelSetup = field(default_factory=store.ModelSetup)   # a store model's template,
                                    # system prompt, parameters, messages and licenses


def normalize(name: str) -> str:
    """ollama's comparison form of a name: case folded, ':latest' added when there is no tag."""
    tail = name.rsplit("/", 1)[-1]
    return (name if ":" in tail else name + ":latest").casefold()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadModelName("model is required")
    if name.startswith(("/", "~", ".")) or "\\" in name or "\x00" in name \
            or any(part in ("..", ".") for part in name.split("/")):
        raise BadModelName(f"invalid model name {name!r}: expected a model name such as 'smollm2' or "
                           "'user/model:tag', not a path")
    return name


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Registry:
    """The names a server answers to (module docstring)."""

    def __init__(self, files: dict[str, Path] | None = None, store_root: Path | None = None):
        self.store_root = store_root
        self._files: dict[str, Entry] = {}
        for name, path in (files or {}).items():
            path = Path(path)
            if not path.is_file():
                raise RefllmError(f"--model {name}={path}: no such file")
            stat = path.stat()
            entry = Entry(name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest", path, "file",
                          _file_sha256(path), stat.st_size, stat.st_mtime)
            self._files[normalize(name)] = entry

    def resolve(self, name: object) -> Entry:
        """The model `name` names (module docstring), or BadModelName / UnknownModel."""
        name = _check_name(name)
        key = normalize(name)
        if key in self._files:
            return self._files[key]
        try:
            parsed = store.ModelName.parse(name)
        except store.StoreError as e:
            raise BadModelName(str(e)) from None
        try:
            return self._store_entry(store.find_manifest(name, self.store_root))
        except store.StoreError:
            pass
        pack = self._pack_entry(key)
        if pack is not None:
            return pack
        raise UnknownModel(f"model '{name}' not found ({parsed.display_shortest()} is not a --model, not in the "
                           f"ollama store at {self._root()}, and not a pulled refllm pack)")

    def entries(self) -> list[Entry]:
        """Every model the server can run, in lookup order; a store model that cannot be read
        is left out."""
        found = list(self._files.values())
        for manifest in store.list_manifests(self.store_root):
            try:
                found.append(self._store_entry(manifest))
            except store.StoreError:
                continue
        for name in fetch.PACKS:
            entry = self._pack_entry(normalize(name))
            if entry is not None:
                found.append(entry)
        seen, unique = set(), []
        for entry in found:
            if normalize(entry.name) not in seen:
                seen.add(normalize(entry.name))
                unique.append(entry)
        return unique

    def _root(self) -> Path:
        return self.store_root or store.models_dir()

    def _store_entry(self, manifest: store.Manifest) -> Entry:
        layer = manifest.model_layer
        if layer is None:
            raise store.StoreError(f"model {manifest.name} has no model layer")
        path = store.blob_path(layer.digest, self.store_root)
        if not path.is_file():
            raise store.StoreError(f"model {manifest.name}: its model blob is missing")
        return Entry(manifest.name.display_shortest(), path, "store", manifest.digest.removeprefix("sha256:"),
                     manifest.size, manifest.modified, store.read_setup(manifest, self.store_root))

    def _pack_entry(self, key: str) -> Entry | None:
        name, _, tag = key.partition(":")
        pack = fetch.PACKS.get(name)
        if tag != "latest" or pack is None or pack.sha256 is None or not fetch.is_cached(pack):
            return None
        path = fetch.home() / pack.output
        stat = path.stat()
        return Entry(f"{name}:latest", path, "pack", pack.sha256, stat.st_size, stat.st_mtime)

