"""A user's prompt -> the token ids a model is given, as llama.cpp's and ollama's chat front ends
build them: the model's chat template (if it has one), then the tokenizer.

    ids = prompt_tokens(tokenizer, model.metadata, "Why is the sky blue?", system="Be brief.")
    ids = chat_tokens(tokenizer, model.metadata, [{"role": "user", "content": "Hi"}, ...])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refllm.errors import RefllmError
from refllm.tokenizer import ChatTemplate, Tokenizer


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


def prompt_tokens(tokenizer: Tokenizer, metadata: Mapping, prompt: str, system: str | None = None,
                  raw: bool = False) -> list[int]:
    """The token ids of `prompt` as a model's chat front end gives them.

    A model with a chat template (tokenizer.chat_template) gets [system message,] user message
    rendered with add_generation_prompt, tokenized with special tokens parsed; a BOS is added
    only if the model asks for one and the rendered text does not already start with it. With
    `raw`, or for a model without a template, the prompt is tokenized as plain text (the
    model's BOS/EOS rules apply). Raises PromptError when a system message is given but no
    template will be used, and when the result is no tokens at all.
    """
    template = None if raw else chat_template(tokenizer, metadata)
    if template is None:
        if system:
            raise PromptError("a system message needs a chat template, and this model has none "
                              "(or the raw prompt was asked for)")
        return text_tokens(tokenizer, prompt, templated=False)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return text_tokens(tokenizer, render_chat(template, messages), templated=True)
