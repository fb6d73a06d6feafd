"""The HTTP API: ollama's native routes and its OpenAI-compatible ones, on FastAPI.

    app = create_app(Registry(), Scheduler(Config()))      # refllm serve runs it on uvicorn

Native (shared/research/ollama.md §5): POST /api/generate, POST /api/chat, GET|HEAD /api/tags,
POST /api/show, GET /api/ps, GET /api/version, GET|HEAD /. Streaming is NDJSON, one JSON
object a line, `stream` defaulting to true; durations are integer nanoseconds and zero ones
are left out; prompt_eval_count includes the cached prompt tokens, as ollama's does. refllm
adds `cached_tokens` and, when the prompt was cut to fit, `truncated_tokens` to the final
object (clients ignore fields they do not know).

OpenAI: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model}.
Streaming is server-sent events ending in `data: [DONE]`; temperature and top_p default to 1.0
when absent, as ollama's compatibility layer sets them.

Every error is ollama's {"error": "..."} (OpenAI's {"error": {"message": ...}} under /v1) with
400 for a bad request, 404 for an unknown model, 413 for a body over the limit, 503 when the
queue is full and 500 when the engine fails; the server goes on serving after any of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from importlib.metadata import version as package_version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from refllm.server import schemas
from refllm.server.options import OptionError, parse_options
from refllm.server.registry import BadModelName, Entry, Registry, UnknownModel
from refllm.server.scheduler import Job, Outcome, QueueFull, Scheduler
from refllm.server.scheduler import Request as EngineRequest

log = logging.getLogger("refllm.server")

MAX_BODY = 16 << 20                     # bytes of a request body; more is a 413


class ApiError(Exception):
    """An error answer: HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# -- small helpers --------------------------------------------------------------------------------

def ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def timestamp(at: float | None = None) -> str:
    """RFC 3339 in UTC, as Go writes time.Time in JSON."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: schemas.KeepAlive) -> float | None:
    """keep_alive in seconds, as ollama reads it: a number of seconds, or a Go duration ("5m",
    "1h30m", "0"). Any negative one (keep it loaded forever) comes back as -1; None (not given)
    as None, the server's default. ApiError 400 for anything else."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if body == "0":
            seconds = 0.0
        else:
            parts = _GO_DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise ApiError(400, f'time: invalid duration "{value}" (keep_alive: expected seconds, or a '
                                    'duration such as "5m", "1h30m", "-1")')
            seconds = sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise ApiError(400, f"keep_alive must be finite, got {value!r}")
    return -1.0 if seconds < 0 else seconds


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body checked against `model`: ApiError 413 past MAX_BODY bytes, 400
    for malformed JSON or a field of the wrong type (naming the field)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"request body too large: {declared} bytes, at most {MAX_BODY}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"request body too large: more than {MAX_BODY} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        value = json.loads(data, parse_constant=_not_json) if data.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON in the request body: {e}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON in the request body: nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(value).__name__}")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f'invalid value for "{where}": {first["msg"]}') from None


def _not_json(constant: str):
    """Python's json reads NaN and Infinity; JSON (and Go's decoder) does not."""
    raise json.JSONDecodeError(f"{constant} is not a JSON value", constant, 0)


def details(entry: Entry) -> dict:
    """ollama's `details` object for a model, read from the file's header."""
    from refllm.formats import open_model
    from refllm.formats.summary import model_summary

    with open_model(entry.path) as model:
        summary = model_summary(model)
    family = summary["architecture"] or ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": summary["parameters_human"], "quantization_level": summary["file_type_name"] or ""}


# -- the app --------------------------------------------------------------------------------------

