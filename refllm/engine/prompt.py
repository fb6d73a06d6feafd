"""A user's prompt -> the token ids a model is given, as llama.cpp's and ollama's chat front ends
build them: the model's template, then the tokenizer.

    ids = prompt_tokens(tokenizer, model.metadata, "Why is the sky blue?", system="Be brief.")
    ids = chat_tokens(tokenizer, model.metadata, [{"role": "user", "content": "Hi"}, ...])
    prompt = ModelPrompt(tokenizer, model.metadata, go_template=setup.template)   # a store model
    ids = prompt.tokens(prompt.text(messages))

Which template applies follows ollama (ModelPrompt): a store model's TEMPLATE layer (Go's
text/template, refllm.tokenizer.ollama_template) when it has one, else the GGUF's chat template
(Jinja, tokenizer.chat_template), else ollama's default template, `{{ .Prompt }}`, whose text is
the turns' own text, tokenized as plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refllm.errors import RefllmError
from refllm.tokenizer import ChatTemplate, Tokenizer
from refllm.tokenizer.ollama_template import DEFAULT_TEMPLATE, OllamaTemplate


class PromptError(RefllmError, ValueError):
    """A prompt that cannot be built as asked; the message says why."""


def chat_template(tokenizer: Tokenizer, metadata: Mapping) -> ChatTemplate | None:
    """The model's chat template with the tokenizer's BOS and EOS texts, or None."""
    vocab = tokenizer.vocab
    texts = {role: vocab.text(vocab.special_ids[role]) if vocab.special_ids[role] is not None else ""
             for role in ("bos", "eos")}
    return ChatTemplate.from_metadata(metadata, bos_token=texts["bos"], eos_token=texts["eos"])


def render_chat(template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                tools: Sequence[Any] | None = None) -> str:
    """The prompt text for a conversation: with the opening of the assistant's turn, unless the
    last message is the assistant's (then the text stops after it, for the model to go on)."""
    ends_with_assistant = bool(messages) and messages[-1].get("role") == "assistant"
    return template.render(messages, add_generation_prompt=not ends_with_assistant, tools=tools)


def text_tokens(tokenizer: Tokenizer, text: str, templated: bool) -> list[int]:
    """Token ids of a prompt text. A rendered template's text has its special tokens parsed and
    gets a BOS only if the model asks for one and the text does not already start with it; a
    raw text is tokenized as plain text with the model's BOS/EOS rules. PromptError if the
    result is no tokens at all."""
    vocab = tokenizer.vocab
    if templated:
        bos = vocab.text(vocab.special_ids["bos"]) if vocab.special_ids["bos"] is not None else ""
        # a template that writes the BOS itself must not get a second one from the tokenizer
        starts_with_bos = bool(bos) and vocab.add_bos and text.startswith(bos)
        ids = tokenizer.tokenize(text, add_special=not starts_with_bos, parse_special=True)
    else:
        ids = tokenizer.tokenize(text, add_special=True, parse_special=False)
    if not ids:
        raise PromptError("the prompt is empty (and the model adds no BOS token)")
    return ids


def chat_tokens(tokenizer: Tokenizer, metadata: Mapping, messages: Sequence[Mapping[str, Any]],
                tools: Sequence[Any] | None = None) -> list[int]:
    """The token ids of a conversation (dicts with `role` and `content`) rendered by the model's
    chat template; PromptError for a model without one."""
    template = chat_template(tokenizer, metadata)
    if template is None:
        raise PromptError("this model has no chat template (tokenizer.chat_template), so it cannot take messages; "
                          "give it a raw prompt instead")
    return text_tokens(tokenizer, render_chat(template, messages, tools), templated=True)


class ModelPrompt:
    """How a model's prompts are built (module docstring): `kind` is "go" (a TEMPLATE layer, or a
    request's template), "jinja" (the GGUF's chat template) or "default" (ollama's {{ .Prompt }})."""

    def __init__(self, tokenizer: Tokenizer, metadata: Mapping, go_template: str | None = None):
        """GoTemplateError for a Go template that does not parse; ChatTemplateError for Jinja."""
        self.tokenizer = tokenizer
        self.jinja = chat_template(tokenizer, metadata) if go_template is None else None
        if go_template is not None:
            self.kind, self.go = "go", OllamaTemplate(go_template)
        elif self.jinja is not None:
            self.kind, self.go = "jinja", None
        else:
            self.kind, self.go = "default", OllamaTemplate(DEFAULT_TEMPLATE)

    @property
    def source(self) -> str:
        return self.jinja.source if self.jinja is not None else self.go.source

    @property
    def supports_tools(self) -> bool:
        return self.go.supports_tools if self.go is not None else "tools" in self.jinja.source

    @property
    def supports_suffix(self) -> bool:
        return self.go is not None and self.go.supports_suffix

    @property
    def supports_thinking(self) -> bool:
        return self.go is not None and self.go.supports_thinking

    def text(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None,
             prompt: str = "", suffix: str = "", think: bool | str | None = None) -> str:
        """The prompt text: the messages rendered (or, with a suffix, ollama's fill-in-the-middle
        prompt and suffix). PromptError when the template cannot take a suffix."""
        if suffix and not self.supports_suffix:
            raise PromptError("this model's template does not support insert (it has no .Suffix)")
        if self.go is not None:
            return self.go.execute(list(messages), tools=None if tools is None else list(tools), prompt=prompt,
                                   suffix=suffix, think=think)
        return render_chat(self.jinja, messages, tools)

    def tokens(self, text: str) -> list[int]:
        """The token ids of a text this prompt rendered (special tokens parsed, except in the
        default template's plain text)."""
        return text_tokens(self.tokenizer, text, templated=self.kind != "default")


def prompt_tokens(tokenizer: Tokenizer, metadata: Mapping, prompt: str, system: str | None = None,
                  raw: bool = False, go_template: str | None = None, messages: Sequence[Mapping] = ()) -> list[int]:
    """The token ids of `prompt` as a model's chat front end gives them.

    The model's template (ModelPrompt: `go_template`, a store model's TEMPLATE, else the GGUF's
    chat template) renders [system message,] the seeded `messages` (a Modelfile's MESSAGE
    lines) and the user message, with the opening of the assistant's turn; the text is
    tokenized with special tokens parsed, a BOS added only if the model asks for one and the
    text does not already start with it. With `raw`, or for a model without any template, the
    prompt is tokenized as plain text (the model's BOS/EOS rules apply). Raises PromptError when
    a system message is given but no template will be used, and when the result is no tokens.
    """
    model_prompt = None if raw else ModelPrompt(tokenizer, metadata, go_template)
    if model_prompt is None or model_prompt.kind == "default":
        if system:
            raise PromptError("a system message needs a chat template, and this model has none "
                              "(or the raw prompt was asked for)")
        return text_tokens(tokenizer, prompt, templated=False)
    turns = ([{"role": "system", "content": system}] if system else []) + list(messages) \
        + [{"role": "user", "content": prompt}]
    return model_prompt.tokens(model_prompt.text(turns))
