"""The request bodies the server accepts, as typed pydantic models.

Field for field ollama's `api.GenerateRequest`, `api.ChatRequest`, `api.ShowRequest`
(shared/research/ollama.md §5.2) and OpenAI's chat and completion requests. Types are checked
strictly, as Go's JSON decoder checks them: a string where a boolean belongs is an error, not a
guess. Unknown fields are ignored, as both APIs do. What the fields mean is the routes' business
(refllm/server/app.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

KeepAlive = int | float | str | None      # seconds, or a Go duration string ("5m", "-1s", "0")
Format = str | dict[str, Any] | None     # "json" or a JSON schema


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class Message(Body):
    """One turn of an /api/chat conversation."""
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class NativeBody(Body):
    """The fields /api/generate and /api/chat share."""
    model: str = ""
    stream: bool = True
    format: Format = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = Field(False, alias="_debug_render_only")


class GenerateBody(NativeBody):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatBody(NativeBody):
    messages: list[Message] = []
    tools: list[dict[str, Any]] | None = None


class ShowBody(Body):
    model: str = ""
    name: str = ""                      # the deprecated spelling of model
    verbose: bool = False
    system: str | None = None


# -- OpenAI ---------------------------------------------------------------------------------------

class TextPart(Body):
    type: str
    text: str = ""


class OpenAIMessage(Body):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(Body):
    include_usage: bool = False


class OpenAISampling(Body):
    """The sampling fields both OpenAI endpoints share."""
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


class ChatCompletionBody(OpenAISampling):
    messages: list[OpenAIMessage] = []
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionBody(OpenAISampling):
    prompt: str = ""
    suffix: str | None = None
