"""Chat templates: turn a conversation into the prompt text the model was trained on.

A GGUF model may carry a Jinja template in `tokenizer.chat_template`, and named variants in
`tokenizer.chat_template.<name>` (Command-R has `tool_use` and `rag`). refllm renders it the
way llama-cpp-python 0.3.36's `Jinja2ChatFormatter` does, which follows Hugging Face
transformers; golden/chat_templates/ holds that formatter's output and the tests compare
against it byte for byte. The rendering rules:

- jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks on, so a line
  holding only a block tag leaves nothing behind; the loopcontrols extension (`{% break %}`,
  `{% continue %}`); and a `{% generation %}...{% endgeneration %}` tag that just renders its
  body (transformers uses it to mark assistant tokens).
- jinja2's other defaults stay: no autoescaping, undefined names render as "" (not an error),
  and one trailing newline at the end of the template is dropped.
- `tojson` is `json.dumps` with ensure_ascii off and keys in their given order, returning a
  plain str. (jinja2's own `tojson` sorts keys and escapes <, >, & and '.)
- The template sees `messages`, `bos_token`, `eos_token`, `add_generation_prompt`, `tools`,
  `functions`, `function_call`, `tool_choice`, `raise_exception`, `strftime_now`, and any extra
  keyword the caller passes (`enable_thinking`, `documents`, ...). The four tool names are None
  when not given, so a template's `tools is defined` is always true, as with llama-cpp-python.

Templates come from model files, so they are untrusted input. The sandbox forbids underscore
attributes (`''.__class__`), methods that change data (`messages.append`) and `str.format`
tricks; any such attempt raises ChatTemplateSandboxError and changes nothing. One deliberate
difference from llama-cpp-python: there an unsafe attribute is an undefined value that raises
only when used, so `{% if x.__class__ %}` is quietly false; here the access itself raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from refllm.errors import RefllmError

TEMPLATE_KEY = "tokenizer.chat_template"


class ChatTemplateError(RefllmError):
    """The chat template could not be used: it failed to parse or to render."""


class ChatTemplateSyntaxError(ChatTemplateError):
    """The template is not valid Jinja."""


class ChatTemplateSandboxError(ChatTemplateError):
    """The template reached for something the sandbox forbids (a possible escape attempt)."""


class ConversationRejected(ChatTemplateError):
    """The template called raise_exception: it refuses this conversation (its message says why)."""


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}body{% endgeneration %}` renders as body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list:
        next(parser.stream)  # the `generation` name itself
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, except that touching a forbidden attribute fails at once."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
           separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """The `tojson` filter of transformers' chat templates: json.dumps, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
    """The current local time formatted with `fmt` (templates use it to date the system prompt)."""
    return datetime.now().strftime(fmt)


def raise_exception(message: str) -> None:
    """What a template calls to refuse a conversation."""
    raise ConversationRejected(f"the chat template rejected the conversation: {message}")


def _environment() -> jinja2.Environment:
    env = _Sandbox(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                   extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    return env


# Names the renderer always supplies; a caller's extra keywords may not replace them.
_RESERVED = frozenset({"messages", "bos_token", "eos_token", "add_generation_prompt", "tools",
                       "raise_exception", "strftime_now"})


class ChatTemplate:
    """A parsed chat template with the BOS and EOS token texts it may insert."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        """Parse `source` once. Raises ChatTemplateSyntaxError, naming the line, if it is not valid Jinja."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateSyntaxError(f"chat template syntax error at line {e.lineno}: {e.message}") from e

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], name: str | None = None, *,
                      bos_token: str | None = None, eos_token: str | None = None) -> ChatTemplate | None:
        """The model's chat template, or None when it has none (callers then use the raw text).

        `name` picks a named variant (`tokenizer.chat_template.<name>`). The BOS and EOS texts
        are the tokens that tokenizer.ggml.bos_token_id and eos_token_id name, "" where a key
        is missing; a caller holding a tokenizer should pass its texts instead, since llama.cpp
        fills missing ids with per-tokenizer defaults.
        """
        source = metadata.get(TEMPLATE_KEY if name is None else f"{TEMPLATE_KEY}.{name}")
        if source is None:
            return None
        if not isinstance(source, str):
            raise ChatTemplateError(f"{TEMPLATE_KEY} is a {type(source).__name__}, not a string")
        if bos_token is None:
            bos_token = _token_text(metadata, "tokenizer.ggml.bos_token_id")
        if eos_token is None:
            eos_token = _token_text(metadata, "tokenizer.ggml.eos_token_id")
        return cls(source, bos_token, eos_token)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Any] | None = None, **extra: Any) -> str:
        """The prompt text for `messages` (dicts with at least `role` and `content`).

        With add_generation_prompt the text ends with the opening of an assistant turn. `tools`
        and `extra` are handed to the template as they are. Any failure inside the template is a
        ChatTemplateError: ConversationRejected when the template calls raise_exception,
        ChatTemplateSandboxError for a forbidden access, otherwise the underlying error by name
        with the template line where it happened. The messages are never modified.
        """
        clash = _RESERVED & extra.keys()
        if clash:
            raise TypeError(f"render() sets {', '.join(sorted(clash))} itself")
        context = {"functions": None, "function_call": None, "tool_choice": None, **extra,
                   "messages": messages, "bos_token": self.bos_token, "eos_token": self.eos_token,
                   "add_generation_prompt": add_generation_prompt, "tools": tools,
                   "raise_exception": raise_exception, "strftime_now": strftime_now}
        try:
            return self._template.render(**context)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise ChatTemplateSandboxError(f"the chat template tried to leave its sandbox{_at_line(e)}: {e}") from e
        except Exception as e:  # the template is data: whatever it does wrong is the model's fault, not refllm's
            raise ChatTemplateError(f"the chat template failed{_at_line(e)}: {type(e).__name__}: {e}") from e

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} chars, bos_token={self.bos_token!r}, eos_token={self.eos_token!r})"


def _token_text(metadata: Mapping[str, Any], key: str) -> str:
    token_id = metadata.get(key)
    if token_id is None:
        return ""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None or not 0 <= token_id < len(tokens):
        count = 0 if tokens is None else len(tokens)
        raise ChatTemplateError(f"{key} is {token_id}, but the vocabulary has {count} tokens")
    return tokens[token_id]


def _at_line(error: BaseException) -> str:
    """ ' at line N' for the last template line in the error's traceback, or ''."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return "" if line is None else f" at line {line}"
