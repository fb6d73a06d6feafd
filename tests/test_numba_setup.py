"""refllm/numba_setup.py: Numba's cache folder follows the jitted sources, so an edit to any of
them can never leave stale machine code running; OpenMP's idle workers back off."""

from __future__ import annotations

import os

import numba
import pytest

from refllm import numba_setup


def fake_package(root, kernel: str):
    for package in ("kernels", "ggml_cpu"):
        (root / package).mkdir(parents=True, exist_ok=True)
    (root / "kernels" / "a.py").write_text(kernel)
    (root / "ggml_cpu" / "tables.py").write_text("TABLE = [1, 2]\n")  # read by jitted code
    (root / "cli.py").write_text("import numba\n")            # no jitted code: not part of the key
    return root


def test_the_folder_changes_with_any_jitted_source_and_only_with_those(tmp_path, monkeypatch):
    monkeypatch.setattr(numba_setup, "PACKAGE", fake_package(tmp_path / "pkg", "from numba import njit\n"))
    first = numba_setup.sources_digest()
    (tmp_path / "pkg" / "cli.py").write_text("import numba  # edited\n")
    assert numba_setup.sources_digest() == first
    (tmp_path / "pkg" / "ggml_cpu" / "tables.py").write_text("TABLE = [1, 3]\n")
    second = numba_setup.sources_digest()
    assert second != first
    (tmp_path / "pkg" / "kernels" / "a.py").write_text("from numba import njit  # edited\n")
    assert numba_setup.sources_digest() not in (first, second)


def test_configure_sets_numba_cache_dir_and_keeps_a_few_old_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(numba_setup, "PACKAGE", fake_package(tmp_path / "pkg", "import numba\n"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    folders = []
    for edit in range(numba_setup.KEEP + 3):
        (tmp_path / "pkg" / "kernels" / "a.py").write_text(f"import numba  # edit {edit}\n")
        monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
        folders.append(numba_setup.configure())
        os.utime(folders[-1], (edit, edit))                   # distinct ages, oldest first
        assert os.environ["NUMBA_CACHE_DIR"] == str(folders[-1])
        assert numba.config.CACHE_DIR == str(folders[-1])
    assert len(set(folders)) == numba_setup.KEEP + 3
    assert sorted(p.name for p in (tmp_path / "cache" / "refllm-numba").iterdir()) == \
        sorted(p.name for p in folders[-numba_setup.KEEP - 1:])


def test_a_users_numba_setup_dir_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert numba_setup.configure() is None
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "cache").exists()


def test_a_new_folder_is_fresh_and_an_existing_one_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(numba_setup, "PACKAGE", fake_package(tmp_path / "pkg", "import numba\n"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    for expected in (True, False):
        monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
        numba_setup.configure()
        assert numba_setup.FRESH is expected


@pytest.mark.parametrize("user", [{}, {"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_openmp_workers_back_off_unless_the_user_said_otherwise(monkeypatch, tmp_path, user):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    numba_setup.configure()
    expected = user.get("GOMP_SPINCOUNT", None if user else numba_setup.SPIN_COUNT)
    assert os.environ.get("GOMP_SPINCOUNT") == expected


def test_a_cache_root_that_cannot_be_made_leaves_numbas_default(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert numba_setup.configure() is None and "NUMBA_CACHE_DIR" not in os.environ
