"""Chat templates: rendered byte for byte as llama-cpp-python 0.3.36's Jinja2ChatFormatter does
(golden/chat_templates/), inside a sandbox that untrusted templates cannot leave."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refllm
from refllm.errors import RefllmError
from refllm.formats.values import StringArray
from refllm.tokenizer.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    ChatTemplateSandboxError,
    ChatTemplateSyntaxError,
    ConversationRejected,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "chat_templates"
VOCABS_WITH_TEMPLATES = ["ggml-vocab-command-r.gguf", "ggml-vocab-gemma-4.gguf", "ggml-vocab-phi-3.gguf",
                         "ggml-vocab-qwen2.gguf", "ggml-vocab-qwen35.gguf"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def golden():
    path = GOLDEN / "expected.json"
    if not path.exists():
        pytest.skip("golden/chat_templates/expected.json is missing: make it with "
                    "golden/chat_templates/make_golden.py under llama-cpp-python==0.3.36 (golden/README.md)")
    expected = json.loads(path.read_text(encoding="utf-8"))
    spec_text = (GOLDEN / "conversations.json").read_text(encoding="utf-8")
    assert hashlib.sha256(spec_text.encode("utf-8")).hexdigest() == expected["provenance"]["conversations_sha256"], \
        "conversations.json changed since expected.json was made: rerun make_golden.py"
    return expected, json.loads(spec_text)


def mismatches(template: ChatTemplate, renders: dict, conversations: dict) -> list[str]:
    """Every conversation rendered both ways, against what llama-cpp-python gave; the differences."""
    problems = []
    for key, by_agp in renders.items():
        conv = conversations[key]
        for agp_key, want in by_agp.items():
            agp = agp_key == "add_generation_prompt=True"
            messages = copy.deepcopy(conv["messages"])
            try:
                got = template.render(messages, add_generation_prompt=agp, tools=conv.get("tools"),
                                      **conv.get("extra", {}))
            except ChatTemplateError as e:
                if "prompt" in want:
                    problems.append(f"{key} {agp_key}: raised {e}")
                elif want["error"] == "ValueError" and not (isinstance(e, ConversationRejected)
                                                           and want["message"] in str(e)):
                    problems.append(f"{key} {agp_key}: expected raise_exception({want['message']!r}), got {e!r}")
            else:
                if "error" in want:
                    problems.append(f"{key} {agp_key}: rendered, but llama-cpp-python raised "
                                    f"{want['error']}: {want['message']}")
                elif got != want["prompt"]:
                    problems.append(f"{key} {agp_key}:\n  want {want['prompt']!r}\n  got  {got!r}")
            assert messages == conv["messages"], "rendering changed the messages"
    return problems


def check_model(path: Path, golden) -> None:
    expected, spec = golden
    entry = expected["models"][path.name]
    metadata = refllm.open(path).metadata
    names = sorted("default" if k == "tokenizer.chat_template" else k.removeprefix("tokenizer.chat_template.")
                   for k in metadata if k == "tokenizer.chat_template" or k.startswith("tokenizer.chat_template."))
    assert names == sorted(entry["templates"])
    problems = []
    for name, want in entry["templates"].items():
        template = ChatTemplate.from_metadata(metadata, None if name == "default" else name)
        assert sha256(template.source) == want["sha256"], f"{name}: not the template the golden was made from"
        assert (template.bos_token, template.eos_token) == (entry["bos_token"], entry["eos_token"])
        problems += [f"[{name}] {p}" for p in mismatches(template, want["renders"], spec["conversations"])]
    assert not problems, "\n".join(problems)


def test_smollm2_matches_llama_cpp_python(smollm2_path, golden):
    check_model(Path(smollm2_path), golden)


def test_gemma3_has_no_template(gemma3_path):
    """The Gemma-3 270M pack is the base model: no tokenizer.chat_template, so the raw text is used."""
    assert ChatTemplate.from_metadata(refllm.open(gemma3_path).metadata) is None


def test_golden_agrees_gemma3_has_no_template(golden):
    expected, _ = golden
    assert expected["models"]["gemma-3-270m-Q4_K_M.gguf"]["templates"] == {}


@pytest.mark.parametrize("name", VOCABS_WITH_TEMPLATES)
def test_vocab_suite_templates_match_llama_cpp_python(vocab_dir, name, golden):
    """Command-R (default, tool_use, rag), Gemma-4, Phi-3, Qwen2 templates from llama.cpp's test vocabularies."""
    check_model(Path(vocab_dir) / name, golden)


