"""The CLI: inspect (path, digest, ollama name, stdin), pull, and bad input as one line + exit 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf_bytes import small_model
from ollama_store import PARAMS, SYSTEM, TEMPLATE, add_model

from refllm.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "small.gguf"
    path.write_bytes(bytes(small_model().data))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2_path):
    """An ollama store holding the real SmolLM2 blob with template, system and params layers."""
    root = tmp_path_factory.mktemp("ollama")
    add_model(root, "registry.ollama.ai/library/SmolLM2/latest", smollm2_path.read_bytes())
    return root


def test_inspect_text_sections(model_file, capsys):
    code, out, err = run(["inspect", "blob", model_file], capsys)
    assert code == 0 and err == ""
    for section in ["LAYOUT", "METADATA", "TOKENIZER", "MODEL", "TENSORS", "TYPES", "MEMORY", "CHECKS all passed"]:
        assert section in out
    assert "[str × 5]" in out and "blk.0.attn_q.weight" in out and "64×64" in out


def test_inspect_no_tensors_and_ctx(model_file, capsys):
    code, out, _ = run(["inspect", "blob", model_file, "--no-tensors", "--ctx", "100", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["tensors"] is None and report["memory"]["ctx"] == 100
    assert report["schema"] == "refllm.inspect/1"


def test_key_prints_one_value_in_full(model_file, capsys):
    assert run(["inspect", "blob", model_file, "--key", "general.name"], capsys)[1] == "tiny\n"
    code, out, _ = run(["inspect", "blob", model_file, "--key", "tokenizer.ggml.tokens"], capsys)
    assert out.splitlines() == ["<unk>", "<s>", "</s>", "a", "héllo"]
    code, out, _ = run(["inspect", "blob", model_file, "--key", "tokenizer.ggml.scores", "--json"], capsys)
    assert json.loads(out) == [0.0, -1.0, -2.0, -3.5, 4.25]


def test_missing_key_is_one_line_exit_2(model_file, capsys):
    code, out, err = run(["inspect", "blob", model_file, "--key", "nope"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "no metadata key 'nope'" in err


def test_template(smollm2_path, model_file, capsys):
    code, out, _ = run(["inspect", "blob", smollm2_path, "--template"], capsys)
    assert code == 0 and out.startswith("{% for message in messages %}")
    code, _, err = run(["inspect", "blob", model_file, "--template"], capsys)
    assert code == 2 and "no chat template" in err


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"GGUF\x03\x00\x00\x00" + b"\xff" * 8, "bad.gguf: at byte 16: file ends inside the metadata KV count"),
    (b"version https://git-lfs.github.com/spec/v1\n", "git-LFS pointer"),
    (b"not a model at all", "bad magic"),
])
def test_broken_files_are_one_line_exit_2(tmp_path, capsys, data, needle):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data)
    code, out, err = run(["inspect", "blob", bad], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err
    assert err.startswith("refllm: error: ") and "Traceback" not in err


def test_failed_structural_check_exits_1_and_says_why(tmp_path, capsys):
    built = small_model()
    built.patch("ti:output_norm.weight:type", "<I", 77)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(built.data))
    code, out, _ = run(["inspect", "blob", bad], capsys)
    assert code == 1 and "CHECKS FAILED: unknown-type" in out and "unknown ggml type id 77" in out
    assert "unknown(77)" in out                                       # still shown in the table


@pytest.mark.parametrize("args", [["inspect", "blob"], ["inspect", "blob", "x", "--ctx", "0"],
                                  ["inspect", "blob", "x", "--bogus"], ["nope"]])
def test_usage_errors_are_one_line_exit_2(args, capsys):
    code, out, err = run(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("refllm: error: ")


def test_unknown_target_says_what_was_tried(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    code, _, err = run(["inspect", "blob", "no-such-model"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err


def test_header_from_stdin(model_file):
    result = subprocess.run(f"cat '{model_file}' | '{sys.executable}' -m refllm.cli inspect blob - --json",
                            shell=True, capture_output=True, text=True)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["layout"]["file_size"] is None
    assert [t["name"] for t in report["tensors"]][0] == "token_embd.weight"


def test_output_piped_to_head_ends_quietly(smollm2_path):
    result = subprocess.run(f"'{sys.executable}' -m refllm.cli inspect blob '{smollm2_path}' | head -1",
                            shell=True, capture_output=True, text=True)
    assert result.stdout == "LAYOUT\n" and result.stderr == ""


def test_ollama_model_by_name(store, smollm2_path, capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    code, out, err = run(["inspect", "blob", "smollm2", "--json", "--no-tensors"], capsys)
    report = json.loads(out)
    assert code == 0, err
    o = report["ollama"]
    assert o["name"] == "registry.ollama.ai/library/SmolLM2:latest"
    assert [layer["kind"] for layer in o["layers"]] == ["model", "template", "system", "params", "license"]
    assert (o["template"], o["system"], o["params"]) == (TEMPLATE, SYSTEM, PARAMS)
    assert report["model"]["architecture"] == "llama" and report["layout"]["n_tensors"] == 272
    assert report["target"]["digest"] == "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    code, out, _ = run(["inspect", "blob", "smollm2"], capsys)
    assert "OLLAMA  SmolLM2:latest" in out and "<|im_start|>user" in out


def test_ollama_blob_by_digest_and_verify(store, capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    for spelling in [f"sha256:{digest}", f"sha256-{digest}"]:
        code, out, _ = run(["inspect", "blob", spelling, "--verify", "--no-tensors", "--json"], capsys)
        assert code == 0 and json.loads(out)["verify"] == {
            "expected": f"sha256:{digest}", "actual": f"sha256:{digest}", "ok": True}
    code, out, _ = run(["inspect", "blob", store / "blobs" / f"sha256-{digest}", "--verify"], capsys)
    assert code == 0 and "sha256 OK" in out


def test_verify_finds_a_corrupt_blob(tmp_path, capsys, monkeypatch, model_file):
    digest = "0" * 64
    blob = tmp_path / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir()
    blob.write_bytes(model_file.read_bytes())
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    code, out, _ = run(["inspect", "blob", f"sha256:{digest}", "--verify"], capsys)
    assert code == 1 and "sha256 MISMATCH" in out


def test_verify_needs_something_to_verify_against(model_file, capsys):
    code, _, err = run(["inspect", "blob", model_file, "--verify"], capsys)
    assert code == 2 and "nothing to verify" in err


def test_inspect_store(store, capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    code, out, _ = run(["inspect", "store"], capsys)
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert out.splitlines()[1].startswith("SmolLM2:latest")
    code, out, _ = run(["inspect", "store", "--json"], capsys)
    assert [m["name"] for m in json.loads(out)["models"]] == ["SmolLM2:latest"]


def test_pull_list_and_unknown_pack(capsys):
    code, out, _ = run(["pull", "--list"], capsys)
    assert code == 0 and "smollm2" in out and "gemma3" in out and "llama-vocab" in out
    code, _, err = run(["pull", "nope"], capsys)
    assert code == 2 and "unknown pack 'nope'" in err


def test_pull_prints_the_cached_path(smollm2_path, capsys):
    code, out, _ = run(["pull"], capsys)
    assert code == 0 and out.strip() == str(smollm2_path)


def test_convert_legacy_and_inspect_it(tmp_path, capsys):
    from legacy_files import V3_QUANT, tiny_llama
    src, dst = tmp_path / "old.bin", tmp_path / "new.gguf"
    src.write_bytes(tiny_llama("ggjt", 3, quant=V3_QUANT).data)
    code, out, err = run(["inspect", "blob", src, "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["layout"]["container"] == "ggjt" and report["legacy"]["n_head"] == 4
    code, _, err = run(["convert", src, dst, "--eps", "1e-5", "--gqa", "2"], capsys)
    assert code == 0 and "from ggjt v3" in err
    code, out, _ = run(["inspect", "blob", dst, "--key", "llama.attention.head_count_kv"], capsys)
    assert out == "2\n"
    code, _, err = run(["convert", dst, tmp_path / "again.gguf"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_convert_refuses_old_layouts_and_its_own_input(tmp_path, capsys):
    from legacy_files import Q4_0, tiny_llama
    src = tmp_path / "old.bin"
    src.write_bytes(tiny_llama("ggjt", 1, quant={"output.weight": (Q4_0, (32, 20))}).data)
    code, out, _ = run(["inspect", "blob", src], capsys)
    assert code == 0 and "layout" in out and "ggjt v1" in out
    code, _, err = run(["convert", src, tmp_path / "new.gguf"], capsys)
    assert code == 2 and err.count("\n") == 1 and "output.weight" in err
    assert not (tmp_path / "new.gguf").exists()
    code, _, err = run(["convert", src, src], capsys)
    assert code == 2 and "refusing to overwrite the input" in err


def test_os_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("REFLLM_HOME", str(not_a_dir))
    code, _, err = run(["pull"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Not a directory" in err and "Traceback" not in err


SUMMARY_KEYS = ["general.architecture", "general.file_type", "llama.context_length", "llama.embedding_length",
                "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.attention.key_length", "llama.attention.value_length",
                "llama.rope.freq_base", "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template"]
ODD_VALUES = [(8, "text"), (6, 1.5), (7, True), (12, float("nan")), (5, -3),
              (9, (4, [0, 2**31])), (9, (8, ["a"])), (9, (9, [(4, [1])])), (9, (4, []))]


@pytest.mark.parametrize("key", SUMMARY_KEYS)
def test_inspect_survives_any_type_for_the_keys_it_summarises(tmp_path, capsys, key):
    """A valid file may give any key any type; the summaries must not trip over it."""
    from gguf_bytes import STRING, build_gguf
    for vtype, value in ODD_VALUES:
        kvs = [("general.architecture", STRING, "llama"), ("llama.block_count", 4, 2),
               ("tokenizer.ggml.tokens", 9, (STRING, ["a", "b"]))]
        kvs = [kv for kv in kvs if kv[0] != key] + [(key, vtype, value)]
        path = tmp_path / "odd.gguf"
        path.write_bytes(bytes(build_gguf(kvs, [("t", 0, (4,), bytes(16))]).data))
        for args in ([], ["--json"]):
            code, out, err = run(["inspect", "blob", path, *args], capsys)
            assert code == 0 and err == "", (key, vtype, value, err)
        json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))


# -- what a new user hits (issue 15) ----------------------------------------------------------------

def refllm_process(args: str, **kw) -> subprocess.CompletedProcess:
    """`refllm ARGS` run by a shell (so that redirections such as <&- and | head apply)."""
    return subprocess.run(f"'{sys.executable}' -m refllm.cli {args}", shell=True, capture_output=True,
                          text=True, timeout=300, **kw)


def test_piped_to_head_exits_0_every_time(smollm2_path):
    """A closed pipe ends the output quietly with exit 0 (never 1, which means "found a
    problem"), whether the pipe closes early or late: 49,152 token lines, and a one-line value."""
    for args in (f"inspect blob '{smollm2_path}' --key tokenizer.ggml.tokens", f"inspect blob '{smollm2_path}'"):
        for _ in range(3):
            result = subprocess.run(f"set -o pipefail; '{sys.executable}' -m refllm.cli {args} | head -1",
                                    shell=True, capture_output=True, text=True, executable="/bin/bash", timeout=300)
            assert (result.returncode, result.stderr) == (0, ""), (args, result.stderr)


@pytest.mark.parametrize("args", ["inspect blob -", "tokenize {model}", "generate {model} --raw -n 1"])
def test_a_closed_stdin_is_one_line_exit_2(model_file, args):
    result = refllm_process(args.format(model=f"'{model_file}'") + " <&-")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "stdin is closed" in result.stderr


def test_a_closed_stdout_ends_quietly(model_file):
    result = refllm_process(f"inspect blob '{model_file}' >&-")
    assert (result.returncode, result.stderr) == (0, "")


def test_bare_refllm_prints_the_help():
    result = refllm_process("")
    assert result.returncode == 0 and result.stderr == "" and "Commands:" in result.stdout


def test_a_stream_header_and_missing_summary_keys_print_unknown_not_none(model_file, tmp_path):
    """Text mode never prints Python's None: a header read from stdin has no file size, and a
    file without the usual keys has no file type, context or rope base."""
    from refllm.formats import GGUFWriter
    result = subprocess.run(f"cat '{model_file}' | '{sys.executable}' -m refllm.cli inspect blob -",
                            shell=True, capture_output=True, text=True)
    assert result.returncode == 0 and "file size unknown" in result.stdout and "None" not in result.stdout
    bare = tmp_path / "bare.gguf"
    w = GGUFWriter()
    w.add_kv("general.architecture", "llama")
    w.add_tensor("token_embd.weight", "F32", (4, 8), np.zeros((4, 8), np.float32))
    w.write(bare)
    result = refllm_process(f"inspect blob '{bare}'")
    assert result.returncode == 0 and "None" not in result.stdout
    assert "file type unknown" in result.stdout and "context unknown" in result.stdout


def test_array_limit_0_shows_every_value_in_full(smollm2_path, capsys):
    code, out, _ = run(["inspect", "blob", smollm2_path, "--no-tensors", "--array-limit", "0"], capsys)
    line = next(line for line in out.splitlines() if "tokenizer.ggml.merges" in line)
    assert code == 0 and "…" not in line and len(line) > 100_000
    code, out, _ = run(["inspect", "blob", smollm2_path, "--no-tensors"], capsys)
    line = next(line for line in out.splitlines() if "tokenizer.ggml.merges" in line)
    assert "… +" in line and len(line) < 200


def test_an_output_folder_that_does_not_exist_is_named(smollm2_path, tmp_path, capsys):
    code, _, err = run(["dequant", smollm2_path, "output_norm.weight", "-o", tmp_path / "no" / "x.npy"], capsys)
    assert code == 2 and f"no such folder to write into: {tmp_path / 'no'}" in err and ".tmp" not in err


def test_key_prints_one_line_per_array_item(gemma3_path, capsys):
    """Gemma-3's vocabulary holds tokens with newlines: each stays on its line, escaped."""
    code, out, _ = run(["inspect", "blob", gemma3_path, "--key", "tokenizer.ggml.tokens"], capsys)
    lines = out.split("\n")[:-1]
    assert code == 0 and len(lines) == 262_144 and "\\n" in lines


def test_inspect_store_says_when_there_is_no_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    code, out, _ = run(["inspect", "store"], capsys)
    assert code == 0
    assert out.strip() == f"there is no ollama store at {tmp_path / 'nowhere'} (OLLAMA_MODELS names another)"


def test_a_first_run_says_that_it_compiles(smollm2_path, tmp_path, capsys, monkeypatch):
    from refllm import numba_setup
    monkeypatch.setattr(numba_setup, "FRESH", True)
    code, _, err = run(["dequant", smollm2_path, "output_norm.weight", "-o", tmp_path / "x.npy"], capsys)
    assert code == 0 and "compiling Numba's kernels" in err
    code, _, err = run(["dequant", smollm2_path, "output_norm.weight", "-o", tmp_path / "x.npy"], capsys)
    assert code == 0 and "compiling" not in err                                 # once a process
