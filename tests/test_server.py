"""refllm serve over real sockets on 127.0.0.1: ollama's and OpenAI's own Python clients, and raw
HTTP for what no client would send. The server runs in this process on a socket bound to a free
port (uvicorn in a thread), so the tests can also look at its engine; one test starts
`refllm serve` itself. Every wait is bounded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='refllm serve needs the serve extra: pip install "refllm[serve]"')
import httpx  # noqa: E402
import ollama  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402
from ollama_store import PARAMS, SYSTEM, add_model  # noqa: E402

from refllm.server.app import create_app, keep_alive_seconds  # noqa: E402
from refllm.server.host import parse_host  # noqa: E402
from refllm.server.registry import Registry  # noqa: E402
from refllm.server.scheduler import Config, Scheduler  # noqa: E402

GREEDY = {"temperature": 0, "num_predict": 12}
WAIT = 60.0                       # seconds any one wait may take before the test fails


class Server:
    """A running server: its base URL, engine and registry."""

    def __init__(self, registry: Registry, config: Config):
        self.scheduler = Scheduler(config)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(create_app(registry, self.scheduler), log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.uvicorn.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def idle(self) -> None:
        """Wait (bounded) until the engine has no job running or waiting."""
        deadline = time.monotonic() + WAIT
        while self.scheduler.busy.locked() or self.scheduler.jobs.qsize():
            assert time.monotonic() < deadline, "the engine stayed busy"
            time.sleep(0.02)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)
        self.scheduler.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2_path) -> Path:
    """An ollama store with SmolLM2 as `mine:latest`, with a SYSTEM and a params layer."""
    root = tmp_path_factory.mktemp("ollama")
    add_model(root, "registry.ollama.ai/library/mine/latest", smollm2_path.read_bytes())
    add_model(root, "registry.ollama.ai/library/broken/latest")      # a valid GGUF that is no runnable model
    return root


@pytest.fixture(scope="module")
def server(smollm2_path, store):
    running = Server(Registry({"tiny": smollm2_path}, store_root=store),
                     Config(num_parallel=2, max_queue=2, keep_alive=300))
    yield running
    running.close()


def post(server: Server, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=WAIT, **kwargs)


# -- ollama's client ------------------------------------------------------------------------------

def test_generate_matches_refllm_generate(server, smollm2_path):
    """A greedy /api/generate reply is `refllm generate`'s, token for token."""
    prompt = "Why is the sky blue?"
    reply = ollama.Client(host=server.url).generate(model="smollm2", prompt=prompt, options=GREEDY)
    cli = subprocess.run([sys.executable, "-m", "refllm.cli", "generate", str(smollm2_path), prompt,
                          "--temperature", "0", "-n", "12"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert reply.response == cli.stdout.removesuffix("\n")
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 12

    # the ids: the context is the prompt's ids then the reply's, as refllm's Session draws them
    from refllm.engine import Session, Transformer, prompt_tokens
    from refllm.engine.sampling import SamplingOptions
    from refllm.formats import open_model
    from refllm.tokenizer import Tokenizer
    model = open_model(smollm2_path)
    tokenizer = Tokenizer.from_model(model)
    ids = prompt_tokens(tokenizer, model.metadata, prompt)
    session = Session(Transformer(model, "ggml"), 4096)
    "".join(session.generate(ids, tokenizer, SamplingOptions(temperature=0, num_predict=12)))
    assert reply.context == ids + session.reply


def test_generate_streams_ndjson_with_ollamas_figures(server):
    chunks = list(ollama.Client(host=server.url).generate(model="tiny", prompt="Count to five.", options=GREEDY,
                                                          stream=True))
    whole = ollama.Client(host=server.url).generate(model="tiny", prompt="Count to five.", options=GREEDY)
    assert "".join(c.response for c in chunks) == whole.response
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final.response == "" and final.done_reason == "length"
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(final, name), int) and getattr(final, name) > 0, name
    assert final.prompt_eval_count == len(final.context) - final.eval_count


def test_raw_stream_lines_are_ndjson(server):
    with httpx.stream("POST", server.url + "/api/generate", timeout=WAIT,
                      json={"model": "tiny", "prompt": "Hi", "options": GREEDY}) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True and "cached_tokens" in lines[-1]
    assert lines[-1]["total_duration"] >= lines[-1]["eval_duration"]


def test_chat_second_turn_evaluates_only_the_new_tokens(server):
    client = ollama.Client(host=server.url)
    messages = [{"role": "user", "content": "Name a colour."}]
    first = client.chat(model="tiny", messages=messages, options={"temperature": 0, "num_predict": 40})
    assert first.message.role == "assistant" and first.message.content
    messages += [{"role": "assistant", "content": first.message.content},
                 {"role": "user", "content": "And another one?"}]
    second = post(server, "/api/chat", {"model": "tiny", "messages": messages, "stream": False,
                                        "options": {"temperature": 0, "num_predict": 8}}).json()
    # prompt_eval_count counts the cached tokens too (ollama's rule); the first turn is all cached
    assert second["prompt_eval_count"] > first.prompt_eval_count
    assert second["cached_tokens"] >= first.prompt_eval_count
    assert second["prompt_eval_count"] - second["cached_tokens"] < 20


def test_each_conversation_keeps_its_slot_and_a_new_one_forks_the_shared_prefix(server):
    """num_parallel 2: two conversations alternate, each going on from its own slot; a third
    takes the least recently used slot and is given the system prompt's keys from the other."""
    def turn(messages: list[dict]) -> dict:
        answer = post(server, "/api/chat", {"model": "tiny", "messages": messages, "stream": False,
                                            "options": {"temperature": 0, "num_predict": 6}}).json()
        messages.append(answer["message"])
        return answer
    post(server, "/api/generate", {"model": "tiny", "keep_alive": 0})             # empty slots
    a, b, c = ([{"role": "user", "content": text}] for text in ("Name a river.", "Name a town.", "Name a bird."))
    first_a, first_b = turn(a), turn(b)
    assert first_a["cached_tokens"] == 0 < first_b["cached_tokens"]           # b forked a's system prompt
    shared = first_b["cached_tokens"]
    for conversation, first in ((a, first_a), (b, first_b)):
        conversation.append({"role": "user", "content": "Another?"})
        again = turn(conversation)
        assert again["cached_tokens"] >= first["prompt_eval_count"] + first["eval_count"] - 1
    third = turn(c)
    assert third["cached_tokens"] == shared


def test_chat_streams(server):
    chunks = list(ollama.Client(host=server.url).chat(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                      options=GREEDY, stream=True))
    assert chunks[-1].done and chunks[-1].message.content == ""
    assert "".join(c.message.content for c in chunks)


def test_tags_show_ps_version(server, smollm2_path):
    client = ollama.Client(host=server.url)
    listed = {m.model: m for m in client.list().models}
    assert {"tiny:latest", "mine:latest", "smollm2:latest"} <= set(listed)
    mine = listed["mine:latest"]
    assert mine.details.family == "llama" and mine.details.quantization_level == "Q4_1"
    assert mine.details.parameter_size == "134.52M" and len(mine.digest) == 64

    shown = client.show("mine")
    assert shown.details.format == "gguf"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["tokenizer.ggml.tokens"] is None          # arrays only with verbose
    assert 'PARAMETER temperature' in shown.modelfile and "stop" in shown.parameters
    verbose = post(server, "/api/show", {"model": "mine", "verbose": True}).json()     # the client has no verbose
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152 and verbose["tensors"]

    client.generate(model="tiny", prompt="Hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert "tiny:latest" in running and running["tiny:latest"].size > smollm2_path.stat().st_size
    assert httpx.get(server.url + "/api/version", timeout=WAIT).json()["version"]
    assert httpx.head(server.url + "/", timeout=WAIT).status_code == 200
    assert httpx.head(server.url + "/api/tags", timeout=WAIT).status_code == 200


def test_store_model_gets_its_system_prompt_and_parameters(server):
    rendered = post(server, "/api/chat", {"model": "mine", "messages": [{"role": "user", "content": "Hi"}],
                                          "_debug_render_only": True}).json()
    assert SYSTEM in rendered["_debug_info"]["rendered_template"]
    reply = post(server, "/api/generate", {"model": "mine", "prompt": "Say hi", "stream": False,
                                           "options": {"seed": 3, "num_predict": 4}}).json()
    assert reply["done_reason"] in ("stop", "length")
    assert PARAMS["temperature"] == 0.6     # what the params layer sets, and what show lists


def test_debug_render_only_shows_the_prompt_without_generating(server, smollm2_path):
    from refllm.engine.prompt import chat_template
    from refllm.formats import open_model
    from refllm.tokenizer import Tokenizer
    model = open_model(smollm2_path)
    expected = chat_template(Tokenizer.from_model(model), model.metadata).render(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    answer = post(server, "/api/generate", {"model": "tiny", "prompt": "Hello", "_debug_render_only": True}).json()
    assert answer["_debug_info"]["rendered_template"] == expected
    assert "response" not in answer


def test_options_reach_the_engine(server, caplog):
    client = ollama.Client(host=server.url)
    reply = client.generate(model="tiny", prompt="List numbers: 1, 2, 3,", options={"temperature": 0, "num_predict": 3})
    assert reply.eval_count == 3 and reply.done_reason == "length"
    unknown = client.generate(model="tiny", prompt="Hi", options={"num_predict": 2, "not_an_option": 1})
    assert unknown.eval_count <= 2
    assert "invalid option provided: not_an_option" in caplog.text
    stopped = client.generate(model="tiny", prompt="Count: one, two, three, four,",
                              options={"temperature": 0, "num_predict": 30, "stop": [","]}, raw=True)
    assert "," not in stopped.response and stopped.done_reason == "stop"


def test_bad_option_type_is_ollamas_400(server):
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model="tiny", prompt="Hi", options={"num_predict": "3"})
    assert error.value.status_code == 400 and error.value.error == 'option "num_predict" must be of type integer'
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model="tiny", prompt="Hi", options={"stop": [1]})
    assert "array of strings" in error.value.error
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model="tiny", prompt="Hi", options={"top_p": 7})
    assert error.value.status_code == 400 and "top_p" in error.value.error