def test_own_templates_match_llama_cpp_python(golden):
    """Templates written for these tests: tojson's arguments, {% generation %}, loop controls, the tool globals."""
    expected, spec = golden
    problems = []
    for name, want in expected["test_templates"].items():
        t = spec["templates"][name]
        assert sha256(t["source"]) == want["sha256"]
        template = ChatTemplate(t["source"], t["bos_token"], t["eos_token"])
        problems += [f"[{name}] {p}" for p in mismatches(template, want["renders"], spec["conversations"])]
    assert not problems, "\n".join(problems)


# --- untrusted templates ---------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ messages.__class__ }}",
    "{{ messages[0]['__class__'] }}",
    "{{ self.__init__ }}",
    "{{ '{0.__class__}'.format(messages) }}",
    "{{ '{m.__class__}'.format_map({'m': messages}) }}",
    "{% if ''.__class__ %}probing{% endif %}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{% set _ = messages.pop() %}",
    "{{ messages[0].update({'content': 'changed'}) }}",
    "{{ messages[0].clear() }}",
    "{% for m in messages %}{{ m.setdefault('x', 1) }}{% endfor %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escape_fails_cleanly_without_side_effects(source):
    messages = [{"role": "user", "content": "hi"}]
    before = copy.deepcopy(messages)
    with pytest.raises(ChatTemplateSandboxError, match="sandbox") as info:
        ChatTemplate(source).render(messages)
    assert isinstance(info.value, RefllmError)
    assert messages == before


def test_escape_cannot_run_a_command(tmp_path):
    marker = tmp_path / "pwned"
    source = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    with pytest.raises(ChatTemplateSandboxError):
        ChatTemplate(source).render([])
    assert not marker.exists()


def test_huge_range_and_endless_recursion_are_errors_not_hangs():
    with pytest.raises(ChatTemplateError, match="OverflowError"):
        ChatTemplate("{{ range(10 ** 9) | list | length }}").render([])
    with pytest.raises(ChatTemplateError, match="RecursionError"):
        ChatTemplate("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").render([])


# --- globals, errors, metadata ----------------------------------------------------------------

