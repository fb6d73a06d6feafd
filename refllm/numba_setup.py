"""Numba's process-wide settings, made on `import refllm` before Numba is loaded.

- The on-disk cache, kept apart for every version of refllm's jitted code. Numba keys a cached
  function on its own source file, so when a jitted function calls (and inlines) one from
  another file that has since changed, the cache still serves the old machine code.
  (Global arrays, such as the lookup tables, are frozen into the machine code too.)
  `configure` points Numba's cache at a folder named by the sha256 of every source file of
  refllm/kernels/ and refllm/ggml_cpu/, where all jitted code and everything it reads live: any
  change to any of them starts a fresh cache instead (and `FRESH` says so, for the CLI to
  announce the compilation). A user's own NUMBA_CACHE_DIR is left alone.
- How long idle OpenMP workers spin (Numba's parallel loops run on OpenMP's pool). libgomp's
  default spins 300,000 times before a worker sleeps; on a machine whose cores are busy
  elsewhere the spinning workers take the CPU from the ones with work, and a ggml prefill of
  SmolLM2 took 1.5 s instead of 0.06 s. GOMP_SPINCOUNT=10000 backs off (0.15 s busy) and costs
  nothing when idle (bench/RESULTS.md). A user's GOMP_SPINCOUNT or OMP_WAIT_POLICY is kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
JITTED = ("kernels", "ggml_cpu")      # the packages whose sources key the cache
KEEP = 4            # cache folders kept for older sources (other checkouts, recent edits)
SPIN_COUNT = "10000"  # libgomp's spins before an idle worker sleeps (its default: 300,000)
FRESH = False       # configure() made a new cache folder: this process compiles every kernel it runs


def sources_digest() -> str:
    """sha256 over the path and bytes of every .py file of the JITTED packages."""
    digest = hashlib.sha256()
    for path in sorted(p for package in JITTED for p in (PACKAGE / package).rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_root() -> Path:
    """$XDG_CACHE_HOME/refllm-numba, else ~/.cache/refllm-numba."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "refllm-numba"


def configure() -> Path | None:
    """Set OpenMP's spin count (unless the user set one), and point Numba's cache at
    cache_root()/<sources_digest()[:16]> unless NUMBA_CACHE_DIR is set; drop all but the KEEP
    most recently used older folders. Returns the folder, or None when the user's
    NUMBA_CACHE_DIR was kept or the folder cannot be made (Numba's own default then)."""
    global FRESH
    if not (os.environ.get("GOMP_SPINCOUNT") or os.environ.get("OMP_WAIT_POLICY")):
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    root = cache_root()
    folder = root / sources_digest()[:16]
    try:
        FRESH = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)
        others = sorted((p for p in root.iterdir() if p.is_dir() and p != folder), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    for old in others[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:                  # loaded before refllm: set its live config too
        sys.modules["numba"].config.CACHE_DIR = str(folder)
    return folder