def test_unknown_model_is_404(server):
    with pytest.raises(ollama.ResponseError) as error:
        ollama.Client(host=server.url).chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert error.value.status_code == 404 and "no-such-model" in error.value.error


def test_logprobs_are_the_models_log_softmax(server, smollm2_path):
    import numpy as np
    reply = post(server, "/api/generate", {"model": "tiny", "prompt": "The capital of France is", "raw": True,
                                           "stream": False, "logprobs": True, "top_logprobs": 3,
                                           "options": {"temperature": 0, "num_predict": 3}}).json()
    entries = reply["logprobs"]
    assert len(entries) == 3 and "".join(e["token"] for e in entries) == reply["response"]
    for entry in entries:          # greedy: the drawn token is the likeliest, first of the top 3
        assert entry["top_logprobs"][0]["token"] == entry["token"] and entry["logprob"] <= 0
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted((t["logprob"] for t in entry["top_logprobs"]),
                                                                       reverse=True)
    # the first one from the logits themselves
    from refllm.engine import Session, Transformer
    from refllm.formats import open_model
    from refllm.tokenizer import Tokenizer
    model = open_model(smollm2_path)
    ids = Tokenizer.from_model(model).tokenize("The capital of France is")
    logits = Session(Transformer(model, "ggml"), 64).evaluate(ids)[-1].astype(np.float64)
    expected = logits.max() - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    assert entries[0]["logprob"] == pytest.approx(expected, abs=1e-9)
    streamed = list(ollama.Client(host=server.url).chat(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], options=GREEDY, stream=True, logprobs=True))
    assert sum(len(c.logprobs or []) for c in streamed) == streamed[-1].eval_count
    completion = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, logprobs=True,
        top_logprobs=2)
    assert len(completion.choices[0].logprobs.content) == 4
    assert len(completion.choices[0].logprobs.content[0].top_logprobs) == 2
    assert post(server, "/api/generate", {"model": "tiny", "prompt": "x", "top_logprobs": 21}).status_code == 400


