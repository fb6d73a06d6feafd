"""Reading ollama's model store: names, manifests and blobs, without ollama.

The store lives at $OLLAMA_MODELS, else ~/.ollama/models (the Linux service install uses
/usr/share/ollama/.ollama/models). It holds two trees:

    models/
    ├── manifests/
    │   └── registry.ollama.ai/          host (may contain :port, e.g. localhost:5000)
    │       └── library/                 namespace
    │           └── llama3/              model
    │               └── latest           tag: a JSON manifest (Docker v2 schema 2)
    └── blobs/
        ├── sha256-6a0746a1ec1a...       the GGUF weights (layer application/vnd.ollama.image.model)
        ├── sha256-4fa551d4f938...       the config blob (model_format, model_family, file_type, ...)
        └── sha256-...                   template, system, params, license, ... layers

A name like `llama3:8b` resolves to `registry.ollama.ai/library/llama3:8b` and so to the
manifest `manifests/registry.ollama.ai/library/llama3/8b`. The manifest lists layers by
digest; each layer's bytes are in `blobs/sha256-<64 hex>` (inside manifests the digest is
spelled `sha256:<hex>`; the file name uses `-`, which is valid on every filesystem).

A blob's name is the sha256 of its bytes. ollama checks this when it downloads a blob but
never again, so `verify_blob` is how to find a blob that has rotted on disk since.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from refllm.errors import RefllmError
from refllm.formats.files import sha256_file


class StoreError(RefllmError):
    """A bad model name or digest, a missing model or blob, or a malformed manifest."""


DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_LAYER_PREFIX = "application/vnd.ollama.image."
_KIND_ALIASES = {"prompt": "template"}      # old manifests called the template layer 'prompt'
_MODELS_SHOWN_WHEN_MISSING = 5


def models_dir() -> Path:
    """The store root: $OLLAMA_MODELS if it is set and not empty, else ~/.ollama/models.
    The directory need not exist."""
    configured = os.environ.get("OLLAMA_MODELS")
    if configured:
        return Path(configured)
    return Path.home() / ".ollama" / "models"


def _root(root: Path | str | None) -> Path:
    return models_dir() if root is None else Path(root)


# ---------------------------------------------------------------------------------------------
# Names

# part -> (longest allowed, the characters allowed after the first besides letters, digits, '_').
# Every part starts with a letter, a digit or '_'. Only a host may hold ':' (a port). A namespace
# may not hold '.', so a host given without a namespace (`hf.co/model`) is an error instead of
# being quietly taken for a namespace.
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_PART_GRAMMAR = {
    "host": (350, ".:-"),
    "namespace": (80, "-"),
    "model": (80, ".-"),
    "tag": (80, ".-"),
}


def _part_problem(part: str, value: str) -> str | None:
    """Why `value` is not a valid name part of kind `part`, or None if it is."""
    longest, extra_chars = _PART_GRAMMAR[part]
    if not value:
        return f"the {part} is empty"
    if len(value) > longest:
        return f"the {part} is {len(value)} characters long, more than {longest}"
    if value[0] not in _WORD_CHARS:
        return f"the {part} {value!r} must start with a letter, a digit or '_'"
    bad = [c for c in value if c not in _WORD_CHARS and c not in extra_chars]
    if bad:
        allowed = ["letters", "digits", "'_'"] + [repr(c) for c in extra_chars]
        return (f"the {part} {value!r} contains {bad[0]!r}; "
                f"it may contain only {', '.join(allowed[:-1])} and {allowed[-1]}")
    return None


def _split_name(s: str) -> ModelName:
    """ModelName.parse without the checks: split `s` into parts, defaults filled in."""
    rest, parts = s, {}
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, parts["tag"] = rest.rpartition(":")
    # rpartition gives ("", "", rest) when the separator is missing: the part after it is
    # then all that is left. A part is "" only when a separator had nothing beside it.
    rest, slash, parts["model"] = rest.rpartition("/")
    if slash:
        rest, slash, parts["namespace"] = rest.rpartition("/")
        if slash:
            scheme, sep, host = rest.partition("://")
            parts["host"] = host if sep else scheme
    return ModelName(host=parts.get("host", DEFAULT_HOST),
                     namespace=parts.get("namespace", DEFAULT_NAMESPACE),
                     model=parts["model"], tag=parts.get("tag", DEFAULT_TAG))


def _name_problem(name: ModelName) -> str | None:
    """What is wrong with the first bad part of `name`, or None if every part is valid."""
    for part in _PART_GRAMMAR:
        problem = _part_problem(part, getattr(name, part))
        if problem:
            return problem
    return None


@dataclass(frozen=True)
class ModelName:
    """A fully resolved ollama model name: host/namespace/model:tag."""
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, s: str) -> ModelName:
        """Resolve a name as ollama does, filling in the default host, namespace and tag.

        Reads right to left: the tag follows the last ':' if that ':' comes after the last
        '/'; then the model after the last '/', the namespace after the next '/', and what
        is left is the host, with any `scheme://` dropped. A separator with nothing beside
        it leaves that part empty, which is an error. Raises StoreError naming the bad part.
        """
        name = _split_name(s)
        problem = _name_problem(name)
        if problem:
            raise StoreError(f"invalid model name {s!r}: {problem}")
        return name

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display_shortest(self) -> str:
        """The name as `ollama list` shows it: the default host (and, with it, the default
        namespace) left out; `model:tag` is always there."""
        if self.host.casefold() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.casefold() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def manifest_relpath(self) -> Path:
        """Where this name's manifest is, relative to the store root."""
        return Path("manifests", self.host, self.namespace, self.model, self.tag)


