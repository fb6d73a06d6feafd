"""Compare two models' logits as llama-perplexity's `--kl-divergence` mode does.

A logits file is an npz archive with two keys:

    tokens   int32   [n]           the token ids that were scored
    logits   float32 [n, n_vocab]  row i is the model's prediction for token i+1

so the last row predicts a token that is not in the file. `refllm logits` writes such files
and `refllm compare REF.npz TEST.npz` prints what this module computes:

    ref_tokens, ref_logits = load_logits("ref.npz")
    test_tokens, test_logits = load_logits("test.npz")
    check_same_tokens(ref_tokens, test_tokens)
    stats = compare_logits(ref_logits, test_logits, tokens=ref_tokens)
    print(format_report(stats))

The statistics follow llama.cpp's tools/perplexity/perplexity.cpp (`log_softmax`, which
scores one position, and `kl_divergence`, which summarises them) and NMSE follows
examples/model-conversion/scripts/utils/check-nmse.py (`calculate_nmse`). "ref" plays the
part of llama-perplexity's base model (`--kl-divergence-base`), "test" the model under test.
Two deliberate differences from llama-perplexity: the reference's log-probabilities are exact
float64 values here, where llama.cpp stores them quantized to 16 bits over [max - 16, max] and
drops every term below -16; and KLD and top-1 agreement use every row, the last one included,
where llama-perplexity only scores rows whose next token it knows. Δp needs that next token,
so it covers rows 0..n-2 (see `compare_logits`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from refllm.errors import RefllmError
from refllm.formats.files import atomic_output


class CompareError(RefllmError, ValueError):
    """A logits file or array that cannot be compared, explained in one line."""


# Softmax work is done on blocks of rows of about this many float64 values (32 MiB), so a
# [512, 262144] comparison never holds whole float64 copies of both arrays.
_VALUES_PER_BLOCK = 1 << 22

# What a broken npz can raise while numpy reads it: no such file or an unreadable one, a
# pickle refused (allow_pickle=False), a truncated or corrupt zip member.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def save_logits(path: str | os.PathLike, tokens: Any, logits: Any, **provenance: Any) -> None:
    """Write a logits file atomically: afterwards `path` holds either the complete new file or
    whatever it held before, never a partial write.

    tokens: integer [n]; logits: float [n, n_vocab], with the checks `load_logits` makes.
    Logits are stored as float32, or as float16 when given float16 (compact golden files).
    Each keyword in `provenance` (e.g. model_sha256="ab12...") is stored as one more key: a
    string, a number or a numeric array. Raises CompareError naming `path` for bad input or
    when the file cannot be written.
    """
    name = os.fspath(path)
    tokens, logits = _checked_tokens_and_logits(tokens, logits, name, keep_float16=True)
    extra_keys = {key: _checked_provenance(key, value, name) for key, value in provenance.items()}

    try:
        with atomic_output(name) as f:
            # through a file object: np.savez would add ".npz" to a bare name
            np.savez(f, tokens=tokens, logits=logits, **extra_keys)
    except OSError as error:
        raise CompareError(f"{name}: cannot write ({_reason(error)})") from None


def load_logits(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a logits file written by `save_logits` (or any npz with the same keys).

    Returns (tokens int32 [n], logits float32 [n, n_vocab]); float16 or float64 logits are
    converted to float32. Promises n >= 1, n_vocab >= 1, every logit finite and every token id
    in [0, n_vocab). Anything else raises CompareError with one line that names the file and
    says what was expected; never another exception for a bad file.
    """
    name = os.fspath(path)
    arrays = _read_npz(name, ("tokens", "logits"))
    return _checked_tokens_and_logits(arrays["tokens"], arrays["logits"], name, keep_float16=False)