def test_keep_alive_loads_and_unloads(server):
    loaded = post(server, "/api/generate", {"model": "tiny", "keep_alive": "10m"}).json()
    assert loaded["done"] and loaded["done_reason"] == "load"
    assert "tiny:latest" in [m["model"] for m in httpx.get(server.url + "/api/ps", timeout=WAIT).json()["models"]]
    unloaded = post(server, "/api/chat", {"model": "tiny", "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert "tiny:latest" not in [m["model"] for m in httpx.get(server.url + "/api/ps", timeout=WAIT).json()["models"]]
    once = post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False, "keep_alive": 0,
                                          "options": {"num_predict": 1}}).json()
    assert once["done"]
    assert "tiny:latest" not in [m["model"] for m in httpx.get(server.url + "/api/ps", timeout=WAIT).json()["models"]]


def test_keep_alive_runs_out(server):
    post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False, "keep_alive": 0.5,
                                   "options": {"num_predict": 1}})
    deadline = time.monotonic() + WAIT
    while "tiny:latest" in [m["model"] for m in httpx.get(server.url + "/api/ps", timeout=WAIT).json()["models"]]:
        assert time.monotonic() < deadline, "the model stayed loaded past its keep_alive"
        time.sleep(0.1)


def test_full_context_without_shift_ends_with_length(server):
    reply = post(server, "/api/generate", {"model": "tiny", "prompt": "Write a long story.", "stream": False,
                                           "shift": False, "options": {"num_ctx": 48, "num_predict": 200,
                                                                       "temperature": 0}}).json()
    assert reply["done_reason"] == "length" and reply["prompt_eval_count"] + reply["eval_count"] <= 49
    shifted = post(server, "/api/generate", {"model": "tiny", "prompt": "Write a long story.", "stream": False,
                                             "options": {"num_ctx": 48, "num_predict": 60, "temperature": 0}}).json()
    assert shifted["eval_count"] == 60


