"""A user's prompt -> the token ids a model is given, as llama.cpp's and ollama's chat front ends
build them: the model's chat template (if it has one), then the tokenizer.

    ids = prompt_tokens(tokenizer, model.metadata, "Why is the sky blue?", system="Be brief.")
"""

from __future__ import annotations

from collections.abc import Mapping

from refllm.errors import RefllmError
from refllm.tokenizer import ChatTemplate, Tokenizer


class PromptError(RefllmError, ValueError):
    """A prompt that cannot be built as asked; the message says why."""


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
    vocab = tokenizer.vocab
    texts = {role: vocab.text(vocab.special_ids[role]) if vocab.special_ids[role] is not None else ""
             for role in ("bos", "eos")}
    template = None if raw else ChatTemplate.from_metadata(metadata, bos_token=texts["bos"], eos_token=texts["eos"])
    if template is None:
        if system:
            raise PromptError("a system message needs a chat template, and this model has none "
                              "(or the raw prompt was asked for)")
        ids = tokenizer.tokenize(prompt, add_special=True, parse_special=False)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = template.render(messages, add_generation_prompt=True)
        # a template that writes the BOS itself must not get a second one from the tokenizer
        starts_with_bos = bool(texts["bos"]) and vocab.add_bos and text.startswith(texts["bos"])
        ids = tokenizer.tokenize(text, add_special=not starts_with_bos, parse_special=True)
    if not ids:
        raise PromptError("the prompt is empty (and the model adds no BOS token)")
    return ids