def load_reference(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a reference: a logits file (`save_logits`: every position), or one of golden/logits'
    compact files (keys `tokens`, `positions` and `rows`: llama.cpp's logits at some positions).

    Returns (tokens int32 [n], rows float32 [m, n_vocab], positions int32 [m]): rows[k] holds
    the logits at position positions[k]. Bad files raise CompareError naming the file.
    """
    name = os.fspath(path)
    arrays = _read_npz(name, ("tokens",), optional=("logits", "positions", "rows"))
    if "logits" in arrays:
        tokens, logits = _checked_tokens_and_logits(arrays["tokens"], arrays["logits"], name, keep_float16=False)
        return tokens, logits, np.arange(len(tokens), dtype=np.int32)
    if "positions" not in arrays or "rows" not in arrays:
        raise CompareError(f"{name}: has neither 'logits' nor 'positions' and 'rows' (expected a logits file)")
    tokens, positions = np.asarray(arrays["tokens"]), np.asarray(arrays["positions"])
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise CompareError(f"{name}: key 'tokens' is {_describe(tokens)} (expected a 1-D integer array of token ids)")
    if (positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer) or len(positions) == 0
            or positions.min() < 0 or positions.max() >= len(tokens) or np.any(np.diff(positions) <= 0)):
        raise CompareError(f"{name}: key 'positions' is {_describe(positions)} (expected positions rising "
                           f"strictly within [0, {len(tokens)}), one per stored row)")
    # the stored rows are checked as a logits file of the tokens at their positions
    _, rows = _checked_tokens_and_logits(tokens[positions], arrays["rows"], name, keep_float16=False)
    return tokens.astype(np.int32), rows, positions.astype(np.int32)


def _read_npz(name: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays `required` (each must be there) and those of `optional` that are there, from
    the npz file `name`; anything unreadable is a CompareError naming the file."""
    try:
        with open(name, "rb") as file:
            signature = file.read(6)
    except FileNotFoundError:
        raise CompareError(f"{name}: no such file (expected an npz logits file)") from None
    except OSError as error:
        raise CompareError(f"{name}: cannot be read ({_reason(error)})") from None
    # Look at the first bytes ourselves: np.load would call anything unknown a pickle.
    if signature == b"":
        raise CompareError(f"{name}: is empty (expected an npz archive)")
    if signature == b"\x93NUMPY":
        raise CompareError(f"{name}: is a single .npy array, not an npz archive "
                           f"(expected keys 'tokens' and 'logits')")
    if signature[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):   # np.load's zip test: a file, or empty
        raise CompareError(f"{name}: at byte 0: {signature!r} is not a zip signature "
                           f"(expected an npz archive)")
    try:
        archive = np.load(name, allow_pickle=False)
    except _READ_ERRORS as error:
        raise CompareError(f"{name}: cannot be read as an npz archive ({_reason(error)})") from None
    with archive:
        arrays = {}
        for key in required + tuple(k for k in optional if k in archive.files):
            if key not in archive.files:
                found = ", ".join(repr(k) for k in archive.files) or "none"
                raise CompareError(f"{name}: no key {key!r} (expected keys "
                                   f"{', '.join(repr(k) for k in required)}; found {found})")
            try:
                arrays[key] = archive[key]
            except _READ_ERRORS as error:
                raise CompareError(f"{name}: key {key!r} cannot be read ({_reason(error)}; "
                                   f"expected a numeric array saved without pickle)") from None
    return arrays


def check_same_tokens(ref_tokens: Any, test_tokens: Any, ref_name: str = "ref",
                      test_name: str = "test") -> None:
    """Raise CompareError unless both token sequences ([n] each) are identical: logits of
    different texts cannot be compared. The message names the first position that differs."""
    ref_tokens = np.asarray(ref_tokens).reshape(-1)
    test_tokens = np.asarray(test_tokens).reshape(-1)
    n_common = min(len(ref_tokens), len(test_tokens))
    differing = np.flatnonzero(ref_tokens[:n_common] != test_tokens[:n_common])
    if len(differing) > 0:
        first = int(differing[0])
        raise CompareError(f"{ref_name} and {test_name} score different tokens: at position "
                           f"{first} {ref_name} has {int(ref_tokens[first])}, {test_name} has "
                           f"{int(test_tokens[first])} (expected the same text in both)")
    if len(ref_tokens) != len(test_tokens):
        raise CompareError(f"{ref_name} has {len(ref_tokens)} tokens but {test_name} has "
                           f"{len(test_tokens)}; they differ from position {n_common} on "
                           f"(expected the same text in both)")


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def per_position_kld(ref_logits: Any, test_logits: Any) -> np.ndarray:
    """KL(ref || test) of each row, in nats: sum over the vocabulary of
    p_ref * (log p_ref - log p_test), each distribution the softmax of its row (float64).

    ref_logits, test_logits: float [n, n_vocab]. Returns float64 [n]. Rounding can leave a
    value a few 1e-17 below zero when the rows are nearly equal; identical rows give exactly 0.
    (perplexity.cpp `log_softmax`: `sum += p_base * (p_log_base - logits[i] + max_logit)`.)
    """
    ref_logits, test_logits = _checked_pair_of_logits(ref_logits, test_logits)
    kld = np.empty(len(ref_logits), dtype=np.float64)                # [n]
    for rows in _row_blocks(ref_logits.shape):
        log_p_ref = _log_softmax(ref_logits[rows])                    # [rows, n_vocab]
        log_p_test = _log_softmax(test_logits[rows])
        kld[rows] = np.sum(np.exp(log_p_ref) * (log_p_ref - log_p_test), axis=1)
    return kld


def per_position_coarse_kld(ref_top_ids: Any, ref_top_logits: Any, ref_logsumexp: Any,
                            test_logits: Any) -> np.ndarray:
    """KL(ref || test) of each row when only ref's top-k tokens are known: the k tokens are
    kept apart and every other token is lumped into one outcome. Lumping outcomes never
    increases a KL divergence, so this is a lower bound of per_position_kld, and close to it
    when the top k hold most of ref's probability.

    ref_top_ids: integer [n, k] and ref_top_logits: float [n, k], ref's largest logits;
    ref_logsumexp: float [n], log(sum(exp(row))) of ref's full rows; test_logits: float
    [n, n_vocab]. Returns float64 [n].
    """
    ids = np.asarray(ref_top_ids)
    test = np.asarray(test_logits, dtype=np.float64)                               # [n, n_vocab]
    p_top = np.exp(np.asarray(ref_top_logits, np.float64) - np.asarray(ref_logsumexp, np.float64)[:, None])
    test_max = test.max(axis=1, keepdims=True)
    test_lse = np.log(np.exp(test - test_max).sum(axis=1, keepdims=True)) + test_max   # [n, 1]
    q_top = np.exp(np.take_along_axis(test, ids, axis=1) - test_lse)                   # [n, k]
    p = np.concatenate([p_top, np.clip(1 - p_top.sum(axis=1, keepdims=True), 0, None)], axis=1)
    q = np.concatenate([q_top, np.clip(1 - q_top.sum(axis=1, keepdims=True), 1e-300, None)], axis=1)
    safe_p = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * (np.log(safe_p) - np.log(q)), 0.0), axis=1)