def test_context_carries_an_earlier_exchange(server):
    first = post(server, "/api/generate", {"model": "tiny", "prompt": "My name is Ada.", "stream": False,
                                           "options": GREEDY}).json()
    second = post(server, "/api/generate", {"model": "tiny", "prompt": "What is my name?", "stream": False,
                                            "context": first["context"], "options": GREEDY}).json()
    alone = post(server, "/api/generate", {"model": "tiny", "prompt": "What is my name?", "stream": False,
                                           "options": GREEDY}).json()
    assert second["prompt_eval_count"] > alone["prompt_eval_count"] + len(first["context"]) // 2


def test_a_model_without_a_chat_template_gets_the_turns_as_text(server, gemma3_path):
    rendered = post(server, "/api/chat", {"model": "gemma3", "_debug_render_only": True, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "The sky is"},
        {"role": "assistant", "content": " blue"}, {"role": "user", "content": " and the sea is"}]}).json()
    assert rendered["_debug_info"]["rendered_template"] == "The sky is blue and the sea is"


def test_model_options_resize_or_reload_the_loaded_model(server):
    def loaded():
        return server.scheduler.loaded["tiny:latest"]
    post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                   "options": {"num_ctx": 512, "num_predict": 1}})
    sizes = {m["model"]: m["context_length"] for m in httpx.get(server.url + "/api/ps", timeout=WAIT).json()["models"]}
    assert sizes["tiny:latest"] == 512 and loaded().slots[0].session.n_ctx == 512
    transformer = loaded().transformer
    post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                   "options": {"num_ctx": 512, "num_batch": 7, "num_predict": 1}})
    assert loaded().transformer is transformer and loaded().slots[0].session.cache.n_batch == 7   # a resize
    post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                   "options": {"num_ctx": 512, "num_thread": 1, "num_predict": 1}})
    assert loaded().transformer is not transformer and loaded().transformer.threads == 1         # a reload
    huge = post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                          "options": {"num_ctx": 256, "num_batch": 10**12, "num_predict": 1}})
    assert huge.json()["done"] and loaded().slots[0].session.cache.n_batch == 256            # capped at num_ctx


def test_truncated_prompt_reports_the_dropped_tokens(server):
    long_prompt = " ".join(["word"] * 300)
    reply = post(server, "/api/generate", {"model": "tiny", "prompt": long_prompt, "raw": True, "stream": False,
                                           "options": {"num_ctx": 128, "num_predict": 2}}).json()
    assert reply["truncated_tokens"] > 0 and reply["prompt_eval_count"] < 128
    refused = post(server, "/api/generate", {"model": "tiny", "prompt": long_prompt, "raw": True, "stream": False,
                                             "truncate": False, "options": {"num_ctx": 128, "num_predict": 2}})
    assert refused.status_code == 400 and "context" in refused.json()["error"]


def test_same_seed_same_reply_alone_or_among_others(server):
    """Each request has its own sampler: a seeded reply does not depend on the requests around it."""
    def ask(prompt: str) -> str:
        return post(server, "/api/generate", {"model": "tiny", "prompt": prompt, "raw": True, "stream": False,
                                              "options": {"seed": 1234, "temperature": 1.0, "num_predict": 16}}
                    ).json()["response"]
    alone = ask("Once upon a time")
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(ask, ["The weather today", "Once upon a time", "In a small town"]))
    assert replies[1] == alone


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                                         "colour": {"enum": ["red", "green", "blue"]}},
          "required": ["name", "age", "colour"]}