# ---------------------------------------------------------------------------------------------
# Digests and blobs

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def parse_digest(s: str) -> str:
    """The digest `s` in the spelling manifests use, 'sha256:<64 lowercase hex>'.
    Accepts 'sha256:<hex>' and 'sha256-<hex>' (the blob file name), hex in either case;
    raises StoreError for anything else."""
    match = _DIGEST.fullmatch(s)
    if not match:
        raise StoreError(f"invalid digest {s!r}: expected 'sha256:' or 'sha256-' followed by 64 hex digits")
    return "sha256:" + match.group(1).lower()


def blob_path(digest: str, root: Path | None = None) -> Path:
    """Where the store keeps the blob with this digest: <root>/blobs/sha256-<hex>.
    The file need not exist."""
    hex_digits = parse_digest(digest).removeprefix("sha256:")
    return _root(root) / "blobs" / f"sha256-{hex_digits}"


def verify_file(path: Path, digest: str, *, progress: Callable[[int], None] | None = None) -> str:
    """Re-hash the file at `path` and return its actual 'sha256:<hex>'. Raises StoreError if
    the file is missing or its content does not hash to `digest` (both digests are named).
    `progress`, if given, is called with the byte count of each 1 MiB read."""
    expected = parse_digest(digest)
    if not path.is_file():
        raise StoreError(f"blob {expected} is missing: no file {path}")
    actual = "sha256:" + sha256_file(path, progress)
    if actual != expected:
        raise StoreError(f"blob {path} is corrupt: its name says {expected}, "
                         f"but its content hashes to {actual}")
    return actual


def verify_blob(digest: str, root: Path | None = None, *,
                progress: Callable[[int], None] | None = None) -> str:
    """Re-hash the store's blob for `digest` (blobs/sha256-<hex>) and return the actual
    'sha256:<hex>'. Raises StoreError if the blob is missing or its content does not match its
    name. `progress`, if given, is called with the byte count of each 1 MiB read."""
    return verify_file(blob_path(digest, root), digest, progress=progress)


# ---------------------------------------------------------------------------------------------
# Manifests

@dataclass(frozen=True)
class Layer:
    """One entry of a manifest: a blob, what kind of content it holds, and its size."""
    media_type: str
    digest: str                 # 'sha256:<hex>'
    size: int
    from_: str | None = None    # the "from" field: the parent model's blob this layer came from
    name: str | None = None     # the "name" field: used only by safetensors tensor/json layers

    @property
    def kind(self) -> str:
        """'model', 'template', 'system', 'params', 'license', 'adapter', 'projector',
        'messages', ...: the part after 'application/vnd.ollama.image.'. The legacy 'prompt'
        is reported as 'template'; a media type outside ollama's is returned whole."""
        if not self.media_type.startswith(_LAYER_PREFIX):
            return self.media_type
        kind = self.media_type.removeprefix(_LAYER_PREFIX)
        return _KIND_ALIASES.get(kind, kind)


