"""The CLI against what people try first: every subcommand with a directory, a missing file, an
empty file or a non-UTF-8 name where a file goes, out-of-range values for every numeric option,
a closed stdin, a closed stdout and a closed pipe. Each ends with exit 0, 1 or 2 as the README
defines them, bad input as one line on stderr, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from refllm.cli import main

# a name as Python hands a non-UTF-8 argv to the program (surrogate escapes)
NON_UTF8 = os.fsdecode(b"\xff\xfe.gguf")


def run(args, capsys, monkeypatch=None, stdin_closed=False):
    if stdin_closed:
        monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_clean(code, err, args) -> None:
    """Exit 0, 1 or 2; bad input (2) as one `refllm: error:` line; never a traceback."""
    assert code in (0, 1, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("refllm: error: "), (args, err)


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "folder").mkdir()
    (root / "empty.gguf").write_bytes(b"")
    return {"a directory": root / "folder", "a missing file": root / "missing.gguf",
            "an empty file": root / "empty.gguf", "a non-UTF-8 name": root / NON_UTF8}


# each subcommand with {bad} where an input file goes; {model} is a good model, {out} a fresh output
WITH_A_BAD_INPUT = [
    ["inspect", "blob", "{bad}"],
    ["convert", "{bad}", "{out}.gguf"],
    ["dequant", "{bad}", "token_embd.weight", "-o", "{out}.npy"],
    ["tokenize", "{bad}", "hi"],
    ["quantize", "{bad}", "{out}.gguf", "Q4_0"],
    ["generate", "{bad}", "hi", "-n", "1"],
    ["logits", "{bad}", "--tokens", "1", "-o", "{out}.npz"],
    ["compare", "{bad}", "{bad}"],
]
# and where an output goes: a directory, or a file in a folder that does not exist
WITH_A_BAD_OUTPUT = [
    ["dequant", "{model}", "output_norm.weight", "-o", "{bad}"],
    ["logits", "{model}", "--tokens", "1", "-o", "{bad}"],
    ["convert", "{legacy}", "{bad}"],
    ["quantize", "{f32}", "{bad}", "Q8_0"],
    ["synth", "llama", "-o", "{bad}"],
]


@pytest.mark.parametrize("kind", ["a directory", "a missing file", "an empty file", "a non-UTF-8 name"])
@pytest.mark.parametrize("template", WITH_A_BAD_INPUT, ids=lambda t: " ".join(t[:2]))
def test_a_bad_input_file_is_one_line_exit_2(template, kind, bad_paths, smollm2_path, tmp_path, capsys):
    args = [a.format(bad=bad_paths[kind], model=smollm2_path, out=tmp_path / "out") for a in template]
    code, _, err = run(args, capsys)
    assert_clean(code, err, args)
    assert code == 2, (args, code)
    if kind == "a non-UTF-8 name":
        assert "\\xff\\xfe.gguf" in err                         # the bytes, shown as escapes


@pytest.mark.parametrize("where", ["a directory", "a missing folder"])
@pytest.mark.parametrize("template", WITH_A_BAD_OUTPUT, ids=lambda t: t[0])
def test_a_bad_output_path_is_one_line_exit_2(template, where, bad_paths, inputs, capsys):
    bad = bad_paths["a directory"] if where == "a directory" else bad_paths["a missing file"] / "out.gguf"
    args = [a.format(bad=bad, **inputs) for a in template]
    code, _, err = run(args, capsys)
    assert_clean(code, err, args)
    assert code == 2, (args, code)


# option -> values out of its range (or not numbers at all)
OUT_OF_RANGE = {
    ("generate", "{model}", "hi", "-n", "1"): {
        "-n": ["-2", "x"], "--temperature": ["-1", "nan", "inf"], "--top-k": ["-1", "1.5"],
        "--top-p": ["0", "1.5", "nan"], "--min-p": ["-0.1", "2"], "--repeat-penalty": ["0", "-1"],
        "--repeat-last-n": ["-2"], "--presence-penalty": ["nan", "inf"], "--frequency-penalty": ["-inf"],
        "--seed": ["-2"], "--ctx": ["0", "7", "99999999999999999999"], "--keep": ["-2"]},
    ("inspect", "blob", "{model}", "--no-tensors"): {"--ctx": ["0", "-1", "99999999999999999999"],
                                                     "--array-limit": ["-1", "x"]},
    ("synth", "llama", "-o", "{out}.gguf"): {
        "--layers": ["0", "-1", "99999999999999999999"], "--dim": ["0", "7"], "--heads": ["0", "-4"],
        "--kv-heads": ["0", "3"], "--ff": ["0", "-1"], "--vocab": ["0", "99999999999999999999"],
        "--seed": ["-1"], "--type": ["Q9", "IQ2_XXS"]},
    ("convert", "{legacy}", "{out}.gguf"): {"--context-length": ["0", "-1"], "--eps": ["x"],
                                            "--gqa": ["0", "-2"]},
    ("quantize", "{f32}", "{out}.gguf", "Q8_0"): {"--threads": ["0", "-1", "99999"]},
    ("logits", "{model}", "-o", "{out}.npz"): {"--tokens": ["", "x", "-1", "99999999999", "1,,x"]},
    ("dequant", "{model}", "token_embd.weight", "-o", "{out}.npy"): {"--backend": ["gpu"]},
}
NUMERIC_CASES = [(base, option, value) for base, options in OUT_OF_RANGE.items()
                 for option, values in options.items() for value in values]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smollm2_path) -> dict:
    from legacy_files import V3_QUANT, tiny_llama

    from refllm.tools.synth import DEFAULT_WEIGHT_TYPES, write_synthetic_model
    root = tmp_path_factory.mktemp("inputs")
    (root / "old.bin").write_bytes(tiny_llama("ggjt", 3, quant=V3_QUANT).data)
    f32 = write_synthetic_model(root / "f32.gguf", "llama", weight_types={n: "F32" for n in DEFAULT_WEIGHT_TYPES})
    return {"model": smollm2_path, "legacy": root / "old.bin", "f32": f32}


@pytest.mark.parametrize("base, option, value", NUMERIC_CASES,
                         ids=[f"{b[0]} {o} {v}" for b, o, v in NUMERIC_CASES])
def test_an_out_of_range_option_is_one_line_exit_2(base, option, value, inputs, tmp_path, capsys):
    args = [a.format(out=tmp_path / "out", **inputs) for a in base] + [option, value]
    code, _, err = run(args, capsys)
    assert_clean(code, err, args)
    assert code == 2, (args, code, err)
    assert not list(tmp_path.iterdir()), "a refused command writes nothing"


# -- closed stdin, closed stdout, a closed pipe: real processes -----------------------------------

# commands with their stdin: "-" none, else the bytes it gets (a model's header for inspect -)
STREAM_COMMANDS = {
    "inspect blob {model}": None, "inspect blob -": "{model}", "inspect store": None,
    "tokenize {model}": "hi", "tokenize {model} hi": None,
    "generate {model} --raw -n 2 --temperature 0": "The sky is", "generate {model} hi -n 2 --temperature 0": None,
    "logits {model} --tokens 1,2 -o {out}.npz": None, "dequant {model} output_norm.weight -o {out}.npy": None,
    "pull --list": None, "--help": None, "generate --help": None,
}


@pytest.mark.parametrize("redirect", ["<&-", ">&-", "| head -c 1"])
@pytest.mark.parametrize("command", list(STREAM_COMMANDS))
def test_closed_streams_end_cleanly(command, redirect, smollm2_path, tmp_path, monkeypatch):
    """A closed stdin is bad input to a command that reads it (exit 2) and nothing to one that
    does not; a closed stdout or pipe ends the output quietly (exit 0, or 1 for a found problem)."""
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-store"))
    line = command.format(model=f"'{smollm2_path}'", out=tmp_path / "out")
    stdin = STREAM_COMMANDS[command]
    feed = "" if redirect == "<&-" or stdin is None else (
        f"< '{smollm2_path}'" if stdin == "{model}" else f"<<< '{stdin}'")
    result = subprocess.run(f"set -o pipefail; '{sys.executable}' -m refllm.cli {line} {feed} {redirect}",
                            shell=True, executable="/bin/bash", stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=300)
    assert_clean(result.returncode, result.stderr, (line, redirect))
    reads_stdin = stdin is not None
    expected = {2} if redirect == "<&-" and reads_stdin else {0, 1}
    assert result.returncode in expected, (line, redirect, result.stderr)