def test_raise_exception_is_a_clear_refllm_error():
    source = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}"
              "{% endif %}ok")
    template = ChatTemplate(source)
    assert template.render([{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(ConversationRejected, match="rejected the conversation: Conversation must start with user"):
        template.render([{"role": "assistant", "content": ""}])


def test_strftime_now_formats_the_current_time():
    before = datetime.date.today()
    got = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}").render([])
    after = datetime.date.today()
    assert got in {f"{d:%Y-%m-%d}|{d:%d %b %Y}" for d in (before, after)}


def test_tojson_keeps_unicode_and_key_order_and_returns_plain_text():
    source = "{{ x | tojson }}|{{ x | tojson(sort_keys=true) }}|{{ '<' + x | tojson }}|{{ x | tojson(indent=1) }}"
    x = {"b": "é <&> '", "a": [1, None, True]}
    got = ChatTemplate(source).render([], x=x)
    assert got == ('{"b": "é <&> \'", "a": [1, null, true]}|{"a": [1, null, true], "b": "é <&> \'"}|'
                   '<{"b": "é <&> \'", "a": [1, null, true]}|'
                   + json.dumps(x, indent=1, ensure_ascii=False))


def test_globals_and_extra_keywords_reach_the_template():
    source = ("{{ bos_token }}{{ eos_token }} {{ add_generation_prompt }} {{ tools is none }} {{ functions }} "
              "{{ tool_choice }} {{ enable_thinking }} [{{ undefined_name }}]")
    template = ChatTemplate(source, "<s>", "</s>")
    assert template.render([], add_generation_prompt=False, enable_thinking=True) == \
        "<s></s> False True None None True []"
    assert template.render([], tools=[], tool_choice="auto") == "<s></s> True False None auto  []"
    with pytest.raises(TypeError, match="bos_token"):
        template.render([], bos_token="x")


def test_trim_blocks_lstrip_blocks_and_trailing_newline():
    source = "{% for m in messages %}\n    {% if m %}\n{{ m }}\n    {% endif %}\n{% endfor %}\n"
    assert ChatTemplate(source).render(["a", "b"]) == "a\nb\n"


def test_generation_tag_and_loop_controls():
    source = ("{% for m in messages %}{% if m == 'skip' %}{% continue %}{% endif %}"
              "{% if m == 'stop' %}{% break %}{% endif %}{% generation %}<{{ m }}>{% endgeneration %}{% endfor %}")
    assert ChatTemplate(source).render(["a", "skip", "b", "stop", "c"]) == "<a><b>"


def test_bad_syntax_names_the_line():
    with pytest.raises(ChatTemplateSyntaxError, match="line 3") as info:
        ChatTemplate("{{ bos_token }}\n{% for m in messages %}\n{% if %}\n{% endfor %}")
    assert isinstance(info.value, RefllmError)
    with pytest.raises(ChatTemplateSyntaxError, match="endfor"):
        ChatTemplate("{% for m in messages %}{{ m }}")


def test_runtime_failure_names_the_error_and_line():
    with pytest.raises(ChatTemplateError, match="at line 2: UndefinedError: 'foo' is undefined"):
        ChatTemplate("ok\n{{ foo.bar }}").render([])
    with pytest.raises(ChatTemplateError, match="TypeError"):
        ChatTemplate("{{ messages[0]['content'] + '!' }}").render([{"role": "user", "content": None}])


def metadata(**extra):
    tokens = StringArray.from_strings(["<unk>", "<s>", "</s>", "hello"])
    return {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, **extra}


def test_from_metadata():
    assert ChatTemplate.from_metadata(metadata()) is None
    md = metadata(**{"tokenizer.chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
                     "tokenizer.chat_template.tool_use": "tools:{{ tools | length }}"})
    template = ChatTemplate.from_metadata(md)
    assert (template.bos_token, template.eos_token) == ("<s>", "</s>")
    assert template.render([{"role": "user", "content": "hi"}]) == "<s>hi</s>"
    assert ChatTemplate.from_metadata(md, "tool_use").render([], tools=[1, 2]) == "tools:2"
    assert ChatTemplate.from_metadata(md, "rag") is None
    assert ChatTemplate.from_metadata(md, bos_token="", eos_token="<eot>").render(
        [{"role": "user", "content": "hi"}]) == "hi<eot>"
    del md["tokenizer.ggml.bos_token_id"]
    assert ChatTemplate.from_metadata(md).bos_token == ""


def test_from_metadata_rejects_a_bad_token_id():
    md = metadata(**{"tokenizer.chat_template": "x", "tokenizer.ggml.eos_token_id": 99})
    with pytest.raises(ChatTemplateError, match="eos_token_id is 99, but the vocabulary has 4 tokens"):
        ChatTemplate.from_metadata(md)


CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), max_size=4))
def test_content_is_never_interpreted(turns):
    """Whatever a message holds ({{ }}, {% %}, special tokens, any unicode), it comes out verbatim."""
    messages = [{"role": r, "content": c} for r, c in turns]
    assert ChatTemplate(CHATML).render(messages) == "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns)
