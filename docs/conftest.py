"""docs/'s pages run as tests (Sybil), each page's blocks in order in one namespace:

    ```python   a block of code; one that starts with >>> is a doctest, its printed output checked
                (a number to the digits it is written with: Sybil's NUMBER)
    ```console  `$ command` lines run with bash in a scratch folder, each followed by the output
                it must print (`...` stands for any text, runs of whitespace compare equal)

A block that cannot run here says why in a `<!-- skip: next "reason" -->` comment before it.
The pages read the fetched models, so their blocks are real_models tests (`-m "not
real_models"` leaves them out). Their code draws its pictures into FIGURES: a temporary folder
under the tests, docs/figures/ with REFLLM_WRITE_FIGURES=1 (to refresh the committed ones):

    REFLLM_WRITE_FIGURES=1 python -m pytest -q docs/
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.evaluators.doctest import NUMBER
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

DOCS = Path(__file__).resolve().parent
PAGES = ["*.md"]
NOT_PAGES = ["README.md", "ARCHITECTURE.md"]     # notes without code to run
COMMAND_TIMEOUT = 300                             # seconds for one console command
OUTPUT_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PYTHON_FLAGS = OUTPUT_FLAGS | NUMBER     # a page shows the digits that hold on every machine


@pytest.fixture(scope="session")
def FIGURES(tmp_path_factory) -> Path:          # upper case: a constant, to the pages' code
    """Where the pages' pictures go: docs/figures/ when REFLLM_WRITE_FIGURES is set, else a
    temporary folder (the tests leave the repository as it was)."""
    if os.environ.get("REFLLM_WRITE_FIGURES"):
        (DOCS / "figures").mkdir(exist_ok=True)
        return DOCS / "figures"
    return tmp_path_factory.mktemp("figures")


@pytest.fixture(scope="session")
def console_dir(tmp_path_factory) -> Path:
    """The scratch folder the console blocks run in."""
    return tmp_path_factory.mktemp("console")


def console_commands(block: str) -> list[tuple[str, str]]:
    """A console block -> [(command, expected output)]: each `$ ` line is a command, and the
    lines up to the next one are what it prints."""
    commands: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return [(command, "".join(line + "\n" for line in output)) for command, output in commands]


def run_console(example) -> None:
    """Run each command of a console block with bash (-e -o pipefail), refllm on the PATH; it
    must exit 0 and print what the block shows."""
    work = example.namespace["console_dir"]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    checker = doctest.OutputChecker()
    for command, expected in console_commands(example.parsed):
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=work, env=env,
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if result.returncode != 0:
            raise AssertionError(f"$ {command}\nexit {result.returncode}:\n{result.stderr[-2000:]}")
        if not checker.check_output(expected, result.stdout, OUTPUT_FLAGS):
            raise AssertionError(f"$ {command}\n" + checker.output_difference(
                doctest.Example(command, expected), result.stdout, OUTPUT_FLAGS))


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=PYTHON_FLAGS), CodeBlockParser("console", run_console),
             SkipParser()],
    patterns=PAGES,
    excludes=NOT_PAGES,
    fixtures=["FIGURES", "console_dir"],
).pytest()


def pytest_collection_modifyitems(items):
    """Every page reads the fetched models: `-m "not real_models"` leaves the pages out."""
    for item in items:
        if item.path.parent == DOCS and item.path.suffix == ".md":
            item.add_marker(pytest.mark.real_models)