ASK_PERSON = "Describe a person as JSON with a name, an age and a favourite colour."


def test_json_schema_reply_validates(server):
    jsonschema = pytest.importorskip("jsonschema")
    reply = ollama.Client(host=server.url).chat(
        model="tiny", messages=[{"role": "user", "content": ASK_PERSON}], format=PERSON,
        options={"temperature": 0.8, "seed": 5, "num_predict": 200})
    jsonschema.validate(json.loads(reply.message.content), PERSON)
    assert reply.done_reason == "stop"
    plain = post(server, "/api/generate", {"model": "tiny", "prompt": ASK_PERSON, "format": "json",
                                           "stream": False, "options": {"temperature": 0, "num_predict": 200}}).json()
    assert isinstance(json.loads(plain["response"]), dict)
    bad = post(server, "/api/generate", {"model": "tiny", "prompt": "x", "format": {"type": "nonsense"}})
    assert bad.status_code == 400 and "schema" in bad.json()["error"]


# -- OpenAI's client ------------------------------------------------------------------------------

@pytest.fixture
def openai_client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=WAIT, max_retries=0)


def test_openai_chat_completion(server, openai_client):
    completion = openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Why is the sky blue?"}], max_tokens=10, temperature=0)
    native = post(server, "/api/chat", {"model": "tiny", "stream": False, "messages": [
        {"role": "user", "content": "Why is the sky blue?"}], "options": {"temperature": 0, "num_predict": 10}}).json()
    assert completion.choices[0].message.content == native["message"]["content"]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 10
    assert completion.usage.prompt_tokens == native["prompt_eval_count"]
    assert completion.object == "chat.completion" and completion.system_fingerprint == "fp_ollama"


def test_openai_streaming_ends_with_usage_and_done(server, openai_client):
    stream = openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    whole = openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=6, temperature=0)
    assert text == whole.choices[0].message.content
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=WAIT, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_openai_response_format_json_schema(server, openai_client):
    jsonschema = pytest.importorskip("jsonschema")
    completion = openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": ASK_PERSON}], max_tokens=200, seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    jsonschema.validate(json.loads(completion.choices[0].message.content), PERSON)
    anything = openai_client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": ASK_PERSON}], max_tokens=200, temperature=0,
        response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_openai_completion_streams(server, openai_client):
    chunks = list(openai_client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=5,
                                                   temperature=0, stream=True, stream_options={"include_usage": True}))
    whole = openai_client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=5,
                                             temperature=0)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_openai_completion_and_models(server, openai_client):
    completion = openai_client.completions.create(model="tiny", prompt="The capital of France is",
                                                  max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].text
    ids = [m.id for m in openai_client.models.list()]
    assert "tiny:latest" in ids and "mine:latest" in ids
    assert openai_client.models.retrieve("mine").id == "mine:latest"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "Hi"}])
    assert "role" in error.value.body["message"]


# -- raw HTTP: what no client sends ---------------------------------------------------------------

BAD_BODIES = [
    ("/api/generate", b'{"model": "tiny", "prompt": ', "invalid JSON"),
    ("/api/generate", b'[1, 2]', "JSON object"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "options": {"temperature": NaN}}', "NaN is not"),
    ("/api/generate", b'{"model": "tiny", "format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    ("/api/generate", b'{"model": "tiny", "prompt": "\xff"}', "invalid JSON"),          # not UTF-8
    ("/api/generate", {"model": "tiny", "prompt": 5}, '"prompt"'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "stream": "yes"}, '"stream"'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": {"a": 1}}, '"context"'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": [1.5]}, '"context.0"'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": [1, 10**9]}, "not in the vocabulary"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": "fast"}, '"options"'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": 7}, '"format'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": "yaml"}, "format"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "soon"}, "duration"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "options": {"num_ctx": 1e400}}', "finite"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "keep_alive": 1e400}', "finite"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"seed": 10**30}}, "seed"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": [1]}, '"keep_alive'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "images": ["aGk="]}, "images"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "think": True}, "thinking"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "suffix": "y"}, "insert"),
    ("/api/generate", {"prompt": "x"}, "model is required"),
    ("/api/chat", {"model": "tiny", "messages": "hi"}, '"messages"'),
    ("/api/chat", {"model": "tiny", "messages": [{"content": "hi"}]}, '"messages.0.role"'),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]}, "does not support tools"),
    ("/api/show", {"model": 3}, '"model"'),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                              "temperature": "hot"}, '"temperature"'),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, "at least one"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "xml"}}, "response_format"),
]