def create_app(registry: Registry, scheduler: Scheduler) -> FastAPI:
    """The FastAPI application answering ollama's and OpenAI's routes (module docstring)."""
    app = FastAPI(title="refllm", version=package_version("refllm"), docs_url=None, redoc_url=None,
                  openapi_url=None)

    def is_openai(request: Request) -> bool:
        return request.url.path.startswith("/v1/")

    def error_response(request: Request, status: int, message: str) -> JSONResponse:
        if is_openai(request):
            kind = "invalid_request_error" if status < 500 else "api_error"
            return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)
        return JSONResponse({"error": message}, status)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(request, e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        return error_response(request, e.status_code, "404 page not found" if e.status_code == 404 else str(e.detail))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception):
        log.exception("unhandled error")
        return error_response(request, 500, f"internal error: {type(e).__name__}: {e}")

    def resolve(name: str) -> Entry:
        try:
            return registry.resolve(name)
        except BadModelName as e:
            raise ApiError(400, str(e)) from None
        except UnknownModel as e:
            raise ApiError(404, str(e)) from None

    def options_of(entry: Entry, given: dict | None):
        """The request's options over the model's own parameters; ApiError 400 when one is bad."""
        try:
            return parse_options(given, entry.setup.params)
        except OptionError as e:
            raise ApiError(400, str(e)) from None

    async def start(http: Request, request: EngineRequest) -> tuple[Job, tuple]:
        """Queue a request and wait for its first event; ApiError if that is an error."""
        job = Job(request, asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise ApiError(503, str(e)) from None
        watcher = asyncio.create_task(_cancel_on_disconnect(http, job))
        try:
            first = await job.events.get()
        except BaseException:
            job.cancelled.set()
            watcher.cancel()
            raise
        if first[0] == "error":
            watcher.cancel()
            raise ApiError(*first[1])
        job.watcher = watcher
        return job, first

    async def events(job: Job, first: tuple) -> AsyncIterator[tuple]:
        """The job's events from `first` to "done"; cancels the job when the consumer stops early."""
        event = first
        try:
            while True:
                yield event
                if event[0] in ("done", "error"):
                    return
                event = await job.events.get()
        finally:
            job.cancelled.set()               # a no-op once done; otherwise the client went away
            job.watcher.cancel()

    async def whole(job: Job, first: tuple) -> tuple[str, list[dict], Outcome]:
        """A reply that is not streamed: its text, its tokens' logprobs and its figures; ApiError
        if the engine failed."""
        texts, logprobs = [], []
        async for kind, payload in events(job, first):
            if kind == "logprob":
                logprobs.append(payload)
            elif kind == "text":
                texts.append(payload)
            elif kind == "done":
                return "".join(texts), logprobs, payload
            else:
                raise ApiError(*payload)
        raise AssertionError("the events of a job end with done or error")

    def ndjson(chunks: AsyncIterator[dict]) -> StreamingResponse:
        async def lines():
            async for chunk in chunks:
                yield json.dumps(chunk, ensure_ascii=False) + "\n"
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def metrics(outcome: Outcome, started: float) -> dict:
        stats = outcome.stats
        figures = {"total_duration": ns(time.perf_counter() - started), "load_duration": ns(outcome.load_duration),
                   "prompt_eval_count": stats.prompt_eval_count, "prompt_eval_duration": ns(stats.prompt_eval_duration),
                   "eval_count": stats.eval_count, "eval_duration": ns(stats.eval_duration)}
        figures = {k: v for k, v in figures.items() if v}          # Go's omitempty
        figures["cached_tokens"] = stats.cached_tokens
        if stats.truncated_tokens:
            figures["truncated_tokens"] = stats.truncated_tokens
        return figures

    def check_unsupported(entry: Entry, body) -> None:
        if getattr(body, "images", None) or any(getattr(m, "images", None) for m in getattr(body, "messages", [])):
            raise ApiError(400, f"{entry.name} does not support images (refllm runs text models)")
        if not 0 <= body.top_logprobs <= 20:
            raise ApiError(400, f"top_logprobs must be between 0 and 20, got {body.top_logprobs}")
        if isinstance(body.format, str) and body.format not in ("", "json"):
            raise ApiError(400, f'invalid format {body.format!r}: expected "json" or a JSON schema object')

    # -- ollama: generate and chat ----------------------------------------------------------------

    async def native(http: Request, body: schemas.NativeBody, request: EngineRequest, started: float, chat: bool):
        """Run a generate or chat request and answer as ollama does (streamed or whole)."""
        name = body.model
        job, first = await start(http, request)
        if first[0] == "done" and first[1].rendered is not None:
            return JSONResponse({"model": name, "created_at": timestamp(),
                                 "_debug_info": {"rendered_template": first[1].rendered, "image_count": 0}})

        def piece(text: str, done: bool, logprobs: list[dict]) -> dict:
            head = {"model": name, "created_at": timestamp()}
            if chat:
                chunk = head | {"message": {"role": "assistant", "content": text}, "done": done}
            else:
                chunk = head | {"response": text, "done": done}
            if request.logprobs and logprobs:
                chunk["logprobs"] = logprobs
            return chunk

        def final(outcome: Outcome, text: str, logprobs: list[dict]) -> dict:
            chunk = piece(text, True, logprobs) | {"done_reason": outcome.done_reason}
            if not chat and request.action == "generate":
                chunk["context"] = outcome.prompt_ids + outcome.reply_ids
            return chunk | metrics(outcome, started)

        if body.stream:
            async def chunks():
                pending = []                      # logprobs of the tokens behind the next text
                async for kind, payload in events(job, first):
                    if kind == "logprob":
                        pending.append(payload)
                    elif kind == "text":
                        yield piece(payload, False, pending)
                        pending = []
                    elif kind == "done":
                        yield final(payload, "", pending)
                    else:
                        yield {"error": payload[1]}
            return ndjson(chunks())
        text, logprobs, outcome = await whole(job, first)
        return JSONResponse(final(outcome, text, logprobs))

    async def native_request(http: Request, body: schemas.NativeBody, started: float, chat: bool, empty: bool,
                             **what) -> Response:
        """The engine request of a generate or chat body, run: a load or unload when it asks for
        nothing to be generated (`empty`), else a generation of `what` (its prompt or messages)."""
        entry = resolve(body.model)
        check_unsupported(entry, body)
        options, settings = options_of(entry, body.options)
        keep_alive = keep_alive_seconds(body.keep_alive)
        if empty and not body.debug_render_only:
            request = EngineRequest(entry, "unload" if keep_alive == 0 else "load", settings=settings,
                                    keep_alive=keep_alive)
        else:
            request = EngineRequest(entry, options=options, settings=settings, format=body.format or None,
                                    truncate=body.truncate, shift=body.shift, keep_alive=keep_alive,
                                    render_only=body.debug_render_only, logprobs=body.logprobs,
                                    top_logprobs=body.top_logprobs, **what)
        return await native(http, body, request, started, chat)

    @app.post("/api/generate")
    async def generate(http: Request):
        started = time.perf_counter()
        body = await read_body(http, schemas.GenerateBody)
        return await native_request(http, body, started, False, body.prompt == "" and body.system is None,
                                    prompt=body.prompt, system=body.system, raw=body.raw, context=body.context,
                                    suffix=body.suffix, template=body.template or None, think=body.think)

    @app.post("/api/chat")
    async def chat(http: Request):
        started = time.perf_counter()
        body = await read_body(http, schemas.ChatBody)
        for i, message in enumerate(body.messages):
            if message.role not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f'messages[{i}]: role must be "system", "user", "assistant" or "tool", '
                                    f"not {message.role!r}")
        messages = [message.model_dump(exclude_none=True) for message in body.messages]
        return await native_request(http, body, started, True, not messages, messages=messages, tools=body.tools,
                                    think=body.think)

    # -- ollama: models ---------------------------------------------------------------------------

    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags(http: Request):
        models = []
        for entry in await asyncio.to_thread(registry.entries):
            try:
                info = await asyncio.to_thread(details, entry)
            except Exception as e:             # an unreadable file is left out of the list, not fatal
                log.warning("leaving %s out of /api/tags: %s", entry.name, e)
                continue
            models.append({"name": entry.name, "model": entry.name, "modified_at": timestamp(entry.modified),
                           "size": entry.size, "digest": entry.digest, "details": info})
        if http.method == "HEAD":
            return Response(status_code=200)
        return {"models": models}

    @app.post("/api/show")
    async def show(http: Request):
        body = await read_body(http, schemas.ShowBody)
        entry = resolve(body.model or body.name)
        return await asyncio.to_thread(_show, entry, body.verbose)

    @app.get("/api/ps")
    async def ps():
        models = []
        for loaded in scheduler.running():
            entry = loaded.entry
            models.append({"name": entry.name, "model": entry.name, "size": entry.size + loaded.kv_bytes,
                           "digest": entry.digest, "details": await asyncio.to_thread(details, entry),
                           "expires_at": timestamp(loaded.expires) if loaded.expires != math.inf
                           else "2318-08-22T00:00:00Z",
                           "size_vram": 0, "context_length": loaded.n_ctx})
        return {"models": models}

    @app.get("/api/version")
    async def version():
        return {"version": package_version("refllm")}

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root():
        return PlainTextResponse("Ollama is running")

    # -- OpenAI -----------------------------------------------------------------------------------

    def openai_options(entry: Entry, body: schemas.OpenAISampling, max_tokens: int | None):
        given: dict[str, Any] = {"temperature": 1.0 if body.temperature is None else body.temperature,
                                 "top_p": 1.0 if body.top_p is None else body.top_p}
        for name in ("frequency_penalty", "presence_penalty", "seed"):
            if getattr(body, name) is not None:
                given[name] = getattr(body, name)
        if max_tokens is not None:
            given["num_predict"] = max_tokens
        if body.stop is not None:
            given["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
        return options_of(entry, given)

    def response_format(value: dict | None):
        if value is None or value.get("type") in (None, "text"):
            return None
        if value["type"] == "json_object":
            return "json"
        if value["type"] == "json_schema":
            schema = (value.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format json_schema: expected a schema object in json_schema.schema")
            return schema
        raise ApiError(400, f"invalid response_format type {value['type']!r}: "
                            "expected text, json_object or json_schema")

    async def openai(http: Request, body, request: EngineRequest, chat: bool):
        kind = "chat.completion" if chat else "text_completion"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{random.randint(0, 998)}"
        created = int(time.time())
        job, first = await start(http, request)

        def finish_reason(outcome: Outcome) -> str:
            return "length" if outcome.done_reason == "length" else "stop"

        def usage(outcome: Outcome) -> dict:
            stats = outcome.stats
            return {"prompt_tokens": stats.prompt_eval_count, "completion_tokens": stats.eval_count,
                    "total_tokens": stats.prompt_eval_count + stats.eval_count,
                    "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}

        def choice(text: str | None, reason: str | None, stream: bool, logprobs: list[dict]) -> dict:
            if not chat:
                return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": reason}
            message = {"role": "assistant", "content": text} if text is not None else {}
            answer = {"index": 0, ("delta" if stream else "message"): message, "finish_reason": reason}
            if request.logprobs:
                answer["logprobs"] = {"content": logprobs}
            return answer

        head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": "fp_ollama"}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse():
                pending = []
                async for event, payload in events(job, first):
                    if event == "logprob":
                        pending.append(payload)
                        continue
                    if event == "text":
                        chunk = head | {"object": f"{kind}.chunk" if chat else kind,
                                        "choices": [choice(payload, None, True, pending)]}
                        pending = []
                    elif event == "done":
                        chunk = head | {"object": f"{kind}.chunk" if chat else kind,
                                        "choices": [choice("" if not chat else None, finish_reason(payload), True,
                                                           pending)]}
                        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                        if include_usage:
                            chunk = head | {"object": f"{kind}.chunk" if chat else kind, "choices": [],
                                            "usage": usage(payload)}
                        else:
                            chunk = None
                    else:
                        chunk = {"error": {"message": payload[1], "type": "api_error", "param": None, "code": None}}
                    if chunk is not None:
                        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        text, logprobs, outcome = await whole(job, first)
        return head | {"object": kind, "choices": [choice(text, finish_reason(outcome), False, logprobs)],
                       "usage": usage(outcome)}

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        body = await read_body(http, schemas.ChatCompletionBody)
        entry = resolve(body.model)
        options, settings = openai_options(entry, body, body.max_completion_tokens or body.max_tokens)
        messages = []
        for i, message in enumerate(body.messages):
            if message.role == "developer":
                message = message.model_copy(update={"role": "system"})
            if message.role not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f"messages[{i}]: invalid role {message.role!r}")
            content = message.content
            if isinstance(content, list):
                if any(part.type != "text" for part in content):
                    raise ApiError(400, f"messages[{i}]: only text content parts are supported")
                content = "".join(part.text for part in content)
            messages.append({"role": message.role, "content": content or ""})
        if not messages:
            raise ApiError(400, "messages: expected at least one message")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
            raise ApiError(400, f"top_logprobs must be between 0 and 20, got {body.top_logprobs}")
        request = EngineRequest(entry, messages=messages, tools=body.tools, options=options, settings=settings,
                                format=response_format(body.response_format), logprobs=body.logprobs,
                                top_logprobs=body.top_logprobs or 0)
        return await openai(http, body, request, chat=True)

    @app.post("/v1/completions")
    async def completions(http: Request):
        body = await read_body(http, schemas.CompletionBody)
        entry = resolve(body.model)
        options, settings = openai_options(entry, body, body.max_tokens)
        request = EngineRequest(entry, prompt=body.prompt, suffix=body.suffix or "", options=options,
                                settings=settings)
        return await openai(http, body, request, chat=False)

    def model_object(entry: Entry) -> dict:
        owner = entry.name.rsplit("/", 1)[0] if "/" in entry.name else "library"
        return {"id": entry.name, "object": "model", "created": int(entry.modified), "owned_by": owner}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_object(e) for e in await asyncio.to_thread(registry.entries)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        return model_object(resolve(name))

    return app


async def _cancel_on_disconnect(http: Request, job: Job) -> None:
    """Set job.cancelled when the client goes away (the engine stops before its next token)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()
            return


def _show(entry: Entry, verbose: bool) -> dict:
    """/api/show's answer (shared/research/ollama.md §1.7)."""
    from refllm.formats import open_model
    from refllm.formats.inspect import json_value
    from refllm.formats.modelfile import format_modelfile, format_parameters
    from refllm.formats.ollama_report import model_capabilities
    from refllm.formats.summary import parameter_count
    from refllm.tokenizer.chat_template import TEMPLATE_KEY

    with open_model(entry.path) as model:
        info = {key: json_value(value, None) if verbose or not hasattr(value, "__len__") or isinstance(value, str)
                else None for key, value in model.metadata.items() if key not in ("general.name", TEMPLATE_KEY)}
        info["general.parameter_count"] = parameter_count(model)
        template = entry.setup.template if entry.setup.template is not None else model.metadata.get(TEMPLATE_KEY, "")
        tensors = [{"name": t.name, "type": t.type_name, "shape": list(t.ne)} for t in model.tensors]
        capabilities = model_capabilities(model.metadata, template)
    setup = entry.setup
    modelfile = format_modelfile(entry.name, str(entry.path), template=setup.template, system=setup.system,
                                 parameters=setup.params, licenses=setup.license, messages=setup.messages)
    answer = {"license": "\n".join(setup.license), "modelfile": modelfile,
              "parameters": format_parameters(setup.params), "template": template, "details": details(entry),
              "model_info": info, "capabilities": capabilities, "modified_at": timestamp(entry.modified)}
    if entry.setup.system:
        answer["system"] = entry.setup.system
    if verbose:
        answer["tensors"] = tensors
    return answer
