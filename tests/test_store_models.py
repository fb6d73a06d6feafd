"""A model made from a Modelfile runs as ollama runs it: `refllm create` writes it into a store
laid out in a temporary folder, and `refllm generate`, `refllm chat` and `refllm serve` all
render its Go TEMPLATE (not the GGUF's Jinja template), with its SYSTEM prompt, MESSAGE turns
and PARAMETERs. The issue's seed example is the first test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from refllm.engine import Session, Transformer
from refllm.engine.prompt import ModelPrompt, text_tokens
from refllm.engine.sampling import SamplingOptions
from refllm.formats import open_model
from refllm.formats.modelfile import read_modelfile
from refllm.formats.ollama import find_manifest, read_setup
from refllm.tokenizer import Tokenizer
from refllm.tools.create_model import create_model

TEMPLATE = "{{ if .System }}{{ .System }}\n{{ end }}<human>: {{ .Prompt }}\n<bot>: "
SYSTEM = "You answer in one sentence."
STOPS = ["<human>:", "<bot>:"]
SEED_MODELFILE = f'''# the seed example: a GGUF, a <human>:-style TEMPLATE, a SYSTEM prompt, two stop lines
FROM ./model.gguf
TEMPLATE """{TEMPLATE}"""
SYSTEM """{SYSTEM}"""
PARAMETER stop "<human>:"
PARAMETER stop "<bot>:"
PARAMETER temperature 0
PARAMETER num_predict 80
'''
TIMEOUT = 300


@pytest.fixture
def store(tmp_path, smollm2_path, monkeypatch) -> Path:
    root = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    (tmp_path / "model.gguf").symlink_to(smollm2_path)
    (tmp_path / "Modelfile").write_text(SEED_MODELFILE)
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refllm.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def expected_reply(model_path: Path, text: str, stops: list[str], num_predict: int) -> tuple[str, str]:
    """The greedy reply to an exact prompt text (special tokens parsed), and why it ended."""
    model = open_model(model_path)
    tokenizer = Tokenizer.from_model(model)
    session = Session(Transformer(model, "ggml"), 4096)
    reply = "".join(session.generate(text_tokens(tokenizer, text, templated=True), tokenizer,
                                     SamplingOptions(temperature=0, stop=tuple(stops), num_predict=num_predict)))
    return reply, session.stats.done_reason


def test_the_seed_example_runs_with_its_template_system_and_stops(store, tmp_path, smollm2_path):
    created = cli("create", "seed", "-f", str(tmp_path / "Modelfile"))
    assert created.returncode == 0, created.stderr
    setup = read_setup(find_manifest("seed", store), store)
    assert setup.template == TEMPLATE and setup.system == SYSTEM and setup.params["stop"] == STOPS

    question = "Why is the sky blue?"
    generated = cli("generate", "seed", question)
    assert generated.returncode == 0, generated.stderr
    rendered = f"{SYSTEM}\n<human>: {question}\n<bot>: "
    reply, why = expected_reply(smollm2_path, rendered, STOPS, 80)
    assert generated.stdout == reply + "\n"
    assert why == "stop" and not any(stop in generated.stdout for stop in STOPS)
    # the same model through the GGUF's own (Jinja) template says something else
    plain = cli("generate", str(smollm2_path), question, "--temperature", "0", "-n", "80")
    assert plain.stdout != generated.stdout


def test_flags_override_the_models_parameters(store, tmp_path):
    assert cli("create", "seed", "-f", str(tmp_path / "Modelfile")).returncode == 0
    short = cli("generate", "seed", "Tell me about the sea.", "-n", "3", "--stop", "nothing-like-this")
    assert short.returncode == 0 and len(short.stdout.split()) <= 3


def test_chat_uses_the_template_and_the_seeded_messages(store, tmp_path, smollm2_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(SEED_MODELFILE + 'MESSAGE user "My name is Ada."\nMESSAGE assistant "Hello Ada."\n')
    assert cli("create", "ada", "-f", str(modelfile)).returncode == 0
    setup = read_setup(find_manifest("ada", store), store)
    assert setup.messages == [{"role": "user", "content": "My name is Ada."},
                              {"role": "assistant", "content": "Hello Ada."}]
    model = open_model(smollm2_path)
    prompt = ModelPrompt(Tokenizer.from_model(model), model.metadata, go_template=setup.template)
    turns = [{"role": "system", "content": SYSTEM}, *setup.messages, {"role": "user", "content": "What is my name?"}]
    # legacy mode: one rendering per turn, the last one cut at {{ .Response }}
    assert prompt.text(turns) == (f"{SYSTEM}\n<human>: My name is Ada.\n<bot>: Hello Ada."
                                  "<human>: What is my name?\n<bot>: ")
    reply, _ = expected_reply(smollm2_path, prompt.text(turns), STOPS, 80)
    chatted = cli("run", "ada", "What is my name?")
    assert chatted.returncode == 0 and chatted.stdout == reply + "\n"


def test_serve_renders_the_go_template(store, tmp_path, smollm2_path):
    pytest.importorskip("fastapi", reason='refllm serve needs the serve extra: pip install "refllm[serve]"')
    from fastapi.testclient import TestClient

    from refllm.server.app import create_app
    from refllm.server.registry import Registry
    from refllm.server.scheduler import Config, Scheduler

    create_model("seed", read_modelfile(tmp_path / "Modelfile"), store)
    scheduler = Scheduler(Config())
    try:
        client = TestClient(create_app(Registry(store_root=store), scheduler))
        shown = client.post("/api/generate", json={"model": "seed", "prompt": "Hi", "_debug_render_only": True})
        assert shown.json()["_debug_info"]["rendered_template"] == f"{SYSTEM}\n<human>: Hi\n<bot>: "
        own = client.post("/api/generate", json={"model": "seed", "prompt": "Hi", "_debug_render_only": True,
                                                 "template": "Q: {{ .Prompt }} A:", "system": "ignored"})
        assert own.json()["_debug_info"]["rendered_template"] == "Q: Hi A:"
        fim = client.post("/api/generate", json={"model": "seed", "prompt": "def f(", "suffix": "):",
                                                 "template": "<pre>{{ .Prompt }}<suf>{{ .Suffix }}<mid>",
                                                 "_debug_render_only": True})
        assert fim.json()["_debug_info"]["rendered_template"] == "<pre>def f(<suf>):<mid>"
        reply = client.post("/api/generate", json={"model": "seed", "prompt": "Why is the sky blue?",
                                                   "stream": False}).json()
        expected, _ = expected_reply(smollm2_path, f"{SYSTEM}\n<human>: Why is the sky blue?\n<bot>: ", STOPS, 80)
        assert reply["response"] == expected and reply["done_reason"] == "stop"
        for body, says in (({"template": "{{ .Prompt "}, "template"),
                           ({"suffix": "x"}, "insert"),
                           ({"think": True}, "thinking")):
            bad = client.post("/api/generate", json={"model": "seed", "prompt": "Hi", **body})
            assert bad.status_code == 400 and says in bad.json()["error"]
        show = client.post("/api/show", json={"model": "seed"}).json()
        assert show["template"] == TEMPLATE and "PARAMETER stop <human>:" in show["modelfile"]
    finally:
        scheduler.stop()


def test_show_template_prints_the_go_template(store, tmp_path):
    assert cli("create", "seed", "-f", str(tmp_path / "Modelfile")).returncode == 0
    shown = cli("show", "seed", "--template")
    assert shown.returncode == 0 and shown.stdout.rstrip("\n") == TEMPLATE.rstrip("\n")
