"""One engine thread that runs the server's requests one at a time, in arrival order.

    scheduler = Scheduler(Config(num_parallel=2))
    job = Job(request, loop)             # made by a route, on the event loop
    scheduler.submit(job)                # QueueFull (HTTP 503) when REFLLM_MAX_QUEUE wait already
    kind, payload = await job.events.get()

The routes never touch a model: they hand a Request to the queue and read the events its Job
sends back ("text" pieces, then "done" with the figures, or "error" with an HTTP status). The
engine thread owns everything that is not thread-safe: the loaded models, their KV caches,
Numba's thread count.

A loaded model keeps up to `num_parallel` KV slots (ollama's OLLAMA_NUM_PARALLEL), each a
Session whose cache remembers the tokens behind it. A request goes to a slot as ollama's
multi-user cache picks one (shared/research/ollama.md §4.1):
    1. the slot sharing the longest prefix with the prompt, if everything it holds is a prefix
       of the prompt (a conversation going on: only the new turn is evaluated);
    2. else the least recently used slot (an unused one first), given the longer shared prefix
       of the best slot first when that one's is longer (a fork, KVCache.copy_prefix).
Each request draws from its own Sampler and seed, so its reply does not depend on which
requests ran before it, except through the cached prefix: keys and values evaluated in another
batch may round differently (llama.cpp's server warns of the same).

A model stays loaded for its keep_alive after its last request (ollama's default 5 minutes;
0 unloads at once, a negative one never), and at most `max_loaded` models are loaded at once
(the least recently used goes first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from refllm.engine.prompt import ModelPrompt, PromptError, text_tokens
from refllm.engine.sampling import SamplingOptions
from refllm.engine.session import ContextFullError, GenerationStats, Session
from refllm.errors import RefllmError
from refllm.server.options import ModelSettings
from refllm.server.registry import Entry
from refllm.tokenizer.go_template import GoTemplateError

log = logging.getLogger("refllm.server")

MIN_CTX = 16


class QueueFull(RefllmError):
    """REFLLM_MAX_QUEUE requests are waiting already: HTTP 503."""


class RequestError(RefllmError):
    """What a request asked for cannot be done (HTTP 400); the message says why."""


@dataclass(frozen=True)
class Config:
    """The server's settings (`refllm serve` flags and REFLLM_* variables)."""
    numerics: str = "ggml"
    flash_attn: bool = True
    default_ctx: int = 4096             # num_ctx when neither the request nor the model sets it
    num_parallel: int = 1               # KV slots per model (REFLLM_NUM_PARALLEL)
    max_queue: int = 512                # requests waiting (REFLLM_MAX_QUEUE), besides the running one
    max_loaded: int = 3                 # models loaded at once (REFLLM_MAX_LOADED_MODELS)
    keep_alive: float = 300.0           # seconds; math.inf: never unload (REFLLM_KEEP_ALIVE)


@dataclass
class Request:
    """One generation (or load, unload, render) for the engine thread, parsed and checked."""
    entry: Entry
    action: str = "generate"            # 'generate', 'load', 'unload'
    prompt: str = ""                    # /api/generate
    system: str | None = None
    raw: bool = False
    context: list[int] | None = None    # /api/generate's deprecated context: earlier ids
    suffix: str = ""                    # /api/generate's fill-in-the-middle suffix
    template: str | None = None         # /api/generate's own Go template, over the model's
    messages: list[dict] | None = None  # /api/chat: the conversation instead of a prompt
    tools: list | None = None
    think: bool | str | None = None
    options: SamplingOptions = SamplingOptions()
    settings: ModelSettings = ModelSettings()
    format: Any = None                  # "json" or a JSON schema: constrain the reply
    truncate: bool = True
    shift: bool = True
    keep_alive: float | None = None     # seconds; None: the server's default
    render_only: bool = False           # _debug_render_only: the prompt text, no generation
    logprobs: bool = False              # send each token's log-probability ("logprob" events)
    top_logprobs: int = 0               # and this many of the likeliest tokens' with it


@dataclass
class Outcome:
    """The figures of a finished request, for its final chunk."""
    stats: GenerationStats
    prompt_ids: list[int]
    reply_ids: list[int]
    load_duration: float                # waiting in the queue, plus loading the model
    done_reason: str
    rendered: str | None = None         # the prompt text (render_only)