@dataclass
class Manifest:
    """A model's manifest as read from the store."""
    name: ModelName             # spelled as on disk
    path: Path
    digest: str                 # sha256 of the manifest file's bytes: what `ollama list` calls the ID
    config: Layer               # the config blob (model_format, model_family, file_type, ...)
    layers: list[Layer]
    modified: float             # the manifest file's mtime, as `ollama list` shows it

    @property
    def model_layer(self) -> Layer | None:
        """The GGUF weights layer (the first one, should there be several), or None."""
        found = self.layers_of("model")
        return found[0] if found else None

    def layers_of(self, kind: str) -> list[Layer]:
        """The layers of one kind ('template' also finds legacy 'prompt' layers), in manifest order."""
        return [layer for layer in self.layers if layer.kind == kind]

    @property
    def size(self) -> int:
        """Bytes of all blobs the manifest names, config included: `ollama list`'s SIZE."""
        return self.config.size + sum(layer.size for layer in self.layers)

    @property
    def id(self) -> str:
        """The first 12 hex digits of the manifest's digest: `ollama list`'s ID."""
        return self.digest.removeprefix("sha256:")[:12]


def _layer_from_json(entry: object, where: str, path: Path) -> Layer:
    """A Layer from one manifest entry; `where` ('config', 'layers[2]') names it in errors."""
    if not isinstance(entry, dict):
        raise StoreError(f"malformed manifest {path}: {where} is not a JSON object")
    for key, wanted in (("mediaType", str), ("digest", str), ("size", int)):
        value = entry.get(key)
        # bool is a subclass of int in Python; a JSON true is not a size.
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise StoreError(f"malformed manifest {path}: {where} needs a {wanted.__name__} "
                             f"field {key!r}, found {value!r}")
    if entry["size"] < 0:
        raise StoreError(f"malformed manifest {path}: {where} has a negative size {entry['size']}")
    try:
        digest = parse_digest(entry["digest"])
    except StoreError as e:
        raise StoreError(f"malformed manifest {path}: {where}: {e}") from None
    return Layer(entry["mediaType"], digest, entry["size"],
                 from_=_optional_str(entry, "from"), name=_optional_str(entry, "name"))