@pytest.mark.parametrize("path, body, says", BAD_BODIES, ids=[f"{p}:{s}" for p, _, s in BAD_BODIES])
def test_bad_request_is_400_and_the_server_keeps_serving(server, path, body, says):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(server.url + path, timeout=WAIT, **kwargs)
    assert response.status_code == 400
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert says in message
    assert httpx.get(server.url + "/api/version", timeout=WAIT).status_code == 200


@pytest.mark.parametrize("name", ["/etc/passwd", "../../etc/passwd", "~/model.gguf", "a/../../b", "..",
                                  "./tiny", "C:\\models\\x.gguf"])
def test_a_path_is_never_a_model_name(server, name):
    response = post(server, "/api/generate", {"model": name, "prompt": "x"})
    assert response.status_code == 400 and "not a path" in response.json()["error"]
    assert post(server, "/api/show", {"model": name}).status_code == 400


def test_oversized_body_is_413(server):
    from refllm.server.app import MAX_BODY
    response = httpx.post(server.url + "/api/generate", content=b"x" * (MAX_BODY + 1), timeout=WAIT)
    assert response.status_code == 413 and "too large" in response.json()["error"]

    def chunked():                 # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY // (1 << 20) + 1):
            yield b" " * (1 << 20)
    response = httpx.post(server.url + "/api/generate", content=chunked(), timeout=WAIT)
    assert response.status_code == 413


def test_a_model_that_fails_to_load_is_500_and_the_server_keeps_serving(server):
    response = post(server, "/api/generate", {"model": "broken", "prompt": "Hi", "stream": False})
    assert response.status_code == 500 and response.json()["error"]
    assert "Traceback" not in response.text
    assert post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                          "options": {"num_predict": 1}}).json()["done"]


def test_an_engine_failure_mid_stream_ends_the_stream_with_an_error(server, monkeypatch):
    from refllm.engine.session import Session

    def failing(self, *args, **kwargs):
        yield "partial"
        raise RuntimeError("boom")
    with monkeypatch.context() as patch:
        patch.setattr(Session, "generate", failing)
        with httpx.stream("POST", server.url + "/api/generate", timeout=WAIT,
                          json={"model": "tiny", "prompt": "Hi"}) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line]
        whole = post(server, "/api/chat", {"model": "tiny", "stream": False,
                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert lines[0]["response"] == "partial" and lines[-1] == {"error": "internal error: RuntimeError: boom"}
    assert whole.status_code == 500 and "boom" in whole.json()["error"]
    assert post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                          "options": {"num_predict": 1}}).json()["done"]


def test_unknown_route_is_404(server):
    assert httpx.get(server.url + "/api/nothing", timeout=WAIT).status_code == 404


def test_dropped_stream_frees_the_engine_within_a_token(server):
    """A client that goes away mid-stream stops its generation at the next token."""
    server.idle()
    with httpx.stream("POST", server.url + "/api/generate", timeout=WAIT, json={
            "model": "tiny", "prompt": "Write a long story.", "options": {"num_predict": 400, "temperature": 0}}) as r:
        lines = r.iter_lines()
        next(lines), next(lines)                 # two tokens arrived: the engine is generating
    server.idle()
    stats = last_reply_stats(server)
    assert stats.done_reason == "cancelled"
    assert stats.eval_count < 400
    reply = post(server, "/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False,
                                           "options": {"num_predict": 2}}).json()
    assert reply["done"]


def last_reply_stats(server: Server):
    """The figures of the reply the engine ran last."""
    loaded = next(m for m in server.scheduler.running() if m.entry.name == "tiny:latest")
    return max(loaded.slots, key=lambda slot: slot.last_used).session.stats