def per_position_delta_p(ref_logits: Any, test_logits: Any, tokens: Any) -> np.ndarray:
    """Δp of each row that has a next token: p_test(tokens[i+1]) - p_ref(tokens[i+1]) at row i,
    the change in the probability of the token that actually came next (positive: test gives
    it more). ref_logits, test_logits: float [n, n_vocab]; tokens: integer [n].
    Returns float64 [n-1] (empty when n == 1).
    (perplexity.cpp `log_softmax`: `p_diff = p - p_base` with `tok = tokens[i+1]`.)
    """
    ref_logits, test_logits = _checked_pair_of_logits(ref_logits, test_logits)
    tokens = _checked_tokens_for(tokens, ref_logits.shape)
    return _delta_p(ref_logits, test_logits, tokens, np.arange(len(tokens) - 1))


def compare_logits(ref_logits: Any, test_logits: Any, tokens: Any = None,
                   positions: Any = None, ref_precision: Any = None,
                   next_tokens: Any = None) -> dict[str, float | int | None]:
    """llama-perplexity's KL-divergence statistics of test against ref, as a JSON-ready dict.

    ref_logits, test_logits: float [n, n_vocab], row i predicting token i+1.
    tokens: integer [n] or None; only Δp needs it.
    positions: which rows to compare (integer indices or a boolean mask of length n), e.g.
        np.arange(n // 2, n) for the second half of a chunk as llama-perplexity scores it;
        None compares every row.
    ref_precision: the float type ref was stored in when narrower than test's (np.float16 for
        golden/logits' rows): identical_rows then rounds test to it first.
    next_tokens: integer [n], instead of tokens, for rows that are not consecutive positions (a
        compact reference such as golden/logits): the token that followed each row, -1 where
        none did; Δp is then taken at the rows that have one.

    Keys (plain Python floats and ints, or None):
      n_positions      rows compared
      kld_mean         mean of per_position_kld over those rows (nats)
      kld_max          its maximum
      kld_p99          its 99th percentile, interpolated linearly between sorted values
      kld_median       its median (mean of the middle two for an even count)
      same_top1_pct    100 * share of rows where argmax(test) == argmax(ref) (first index wins
                       ties, as in perplexity.cpp)
      rms_dp_pct       100 * sqrt(mean(Δp^2)) over the compared rows that have a next token
                       (row n-1 has none); None without tokens or when no such row is compared
      nmse             sum((test - ref)^2) / sum((ref - mean(ref))^2) over every compared logit
                       (check-nmse.py: mse / var(ref)); 0 when equal; None when ref is constant
                       and test differs (check-nmse.py says inf, which JSON cannot carry)
      max_abs_dlogit   max |test - ref| over every compared logit
      identical_rows   rows where every test logit equals ref's (after rounding to ref_precision)
    """
    ref_logits, test_logits = _checked_pair_of_logits(ref_logits, test_logits)
    n_rows = len(ref_logits)
    rows = _checked_positions(positions, n_rows)                          # [k] row indices
    if positions is not None:
        ref_logits, all_ref_logits = ref_logits[rows], ref_logits
        test_logits, all_test_logits = test_logits[rows], test_logits
    else:
        all_ref_logits, all_test_logits = ref_logits, test_logits

    kld = per_position_kld(ref_logits, test_logits)                       # [k]
    same_top1 = np.argmax(ref_logits, axis=1) == np.argmax(test_logits, axis=1)   # [k]
    nmse, max_abs_dlogit = _logit_errors(ref_logits, test_logits)
    rounded = test_logits if ref_precision is None else test_logits.astype(ref_precision)
    identical_rows = int(np.sum(np.all(rounded == ref_logits, axis=1)))

    rms_dp_pct = None
    if next_tokens is not None:
        next_tokens = np.asarray(next_tokens, dtype=np.int64).reshape(-1)
        if next_tokens.shape != (n_rows,) or next_tokens.max(initial=-1) >= ref_logits.shape[1]:
            raise CompareError(f"next_tokens must be {n_rows} token ids below {ref_logits.shape[1]} (or -1), "
                               f"not {_describe(next_tokens)}")
        followed = rows[next_tokens[rows] >= 0]
        if len(followed) > 0:
            # _delta_p reads the token after row r at tokens[r + 1]
            delta_p = _delta_p(all_ref_logits, all_test_logits, np.concatenate([[0], next_tokens]), followed)
            rms_dp_pct = 100.0 * float(np.sqrt(np.mean(delta_p ** 2)))
    elif tokens is not None:
        tokens = _checked_tokens_for(tokens, all_ref_logits.shape)
        rows_with_next_token = rows[rows < n_rows - 1]
        if len(rows_with_next_token) > 0:
            delta_p = _delta_p(all_ref_logits, all_test_logits, tokens, rows_with_next_token)
            rms_dp_pct = 100.0 * float(np.sqrt(np.mean(delta_p ** 2)))

    return {
        "n_positions": int(len(rows)),
        "kld_mean": float(np.mean(kld)),
        "kld_max": float(np.max(kld)),
        # numpy's default "linear" percentile is perplexity.cpp's `percentile` lambda:
        # sorted[floor(f*(k-1))] interpolated towards the next value.
        "kld_p99": float(np.percentile(kld, 99.0)),
        "kld_median": float(np.median(kld)),
        "same_top1_pct": 100.0 * float(np.mean(same_top1)),
        "rms_dp_pct": rms_dp_pct,
        "nmse": nmse,
        "max_abs_dlogit": max_abs_dlogit,
        "identical_rows": identical_rows,
    }


