"""refllm's Go templates against Go itself: golden/go_templates/expected.json (go1.19.8) byte for byte,
errors where Go errs, unsupported constructs refused, and ollama's template capabilities."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from refllm.errors import RefllmError
from refllm.tokenizer.go_template import GoTemplate, GoTemplateError
from refllm.tokenizer.go_values import GoValueError, format_float, go_sprintf, json_marshal
from refllm.tokenizer.ollama_template import OllamaTemplate, collate

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "go_templates"
CASES = json.loads((GOLDEN / "cases.json").read_text(encoding="utf-8"))
EXPECTED = {c["name"]: c for c in json.loads((GOLDEN / "expected.json").read_text(encoding="utf-8"))["cases"]}


def render(case: dict) -> str:
    src = case.get("template")
    if src is None:
        src = (GOLDEN / "ollama" / case["template_file"]).read_text(encoding="utf-8")
    if "ollama" in case:
        request = dict(case["ollama"])
        return OllamaTemplate(src).execute(request.pop("messages", []), **request)
    return GoTemplate(src, name="").execute(case.get("data"))


def core(go_error: str) -> str:
    """Go's message without its location prefix; render.go's types live in package main, ollama's
    in package template."""
    return go_error.split(">: ", 1)[-1].split(": ", 2)[-1].replace("main.", "template.")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case):
    expected = EXPECTED[case["name"]]
    if "output" in expected:
        assert render(case) == expected["output"]
        return
    with pytest.raises(GoTemplateError) as err:
        render(case)
    message = str(err.value)
    want = core(expected["error"])
    # Go names the static type interface {} for a value read from an interface slot; refllm names the
    # value's own type (it does not track static types)
    want = re.escape(want).replace(re.escape("interface {}"), ".+")
    assert re.search(want, message), (message, expected["error"])
    go_line = re.match(r"template: [^:]*:(\d+)", expected["error"])
    if go_line:  # the same line as Go's
        assert re.match(rf"template: [^:]*:{go_line.group(1)}\b", message), (message, expected["error"])


def test_golden_covers_every_case():
    assert set(EXPECTED) == {c["name"] for c in CASES}
    assert len(CASES) > 150


@pytest.mark.parametrize("source, line, words", [
    ("a\nb {{ .X", 2, "unclosed action"),
    ("{{ if .X }}\n{{ else }}\n", 3, "unexpected EOF"),
    ("x\n\n{{ .A | 3 }}", 3, "non executable command in pipeline stage 2"),
    ("{{ $x := 1 }}\n{{ $y }}", 2, 'undefined variable "$y"'),
    ("{{ define \"a\" }}\n{{ if }}{{ end }}{{ end }}", 2, "missing value for if"),
    ("\n{{ html .X }}", 2, "'html' is not supported"),
    ("{{ call .F }}", 1, "'call' is not supported"),
    ("{{ \"\\xff\" }}", 1, "byte escape"),
    ("{{ 1i }}", 1, "complex numbers are not supported"),
    ("{{ range $x = .L }}{{ end }}", 1, "range with an assignment"),
    ("{{ else }}", 1, "unexpected {{else}}"),
    ("{{ range .L }}{{ end }}{{ continue }}", 1, "{{continue}} outside {{range}}"),
])
def test_malformed_or_unsupported_templates_name_problem_and_line(source, line, words):
    with pytest.raises(GoTemplateError) as err:
        GoTemplate(source, name="t")
    assert str(err.value).startswith(f"template: t:{line}:"), str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize("source, data, words", [
    ("{{ range .N }}x{{ end }}", {"N": 3}, "range over an integer"),
    ("{{ printf \"%p\" .X }}", {"X": 1}, "printf verb %p is not supported"),
    ("{{ printf \"%#v\" .X }}", {"X": [1]}, "%#v is not supported"),
    ("{{ index .S 0 }}", {"S": "abc"}, "index of a string"),
    ("{{ slice .S 1 }}", {"S": "héllo"}, "non-ASCII"),
])
def test_unsupported_execution_is_refused(source, data, words):
    with pytest.raises(GoTemplateError) as err:
        GoTemplate(source).execute(data)
    assert words in str(err.value)


def test_else_with_chain():
    # {{else with}} is Go 1.23 (ollama's Go); the golden files' Go 1.19 predates it, so by hand
    t = GoTemplate("{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}")
    assert t.execute({"A": "x", "B": "y"}) == "a=x"
    assert t.execute({"A": "", "B": "y"}) == "b=y"
    assert t.execute({"A": "", "B": ""}) == "none"


def test_errors_are_refllm_errors():
    assert issubclass(GoTemplateError, RefllmError)
    with pytest.raises(RefllmError):
        GoTemplate("{{ .A.B }}").execute({"A": 1})


def test_uses():
    t = GoTemplate("{{ if .Tools }}{{ range $.Messages }}{{ .Content }}{{ end }}{{ end }}{{ $x := .Suffix }}")
    assert t.uses("Messages") and t.uses(".Tools") and t.uses("suffix") and t.uses("Content")
    assert not t.uses("Response") and not t.uses("Think")
    assert GoTemplate("{{ define \"x\" }}{{ .Think }}{{ end }}").uses("Think")  # definitions count


@pytest.mark.parametrize("source, messages, tools, suffix, thinking", [
    ("{{ .Prompt }}", False, False, False, False),
    ("{{ range .Messages }}{{ .Content }}{{ end }}", True, False, False, False),
    ("{{ if .Tools }}{{ .Tools }}{{ end }}{{ range .Messages }}{{ end }}", True, True, False, False),
    ("<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>", False, False, True, False),
    ("{{ range .Messages }}{{ .Thinking }}{{ end }}", True, False, False, True),
    ("{{ if .Think }}think{{ end }}{{ .Prompt }}", False, False, False, True),
])
def test_capabilities(source, messages, tools, suffix, thinking):
    t = OllamaTemplate(source)
    assert (t.uses_messages, t.supports_tools, t.supports_suffix, t.supports_thinking) == (
        messages, tools, suffix, thinking)
    assert t.source == source


def test_parse_appends_response_only_when_needed():
    assert OllamaTemplate("{{ .Prompt }}").execute([{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "yo"}]) == "hiyo"
    assert OllamaTemplate("{{ .Prompt }}:{{ .Response }}|").execute(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]) == "hi:yo"


def test_ollama_refuses_template_call_without_pipeline():
    with pytest.raises(GoTemplateError, match="undefined template specified"):
        OllamaTemplate('{{ define "x" }}x{{ end }}{{ template "x" }}')


def test_collate():
    system, msgs = collate([{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                            {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"},
                            {"role": "user", "content": "u"}, {"role": "user", "content": "v"}])
    assert system == "a\n\nb"
    assert [(m["role"], m["content"]) for m in msgs] == [("system", "a\n\nb"), ("tool", "1"), ("tool", "2"),
                                                         ("user", "u\n\nv")]


def test_dates_are_local_today_and_yesterday():
    today = datetime.datetime.now().astimezone().date()
    out = GoTemplate('{{ currentDate }}|{{ yesterdayDate "2006" }}').execute({})
    assert out in (f"{today}|{today - datetime.timedelta(days=1)}",
                   f"{today + datetime.timedelta(days=1)}|{today}")  # midnight passed between the two reads


@pytest.mark.parametrize("value, g, json_text", [
    (1e21, "1e+21", "1e+21"), (1e20, "1e+20", "100000000000000000000"), (1e-7, "1e-07", "1e-7"),
    (0.1, "0.1", "0.1"), (123456.0, "123456", "123456"), (1234567.0, "1.234567e+06", "1234567"),
    (-0.0, "-0", "-0"), (5e-324, "5e-324", "5e-324"),
])
def test_float_formats(value, g, json_text):
    assert format_float(value) == g
    assert json_marshal(value) == json_text


def test_printf_rounding_and_padding():
    assert go_sprintf("%.2f|%.0f|%.3e|%6.1f|%-6d|%06.2f|%x", [2.675, 0.5, 123456.0, -1.25, 42, -1.5, -255]) == \
        "2.67|0|1.235e+05|  -1.2|42    |-01.50|-ff"
    with pytest.raises(GoValueError):
        go_sprintf("%p", [1])