class Job:
    """A request in flight, and the events the engine thread sends back to its route."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()     # the client went away: stop before the next token
        self.enqueued = time.perf_counter()
        self.watcher: asyncio.Task | None = None  # the route's task that sets `cancelled` on a disconnect

    def send(self, kind: str, payload: Any = None) -> None:
        """Queue an event for the route (from the engine thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:            # the event loop has closed: the server is stopping
            self.cancelled.set()


@dataclass
class Slot:
    session: Session
    last_used: float = 0.0


@dataclass
class Loaded:
    """A model in memory: its file, tokenizer, Transformer and KV slots."""
    entry: Entry
    model: Any
    tokenizer: Any
    prompt: Any                         # how its prompts are built (ModelPrompt: Go, Jinja or default)
    transformer: Any
    n_ctx: int
    settings: ModelSettings
    n_batch: int = 0                    # settings.num_batch, at most n_ctx
    slots: list[Slot] = field(default_factory=list)
    last_used: float = 0.0
    expires: float = math.inf           # time.time() after which it is unloaded

    @property
    def kv_bytes(self) -> int:
        return sum(slot.session.cache.nbytes for slot in self.slots)


class Scheduler:
    """The engine thread and the queue in front of it (module docstring)."""

    def __init__(self, config: Config = Config()):
        self.config = config
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=config.max_queue)
        self.loaded: dict[str, Loaded] = {}          # by the entry's name
        self.busy = threading.Lock()                 # held while a job runs (tests and /api/ps peek)
        self.current: Job | None = None              # the job running now
        self._thread = threading.Thread(target=self._run, name="refllm-engine", daemon=True)
        self._thread.start()

    # -- the routes' side -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job, or QueueFull when max_queue are waiting."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull("server busy, please try again.  maximum pending requests exceeded") from None

    def stop(self) -> None:
        """End the engine thread: the running job stops at its next token, the waiting ones are
        answered 503."""
        if self.current is not None:
            self.current.cancelled.set()
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                job.send("error", (503, "the server is shutting down"))
        self.jobs.put(None)
        self._thread.join(timeout=10)

    def running(self) -> list[Loaded]:
        """The loaded models, most recently used first (a snapshot, for /api/ps)."""
        return sorted(self.loaded.values(), key=lambda m: -m.last_used)

    # -- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self._seconds_to_next_expiry())
            except queue.Empty:
                self._unload_expired()
                continue
            if job is None:
                return
            self._unload_expired()
            if job.cancelled.is_set():
                continue
            with self.busy:
                self.current = job
                try:
                    job.send("done", self._handle(job))
                except (RequestError, PromptError, ContextFullError) as e:
                    job.send("error", (400, str(e)))
                except RefllmError as e:          # the model file, its template or config
                    job.send("error", (500, str(e)))
                except Exception as e:            # a bug: the server answers and keeps serving
                    log.exception("request failed")
                    job.send("error", (500, f"internal error: {type(e).__name__}: {e}"))
                finally:
                    self.current = None

    def _seconds_to_next_expiry(self) -> float | None:
        if not self.loaded:
            return None
        soonest = min(m.expires for m in self.loaded.values())
        return None if soonest == math.inf else max(0.0, soonest - time.time())

    def _unload_expired(self) -> None:
        now = time.time()
        for key in [k for k, m in self.loaded.items() if m.expires <= now]:
            log.info("unloading %s (keep_alive ran out)", self.loaded[key].entry.name)
            self._unload(key)

    def _unload(self, key: str) -> None:
        loaded = self.loaded.pop(key)
        loaded.slots.clear()
        loaded.model.close()

    def _handle(self, job: Job) -> Outcome:
        request = job.request
        started = time.perf_counter()
        key = request.entry.name
        if request.action == "unload":
            if key in self.loaded:
                self._unload(key)
            return Outcome(GenerationStats(done_reason="unload"), [], [], 0.0, "unload")
        loaded = self._load(request.entry, request.settings)
        load_duration = time.perf_counter() - job.enqueued
        try:
            if request.action == "load":
                return Outcome(GenerationStats(), [], [], load_duration, "load")
            return self._generate(job, loaded, load_duration)
        finally:
            loaded.last_used = time.time()
            keep_alive = self.config.keep_alive if request.keep_alive is None else request.keep_alive
            loaded.expires = math.inf if keep_alive < 0 else loaded.last_used + keep_alive
            if keep_alive == 0:
                self._unload(key)
            log.info("%s %s in %.2fs", request.action, request.entry.name, time.perf_counter() - started)

    # -- loading ----------------------------------------------------------------------------------

    def _load(self, entry: Entry, settings: ModelSettings) -> Loaded:
        """The model loaded with these settings: as it is, resized (new KV slots for another
        num_ctx or num_batch), reloaded (another num_thread), or opened afresh."""
        import numba

        from refllm.engine.transformer import Transformer
        from refllm.formats import open_model
        from refllm.tokenizer import Tokenizer

        threads = settings.num_thread or numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        key = entry.name
        loaded = self.loaded.get(key)
        if loaded is not None and loaded.entry.digest != entry.digest:
            self._unload(key)                       # the file behind the name changed
            loaded = None
        if loaded is None:
            while len(self.loaded) >= self.config.max_loaded:
                oldest = min(self.loaded, key=lambda k: self.loaded[k].last_used)
                self._unload(oldest)
            model = open_model(entry.path)
            try:
                tokenizer = Tokenizer.from_model(model)
                prompt = ModelPrompt(tokenizer, model.metadata, go_template=entry.setup.template)
                transformer = Transformer(model, self.config.numerics, flash_attn=self.config.flash_attn,
                                          threads=settings.num_thread or None)
            except BaseException:
                model.close()
                raise
            loaded = self.loaded[key] = Loaded(entry, model, tokenizer, prompt, transformer, 0, settings)
            log.info("loaded %s (%s)", entry.name, entry.path)
        elif settings.num_thread != loaded.settings.num_thread:
            loaded.transformer = Transformer(loaded.model, self.config.numerics, flash_attn=self.config.flash_attn,
                                             threads=settings.num_thread or None)
            loaded.slots.clear()
        n_ctx_train = loaded.transformer.config.n_ctx_train
        wanted = settings.num_ctx or self.config.default_ctx
        if wanted > n_ctx_train:
            log.warning("num_ctx %d is more than %s was trained for; using %d", wanted, entry.name, n_ctx_train)
        n_ctx = max(MIN_CTX, min(wanted, n_ctx_train))
        n_batch = min(settings.num_batch, n_ctx)    # llama.cpp's cap: a batch never outgrows the context
        if n_ctx != loaded.n_ctx or n_batch != loaded.n_batch:
            loaded.slots.clear()                    # a resize: new caches, the same weights
        loaded.n_ctx, loaded.n_batch, loaded.settings = n_ctx, n_batch, settings
        return loaded

    # -- generating -------------------------------------------------------------------------------

    def _generate(self, job: Job, loaded: Loaded, load_duration: float) -> Outcome:
        request = job.request
        text, templated = self._prompt_text(request, loaded)
        if request.render_only:
            return Outcome(GenerationStats(), [], [], load_duration, "stop", rendered=text)
        ids = text_tokens(loaded.tokenizer, text, templated=templated)
        if request.messages is not None and len(ids) >= loaded.n_ctx and request.truncate:
            ids = self._drop_old_messages(request, loaded, ids)
        constraint = self._constraint(request, loaded)
        slot = self._slot(loaded, ids)
        session = slot.session
        session.context_shift = request.shift

        def send_logprob(token: int, logits) -> None:
            job.send("logprob", token_logprobs(loaded.tokenizer, token, logits, request.top_logprobs))
        try:
            for piece in session.generate(ids, loaded.tokenizer, request.options, truncate=request.truncate,
                                          constraint=constraint, should_stop=job.cancelled.is_set,
                                          on_token=send_logprob if request.logprobs else None):
                job.send("text", piece)
        except ContextFullError:
            if session.stats.prompt_eval_count == 0:      # the prompt itself does not fit
                raise RequestError(f"the prompt is longer than the context length ({len(ids)} tokens, "
                                   f"num_ctx {loaded.n_ctx}) and truncate is false") from None
            session.stats.done_reason = "length"         # shift: false, and the context filled
        finally:
            slot.last_used = time.time()
        stats = session.stats
        return Outcome(stats, ids, list(session.reply), load_duration, stats.done_reason)

    def _prompt_text(self, request: Request, loaded: Loaded) -> tuple[str, bool]:
        """The prompt as text, and whether its special tokens are to be parsed: the model's
        template (or the request's own) over the messages ollama builds for the route, or the
        raw prompt; after the detokenized `context` of an earlier /api/generate reply."""
        earlier = ""
        if request.context:
            n_vocab = loaded.tokenizer.n_vocab
            bad = next((t for t in request.context if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise RequestError(f"context: token id {bad} is not in the vocabulary (0..{n_vocab - 1})")
            # as llama-server's /detokenize: special tokens as their text, parsed again below
            earlier = loaded.tokenizer.detokenize(request.context, unparse_special=True)
        if request.raw:
            return earlier + request.prompt, False
        prompt = self._model_prompt(request, loaded)
        setup = request.entry.setup
        if request.tools and not prompt.supports_tools:
            raise RequestError(f"{request.entry.name} does not support tools")
        if request.think not in (None, False) and not prompt.supports_thinking:
            raise RequestError(f'"{request.entry.name}" does not support thinking')
        if request.messages is not None:
            # ollama's ChatHandler: the model's MESSAGE turns, then the request's; the model's
            # system prompt first unless the conversation starts with one
            messages = setup.messages + list(request.messages)
            if setup.system and (not request.messages or request.messages[0].get("role") != "system"):
                messages.insert(0, {"role": "system", "content": setup.system})
        elif request.suffix:
            return earlier + prompt.text([], prompt=request.prompt, suffix=request.suffix), prompt.kind != "default"
        else:
            # ollama's GenerateHandler: a system prompt, the MESSAGE turns (not after a context), the prompt
            system = request.system or setup.system
            messages = ([{"role": "system", "content": system}] if system else []) \
                + (setup.messages if not request.context else []) + [{"role": "user", "content": request.prompt}]
        return earlier + prompt.text(messages, request.tools, think=request.think), prompt.kind != "default"

    def _model_prompt(self, request: Request, loaded: Loaded) -> ModelPrompt:
        """The model's prompt template, or the Go template a request brings (`template`)."""
        if request.template is None:
            return loaded.prompt
        try:
            return ModelPrompt(loaded.tokenizer, loaded.model.metadata, go_template=request.template)
        except GoTemplateError as e:
            raise RequestError(f"template: {e}") from None

    def _drop_old_messages(self, request: Request, loaded: Loaded, ids: list[int]) -> list[int]:
        """ollama's chat truncation: drop whole messages from the front, never a system message
        nor the last one, until the rendered conversation fits num_ctx."""
        messages = list(request.messages)
        droppable = [i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"]
        for count in range(1, len(droppable) + 1):
            kept = [m for i, m in enumerate(messages) if i not in droppable[:count]]
            trimmed = text_tokens(loaded.tokenizer, *self._prompt_text(_with_messages(request, kept), loaded))
            if len(trimmed) < loaded.n_ctx:
                log.info("dropped the first %d messages to fit num_ctx %d", count, loaded.n_ctx)
                return trimmed
        return ids

    def _constraint(self, request: Request, loaded: Loaded):
        if request.format in (None, ""):
            return None
        from refllm.engine.structured import FormatError, OutputConstraint
        try:
            return OutputConstraint.from_format(request.format, loaded.tokenizer)
        except FormatError as e:
            raise RequestError(str(e)) from None

    def _slot(self, loaded: Loaded, ids: list[int]) -> Slot:
        """The KV slot for a prompt (module docstring); a new one while fewer than num_parallel exist."""
        slots = loaded.slots
        shared = [slot.session.cache.common_prefix(ids, at_most=len(ids) - 1) for slot in slots]
        best = max(range(len(slots)), key=shared.__getitem__, default=None)
        if best is not None and shared[best] and shared[best] == slots[best].session.cache.n_past:
            return slots[best]                            # a conversation going on
        if len(slots) < self.config.num_parallel:
            slots.append(Slot(Session(loaded.transformer, loaded.n_ctx, n_batch=loaded.n_batch)))
            target, target_shared = len(slots) - 1, 0
        else:
            target = min(range(len(slots)), key=lambda i: slots[i].last_used)
            target_shared = shared[target]
        if best is not None and shared[best] > target_shared:
            slots[target].session.cache.copy_prefix(slots[best].session.cache, shared[best])   # a fork
        return slots[target]


def token_logprobs(tokenizer, token: int, logits, top: int) -> dict:
    """A drawn token's log-probability under the model's logits (log-softmax in float64), with
    the `top` likeliest tokens', as ollama's and OpenAI's `logprobs` entries give them."""
    import numpy as np

    values = logits.astype(np.float64)
    peak = values.max()
    logprobs = values - (peak + np.log(np.exp(values - peak).sum()))

    def entry(t: int) -> dict:
        piece = tokenizer.token_to_piece(int(t))
        return {"token": piece.decode("utf-8", "replace"), "logprob": float(logprobs[t]), "bytes": list(piece)}
    answer = entry(token)
    if top > 0:
        likeliest = np.argpartition(-logprobs, top - 1)[:top]
        likeliest = likeliest[np.argsort(-logprobs[likeliest], kind="stable")]
        answer["top_logprobs"] = [entry(t) for t in likeliest]
    return answer


def _with_messages(request: Request, messages: list[dict]) -> Request:
    from dataclasses import replace
    return replace(request, messages=messages)