@dataclass(frozen=True)
class TopOneAgreement:
    """The rows where ref is confident of its top-1 token, and whether test agrees there."""
    positions: np.ndarray   # int64 [k]: rows where ref's top-1 leads its runner-up by >= min_margin
    agrees: np.ndarray      # bool [k]: argmax(test) == argmax(ref) at each of those rows

    @property
    def all_agree(self) -> bool:
        return bool(np.all(self.agrees))

    @property
    def disagreeing_positions(self) -> np.ndarray:
        """int64 [d]: the confident rows where test picks a different top-1."""
        return self.positions[~self.agrees]


def top1_margin_agreement(ref_logits: Any, test_logits: Any, min_margin: float) -> TopOneAgreement:
    """Find the rows where ref's largest logit exceeds its second largest by at least
    `min_margin` (a gap in logits is the same gap in log-probabilities), and say whether test's
    top-1 is ref's top-1 at each. Rows where ref is nearly tied are left out: there a tiny
    numerical difference may rightly flip the choice. With n_vocab == 1 every row counts.
    ref_logits, test_logits: float [n, n_vocab].
    """
    ref_logits, test_logits = _checked_pair_of_logits(ref_logits, test_logits)
    n_rows, n_vocab = ref_logits.shape
    margins = np.full(n_rows, np.inf)                                       # [n]
    if n_vocab > 1:
        for rows in _row_blocks(ref_logits.shape):
            # After partitioning, the last two columns hold the runner-up and the largest.
            top_two = np.partition(ref_logits[rows], n_vocab - 2, axis=1)[:, -2:]
            margins[rows] = top_two[:, 1].astype(np.float64) - top_two[:, 0]
    confident = np.flatnonzero(margins >= min_margin).astype(np.int64)      # [k]
    agrees = (np.argmax(ref_logits[confident], axis=1)
              == np.argmax(test_logits[confident], axis=1))
    return TopOneAgreement(positions=confident, agrees=agrees)


