"""The package layout of docs/ARCHITECTURE.md: dependencies point one way, every package says its
role in its docstring, and the recipes name files that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refllm"
# package -> the refllm packages it may import (itself included); root modules such as
# errors.py and type_traits.py may be imported by all
MAY_IMPORT = {
    "formats": {"formats"},
    "kernels": {"kernels", "formats"},
    "ggml_cpu": {"ggml_cpu", "kernels", "formats"},
    "tokenizer": {"tokenizer", "formats"},
    "engine": {"engine", "ggml_cpu", "kernels", "tokenizer", "formats"},
    "tools": {"tools", "engine", "ggml_cpu", "kernels", "tokenizer", "formats"},
}


def imported_packages(path: Path) -> set[str]:
    """The refllm packages (refllm.<name> with a folder) a source file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    parts = {name.split(".")[1] for name in names if name.startswith("refllm.")}
    return {part for part in parts if (PACKAGE / part).is_dir()}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(package):
    for path in sorted((PACKAGE / package).rglob("*.py")):
        assert imported_packages(path) <= MAY_IMPORT[package], path.relative_to(ROOT)


def test_every_folder_is_a_package_with_a_docstring():
    folders = [p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert {p.name for p in folders} >= set(MAY_IMPORT)
    for folder in folders:
        module = importlib.import_module(".".join(folder.relative_to(ROOT).parts))
        assert module.__doc__ and module.__doc__.strip(), folder


def test_architecture_recipes_name_real_files():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:refllm|golden|tests)/[\w/.]+\.(?:py|md|json))`", text))
    assert len(paths) > 10
    for path in paths:
        assert (ROOT / path).is_file(), path
