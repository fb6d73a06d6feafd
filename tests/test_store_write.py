"""Writing ollama's store: create from a Modelfile (with -q), cp, rm, list, show; failures and kills
leave the store as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refllm.cli import main
from refllm.formats import GGUFWriter
from refllm.formats.modelfile import parse_modelfile, read_modelfile
from refllm.formats.ollama import blob_path, find_manifest, list_manifests, read_params
from refllm.formats.ollama_store import ERR_QUANTIZE_SOURCE, TMP_PREFIX, copy_model, remove_model
from refllm.tools.create_model import create_model
from refllm.tools.synth import write_synthetic_model

REPO = Path(__file__).resolve().parents[1]
MODELFILE = '''FROM ./f32.gguf
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}<|im_start|>user
{{ .Prompt }}<|im_end|>"""
SYSTEM You are terse & kind.
PARAMETER temperature 0.6
PARAMETER stop <|im_end|>
PARAMETER num_ctx 4096
PARAMETER stop "<|im_start|>"
LICENSE """MIT
(c) someone"""
LICENSE Apache-2.0
MESSAGE user Hi
MESSAGE assistant Hello!
'''


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def f32(tmp_path_factory) -> Path:
    """A small F32 llama (token_embd 256 wide, so that Q4_K_M and Q8_0 have rows to quantize)."""
    path = tmp_path_factory.mktemp("gguf") / "f32.gguf"
    write_synthetic_model(path, "llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=384,
                          weight_types={name: "F32" for name in _weight_names()})
    return path


def _weight_names():
    from refllm.tools.synth import DEFAULT_WEIGHT_TYPES
    return DEFAULT_WEIGHT_TYPES


@pytest.fixture
def work(tmp_path, f32, monkeypatch) -> Path:
    """A folder with f32.gguf and the Modelfile; OLLAMA_MODELS is <folder>/store."""
    (tmp_path / "f32.gguf").symlink_to(f32)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root, with the bytes of files (None for folders)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def go_json_line(value) -> bytes:
    """What Go's json.Encoder writes for a value with only ASCII-safe strings: compact, a newline."""
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


# -- create ----------------------------------------------------------------------------------

def test_create_lays_out_manifest_blobs_and_config_as_ollama(work):
    store = work / "store"
    created = create_model("mine", read_modelfile(work / "Modelfile"))
    manifest = find_manifest("mine")
    assert manifest.path == store / "manifests/registry.ollama.ai/library/mine/latest" == created.path
    doc = json.loads(manifest.path.read_bytes())
    assert manifest.path.read_bytes() == go_json_line(doc)          # compact, one newline at the end
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    kinds = [la["mediaType"].removeprefix("application/vnd.ollama.image.") for la in doc["layers"]]
    assert kinds == ["model", "template", "system", "license", "license", "params", "messages"]
    for entry in [doc["config"]] + doc["layers"]:
        path = blob_path(entry["digest"], store)
        assert sha(path) == entry["digest"] and path.stat().st_size == entry["size"]
        assert list(entry)[:3] == ["mediaType", "digest", "size"]
        assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert doc["layers"][0]["from"] == "f32.gguf" and doc["layers"][0]["digest"] == sha(work / "f32.gguf")

    blobs = {k: blob_path(la["digest"], store).read_bytes() for k, la in zip(kinds, doc["layers"]) if k != "model"}
    template = parse_modelfile(MODELFILE).last("template")
    assert blobs["template"] == template.encode() and blobs["system"] == b"You are terse & kind."
    assert [blob_path(la["digest"], store).read_bytes() for la in doc["layers"][3:5]] == [b"MIT\n(c) someone",
                                                                                           b"Apache-2.0"]
    assert blobs["params"] == (b'{"num_ctx":4096,"stop":["\\u003c|im_end|\\u003e","\\u003c|im_start|\\u003e"],'
                               b'"temperature":0.6}\n')
    assert blobs["messages"] == b'[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]\n'

    config_bytes = blob_path(doc["config"]["digest"], store).read_bytes()
    config = json.loads(config_bytes)
    assert config_bytes == go_json_line(config)
    assert list(config) == ["model_format", "model_family", "model_families", "model_type", "file_type",
                            "architecture", "os"]                    # no rootfs since 2026-08-08
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    assert config["model_families"] == ["llama"] and config["file_type"] == "F32"
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    from refllm.formats import open_model
    from refllm.formats.summary import human_count, parameter_count
    assert config["model_type"] == human_count(parameter_count(open_model(work / "f32.gguf")))
    assert not [p for p in (store / "blobs").iterdir() if p.name.startswith(".")]     # no temporary files left


def test_inspect_blob_reads_the_created_model(work, capsys):
    create_model("user/mine:v1", read_modelfile(work / "Modelfile"))
    code, out, err = run(["inspect", "blob", "user/mine:v1", "--no-tensors", "--verify"], capsys)
    assert code == 0, err
    assert "user/mine:v1" in out and "registry.ollama.ai/user/mine:v1" in out and "You are terse" in out


def test_requires_renderer_parser_go_to_the_config(work):
    (work / "Modelfile").write_text("FROM ./f32.gguf\nREQUIRES v0.14.0\nRENDERER qwen3\nPARSER qwen3\n")
    manifest = create_model("mine", read_modelfile(work / "Modelfile"))
    config = read_params(manifest.config)
    assert [config[k] for k in ("renderer", "parser", "requires")] == ["qwen3", "qwen3", "0.14.0"]
    assert list(config)[5:8] == ["renderer", "parser", "requires"]


@pytest.mark.parametrize("ftype", ["Q4_K_M", "q8_0"])
def test_quantize_is_byte_identical_to_refllm_quantize(work, ftype, capsys):
    manifest = create_model("mine", read_modelfile(work / "Modelfile"), quantize=ftype)
    code, _, err = run(["quantize", work / "f32.gguf", work / "q.gguf", ftype], capsys)
    assert code == 0, err
    model = manifest.model_layer
    assert blob_path(model.digest).read_bytes() == (work / "q.gguf").read_bytes()
    assert model.digest == sha(work / "q.gguf") and model.from_ is None
    assert read_params(manifest.config)["file_type"] == ftype.upper()
    assert not (work / "store" / "blobs" / f"sha256-{sha(work / 'f32.gguf')[7:]}").exists()   # only the result


def test_quantize_refuses_a_quantized_source_with_ollamas_message(work):
    create_model("q8", read_modelfile(work / "Modelfile"), quantize="Q8_0")
    before = snapshot(work / "store")
    (work / "Modelfile").write_text("FROM q8\n")
    with pytest.raises(Exception, match=ERR_QUANTIZE_SOURCE + r" \(this one is Q8_0\)"):
        create_model("again", read_modelfile(work / "Modelfile"), quantize="Q4_K_M")
    assert snapshot(work / "store") == before


def test_unknown_quantization_type(work):
    with pytest.raises(Exception, match="unsupported quantization type IQ2_XS - supported types are F16, BF16"):
        create_model("mine", read_modelfile(work / "Modelfile"), quantize="iq2_xs")
    assert not (work / "store").exists()


def test_from_a_store_model_inherits_its_layers(work):
    base = create_model("base", read_modelfile(work / "Modelfile"))
    (work / "Modelfile").write_text("FROM base\nSYSTEM new system\nPARAMETER top_k 5\nPARAMETER temperature 0.2\n"
                                    "LICENSE extra\n")
    derived = create_model("derived", read_modelfile(work / "Modelfile"))
    kinds = [la.kind for la in derived.layers]
    assert kinds == ["model", "template", "license", "license", "messages", "system", "license", "params"]
    by_digest = {la.digest: la for la in base.layers}
    inherited = [la for la in derived.layers if la.digest in by_digest]
    assert [la.kind for la in inherited] == ["model", "template", "license", "license", "messages"]
    assert all(la.from_ == "base:latest" for la in inherited)
    assert blob_path(derived.layers_of("system")[0].digest).read_bytes() == b"new system"
    params = read_params(derived.layers_of("params")[0])
    assert params == {"num_ctx": 4096, "stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.2, "top_k": 5}
    assert read_params(derived.config)["model_family"] == "llama"


def test_existing_blobs_are_not_rewritten(work):
    first = create_model("a", read_modelfile(work / "Modelfile"))
    model = blob_path(first.model_layer.digest)
    stamp = (model.stat().st_ino, model.stat().st_mtime_ns)
    time.sleep(0.01)
    create_model("b", read_modelfile(work / "Modelfile"))
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == stamp


def test_replacing_a_model_drops_its_unshared_blobs(work):
    old = create_model("mine", read_modelfile(work / "Modelfile"))
    (work / "Modelfile").write_text("FROM ./f32.gguf\nSYSTEM other\n")
    new = create_model("MINE", read_modelfile(work / "Modelfile"))      # the existing spelling is reused
    assert new.path == old.path and len(list_manifests()) == 1
    assert not blob_path(old.layers_of("system")[0].digest).exists()
    assert blob_path(new.model_layer.digest).exists()


# -- failures -------------------------------------------------------------------------------------

def test_a_bad_from_leaves_the_store_as_it_was(work):
    create_model("mine", read_modelfile(work / "Modelfile"))
    before = snapshot(work / "store")
    for text, message in (("FROM ./missing.gguf\n", "no such file"), ("FROM nosuchmodel\n", "no such model"),
                          (f"FROM {work}\n", "is a folder")):
        (work / "Modelfile").write_text(text + "SYSTEM x\n")
        with pytest.raises(Exception, match=message):
            create_model("other", read_modelfile(work / "Modelfile"))
        assert snapshot(work / "store") == before


def test_a_quantize_error_leaves_the_store_as_it_was(work, monkeypatch):
    create_model("mine", read_modelfile(work / "Modelfile"))
    before = snapshot(work / "store")
    import refllm.tools.create_model as create
    import refllm.tools.quantize_model as qm

    def broken(src, dst, ftype, **kw):
        Path(dst).write_bytes(b"half a file")
        raise qm.QuantizeFileError("tensor blk.0.attn_q.weight: row 3 holds NaN or infinite values")

    monkeypatch.setattr(create, "quantize_model", broken)
    (work / "Modelfile").write_text("FROM ./f32.gguf\nSYSTEM a new system\n")
    with pytest.raises(qm.QuantizeFileError, match="row 3"):
        create_model("other", read_modelfile(work / "Modelfile"), quantize="Q4_K_M")
    assert snapshot(work / "store") == before


def test_a_failure_after_the_blobs_takes_them_back(work, monkeypatch):
    before = snapshot(work / "store")
    import refllm.tools.create_model as create

    def failing(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(create, "_write_manifest", failing)
    with pytest.raises(OSError, match="No space"):
        create_model("mine", read_modelfile(work / "Modelfile"))
    assert snapshot(work / "store") == before == {}


@pytest.fixture(scope="module")
def big_f32(tmp_path_factory) -> Path:
    """An F32 llama whose quantization takes a few seconds (about 100 MB)."""
    path = tmp_path_factory.mktemp("big") / "big.gguf"
    write_synthetic_model(path, "llama", n_layer=4, n_embd=768, n_head=8, n_head_kv=4, n_ff=2048, n_vocab=512,
                          weight_types={name: "F32" for name in _weight_names()})
    return path


def test_a_killed_create_leaves_no_bad_blob_and_no_manifest(work, big_f32):
    (work / "big.gguf").symlink_to(big_f32)
    (work / "Modelfile").write_text("FROM ./big.gguf\nSYSTEM big\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLLAMA_MODELS": str(work / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "refllm.cli", "create", "big", "-f", "Modelfile", "-q", "Q4_K_M"],
                            cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("quantizing"):
            break
    deadline = time.monotonic() + 60
    while not any(TMP_PREFIX in p.name for p in (work / "store" / "blobs").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.005)                                   # until the quantizer's output file exists
    assert proc.poll() is None, "".join(lines) + proc.stderr.read()      # still quantizing: killed midway
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    store = work / "store"
    assert not (store / "manifests").exists() or not list((store / "manifests").rglob("*big*"))
    blobs = list((store / "blobs").iterdir())
    assert any(p.name.startswith((TMP_PREFIX, "." + TMP_PREFIX)) for p in blobs)   # it was writing
    for path in blobs:
        if path.name.startswith("sha256-"):
            assert sha(path)[7:] == path.name[7:]
    manifest = create_model("big", read_modelfile(work / "Modelfile"), quantize="Q4_K_M")
    assert find_manifest("big").digest == manifest.digest
    assert [p.name for p in (store / "blobs").iterdir() if TMP_PREFIX in p.name] == []


# -- cp, rm ------------------------------------------------------------------------------------------

def test_rm_keeps_shared_blobs_and_removes_the_rest(work):
    a = create_model("a", read_modelfile(work / "Modelfile"))
    (work / "Modelfile").write_text("FROM ./f32.gguf\nSYSTEM only b\n")
    b = create_model("ns/b:tag", read_modelfile(work / "Modelfile"))
    removed = remove_model("ns/b:tag")
    assert blob_path(b.layers_of("system")[0].digest).exists() is False
    assert removed == [b.layers_of("system")[0].digest]
    assert b.config.digest == a.config.digest and blob_path(a.config.digest).exists()    # the same config, shared
    assert blob_path(a.model_layer.digest).exists() and a.model_layer.digest not in removed
    assert not (work / "store/manifests/registry.ollama.ai/ns").exists()       # empty folders go too
    assert (work / "store/manifests/registry.ollama.ai/library/a/latest").exists()
    assert all(blob_path(la.digest).exists() for la in a.layers + [a.config])


def test_cp_then_rm_of_the_original_leaves_the_copy_working(work):
    original = create_model("orig", read_modelfile(work / "Modelfile"))
    copy = copy_model("orig", "copy:v2")
    assert copy.path.read_bytes() == original.path.read_bytes() and copy.digest == original.digest
    remove_model("orig")
    kept = find_manifest("copy:v2")
    assert all(sha(blob_path(la.digest)) == la.digest for la in kept.layers + [kept.config])
    with pytest.raises(Exception, match="not found"):
        find_manifest("orig")


# -- the CLI -----------------------------------------------------------------------------------------

def chat_template_gguf(path: Path) -> Path:
    writer = GGUFWriter()
    writer.add_kv("general.architecture", "llama")
    writer.add_kv("general.file_type", 0)
    writer.add_kv("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.add_tensor("token_embd.weight", "F32", (4, 8), np.arange(32, dtype=np.float32))
    writer.write(path)
    return path


def test_cli_create_list_show_rm(work, capsys):
    code, _, err = run(["create", "mine", "-f", "Modelfile"], capsys)
    assert code == 0 and err.splitlines()[-2:] == ["writing manifest", "success"]
    code, out, _ = run(["list"], capsys)
    manifest = find_manifest("mine")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[:4] == ["mine:latest", manifest.id, *_size(manifest.size).split()]
    assert row.endswith("ago") and header.index("ID") == row.index(manifest.id)

    code, out, _ = run(["show", "mine"], capsys)
    assert code == 0
    sections = [line for line in out.splitlines() if line.startswith("  ") and not line.startswith("    ")]
    assert sections == ["  Model", "  Capabilities", "  Parameters", "  System", "  License"]
    assert "    architecture        llama" in out and "    quantization        F32" in out
    assert '    stop           "<|im_end|>"' in out and "    temperature    0.6" in out
    assert out.split("  License\n")[1].splitlines()[:3] == ["    MIT", "    (c) someone", "    ..."]

    code, out, _ = run(["show", "mine", "--template"], capsys)
    assert out == parse_modelfile(MODELFILE).last("template")
    code, out, _ = run(["show", "mine", "--system"], capsys)
    assert out == "You are terse & kind."
    code, out, _ = run(["show", "mine", "--parameters"], capsys)
    assert out.splitlines()[0] == "num_ctx                        4096"
    code, out, _ = run(["show", "mine", "--license"], capsys)
    assert out == "MIT\n(c) someone\nApache-2.0\n"
    code, out, _ = run(["show", "mine", "--modelfile"], capsys)
    assert f"FROM {blob_path(manifest.model_layer.digest).absolute()}" in out.splitlines()
    (work / "Modelfile2").write_text(out)
    code, _, err = run(["create", "again", "-f", "Modelfile2"], capsys)
    assert code == 0, err
    again = find_manifest("again")
    assert [la.digest for la in again.layers] == [la.digest for la in manifest.layers]   # the same model

    code, out, _ = run(["rm", "mine", "again"], capsys)
    assert code == 0 and out == "deleted 'mine'\ndeleted 'again'\n"
    code, out, _ = run(["list"], capsys)
    assert out.startswith("no models in")


def _size(n: int) -> str:
    from refllm.formats.ollama_report import human_bytes
    return human_bytes(n)


def test_show_template_falls_back_to_the_gguf_chat_template(work, capsys):
    chat_template_gguf(work / "chat.gguf")
    (work / "Modelfile").write_text("FROM ./chat.gguf\n")
    run(["create", "chat", "-f", "Modelfile"], capsys)
    code, out, _ = run(["show", "chat", "--template"], capsys)
    assert code == 0 and out == "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize("args, fragment", [
    (["rm", "nope"], "model registry.ollama.ai/library/nope:latest not found"),
    (["show", "nope"], "not found"),
    (["show", "x", "--system", "--license"], "only one of '--license', '--modelfile', '--parameters', '--system', or "
                                             "'--template' can be specified"),
    (["cp", "nope", "other"], "not found"),
    (["cp", "a", "bad name!"], "invalid model name"),
    (["create", "mine", "-f", "Missing"], "No such file or directory"),
    (["create", "mine", "-q", "Q9_9"], "unsupported quantization type Q9_9"),
])
def test_cli_bad_inputs_are_one_line_and_exit_2(work, capsys, args, fragment):
    create_model("a", read_modelfile(work / "Modelfile"))
    code, out, err = run(args, capsys)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_create_reports_the_modelfile_line(work, capsys):
    (work / "Modelfile").write_text("FROM ./f32.gguf\nPARAMETER top_k lots\n")
    code, _, err = run(["create", "mine"], capsys)
    assert code == 2 and err == ("refllm: error: Modelfile: (line 2): invalid int value [lots]: "
                                 "PARAMETER top_k takes a whole number such as 40 or -1\n")
    assert not (work / "store").exists()