def format_report(stats: dict[str, float | int | None]) -> str:
    """The dict from `compare_logits` as a short aligned table, one statistic a line, in the
    spirit of llama-perplexity's "KL divergence statistics" (KLD and NMSE in scientific
    notation, percentages with three decimals). Plain ASCII, so any terminal can print it."""
    def scientific(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.6e}"

    def percent(value: float | None) -> str:
        return "n/a (needs tokens)" if value is None else f"{value:.3f} %"

    lines = [
        ("Positions", str(stats["n_positions"])),
        ("Mean KLD", scientific(stats["kld_mean"])),
        ("Maximum KLD", scientific(stats["kld_max"])),
        ("99.0% KLD", scientific(stats["kld_p99"])),
        ("Median KLD", scientific(stats["kld_median"])),
        ("RMS delta-p", percent(stats["rms_dp_pct"])),
        ("Same top p", percent(stats["same_top1_pct"])),
        ("NMSE", scientific(stats["nmse"])),
        ("Max |dlogit|", f"{stats['max_abs_dlogit']:.6g}"),
        ("Identical rows", f"{stats['identical_rows']} of {stats['n_positions']}"),
    ]
    label_width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(label_width)} : {value}" for label, value in lines)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """float [rows, n_vocab] -> float64 [rows, n_vocab]: log of the softmax of each row."""
    values = logits.astype(np.float64)
    shifted = values - values.max(axis=1, keepdims=True)   # largest is 0: exp cannot overflow
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _delta_p(ref_logits: np.ndarray, test_logits: np.ndarray, tokens: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
    """Δp at the given rows (each < n-1): p_test - p_ref of token tokens[row+1]. float64 [k]."""
    delta_p = np.empty(len(rows), dtype=np.float64)
    for block in _row_blocks((len(rows), ref_logits.shape[1])):
        block_rows = rows[block]
        next_tokens = tokens[block_rows + 1][:, None]                        # [b, 1]
        log_p_ref = np.take_along_axis(_log_softmax(ref_logits[block_rows]), next_tokens, axis=1)
        log_p_test = np.take_along_axis(_log_softmax(test_logits[block_rows]), next_tokens, axis=1)
        delta_p[block] = np.exp(log_p_test[:, 0]) - np.exp(log_p_ref[:, 0])
    return delta_p


def _logit_errors(ref_logits: np.ndarray, test_logits: np.ndarray) -> tuple[float | None, float]:
    """(NMSE, max |test - ref|) over every value of two [k, n_vocab] arrays, in float64."""
    ref_mean = float(np.mean(ref_logits, dtype=np.float64))
    sum_squared_error = 0.0
    sum_squared_deviation = 0.0
    max_abs_difference = 0.0
    for rows in _row_blocks(ref_logits.shape):
        ref_block = ref_logits[rows].astype(np.float64)
        difference = test_logits[rows].astype(np.float64) - ref_block
        sum_squared_error += float(np.sum(difference ** 2))
        sum_squared_deviation += float(np.sum((ref_block - ref_mean) ** 2))
        max_abs_difference = max(max_abs_difference, float(np.max(np.abs(difference))))
    if sum_squared_deviation == 0.0:
        # A constant reference: check-nmse.py gives 0 if test equals it, else inf.
        nmse = 0.0 if sum_squared_error == 0.0 else None
    else:
        nmse = sum_squared_error / sum_squared_deviation   # mean/mean: the counts cancel
    return nmse, max_abs_difference


def _row_blocks(shape: tuple[int, int]) -> Iterator[slice]:
    """Slices covering range(shape[0]) in blocks of about _VALUES_PER_BLOCK values."""
    n_rows, n_vocab = shape
    rows_per_block = max(1, _VALUES_PER_BLOCK // max(1, n_vocab))
    for start in range(0, n_rows, rows_per_block):
        yield slice(start, min(start + rows_per_block, n_rows))


def _describe(array: np.ndarray) -> str:
    """'float32 [5, 100]': an array's type and shape, for messages."""
    return f"{array.dtype} [{', '.join(str(size) for size in array.shape)}]"


