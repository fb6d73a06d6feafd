"""A multi-turn chat with one model: the messages so far, and one Session whose KV cache keeps
them, so that each turn evaluates only what is new.

    chat = Conversation(session, tokenizer, render, options)
    for text in chat.reply("Why is the sky blue?"):
        print(text, end="")
    chat.session.stats.cached_tokens                # the earlier turns came from the cache
    chat.clear()                                    # forget the messages (the system prompt stays)

`render(messages) -> token ids` builds the prompt of the whole conversation (the model's chat
template; refllm.engine.prompt). A turn's prompt starts with the previous turn's tokens, so
Session.generate reuses the cache for all of them. A reply stopped early (should_stop, as on
Ctrl-C) is not kept, as `ollama run` keeps none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from refllm.engine.sampling import SamplingOptions
from refllm.engine.session import Session
from refllm.tokenizer import Tokenizer


class Conversation:
    """The messages of one chat and the session that runs them."""

    def __init__(self, session: Session, tokenizer: Tokenizer,
                 render: Callable[[Sequence[dict]], list[int]], options: SamplingOptions,
                 system: str | None = None, messages: Sequence[dict] = ()):
        self.session = session
        self.tokenizer = tokenizer
        self.render = render
        self.options = options
        self.system = system
        self.messages: list[dict] = list(messages)     # user and assistant turns (seeded ones too)

    def prompt_messages(self, user_text: str) -> list[dict]:
        """The conversation the model sees for a new user turn: system prompt, turns, the turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages + [{"role": "user", "content": user_text}]

    def reply(self, user_text: str, should_stop: Callable[[], bool] | None = None,
              truncate: bool = True) -> Iterator[str]:
        """Stream the model's reply to a user turn. The turn and the reply join the messages
        when the reply ends by itself (an end token, a stop string or num_predict); a reply that
        should_stop() cut short is dropped, and so is its turn."""
        ids = self.render(self.prompt_messages(user_text))
        pieces = []
        for text in self.session.generate(ids, self.tokenizer, self.options, truncate=truncate,
                                          should_stop=should_stop):
            pieces.append(text)
            yield text
        if self.session.stats.done_reason != "cancelled":
            self.messages += [{"role": "user", "content": user_text},
                              {"role": "assistant", "content": "".join(pieces)}]

    def set_options(self, **changes) -> None:
        """Change sampling options for the next turns (SamplingError for an impossible value)."""
        self.options = replace(self.options, **changes)

    def clear(self) -> None:
        """Forget the turns; the system prompt and the options stay."""
        self.messages.clear()
