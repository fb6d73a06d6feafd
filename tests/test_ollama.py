"""refllm.formats.ollama: names, digests, manifests and blobs of an ollama store laid out in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ollama_store import LICENSE, PARAMS, SYSTEM, TEMPLATE, add_model, layer, write_blob, write_manifest

from refllm.errors import RefllmError
from refllm.formats.ollama import (
    Layer,
    ModelName,
    StoreError,
    blob_path,
    find_manifest,
    list_manifests,
    models_dir,
    parse_digest,
    read_blob_text,
    read_manifest,
    read_params,
    resolve_target,
    verify_blob,
    verify_file,
)
from refllm.formats.reader import open_model

HEX = "ab" * 32
SMOLLM2 = "registry.ollama.ai/library/SmolLM2/latest"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    add_model(root, SMOLLM2)
    return root


# ---------------------------------------------------------------------------------------------
# Names

@pytest.mark.parametrize("text, host, namespace, model, tag", [
    ("llama3", "registry.ollama.ai", "library", "llama3", "latest"),
    ("llama3:8b", "registry.ollama.ai", "library", "llama3", "8b"),
    ("user/model:tag", "registry.ollama.ai", "user", "model", "tag"),
    ("hf.co/org/repo:Q4_K_M", "hf.co", "org", "repo", "Q4_K_M"),
    ("localhost:5000/ns/m", "localhost:5000", "ns", "m", "latest"),
    ("localhost:5000/ns/m:v1", "localhost:5000", "ns", "m", "v1"),
    ("https://host/ns/m:tag", "host", "ns", "m", "tag"),
    ("http://example.com:8080/ns/m", "example.com:8080", "ns", "m", "latest"),
    ("qwen2.5-coder:1.5b-instruct-q4_K_M", "registry.ollama.ai", "library", "qwen2.5-coder",
     "1.5b-instruct-q4_K_M"),
    ("_x/_y:_z", "registry.ollama.ai", "_x", "_y", "_z"),
])
def test_parse_name(text, host, namespace, model, tag):
    name = ModelName.parse(text)
    assert name == ModelName(host, namespace, model, tag)
    assert str(name) == f"{host}/{namespace}/{model}:{tag}"
    assert name.manifest_relpath() == Path("manifests", host, namespace, model, tag)


@pytest.mark.parametrize("text, complaint", [
    ("", "the model is empty"),
    ("llama3:", "the tag is empty"),
    ("/llama3", "the namespace is empty"),
    ("ns/", "the model is empty"),
    ("/ns/m", "the host is empty"),
    ("h//m", "the namespace is empty"),
    ("hf.co/repo", "the namespace 'hf.co' contains '.'"),
    ("a/b/c/d", "the host 'a/b' contains '/'"),
    ("-model", "the model '-model' must start with a letter, a digit or '_'"),
    (".hidden:tag", "must start with"),
    ("model:-tag", "the tag '-tag' must start"),
    ("mo del", "the model 'mo del' contains ' '"),
    ("model@sha256:abc", "the model 'model@sha256' contains '@'"),
    ("llamä", "contains 'ä'"),
    ("m" * 81, "the model is 81 characters long, more than 80"),
    ("m:" + "t" * 81, "the tag is 81 characters long"),
    ("n" * 81 + "/m", "the namespace is 81 characters long"),
    ("h" * 351 + "/n/m", "the host is 351 characters long, more than 350"),
])
def test_invalid_names_name_the_bad_part(text, complaint):
    with pytest.raises(StoreError, match="invalid model name") as info:
        ModelName.parse(text)
    assert complaint in str(info.value)
    assert isinstance(info.value, RefllmError)


def test_invalid_character_message_lists_what_is_allowed():
    with pytest.raises(StoreError, match=r"the namespace 'a\.b' contains '\.'; it may contain only "
                                         r"letters, digits, '_' and '-'"):
        ModelName.parse("a.b/m")


def _part(extra_chars: str, longest: int) -> st.SearchStrategy[str]:
    word = "abcXYZ019_"
    return st.builds(lambda first, rest: first + rest, st.sampled_from(word),
                     st.text(alphabet=word + extra_chars, max_size=min(longest - 1, 12)))


@given(_part(".:-", 350), _part("-", 80), _part(".-", 80), _part(".-", 80))
def test_full_names_round_trip(host, namespace, model, tag):
    name = ModelName(host, namespace, model, tag)
    assert ModelName.parse(str(name)) == name
    assert ModelName.parse(name.display_shortest()) == name


def test_longest_valid_parts():
    name = ModelName.parse("h" * 350 + "/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80)
    assert (len(name.host), len(name.namespace), len(name.model), len(name.tag)) == (350, 80, 80, 80)


@pytest.mark.parametrize("text, shortest", [
    ("llama3", "llama3:latest"),
    ("llama3:8b", "llama3:8b"),
    ("user/model:tag", "user/model:tag"),
    ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M"),
    ("example.com/library/m", "example.com/library/m:latest"),       # a host keeps its namespace
    ("REGISTRY.ollama.ai/Library/m", "m:latest"),                     # defaults compare ignoring case
])
def test_display_shortest(text, shortest):
    assert ModelName.parse(text).display_shortest() == shortest


# ---------------------------------------------------------------------------------------------
# Digests

def test_parse_digest_spellings():
    assert parse_digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert parse_digest(f"sha256-{HEX}") == f"sha256:{HEX}"
    assert parse_digest(f"sha256-{HEX.upper()}") == f"sha256:{HEX}"


@pytest.mark.parametrize("bad", ["", HEX, f"sha256:{HEX[:-1]}", f"sha256:{HEX}0", f"sha256_{HEX}",
                                 f"SHA256:{HEX}", f"sha512:{HEX}", f"sha256:{HEX[:-1]}g", f" sha256:{HEX}"])
def test_parse_digest_rejects(bad):
    with pytest.raises(StoreError, match="invalid digest"):
        parse_digest(bad)


def test_blob_path(tmp_path):
    assert blob_path(f"sha256:{HEX}", tmp_path) == tmp_path / "blobs" / f"sha256-{HEX}"
    assert blob_path(f"sha256-{HEX.upper()}", tmp_path) == tmp_path / "blobs" / f"sha256-{HEX}"
    with pytest.raises(StoreError):
        blob_path("sha256:nothex", tmp_path)


# ---------------------------------------------------------------------------------------------
# Store root

def test_models_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "elsewhere"))
    assert models_dir() == tmp_path / "elsewhere"


def test_models_dir_default_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models_dir() == tmp_path / ".ollama" / "models"
    monkeypatch.setenv("OLLAMA_MODELS", "")          # set but empty counts as unset
    assert models_dir() == tmp_path / ".ollama" / "models"


def test_functions_use_the_env_store(monkeypatch, store):
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert find_manifest("smollm2").name.model == "SmolLM2"
    assert [str(m.name) for m in list_manifests()] == ["registry.ollama.ai/library/SmolLM2:latest"]


def test_home_store(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    add_model(tmp_path / ".ollama" / "models", SMOLLM2)
    assert resolve_target("SmolLM2").kind == "model"


# ---------------------------------------------------------------------------------------------
# Manifests

def test_find_manifest_reads_every_layer(store):
    manifest = find_manifest("SmolLM2", store)
    raw = manifest.path.read_bytes()
    assert manifest.path == store / "manifests" / SMOLLM2
    assert manifest.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert manifest.id == manifest.digest[7:19]
    assert manifest.modified == manifest.path.stat().st_mtime
    assert [layer.kind for layer in manifest.layers] == ["model", "template", "system", "params", "license"]
    assert manifest.config.media_type == "application/vnd.docker.container.image.v1+json"
    assert manifest.size == sum(blob.stat().st_size for blob in (store / "blobs").iterdir())
    assert manifest.model_layer is manifest.layers[0]
    assert read_blob_text(manifest.layers_of("template")[0], store) == TEMPLATE
    assert read_blob_text(manifest.layers_of("system")[0], store) == SYSTEM
    assert read_blob_text(manifest.layers_of("license")[0], store) == LICENSE
    assert read_params(manifest.layers_of("params")[0], store) == PARAMS
    assert read_params(manifest.config, store)["file_type"] == "Q4_1"
    model = open_model(blob_path(manifest.model_layer.digest, store))
    assert model.metadata["general.architecture"] == "llama"


def test_lookup_ignores_case_and_returns_the_disk_spelling(store):
    for asked in ["smollm2", "SMOLLM2:LATEST", "Registry.Ollama.AI/LIBRARY/smollm2:Latest"]:
        manifest = find_manifest(asked, store)
        assert manifest.name == ModelName("registry.ollama.ai", "library", "SmolLM2", "latest")
        assert manifest.path == store / "manifests" / SMOLLM2


def test_lookup_prefers_the_exact_spelling(store):
    add_model(store, "registry.ollama.ai/library/smollm2/latest", model_bytes=b"other")
    assert find_manifest("smollm2", store).name.model == "smollm2"
    assert find_manifest("SmolLM2", store).name.model == "SmolLM2"


def test_missing_model_names_the_path_and_lists_the_store(store):
    add_model(store, "registry.ollama.ai/library/SmolLM2/q8")
    with pytest.raises(StoreError) as info:
        find_manifest("smollm2:q4", store)
    message = str(info.value)
    assert "registry.ollama.ai/library/smollm2:q4 not found" in message
    assert str(store / "manifests/registry.ollama.ai/library/smollm2/q4") in message
    assert "SmolLM2:latest, SmolLM2:q8" in message


def test_missing_model_lists_at_most_five(tmp_path):
    for i in range(7):
        add_model(tmp_path, f"registry.ollama.ai/library/m{i}/latest", model_bytes=b"x")
    with pytest.raises(StoreError, match=r"m0:latest, m1:latest, m2:latest, m3:latest, m4:latest and 2 more"):
        find_manifest("gone", tmp_path)


def test_missing_model_in_an_empty_store(tmp_path):
    with pytest.raises(StoreError, match=r"there is no ollama store at .* \(set OLLAMA_MODELS"):
        find_manifest("llama3", tmp_path)
    (tmp_path / "manifests").mkdir()
    with pytest.raises(StoreError, match="has no models"):
        find_manifest("llama3", tmp_path)


def test_find_manifest_rejects_a_bad_name(store):
    with pytest.raises(StoreError, match="invalid model name 'a b'"):
        find_manifest("a b", store)


def test_layer_kinds():
    def kind(media_type: str) -> str:
        return Layer(media_type, f"sha256:{HEX}", 1).kind
    assert kind("application/vnd.ollama.image.model") == "model"
    assert kind("application/vnd.ollama.image.prompt") == "template"      # legacy name
    assert kind("application/vnd.ollama.image.projector") == "projector"
    assert kind("application/vnd.ollama.image.future") == "future"
    assert kind("application/vnd.docker.container.image.v1+json") == "application/vnd.docker.container.image.v1+json"


def test_manifest_fields_and_legacy_template(tmp_path):
    path = write_manifest(tmp_path, "registry.ollama.ai/library/old/latest", {"model_format": "gguf"}, [
        layer(tmp_path, "prompt", b"{{ .Prompt }}"),
        layer(tmp_path, "adapter", b"lora", **{"from": "sha256-parent", "name": "a.gguf", "extra": 1}),
    ])
    manifest = read_manifest(path, ModelName.parse("old"))
    assert manifest.model_layer is None
    assert read_blob_text(manifest.layers_of("template")[0], tmp_path) == "{{ .Prompt }}"
    adapter = manifest.layers_of("adapter")[0]
    assert (adapter.from_, adapter.name, adapter.size) == ("sha256-parent", "a.gguf", 4)


def _write_raw_manifest(root: Path, text: str) -> Path:
    path = root / "manifests/registry.ollama.ai/library/bad/latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD_CONFIG = {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": f"sha256:{HEX}", "size": 2}


@pytest.mark.parametrize("text, complaint", [
    ('{"schemaVersion": 2, "config": ', "not valid JSON"),
    ("\xff", "not valid JSON"),
    ("[]", "expected a JSON object"),
    (json.dumps({"layers": []}), "no 'config' field"),
    (json.dumps({"config": GOOD_CONFIG}), "expected a 'layers' list"),
    (json.dumps({"config": "x", "layers": []}), "config is not a JSON object"),
    (json.dumps({"config": {**GOOD_CONFIG, "digest": None}, "layers": []}), "config needs a str field 'digest'"),
    (json.dumps({"config": GOOD_CONFIG, "layers": [{"mediaType": "m", "digest": f"sha256:{HEX}"}]}),
     "layers[0] needs a int field 'size'"),
    (json.dumps({"config": GOOD_CONFIG, "layers": [{"mediaType": "m", "digest": "md5:1", "size": 1}]}),
     "layers[0]: invalid digest 'md5:1'"),
    (json.dumps({"config": {**GOOD_CONFIG, "size": True}, "layers": []}), "config needs a int field 'size'"),
    (json.dumps({"config": {**GOOD_CONFIG, "size": -1}, "layers": []}), "negative size"),
])
def test_malformed_manifest_names_the_file(tmp_path, text, complaint):
    path = _write_raw_manifest(tmp_path, text)
    with pytest.raises(StoreError) as info:
        find_manifest("bad", tmp_path)
    assert str(path) in str(info.value)
    assert complaint in str(info.value)


def test_unknown_manifest_fields_are_ignored(tmp_path):
    text = json.dumps({"schemaVersion": 3, "future": {"x": 1}, "config": {**GOOD_CONFIG, "annotations": {}},
                       "layers": []})
    _write_raw_manifest(tmp_path, text)
    manifest = find_manifest("bad", tmp_path)
    assert manifest.layers == [] and manifest.size == 2


def test_list_manifests(store):
    add_model(store, "hf.co/org/repo/Q4_K_M", model_bytes=b"gguf")
    add_model(store, "registry.ollama.ai/user/model/tag", model_bytes=b"gguf")
    names = [m.name.display_shortest() for m in list_manifests(store)]
    assert names == ["hf.co/org/repo:Q4_K_M", "SmolLM2:latest", "user/model:tag"]


def test_list_manifests_skips_bad_files_and_reports_them(store):
    (store / "manifests/registry.ollama.ai/library/SmolLM2/.tmp-partial").write_text("{")
    (store / "manifests/registry.ollama.ai/library/broken").mkdir()
    (store / "manifests/registry.ollama.ai/library/broken/latest").write_text("not json")
    (store / "manifests/registry.ollama.ai/library/deeper/x").mkdir(parents=True)
    (store / "manifests/registry.ollama.ai/library/deeper/x/y").write_text("{}")     # 5 levels: ignored
    (store / "manifests/registry.ollama.ai/stray").write_text("{}")                   # 3 levels: ignored
    skipped: list[StoreError] = []
    manifests = list_manifests(store, skipped)
    assert [m.name.model for m in manifests] == ["SmolLM2"]
    messages = sorted(str(e) for e in skipped)
    assert len(messages) == 2
    assert ".tmp-partial is not a model's manifest: the tag '.tmp-partial' must start" in messages[0]
    assert "broken/latest: not valid JSON" in messages[1]
    assert list_manifests(store) == manifests                     # without a list: skipped silently


def test_list_manifests_of_a_missing_store(tmp_path):
    assert list_manifests(tmp_path / "nothing") == []


# ---------------------------------------------------------------------------------------------
# Blobs

def test_read_blob_text_limit_and_replacement(tmp_path):
    text_layer = Layer("application/vnd.ollama.image.system", write_blob(tmp_path, b"caf\xc3\xa9 \xff"), 7)
    assert read_blob_text(text_layer, tmp_path) == "caf\u00e9 \ufffd"
    assert read_blob_text(text_layer, tmp_path, limit=7) == "caf\u00e9 \ufffd"
    with pytest.raises(StoreError, match=r"system layer .* is 7 bytes, more than the 6 bytes"):
        read_blob_text(text_layer, tmp_path, limit=6)


def test_read_blob_text_missing_blob(tmp_path):
    missing = Layer("application/vnd.ollama.image.license", f"sha256:{HEX}", 3)
    with pytest.raises(StoreError, match=f"license layer's blob is missing: no file .*sha256-{HEX}"):
        read_blob_text(missing, tmp_path)


def test_read_params_rejects_non_objects(tmp_path):
    for data, complaint in [(b"[1]", "not a JSON object but list"), (b"{", "not valid JSON")]:
        params = Layer("application/vnd.ollama.image.params", write_blob(tmp_path, data), len(data))
        with pytest.raises(StoreError, match=complaint):
            read_params(params, tmp_path)


def test_verify_blob(tmp_path):
    data = bytes(range(256)) * 5000                                   # 1.28 MB: two 1 MiB chunks
    digest = write_blob(tmp_path, data)
    calls = []
    assert verify_blob(digest, tmp_path, progress=calls.append) == digest
    assert calls == [1 << 20, len(data) - (1 << 20)]
    assert verify_blob(digest.replace(":", "-").upper().replace("SHA256-", "sha256-"), tmp_path) == digest


def test_verify_blob_finds_a_flipped_byte(tmp_path):
    digest = write_blob(tmp_path, b"model weights")
    path = blob_path(digest, tmp_path)
    corrupted = bytearray(path.read_bytes())
    corrupted[3] ^= 0x01
    path.write_bytes(corrupted)
    actual = "sha256:" + hashlib.sha256(corrupted).hexdigest()
    with pytest.raises(StoreError) as info:
        verify_blob(digest, tmp_path)
    assert digest in str(info.value) and actual in str(info.value) and str(path) in str(info.value)


def test_verify_blob_missing(tmp_path):
    with pytest.raises(StoreError, match=f"blob sha256:{HEX} is missing: no file .*sha256-{HEX}"):
        verify_blob(f"sha256:{HEX}", tmp_path)


# ---------------------------------------------------------------------------------------------
# inspect blob targets

def test_target_a_plain_path(store, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    target = resolve_target(str(path), store)
    assert (target.kind, target.path, target.manifest, target.digest) == ("path", path, None, None)


def test_target_a_blob_path_carries_its_digest(store):
    digest = find_manifest("smollm2", store).model_layer.digest
    target = resolve_target(str(blob_path(digest, store)), store)
    assert (target.kind, target.digest) == ("path", digest)
    assert verify_file(target.path, target.digest) == digest


@pytest.mark.parametrize("spelling", [":", "-"])
def test_target_a_digest(store, spelling):
    digest = find_manifest("smollm2", store).layers_of("system")[0].digest
    target = resolve_target(digest.replace(":", spelling), store)
    assert (target.kind, target.path, target.manifest, target.digest) == (
        "blob", blob_path(digest, store), None, digest)


def test_target_a_missing_digest(store):
    with pytest.raises(StoreError, match=f"blob sha256:{HEX} is not in the store: no file .*sha256-{HEX}"):
        resolve_target(f"sha256-{HEX}", store)


def test_target_a_model_name(store):
    target = resolve_target("smollm2:latest", store)
    assert target.kind == "model"
    assert target.manifest.name.model == "SmolLM2"
    assert target.digest == target.manifest.model_layer.digest
    assert target.path == blob_path(target.digest, store)


def test_target_a_path_wins_over_a_model_name(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("SmolLM2").write_bytes(b"a file")
    assert resolve_target("SmolLM2", store).kind == "path"


def test_target_a_missing_model(store):
    with pytest.raises(StoreError) as info:
        resolve_target("llama3:8b", store)
    message = str(info.value)
    assert "'llama3:8b' is not an existing file or a sha256 digest" in message
    assert "registry.ollama.ai/library/llama3:8b not found" in message
    assert "SmolLM2:latest" in message


def test_target_a_model_without_a_model_layer(tmp_path):
    write_manifest(tmp_path, "registry.ollama.ai/library/textonly/latest", {}, [layer(tmp_path, "system", b"hi")])
    with pytest.raises(StoreError, match="textonly:latest has no model layer"):
        resolve_target("textonly", tmp_path)


def test_target_a_model_whose_blob_is_missing(store):
    blob = blob_path(find_manifest("smollm2", store).model_layer.digest, store)
    os.unlink(blob)
    with pytest.raises(StoreError, match="its model blob sha256:[0-9a-f]{64} is missing: no file"):
        resolve_target("smollm2", store)


def test_target_a_short_digest_gets_a_hint(store):
    with pytest.raises(StoreError, match=r"not an existing file or a sha256 digest \(a digest is 'sha256:' "
                                         r"followed by 64 hex digits\)"):
        resolve_target("sha256:abc", store)


@pytest.mark.parametrize("target", ["a/b/c/d", "no such/model"])
def test_target_that_is_nothing_says_all_three_were_tried(store, target):
    with pytest.raises(StoreError, match="is not an existing file, not a sha256 digest, and not a valid "
                                         "ollama model name"):
        resolve_target(target, store)


@pytest.mark.parametrize("target", ["no such/file.gguf", "./models/x.gguf", "/no/such/file", "~/x", "old.bin"])
def test_target_that_looks_like_a_path_is_answered_as_a_file(store, target):
    """No ollama name starts with /, ./ or ~ or ends in .gguf: such a target is a missing file."""
    with pytest.raises(StoreError, match=f"^no such file: {re.escape(target)}$"):
        resolve_target(target, store)


def test_target_that_is_a_directory_or_empty_says_so(store, tmp_path):
    with pytest.raises(StoreError, match="is a directory, not a model file"):
        resolve_target(str(tmp_path), store)
    with pytest.raises(StoreError, match="the target is empty"):
        resolve_target("", store)