def _reason(error: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _checked_tokens_and_logits(tokens: Any, logits: Any, source: str,
                               keep_float16: bool) -> tuple[np.ndarray, np.ndarray]:
    """The checks of a logits file, each failure a CompareError starting with `source`.
    Returns (int32 [n], float32 [n, n_vocab]); float16 logits stay float16 if keep_float16."""
    try:
        tokens = np.asarray(tokens)
        logits = np.asarray(logits)
    except (TypeError, ValueError) as error:
        raise CompareError(f"{source}: tokens or logits are not arrays "
                           f"({_reason(error)})") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise CompareError(f"{source}: key 'tokens' is {_describe(tokens)} "
                           f"(expected a 1-D integer array of token ids)")
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise CompareError(f"{source}: key 'logits' is {_describe(logits)} "
                           f"(expected a 2-D float array [n_tokens, n_vocab])")
    if logits.shape[0] != len(tokens):
        raise CompareError(f"{source}: key 'logits' is {_describe(logits)} but 'tokens' has "
                           f"{len(tokens)} entries (expected one row per token)")
    n_tokens, n_vocab = logits.shape
    if n_tokens == 0 or n_vocab == 0:
        raise CompareError(f"{source}: key 'logits' is {_describe(logits)} "
                           f"(expected at least one token and one vocabulary entry)")
    if not (keep_float16 and logits.dtype == np.float16):
        with np.errstate(over="ignore"):   # float64 beyond float32's range becomes inf, caught next
            logits = logits.astype(np.float32)
    non_finite = np.flatnonzero(~np.all(np.isfinite(logits), axis=1))
    if len(non_finite) > 0:
        raise CompareError(f"{source}: key 'logits' has non-finite values in {len(non_finite)} "
                           f"of {n_tokens} rows, the first at row {non_finite[0]} (expected finite "
                           f"{logits.dtype} values)")
    outside = np.flatnonzero((tokens < 0) | (tokens >= n_vocab))
    if len(outside) > 0:
        raise CompareError(f"{source}: key 'tokens' has id {int(tokens[outside[0]])} at "
                           f"position {outside[0]} (expected ids in [0, {n_vocab}), the "
                           f"vocabulary of 'logits')")
    return tokens.astype(np.int32), logits


def _checked_provenance(key: str, value: Any, source: str) -> np.ndarray:
    """A provenance value as an array np.load can read back without pickle."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise CompareError(f"{source}: provenance {key!r} is not an array "
                           f"({_reason(error)})") from None
    if array.dtype.hasobject:
        raise CompareError(f"{source}: provenance {key!r} is a {type(value).__name__} "
                           f"(expected a string, a number or a numeric array)")
    return array


def _checked_pair_of_logits(ref_logits: Any, test_logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as float arrays of one shape [n, n_vocab], n >= 1, n_vocab >= 1, finite."""
    checked = []
    for role, logits in (("ref", ref_logits), ("test", test_logits)):
        logits = np.asarray(logits)
        if (logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating)
                or logits.shape[0] == 0 or logits.shape[1] == 0):
            raise CompareError(f"{role} logits are {_describe(logits)} "
                               f"(expected a non-empty 2-D float array [n_tokens, n_vocab])")
        if not np.all(np.isfinite(logits)):
            raise CompareError(f"{role} logits have non-finite values (expected finite values)")
        checked.append(logits)
    if checked[0].shape != checked[1].shape:
        raise CompareError(f"ref logits are {_describe(checked[0])} but test logits are "
                           f"{_describe(checked[1])} (expected the same shape)")
    return checked[0], checked[1]