def _optional_str(entry: dict, key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


def read_manifest(path: Path, name: ModelName) -> Manifest:
    """Read and check one manifest file (Docker v2 schema 2 JSON). Unknown fields are ignored.
    Raises StoreError naming the file if it cannot be read, is not JSON, or lacks the config,
    the layers, or a layer's mediaType, digest or size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        modified = path.stat().st_mtime
    except OSError as e:
        raise StoreError(f"cannot read manifest {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"malformed manifest {path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise StoreError(f"malformed manifest {path}: expected a JSON object, found {type(doc).__name__}")
    if "config" not in doc:
        raise StoreError(f"malformed manifest {path}: no 'config' field")
    if not isinstance(doc.get("layers"), list):
        raise StoreError(f"malformed manifest {path}: expected a 'layers' list, found {doc.get('layers')!r}")
    config = _layer_from_json(doc["config"], "config", path)
    layers = [_layer_from_json(entry, f"layers[{i}]", path) for i, entry in enumerate(doc["layers"])]
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Manifest(name, path, digest, config, layers, modified)


def _manifest_files(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Every file exactly four levels under <root>/manifests, as (path, (host, namespace,
    model, tag)), sorted. Like ollama's glob `*/*/*/*`: deeper or shallower files are ignored."""
    base = root / "manifests"
    found = []
    for path in base.glob("*/*/*/*"):
        if path.is_file():
            found.append((path, path.relative_to(base).parts))
    return sorted(found)


def list_manifests(root: Path | None = None, skipped: list[StoreError] | None = None) -> list[Manifest]:
    """Every model in the store, sorted by full name. A store without a manifests directory
    lists nothing.

    A listing should not fail because one file is bad, so files whose path is not a valid
    model name, and manifests that cannot be read, are left out. If `skipped` is given, a
    StoreError saying what was wrong with each left-out file is appended to it.
    """
    manifests = []
    for path, parts in _manifest_files(_root(root)):
        name = ModelName(*parts)
        problem = _name_problem(name)
        try:
            if problem:
                raise StoreError(f"{path} is not a model's manifest: {problem}")
            manifests.append(read_manifest(path, name))
        except StoreError as e:
            if skipped is not None:
                skipped.append(e)
    return sorted(manifests, key=lambda m: str(m.name))


def _existing_spelling(directory: Path, wanted: str) -> str | None:
    """The entry of `directory` that is `wanted`, else the first (sorted) that equals it
    ignoring case, else None. ollama's lookup is case-insensitive (getExistingName)."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return None
    if wanted in entries:
        return wanted
    folded = wanted.casefold()
    return next((entry for entry in entries if entry.casefold() == folded), None)


def _models_in_store(root: Path, wanted: ModelName) -> str:
    """A few model names from the store, for an error message about a missing one; other
    tags of the wanted model come first, as they are the likeliest fix."""
    names = [ModelName(*parts) for _, parts in _manifest_files(root)]
    names = [n for n in names if _name_problem(n) is None]
    names.sort(key=lambda n: (n.model.casefold() != wanted.model.casefold(), str(n)))
    names = [n.display_shortest() for n in names]
    if not (root / "manifests").is_dir():
        return f"there is no ollama store at {root} (set OLLAMA_MODELS to use another)"
    if not names:
        return f"the store {root} has no models"
    shown = ", ".join(names[:_MODELS_SHOWN_WHEN_MISSING])
    more = len(names) - _MODELS_SHOWN_WHEN_MISSING
    return f"models in {root}: {shown}" + (f" and {more} more" if more > 0 else "")


def find_manifest(name: str, root: Path | None = None) -> Manifest:
    """The manifest for a model name such as 'llama3', 'llama3:8b' or 'hf.co/org/repo:Q4_K_M'.

    The name is resolved with ollama's defaults, then each part of the manifest path is
    matched against the store ignoring case ('smollm2' finds 'SmolLM2'); the returned
    manifest's name is spelled as on disk. Raises StoreError for an invalid name, or for a
    missing model, naming the resolved name, the path looked for and some models that exist.
    """
    root = _root(root)
    wanted = ModelName.parse(name)
    directory, spelled = root / "manifests", []
    for part in (wanted.host, wanted.namespace, wanted.model, wanted.tag):
        existing = _existing_spelling(directory, part)
        if existing is None:
            raise StoreError(f"model {wanted} not found: no manifest {root / wanted.manifest_relpath()}; "
                             f"{_models_in_store(root, wanted)}")
        spelled.append(existing)
        directory = directory / existing
    if not directory.is_file():
        raise StoreError(f"model {wanted} not found: {directory} is not a file")
    return read_manifest(directory, ModelName(*spelled))


# ---------------------------------------------------------------------------------------------
# Small layers

def read_blob_text(layer: Layer, root: Path | None = None, limit: int = 1 << 20) -> str:
    """The text of a small layer (template, system, license, params), decoded as UTF-8 with
    undecodable bytes replaced. Raises StoreError if the blob is missing or larger than
    `limit` bytes (so a model layer is never read into memory by mistake)."""
    path = blob_path(layer.digest, root)
    try:
        size = path.stat().st_size
    except OSError:
        raise StoreError(f"the {layer.kind} layer's blob is missing: no file {path}") from None
    if size > limit:
        raise StoreError(f"the {layer.kind} layer {path} is {size} bytes, more than the "
                         f"{limit} bytes read as text")
    return path.read_bytes().decode("utf-8", errors="replace")


def read_params(layer: Layer, root: Path | None = None) -> dict:
    """The JSON object in a params layer, e.g. {"stop": ["<|eot_id|>"], "temperature": 0.6}.
    Works for any small JSON-object layer, the config blob included. Raises StoreError naming
    the blob if it is not a JSON object."""
    text = read_blob_text(layer, root)
    where = blob_path(layer.digest, root)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"the {layer.kind} layer {where} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise StoreError(f"the {layer.kind} layer {where} is not a JSON object but {type(value).__name__}")
    return value


@dataclass
class ModelSetup:
    """What a store model's small layers set besides its weights: how ollama runs it."""
    template: str | None = None             # the TEMPLATE layer (a Go template), the last one
    system: str | None = None               # the SYSTEM layer
    params: dict = field(default_factory=dict)      # the params layer: typed options
    messages: list[dict] = field(default_factory=list)   # the messages layer: seeded turns
    license: list[str] = field(default_factory=list)


def read_setup(manifest: Manifest, root: Path | None = None) -> ModelSetup:
    """The template, system prompt, parameters, seeded messages and licenses a manifest's layers
    hold (a later layer of a kind wins, as in ollama's GetModel). StoreError for a missing or
    malformed blob."""
    texts = {kind: [read_blob_text(layer, root) for layer in manifest.layers_of(kind)]
             for kind in ("template", "system", "license")}
    params = manifest.layers_of("params")
    messages: list[dict] = []
    for layer in manifest.layers_of("messages"):
        try:
            messages = json.loads(read_blob_text(layer, root))
        except json.JSONDecodeError as e:
            raise StoreError(f"the messages layer {blob_path(layer.digest, root)} is not valid JSON: {e}") from None
        if not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
            raise StoreError(f"the messages layer {blob_path(layer.digest, root)} is not a list of messages")
    merged: dict = {}
    for layer in params:                    # each decoded into the same options, as GetModel does
        merged.update(read_params(layer, root))
    return ModelSetup(template=texts["template"][-1] if texts["template"] else None,
                      system=texts["system"][-1] if texts["system"] else None,
                      params=merged, messages=messages, license=texts["license"])


# ---------------------------------------------------------------------------------------------
# What `refllm inspect blob TARGET` accepts

@dataclass(frozen=True)
class Target:
    """A resolved `inspect blob` argument.

    kind:     'path' (a file given by path), 'blob' (a digest in the store) or 'model' (a name)
    path:     the file to read
    manifest: the model's manifest, for kind 'model'
    digest:   what the file's sha256 should be, when known (kind 'blob' and 'model', and a
              path whose file name is 'sha256-<hex>'); verify_file(path, digest) checks it
    """
    kind: str
    path: Path
    manifest: Manifest | None
    digest: str | None


def _digest_in_file_name(path: Path) -> str | None:
    """The digest a store blob's file name spells ('sha256-<hex>'), or None."""
    try:
        return parse_digest(path.name)
    except StoreError:
        return None


def _model_target(target: str, root: Path) -> Target:
    manifest = find_manifest(target, root)
    layer = manifest.model_layer
    if layer is None:
        raise StoreError(f"model {manifest.name} has no model layer "
                         f"(application/vnd.ollama.image.model) in {manifest.path}")
    path = blob_path(layer.digest, root)
    if not path.is_file():
        raise StoreError(f"model {manifest.name}: its model blob {layer.digest} is missing: no file {path}")
    return Target("model", path, manifest, layer.digest)


def resolve_target(target: str, root: Path | None = None) -> Target:
    """Decide what `target` names, trying in order:

    1. an existing file              -> kind 'path' (digest set if it is named 'sha256-<hex>');
                                        something that looks like a path (/, ./, ../, ~, a
                                        .gguf or .bin ending) but is none: "no such file"
    2. 'sha256:<hex>' / 'sha256-<hex>' -> kind 'blob', that blob in the store (must exist)
    3. an ollama model name          -> kind 'model', the blob of its model layer (must exist)

    Raises StoreError if the named blob, model or model layer is missing; if the target is
    none of the three, the message says all three were tried.
    """
    root = _root(root)
    if not target:
        raise StoreError("the target is empty (expected a file path, a sha256 digest or an ollama model name)")
    as_path = Path(target)
    if as_path.is_file():
        return Target("path", as_path, None, _digest_in_file_name(as_path))
    if as_path.is_dir():
        raise StoreError(f"{target} is a directory, not a model file")
    if target.startswith(("/", "./", "../", "~")) or target.endswith((".gguf", ".bin")):
        # no ollama name looks like this: answer in file terms
        raise StoreError(f"no such file: {target}")
    if _DIGEST.fullmatch(target):
        digest = parse_digest(target)
        path = blob_path(digest, root)
        if not path.is_file():
            raise StoreError(f"blob {digest} is not in the store: no file {path}")
        return Target("blob", path, None, digest)
    problem = _name_problem(_split_name(target))
    if problem:
        raise StoreError(f"{target!r} is not an existing file, not a sha256 digest, and not a valid "
                         f"ollama model name ({problem})")
    try:
        return _model_target(target, root)
    except StoreError as e:
        # 'sha256:abc' is a valid model name (model sha256, tag abc), but was surely meant as a digest.
        looks_like_digest = target.startswith(("sha256:", "sha256-"))
        hint = " (a digest is 'sha256:' followed by 64 hex digits)" if looks_like_digest else ""
        raise StoreError(f"{target!r} is not an existing file or a sha256 digest{hint}; "
                         f"as an ollama model name: {e}") from None