def test_a_client_gone_while_waiting_or_unstreamed_is_not_served(server, caplog):
    """A request whose client left while it waited in the queue is never run; one whose client
    leaves during an unstreamed reply stops at the next token."""
    server.idle()
    caplog.set_level("INFO", logger="refllm.server")
    long = {"model": "tiny", "prompt": "Write a long story.", "options": {"num_predict": 400, "temperature": 0}}
    with httpx.stream("POST", server.url + "/api/generate", json=long, timeout=WAIT) as running:
        lines = running.iter_lines()
        next(lines)
        with pytest.raises(httpx.ReadTimeout):     # waits behind the stream, then gives up
            httpx.post(server.url + "/api/generate", timeout=0.5, json={
                "model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 50}})
        for _ in range(3):
            next(lines)
    server.idle()
    stats = last_reply_stats(server)
    assert stats.done_reason == "cancelled" and stats.eval_count < 400      # the stream's
    assert caplog.text.count("generate tiny:latest in") == 1               # the waiter never ran

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/api/generate", timeout=1.0, json=long | {"stream": False})
    server.idle()
    stats = last_reply_stats(server)
    assert stats.done_reason == "cancelled" and stats.eval_count < 400


def test_full_queue_answers_503(server):
    """max_queue 2: with one request running and two waiting, a fourth is refused at once."""
    server.idle()
    long = {"model": "tiny", "prompt": "Write a long story.", "options": {"num_predict": 300, "temperature": 0}}
    with httpx.stream("POST", server.url + "/api/generate", json=long, timeout=WAIT) as running:
        lines = running.iter_lines()             # kept: a dropped iterator would close the stream
        next(lines)                              # it is on the engine now
        short = {"model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(post, server, "/api/generate", short) for _ in range(2)]
            deadline = time.monotonic() + WAIT
            while server.scheduler.jobs.qsize() < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refused = post(server, "/api/generate", short)
            assert refused.status_code == 503 and "busy" in refused.json()["error"]
            running.close()                      # let the queue drain
            assert [f.result(timeout=WAIT).status_code for f in waiting] == [200, 200]


# -- the command and its settings -----------------------------------------------------------------

def test_parse_host_reads_ollama_host_forms():
    assert parse_host(None) == ("127.0.0.1", 11434)
    assert parse_host("0.0.0.0") == ("0.0.0.0", 11434)
    assert parse_host(":8080") == ("127.0.0.1", 8080)
    assert parse_host("http://localhost:9000/") == ("localhost", 9000)
    assert parse_host("[::1]:7000") == ("::1", 7000)
    from refllm.errors import RefllmError
    for bad in ("host:port", "a:99999", "a b"):
        with pytest.raises(RefllmError):
            parse_host(bad)


def test_keep_alive_reads_go_durations():
    assert keep_alive_seconds("5m") == 300 and keep_alive_seconds("1h30m") == 5400
    assert keep_alive_seconds("0") == 0 and keep_alive_seconds(0) == 0 and keep_alive_seconds(2.5) == 2.5
    assert keep_alive_seconds("-1m") == -1 and keep_alive_seconds(-3) == -1 and keep_alive_seconds(None) is None
    assert keep_alive_seconds("250ms") == 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refllm_serve_command(smollm2_path, tmp_path):
    """`refllm serve` itself: REFLLM_HOST picks the address; the pack answers by its name."""
    port = _free_port()
    env = dict(os.environ, REFLLM_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "refllm.cli", "serve", "--log-level", "warning"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + WAIT, None
        while answer is None:
            assert process.poll() is None and time.monotonic() < deadline, "refllm serve did not start"
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.ConnectError:
                time.sleep(0.2)
        assert answer.text == "Ollama is running"
        reply = ollama.Client(host=f"127.0.0.1:{port}").generate(model="smollm2", prompt="Hi",
                                                                 options={"num_predict": 2})
        assert reply.done
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("args, env, says", [
    (["--keep-alive", "soon"], {}, "--keep-alive"),
    (["--host", "a:b:c"], {}, "invalid host"),
    (["--model", "x=/no/such.gguf"], {}, "no such file"),
    ([], {"REFLLM_NUM_PARALLEL": "many"}, "REFLLM_NUM_PARALLEL"),
    ([], {"REFLLM_HOST": "host:port"}, "invalid host"),
])
def test_refllm_serve_bad_settings_exit_2(args, env, says):
    result = subprocess.run([sys.executable, "-m", "refllm.cli", "serve", *args], capture_output=True, text=True,
                            env=dict(os.environ, **env), timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr


def test_refllm_serve_without_the_extra_says_how_to_install_it():
    code = "import sys; sys.modules['fastapi'] = None; from refllm.cli import main; main(['serve'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert 'pip install "refllm[serve]"' in result.stderr and "fastapi" in result.stderr
