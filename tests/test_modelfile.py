"""Modelfiles: ollama's grammar, its errors, typed parameters, and the Modelfile `show` prints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from refllm.formats.modelfile import (
    ERR_COMMAND,
    ERR_NO_FROM,
    ERR_REQUIRES,
    ERR_ROLE,
    PARAMETER_TYPES,
    ModelfileError,
    expand_path,
    format_modelfile,
    format_parameters,
    go_float,
    parse_modelfile,
    parse_parameter,
    read_modelfile,
)


def test_instructions_are_case_insensitive_and_comments_are_skipped():
    mf = parse_modelfile("# a comment\nfrom ./m.gguf\n  # indented comment\nSyStEm be brief\nTemplate {{ .Prompt }}\n")
    assert [(c.name, c.args, c.line) for c in mf.commands] == [
        ("model", "./m.gguf", 2), ("system", "be brief", 4), ("template", "{{ .Prompt }}", 5)]


def test_a_hash_inside_a_value_is_part_of_it():
    assert parse_modelfile("FROM x\nSYSTEM use # freely\n").last("system") == "use # freely"


def test_triple_quotes_span_lines_and_keep_inner_quotes():
    text = 'FROM x\nTEMPLATE """{{ if .System }}"{{ .System }}"\n{{ end }}\n\n{{ .Prompt }}"""\nSYSTEM s\n'
    mf = parse_modelfile(text)
    assert mf.last("template") == '{{ if .System }}"{{ .System }}"\n{{ end }}\n\n{{ .Prompt }}'
    assert mf.commands[-1].line == 6


def test_double_quotes_on_one_line_and_over_lines():
    mf = parse_modelfile('FROM x\nSYSTEM "  spaced  "\nLICENSE "two\nlines"\n')
    assert mf.last("system") == "  spaced  " and mf.args("license") == ["two\nlines"]


def test_single_quotes_mean_nothing_as_in_ollama():
    assert parse_modelfile("FROM x\nSYSTEM 'hi'\n").last("system") == "'hi'"


def test_crlf_line_ends_and_a_bom():
    mf = parse_modelfile("\ufeffFROM x\r\nSYSTEM hi\r\nPARAMETER top_k 5\r\n")
    assert mf.last("system") == "hi" and mf.parameters == {"top_k": 5}


def test_typed_parameters_and_stop_accumulates():
    mf = parse_modelfile("FROM x\nPARAMETER temperature 0.6\nPARAMETER num_ctx 4096\nPARAMETER stop <|im_end|>\n"
                         "PARAMETER use_mmap TRUE\nPARAMETER stop \"<|eot|>\"\nPARAMETER seed -1\nPARAMETER top_k 3\n"
                         "PARAMETER top_k 7\n")
    params = mf.parameters
    assert params["stop"] == ["<|im_end|>", "<|eot|>"]
    assert params["num_ctx"] == 4096 and isinstance(params["num_ctx"], int)
    assert params["seed"] == -1 and params["top_k"] == 7 and params["use_mmap"] is True
    assert params["temperature"] == pytest.approx(0.6) and params["temperature"] != 0.6   # rounded to float32


@pytest.mark.parametrize("name, value, expected", [
    ("top_k", "40", 40), ("top_k", "+3", 3), ("seed", "-9223372036854775808", -(1 << 63)),
    ("top_p", ".5", 0.5), ("top_p", "1e-3", float.fromhex("0x1.0624dep-10")), ("min_p", "5.", 5.0),
    ("use_mmap", "f", False), ("use_mmap", "1", True)])
def test_parameter_values_go_accepts(name, value, expected):
    assert parse_parameter(name, value) == expected


@pytest.mark.parametrize("name, value, kind", [
    ("top_k", "4.5", "int"), ("top_k", "0x10", "int"), ("seed", "9223372036854775808", "int"),
    ("temperature", "warm", "float"), ("temperature", "inf", "float"), ("temperature", "nan", "float"),
    ("temperature", "1e39", "float"), ("use_mmap", "yes", "bool")])
def test_bad_parameter_values_name_the_line_and_what_was_expected(name, value, kind):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(f"FROM x\n\nPARAMETER {name} {value}\n")
    assert str(e.value).startswith(f"(line 3): invalid {kind} value [{value}]: PARAMETER {name} takes ")
    assert e.value.line == 3


def test_unknown_parameter_is_ollamas_message():
    with pytest.raises(ModelfileError, match=r"^\(line 2\): unknown parameter 'temprature'$"):
        parse_modelfile("FROM x\nPARAMETER temprature 0.5\n")


def test_deprecated_parameters_are_skipped_with_a_warning():
    mf = parse_modelfile("FROM x\nPARAMETER mirostat 2\nPARAMETER top_k 1\n")
    assert mf.parameters == {"top_k": 1} and mf.warnings == ["parameter mirostat is deprecated"]


@pytest.mark.parametrize("text, line, message", [
    ("FROM x\nFORM y\n", 2, ERR_COMMAND),
    ("FROM x\nSYSTEM: hi\n", 2, ERR_COMMAND),
    ("FROM x\n\n\nMESSAGE tool hi\n", 4, ERR_ROLE),
    ("FROM x\nMESSAGE User hi\n", 2, ERR_ROLE),          # roles are case-sensitive in ollama
    ("FROM x\nREQUIRES 1.2.x\n", 2, ERR_REQUIRES),
    ("FROM x\nREQUIRES v01.2.3\n", 2, ERR_REQUIRES),
])
def test_ollama_errors_with_the_line(text, line, message):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text)
    assert str(e.value) == f"(line {line}): {message}"


def test_ollamas_command_list_message():
    assert ERR_COMMAND == ('command must be one of "from", "license", "template", "system", "adapter", "draft", '
                           '"renderer", "parser", "parameter", "message", or "requires"')


@pytest.mark.parametrize("text", ["", "# only a comment\n", "SYSTEM hi\nPARAMETER top_k 1\n"])
def test_no_from_line(text):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text)
    assert str(e.value) == ERR_NO_FROM


@pytest.mark.parametrize("text, line, fragment", [
    ('FROM x\nSYSTEM """never closed\n', 2, 'the """ quote opened here is never closed'),
    ('FROM x\nSYSTEM "never\nclosed\n', 2, 'the " quote opened here is never closed'),
    ("FROM x\nPARAMETER temperature\n", 2, "PARAMETER needs a name and a value"),
    ("FROM x\nMESSAGE user\n", 2, "MESSAGE user needs a text after the role"),
    ("FROM x\nSYSTEM\n", 2, "SYSTEM needs a value on the same line"),
    ("FROM x\nSYSTEM", 2, "SYSTEM needs a value"),
    ("FROM \n", 1, "FROM needs a model name or a file path"),
])
def test_other_errors_name_the_line_and_what_was_expected(text, line, fragment):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text)
    assert str(e.value).startswith(f"(line {line}): ") and fragment in str(e.value)


def test_messages_requires_and_recorded_instructions():
    mf = parse_modelfile("FROM x\nMESSAGE system be kind\nMESSAGE user hi: there\nMESSAGE assistant hello\n"
                         "ADAPTER ./lora.gguf\nREQUIRES v0.14.0\nREQUIRES 1\n")
    assert mf.messages == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi: there"},
                           {"role": "assistant", "content": "hello"}]
    assert mf.args("adapter") == ["./lora.gguf"] and mf.requires == "1"


@pytest.mark.parametrize("version", ["0.14.0", "v1", "1.2", "1.2.3-rc.1+build.5", "0.0.0-alpha"])
def test_valid_semvers(version):
    assert parse_modelfile(f"FROM x\nREQUIRES {version}\n").requires == version.removeprefix("v")


def test_read_modelfile_prefixes_its_path_and_keeps_its_folder(tmp_path):
    (tmp_path / "Modelfile").write_text("FROM ./m.gguf\nBOGUS x\n")
    with pytest.raises(ModelfileError, match=r"Modelfile: \(line 2\): command must be one of"):
        read_modelfile(tmp_path / "Modelfile")
    (tmp_path / "Modelfile").write_text("FROM ./m.gguf\n")
    assert read_modelfile(tmp_path / "Modelfile").folder == tmp_path


def test_expand_path(tmp_path):
    assert expand_path("m.gguf", tmp_path) == tmp_path / "m.gguf"
    assert expand_path("../m.gguf", tmp_path / "a") == tmp_path / "a" / ".." / "m.gguf"
    assert expand_path("/abs/m.gguf", tmp_path) == Path("/abs/m.gguf")
    assert expand_path("~/m.gguf", tmp_path) == Path.home() / "m.gguf"


def test_every_parameter_has_a_place_in_the_servers_options():
    from refllm.server.options import OPTIONS, WHERE
    assert WHERE.keys() == PARAMETER_TYPES.keys() == OPTIONS.keys()
    assert set(WHERE.values()) == {"model", "sampling", "ignored"}


@pytest.mark.parametrize("x, bits, as_json, expected", [
    (0.6, 32, True, "0.6"), (3.0, 32, True, "3"), (1e-7, 32, True, "1e-7"), (1e21, 64, True, "1e+21"),
    (123456.0, 64, False, "123456"), (1e6, 64, False, "1e+06"), (1e-5, 64, False, "1e-05"),
    (-0.25, 64, False, "-0.25")])
def test_go_float(x, bits, as_json, expected):
    assert go_float(x, bits, json=as_json) == expected


TEXT = '''FROM ./m.gguf
TEMPLATE """{{ if .System }}"{{ .System }}"{{ end }}
{{ .Prompt }}"""
SYSTEM  leading space kept by quotes
PARAMETER stop <|im_end|>
PARAMETER stop "<|eot_id|>"
PARAMETER temperature 0.7
PARAMETER num_ctx 8192
PARAMETER seed 1234567
LICENSE """MIT
Copyright"""
LICENSE Apache-2.0
MESSAGE user "  hi  "
MESSAGE assistant """"quoted" stays"""
'''


def test_the_printed_modelfile_recreates_the_model():
    mf = parse_modelfile(TEXT)
    printed = format_modelfile("mine:latest", "/store/blobs/sha256-ab", template=mf.last("template"),
                               system=mf.last("system"), parameters=mf.parameters, licenses=mf.args("license"),
                               messages=mf.messages)
    lines = printed.splitlines()
    assert lines[:4] == ['# Modelfile generated by "ollama show"',
                         "# To build a new Modelfile based on this, replace FROM with:", "# FROM mine:latest", ""]
    assert lines[4] == "FROM /store/blobs/sha256-ab"
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER seed 1234567" in lines
    assert [line.split()[0] for line in lines[4:] if line and line[0].isupper()][:3] == ["FROM", "TEMPLATE", "SYSTEM"]
    again = parse_modelfile(printed)
    assert again.last("template") == mf.last("template") and again.last("system") == mf.last("system")
    assert again.parameters == mf.parameters and again.args("license") == mf.args("license")
    assert again.messages == mf.messages == [{"role": "user", "content": "  hi  "},
                                             {"role": "assistant", "content": '"quoted" stays'}]
    kinds = [c.name for c in again.commands]
    assert kinds.index("license") < kinds.index("message") and kinds.index("system") < kinds.index("stop")


def test_format_parameters_is_percent_30s_and_go_quoting():
    out = format_parameters({"stop": ["<|a|>", 'say "x"\n'], "temperature": 0.5, "num_ctx": 2048})
    assert out.splitlines() == ['num_ctx                        2048', 'stop                           "<|a|>"',
                                'stop                           "say \\"x\\"\\n"', 'temperature                    0.5']
    assert not math.isnan(parse_parameter("temperature", "0.5"))
