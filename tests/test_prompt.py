"""refllm.engine.prompt_tokens: a prompt through the chat template to ids, as `refllm generate`
builds it (the CLI only calls it)."""

from __future__ import annotations

import pytest

import refllm
from refllm.engine import PromptError, prompt_tokens
from refllm.tokenizer import Tokenizer
from refllm.tools.synth import write_synthetic_model

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic llama's tokenizer (BOS <|endoftext|>, added) and metadata without a template."""
    model = refllm.open(write_synthetic_model(tmp_path_factory.mktemp("prompt") / "m.gguf", "llama", seed=1))
    metadata = dict(model.metadata)
    assert "tokenizer.chat_template" not in metadata
    return Tokenizer.from_metadata(metadata), metadata


def test_without_a_template_the_prompt_is_plain_text_with_the_models_bos(synth):
    tok, metadata = synth
    ids = prompt_tokens(tok, metadata, "hello <|im_start|>")
    assert ids == tok.tokenize("hello <|im_start|>", add_special=True, parse_special=False)
    assert ids[0] == tok.vocab.special_ids["bos"] and ids.count(tok.vocab.token_to_id["<|im_start|>"]) == 0


def test_a_template_renders_the_messages_and_its_special_tokens_are_parsed(synth):
    tok, metadata = synth
    ids = prompt_tokens(tok, {**metadata, "tokenizer.chat_template": CHATML}, "hello", system="be brief")
    rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert ids == tok.tokenize(rendered, add_special=True, parse_special=True)
    assert ids.count(tok.vocab.token_to_id["<|im_start|>"]) == 3
    assert ids.count(tok.vocab.special_ids["bos"]) == 1 and ids[0] == tok.vocab.special_ids["bos"]


def test_a_template_that_writes_the_bos_gets_no_second_one(synth):
    tok, metadata = synth
    ids = prompt_tokens(tok, {**metadata, "tokenizer.chat_template": "{{ bos_token }}" + CHATML}, "hello")
    assert ids.count(tok.vocab.special_ids["bos"]) == 1 and ids[0] == tok.vocab.special_ids["bos"]


def test_raw_skips_the_template(synth):
    tok, metadata = synth
    ids = prompt_tokens(tok, {**metadata, "tokenizer.chat_template": CHATML}, "hello", raw=True)
    assert ids == tok.tokenize("hello", add_special=True, parse_special=False)


@pytest.mark.parametrize("template, raw", [(None, False), (CHATML, True)])
def test_a_system_message_without_a_template_is_an_error(synth, template, raw):
    tok, metadata = synth
    if template:
        metadata = {**metadata, "tokenizer.chat_template": template}
    with pytest.raises(PromptError, match="system message needs a chat template"):
        prompt_tokens(tok, metadata, "hello", system="be brief", raw=raw)


def test_an_empty_prompt_of_a_model_that_adds_no_bos_is_an_error(synth):
    _, metadata = synth
    metadata = {**metadata, "tokenizer.ggml.add_bos_token": False}
    with pytest.raises(PromptError, match="the prompt is empty"):
        prompt_tokens(Tokenizer.from_metadata(metadata), metadata, "")
