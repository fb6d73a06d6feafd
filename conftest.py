"""README.md's examples run as tests (Sybil): its Python blocks in order in one namespace, its
shell blocks with bash, both in a work folder that holds what the examples name (a model.gguf,
a legacy .bin to convert, another engine's logits to compare, a home with ~/models/, an ollama
store with smollm2:135m). A block that cannot run here says why in a
`<!-- skip: next "reason" -->` comment before it.

Sybil was chosen over pytest-markdown-docs because it runs any language through an evaluator
of our own (the shell blocks) and has a skip directive with a reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parent
SHELL_TIMEOUT = 900          # seconds for one block: the longest generates a reply on the CPU


@pytest.fixture(scope="session")
def readme_dir(tmp_path_factory) -> Path:
    """The folder the README's examples run in, with every file they name."""
    sys.path.insert(0, str(ROOT / "tests"))
    from legacy_files import V3_QUANT, tiny_llama
    from ollama_store import add_model

    from refllm import fetch

    smollm2, gemma3 = fetch.ensure_pack("smollm2", quiet=True), fetch.ensure_pack("gemma3", quiet=True)
    work = tmp_path_factory.mktemp("readme")
    (work / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(smollm2)
    (work / "model.gguf").symlink_to(smollm2)
    (work / "golden").symlink_to(ROOT / "golden")
    (work / "home" / "models").mkdir(parents=True)
    (work / "home" / "models" / "gemma-3-270m-Q4_K_M.gguf").symlink_to(gemma3)
    add_model(work / "ollama", "registry.ollama.ai/library/smollm2/135m", smollm2.read_bytes())
    (work / "llama-7b.ggjt.q4_0.bin").write_bytes(tiny_llama("ggjt", 3, quant=V3_QUANT).data)
    _another_engines_logits(smollm2, work / "mine.npz")
    return work


def _another_engines_logits(model_path: Path, out: Path) -> None:
    """The `mine.npz` of the README's compare example: logits of ids 1,2,3,4 by another engine
    (here refllm's ggml numerics, against the f32 reference the example writes)."""
    import numpy as np

    import refllm
    from refllm.engine.session import prompt_logits
    from refllm.engine.transformer import Transformer
    from refllm.tools.compare import save_logits
    ids = [1, 2, 3, 4]
    logits = prompt_logits(Transformer(refllm.open(model_path), "ggml"), ids)
    save_logits(out, np.asarray(ids, np.int32), logits)


@pytest.fixture(scope="session")
def readme_server(readme_dir):
    """`refllm serve` for the README's Serve examples, on a free loopback port that OLLAMA_HOST
    names (ollama's client reads it, and so do the examples); stopped after the session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    env = _shell_env(readme_dir) | {"REFLLM_HOST": host}
    server = subprocess.Popen([sys.executable, "-m", "refllm.cli", "serve", "--log-level", "warning"], env=env,
                              cwd=readme_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://{host}/", timeout=5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("refllm serve did not start for the README's examples") from None
            time.sleep(0.2)
    previous = os.environ.get("OLLAMA_HOST")
    os.environ["OLLAMA_HOST"] = host
    yield host
    if previous is None:
        os.environ.pop("OLLAMA_HOST", None)
    else:
        os.environ["OLLAMA_HOST"] = previous
    server.terminate()
    server.wait(timeout=30)


def _shell_env(work: Path) -> dict[str, str]:
    from refllm import fetch
    env = dict(os.environ, HOME=str(work / "home"), REFLLM_HOME=str(fetch.home()),
               OLLAMA_MODELS=str(work / "ollama"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_shell(example) -> None:
    """Run a ```sh block with bash (-e -o pipefail) in the work folder; it must exit 0."""
    work = example.namespace["readme_dir"]
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", example.parsed], cwd=work,
                            env=_shell_env(work), capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{example.parsed}\n{result.stderr[-2000:]}")


@pytest.fixture
def in_readme_dir(readme_dir, monkeypatch) -> None:
    """Python blocks run in the work folder, as a user's would in theirs."""
    monkeypatch.chdir(readme_dir)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), CodeBlockParser("sh", run_shell), SkipParser()],
    patterns=["README.md"],
    fixtures=["readme_dir", "in_readme_dir", "readme_server"],
).pytest()


def pytest_collection_modifyitems(items):
    """The README's examples need the fetched models: `-m "not real_models"` leaves them out."""
    for item in items:
        if item.path.name == "README.md":
            item.add_marker(pytest.mark.real_models)