def _checked_tokens_for(tokens: Any, logits_shape: tuple[int, int]) -> np.ndarray:
    """tokens as int64 [n], one per logits row, each in [0, n_vocab)."""
    n_rows, n_vocab = logits_shape
    tokens = np.asarray(tokens)
    if tokens.shape != (n_rows,) or not np.issubdtype(tokens.dtype, np.integer):
        raise CompareError(f"tokens are {_describe(tokens)} (expected {n_rows} integer ids, "
                           f"one per logits row)")
    if np.any((tokens < 0) | (tokens >= n_vocab)):
        raise CompareError(f"tokens have ids outside [0, {n_vocab}), the logits' vocabulary")
    return tokens.astype(np.int64)


def _checked_positions(positions: Any, n_rows: int) -> np.ndarray:
    """positions (None, integer indices or a boolean mask [n]) as int64 row indices [k], k >= 1."""
    if positions is None:
        return np.arange(n_rows, dtype=np.int64)
    positions = np.asarray(positions)
    if positions.dtype == np.bool_ and positions.shape == (n_rows,):
        rows = np.flatnonzero(positions).astype(np.int64)
    elif positions.ndim == 1 and np.issubdtype(positions.dtype, np.integer):
        rows = positions.astype(np.int64)
        if np.any((rows < 0) | (rows >= n_rows)):
            raise CompareError(f"positions must be row indices in [0, {n_rows})")
    else:
        raise CompareError(f"positions are {_describe(positions)} (expected row indices or a "
                           f"boolean mask of {n_rows} rows)")
    if len(rows) == 0:
        raise CompareError("positions select no rows (expected at least one)")
    return rows
