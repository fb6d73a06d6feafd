"""llama-perplexity on refllm's forward pass: a text's perplexity, and the KL divergence of a
model from a base model's saved log-probabilities.

    tokens = Tokenizer.from_model(model).tokenize(text)           # the model's BOS rules
    plan = plan_chunks(len(tokens), n_ctx=128, n_batch=128)
    result = perplexity(Transformer(model, "ggml"), tokens, plan, bos_id=...)
    print(format_final(result))                    # Final estimate: PPL = 11.7849 +/- 1.68688

    base = read_base_logits("base.kld")            # written by llama-perplexity or by refllm
    kld = kl_divergence(transformer, base, n_batch=128, bos_id=...)
    print("\\n".join(kld_statistics_lines(kld)))

The method is llama.cpp's tools/perplexity/perplexity.cpp (`perplexity` and `kl_divergence`):

    the text's tokens (its one final newline dropped) are cut into n_chunk = len // n_ctx
        chunks of n_ctx tokens (or the first --chunks of them); the rest is not scored
    each chunk is evaluated alone, from an empty KV cache, with its first token replaced by
        BOS when the vocabulary adds one
    in each chunk only the second half is scored: the logits at positions first = n_ctx/2 ..
        n_ctx-2 against the token that follows, so the model always has n_ctx/2 tokens of context
    PPL = exp(mean of -log p), printed after each chunk as "[i]PPL,", and at the end with its
        uncertainty exp(mean) * sqrt(var / (count - 1))

`n_batch // n_ctx` chunks (n_seq) go into one of llama.cpp's batches, as separate sequences;
refllm evaluates them one after another, each split as llama.cpp splits them into ubatches of
at most N_UBATCH tokens (`split_equal`: N_UBATCH // n_seq tokens of each). With n_batch below
n_ctx a chunk goes in pieces of n_batch tokens. The rows of positions before `first` give no
output, and the last block drops them after attention as llama.cpp's graph does
(Transformer.hidden_states' out_rows): what kernels the feed-forward and the output matrix run
depends on how many rows they get. llama.cpp's matmuls then see the rows of all n_seq chunks of a
batch at once and refllm's those of one chunk: with n_seq = 1 (--batch <= --ctx) refllm's ggml
numerics give llama.cpp's logits bit for bit; with n_seq > 1 only where the kernels' results do
not depend on the number of rows (golden/perplexity records a run of each).

Scoring follows the C++ operation for operation (float32 operations rounded one by one, the C
library's expf, float64 sums in order: refllm.ggml_cpu.libm). It has three variants, as
llama.cpp has:

    plain        `-log p = -((logit[tok] - max) - log(sum exp))`, the difference in float32,
                 the rest in float64 (perplexity.cpp's first log_softmax)
    writing      with --kl-divergence-base OUT: each scored row's log-probabilities quantized
                 to 16 bits over [max(min, max - 16), max] (base_record), and -log p computed in
                 float32 as `max + log_sum_exp - logit[tok]` (its second log_softmax)
    KL           with --kl-divergence: the model's log-softmax against the base file's rows,
                 terms of the base below -16 dropped (its third log_softmax)

The base-logits file (llama.cpp's `--kl-divergence-base`, all little-endian):

    "_logits_"                     8 bytes
    n_ctx, n_vocab, n_chunk        int32 each
    tokens                         int32 [n_chunk * n_ctx]: the text's tokens (not BOS-replaced)
    per chunk, per scored position (n_ctx - 1 - n_ctx/2 of them), one record of nv uint16,
    nv = 2 * ((n_vocab + 1) / 2) + 4:
        scale, min_log_prob        float32 each: log p = scale * code + min_log_prob
        code                       uint16 [n_vocab]; 0 for every logit at or below the minimum
        padding                    uint16 [1] when n_vocab is odd: zero

Statistics sum in the order of the rows, where llama.cpp shares the rows of a chunk among its
threads and adds their partial sums: the sums can differ in the last bits of a float64, far
below any printed digit. Left out: llama-perplexity's --hellaswag, --winogrande,
--multiple-choice, --ppl-stride and --ppl-output-type modes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from refllm.errors import RefllmError
from refllm.ggml_cpu.libm import expf_array, sum_f64

F32 = np.float32
N_UBATCH = 512          # llama.cpp's default n_ubatch: a batch is computed this many tokens at a time
MIN_CTX = 8             # a chunk scores n_ctx - 1 - n_ctx/2 tokens: 3 at least (llama.cpp takes any n_ctx > 0)
MAGIC = b"_logits_"
HEADER = np.dtype([("magic", "S8"), ("n_ctx", "<i4"), ("n_vocab", "<i4"), ("n_chunk", "<i4")])


class PerplexityError(RefllmError):
    """An option, a text or a base-logits file llama-perplexity's method cannot work with."""


# -- the plan: chunks, batches, ubatches --------------------------------------------------------

@dataclass(frozen=True)
class ChunkPlan:
    """How llama-perplexity cuts the tokens and feeds them to the model."""
    n_ctx: int          # tokens per chunk
    n_batch: int        # tokens per llama_decode call (at most n_seq * n_ctx)
    n_chunk: int        # chunks scored
    n_seq: int          # chunks per batch

    @property
    def first(self) -> int:
        """The first position whose logits are scored (and computed)."""
        return self.n_ctx // 2

    @property
    def n_scored(self) -> int:
        """Tokens scored per chunk."""
        return self.n_ctx - 1 - self.first

    @property
    def n_ubatch(self) -> int:
        return min(N_UBATCH, self.n_batch)

    def pieces(self, n_seqs: int) -> list[tuple[int, int]]:
        """The positions [start, stop) of each piece one chunk is evaluated in, when n_seqs
        chunks share a batch: batches of n_batch tokens (n_batch < n_ctx) or the whole chunk,
        each split into ubatches; with several sequences a ubatch holds n_ubatch // n_seqs
        tokens of each (llama_batch_allocr::split_equal), with one n_ubatch (split_simple)."""
        per_batch = min(self.n_batch, self.n_ctx)
        per_ubatch = self.n_ubatch if n_seqs == 1 else max(1, self.n_ubatch // n_seqs)
        return [(start, min(start + per_ubatch, batch_start + per_batch, self.n_ctx))
                for batch_start in range(0, self.n_ctx, per_batch)
                for start in range(batch_start, min(batch_start + per_batch, self.n_ctx), per_ubatch)]


def plan_chunks(n_tokens: int, n_ctx: int, n_batch: int, n_chunks: int = -1, n_ctx_train: int | None = None,
                source: str = "the text") -> ChunkPlan:
    """llama-perplexity's chunking of n_tokens tokens: n_ctx tokens a chunk, all whole chunks
    or the first n_chunks (-1: all). PerplexityError for an impossible n_chunks (0 or below
    -1), a text (`source`) shorter than 2 * n_ctx tokens, or what chunk_plan refuses."""
    if n_chunks == 0 or n_chunks < -1:
        raise PerplexityError(f"--chunks must be -1 (all) or at least 1, not {n_chunks}")
    check_ctx_and_batch(n_ctx, n_batch, n_ctx_train)
    if n_tokens < 2 * n_ctx:
        raise PerplexityError(f"{source} gives {n_tokens} tokens; perplexity with a context of {n_ctx} needs "
                              f"at least {2 * n_ctx} (two chunks)")
    n_chunk_max = n_tokens // n_ctx
    return chunk_plan(n_ctx, n_batch, n_chunk_max if n_chunks < 0 else min(n_chunks, n_chunk_max), n_ctx_train)


def chunk_plan(n_ctx: int, n_batch: int, n_chunk: int, n_ctx_train: int | None = None) -> ChunkPlan:
    """The plan for n_chunk chunks of n_ctx tokens fed n_batch tokens at a time: n_seq =
    n_batch // n_ctx chunks a batch (at least 1), n_batch capped at n_seq * n_ctx."""
    check_ctx_and_batch(n_ctx, n_batch, n_ctx_train)
    n_seq = max(1, n_batch // n_ctx)
    return ChunkPlan(n_ctx=n_ctx, n_batch=min(n_batch, n_seq * n_ctx), n_chunk=n_chunk, n_seq=n_seq)


def check_ctx_and_batch(n_ctx: int, n_batch: int, n_ctx_train: int | None = None) -> None:
    """PerplexityError for an n_ctx below MIN_CTX or above n_ctx_train, or an n_batch below 1
    or above n_ctx and not a multiple of it (llama.cpp asserts then)."""
    if not MIN_CTX <= n_ctx <= (n_ctx_train or n_ctx):
        upper = f" and at most {n_ctx_train} (the model's trained context)" if n_ctx_train else ""
        raise PerplexityError(f"--ctx must be at least {MIN_CTX}{upper}, not {n_ctx}")
    if n_batch < 1 or (n_batch > n_ctx and n_batch % n_ctx != 0):
        raise PerplexityError(f"--batch must be between 1 and --ctx ({n_ctx}) or a multiple of --ctx, not {n_batch}")


# -- evaluation ---------------------------------------------------------------------------------

def chunk_logits(transformer, chunks: Sequence[Sequence[int]], plan: ChunkPlan, bos_id: int | None) -> list[np.ndarray]:
    """The logits of one of llama-perplexity's batches: each chunk (n_ctx token ids) evaluated
    from an empty cache, its first token replaced by bos_id (None: kept). Returns for each
    chunk float32 [n_ctx - first, n_vocab]: the logits at positions first .. n_ctx-1."""
    pieces = plan.pieces(len(chunks))
    largest = max(stop - start for start, stop in pieces)
    out = []
    for chunk in chunks:
        tokens = [int(t) for t in chunk]
        if bos_id is not None:
            tokens[0] = bos_id
        cache = transformer.new_cache(plan.n_ctx, n_batch=largest)
        rows = []
        for start, stop in pieces:
            if stop <= plan.first:          # no output: the keys and values are what it is for
                transformer.hidden_states(tokens[start:stop], cache)
                continue
            out_rows = np.arange(max(start, plan.first) - start, stop - start)
            rows.append(transformer.logits(transformer.hidden_states(tokens[start:stop], cache, out_rows)))
        out.append(rows[0] if len(rows) == 1 else np.concatenate(rows))
    return out


def _chunk_batches(tokens: Sequence[int], plan: ChunkPlan) -> Iterator[tuple[int, list[Sequence[int]]]]:
    """(index of the first chunk, the chunks) of each batch, n_seq chunks a batch."""
    for i in range(0, plan.n_chunk, plan.n_seq):
        count = min(plan.n_seq, plan.n_chunk - i)
        yield i, [tokens[(i + s) * plan.n_ctx:(i + s + 1) * plan.n_ctx] for s in range(count)]


# -- scoring: perplexity.cpp's three log_softmax ------------------------------------------------

def _softmax_sums(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [m, n_vocab] -> (max_logit float32 [m], sum_exp float64 [m]), the sum of
    the C library's expf(logit - max) over each row in order."""
    max_logit = logits.max(axis=1)
    return max_logit, sum_f64(expf_array(logits - max_logit[:, None]))


def _log_f32(values: np.ndarray) -> np.ndarray:
    """(float) log(double) of each value: the C library's log, rounded to float32."""
    return np.array([math.log(v) for v in values], np.float64).astype(F32)


def _picked(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits[r, targets[r]] of each row, float32 [m]."""
    return logits[np.arange(len(targets)), targets]


def nll_plain(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) of each row, float64 [m], as perplexity.cpp's log_softmax(n_vocab, logits,
    tok) and process_logits compute it: -((logit[tok] - max) - log(sum_exp)), the difference
    in float32 and the rest in float64. logits float32 [m, n_vocab], targets [m]."""
    max_logit, sum_exp = _softmax_sums(logits)
    differences = _picked(logits, targets) - max_logit                   # float32 [m]
    return np.array([-(float(d) - math.log(s)) for d, s in zip(differences, sum_exp)])


def nearest_int(values: np.ndarray) -> np.ndarray:
    """perplexity.cpp's nearest_int of float32 values (|v| < 2^22): v + 1.5*2^23 rounds to a
    whole number in float32 (ties to even), read back from the mantissa bits. int32."""
    bits = (values.astype(F32) + F32(12582912)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def base_record(n_vocab: int) -> np.dtype:
    """The dtype of one scored position's record in a base-logits file: nv uint16 in all."""
    padding = 2 * ((n_vocab + 1) // 2) - n_vocab
    return np.dtype([("scale", "<f4"), ("min_log_prob", "<f4"), ("code", "<u2", (n_vocab,)),
                     ("padding", "<u2", (padding,))])


def quantized_log_probs(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's log-probabilities as a base-logits record, and -log p(target), as
    perplexity.cpp's log_softmax(n_vocab, logits, log_prob, tok) computes them.

    The codes span [min_logit, max_logit] with min_logit = max(min, max - 16) in 65535 steps:
    code = nearest_int((logit - min_logit) / scale), 0 at or below min_logit; min_log_prob =
    min_logit - max - log_sum_exp. -log p = max + log_sum_exp - logit[tok], all in float32.
    logits float32 [m, n_vocab] -> (records base_record(n_vocab) [m], nll float64 [m]).
    """
    m, n_vocab = logits.shape
    max_logit, sum_exp = _softmax_sums(logits)
    min_logit = np.maximum(logits.min(axis=1), max_logit - F32(16))      # float32 [m]
    log_sum_exp = _log_f32(sum_exp)
    records = np.zeros(m, base_record(n_vocab))
    records["min_log_prob"] = min_logit - max_logit - log_sum_exp
    scale = (max_logit - min_logit) / F32(65535)
    records["scale"] = scale
    varies = scale != 0                                                   # else every code stays 0
    with np.errstate(divide="ignore"):
        inv_scale = (F32(1) / scale)[varies, None]
    lowest = min_logit[varies, None]
    codes = nearest_int(inv_scale * (logits[varies] - lowest))
    records["code"][varies] = np.where(logits[varies] > lowest, codes, 0).astype(np.uint16)
    nll = (max_logit + log_sum_exp - _picked(logits, targets)).astype(np.float64)
    return records, nll


@dataclass(frozen=True)
class KLDRows:
    """One chunk's scored rows in KL-divergence mode (perplexity.cpp's third log_softmax)."""
    nll: np.ndarray          # float32 [m]: -log p(target) under the model
    nll_base: np.ndarray     # float32 [m]: -log p(target) under the base file
    kld: np.ndarray          # float64 [m]: KL(base || model) of each row
    p_diff: np.ndarray       # float32 [m]: p(target) - p_base(target)
    same_top: np.ndarray     # bool [m]: the model's most likely token is the base's


def kld_rows(logits: np.ndarray, targets: np.ndarray, records: np.ndarray) -> KLDRows:
    """Compare the model's logits float32 [m, n_vocab] with the base file's records [m] for
    the same positions, as perplexity.cpp's log_softmax(n_vocab, logits, base_log_prob, tok,
    kld) does: the base's log p = scale * code + min_log_prob; KL sums p_base * (log p_base -
    log p) over the tokens whose log p_base > -16 (the others add nothing); the top tokens are
    each side's first largest value."""
    max_logit, sum_exp = _softmax_sums(logits)
    log_sum_exp = _log_f32(sum_exp)
    scale = records["scale"]                                            # float32 [m]
    min_log_prob = records["min_log_prob"]
    base_log_p = scale[:, None] * records["code"].astype(F32) + min_log_prob[:, None]   # float32 [m, n_vocab]
    nll = max_logit + log_sum_exp - _picked(logits, targets)
    nll_base = -(scale * _picked(records["code"], targets).astype(F32) + min_log_prob)
    log_norm = max_logit + log_sum_exp                                  # log p = logit - log_norm
    kept = base_log_p > F32(-16)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.where(kept, expf_array(base_log_p) * (base_log_p - logits + log_norm[:, None]), F32(0))
    return KLDRows(nll=nll, nll_base=nll_base, kld=sum_f64(terms), p_diff=expf_array(-nll) - expf_array(-nll_base),
                   same_top=np.argmax(logits, axis=1) == np.argmax(base_log_p, axis=1))


# -- the base-logits file -----------------------------------------------------------------------

@dataclass(frozen=True)
class BaseLogits:
    """A base-logits file's header and tokens; its records are read a chunk at a time."""
    path: str
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray       # int32 [n_chunk * n_ctx]

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    @property
    def n_scored(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2

    @property
    def records_offset(self) -> int:
        return HEADER.itemsize + 4 * len(self.tokens)

    def chunk_records(self, chunk: int) -> np.ndarray:
        """Chunk `chunk`'s records, base_record(n_vocab) [n_scored]."""
        record = base_record(self.n_vocab)
        offset = self.records_offset + chunk * self.n_scored * record.itemsize
        with open(self.path, "rb") as f:
            f.seek(offset)
            return np.frombuffer(f.read(self.n_scored * record.itemsize), record)


def read_base_logits(path: str | os.PathLike) -> BaseLogits:
    """Open and check a base-logits file (llama-perplexity's --kl-divergence-base, or refllm's):
    its magic, a header of positive sizes with n_ctx >= MIN_CTX, token ids in
    [0, n_vocab), and a size that is exactly the header, the tokens and every chunk's records.
    PerplexityError naming the file and what was expected otherwise."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(HEADER.itemsize)
            size = os.fstat(f.fileno()).st_size
            if head[:len(MAGIC)] != MAGIC:
                raise PerplexityError(f"{name}: at byte 0: {head[:8]!r} is not {MAGIC!r} (expected a base-logits "
                                      "file written by llama-perplexity --kl-divergence-base)")
            if len(head) < HEADER.itemsize:
                raise PerplexityError(f"{name}: ends at byte {len(head)}, inside the header (expected "
                                      f"{HEADER.itemsize} bytes: magic, n_ctx, n_vocab, n_chunk)")
            header = np.frombuffer(head, HEADER)[0]
            n_ctx, n_vocab, n_chunk = int(header["n_ctx"]), int(header["n_vocab"]), int(header["n_chunk"])
            if n_ctx < MIN_CTX or n_vocab < 1 or n_chunk < 1:
                raise PerplexityError(f"{name}: header says n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk} "
                                      f"(expected n_ctx >= {MIN_CTX}, n_vocab >= 1, n_chunk >= 1)")
            n_scored = n_ctx - 1 - n_ctx // 2
            expected = HEADER.itemsize + 4 * n_ctx * n_chunk + n_chunk * n_scored * base_record(n_vocab).itemsize
            if size != expected:
                raise PerplexityError(f"{name}: is {size} bytes; a header of n_ctx {n_ctx}, n_vocab {n_vocab}, "
                                      f"n_chunk {n_chunk} makes {expected} (the file is "
                                      f"{'truncated' if size < expected else 'longer'})")
            tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), "<i4").astype(np.int32)
    except FileNotFoundError:
        raise PerplexityError(f"{name}: no such file (expected a base-logits file)") from None
    except IsADirectoryError:
        raise PerplexityError(f"{name}: is a folder (expected a base-logits file)") from None
    outside = np.flatnonzero((tokens < 0) | (tokens >= n_vocab))
    if len(outside):
        raise PerplexityError(f"{name}: token {int(tokens[outside[0]])} at position {outside[0]} is outside "
                              f"the vocabulary of {n_vocab}")
    return BaseLogits(path=name, n_ctx=n_ctx, n_vocab=n_vocab, n_chunk=n_chunk, tokens=tokens)


def write_base_header(out: BinaryIO, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray) -> None:
    """The start of a base-logits file: magic, n_ctx, n_vocab, n_chunk, and the n_chunk * n_ctx
    tokens scored (as the text gave them: BOS replacement is not written)."""
    header = np.array([(MAGIC, n_ctx, n_vocab, n_chunk)], HEADER)
    out.write(header.tobytes())
    out.write(np.asarray(tokens[:n_chunk * n_ctx], "<i4").tobytes())


def is_base_logits(path: str | os.PathLike) -> bool:
    """Whether the file starts with a base-logits file's magic (unreadable: False)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def base_log_probs(base: BaseLogits) -> tuple[np.ndarray, np.ndarray]:
    """Every record of a base file decoded: (log-probabilities float32 [n_chunk * n_scored,
    n_vocab], as kld_rows reads them; the token each row scores, int32 [n_chunk * n_scored])."""
    rows, following = [], []
    for c in range(base.n_chunk):
        records = base.chunk_records(c)
        rows.append(records["scale"][:, None] * records["code"].astype(F32) + records["min_log_prob"][:, None])
        start = c * base.n_ctx + base.first + 1
        following.append(base.tokens[start:start + base.n_scored])
    return np.concatenate(rows), np.concatenate(following).astype(np.int32)


# -- perplexity ---------------------------------------------------------------------------------

@dataclass
class PerplexityResult:
    """The running sums of perplexity(): -log p and its square over `count` scored tokens."""
    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0
    running: list[float] = field(default_factory=list)   # exp(mean -log p) after each chunk

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def uncertainty(self) -> float:
        """perplexity.cpp's: ppl * sqrt((mean of squares - square of mean) / (count - 1)), NaN
        when that variance is not positive (llama.cpp then prints an error instead)."""
        mean = self.nll / self.count
        variance = self.nll2 / self.count - mean * mean
        return self.ppl * math.sqrt(variance / (self.count - 1)) if variance > 0 else math.nan


def perplexity(transformer, tokens: Sequence[int], plan: ChunkPlan, bos_id: int | None,
               base_out: BinaryIO | None = None, on_chunk: Callable[[int, float, float], None] | None = None
               ) -> PerplexityResult:
    """llama-perplexity's perplexity of `tokens` (the text's ids, BOS included where the
    vocabulary adds one) under `transformer`, chunked by `plan`; bos_id replaces each chunk's
    first token (None: the vocabulary adds no BOS). With base_out, a base-logits file is
    written there (and -log p computed as llama.cpp computes it then). on_chunk(i, ppl,
    seconds) is called after chunk i (1-based) with the running perplexity."""
    if base_out is not None:
        write_base_header(base_out, plan.n_ctx, transformer.config.n_vocab, plan.n_chunk, np.asarray(tokens))
    result = PerplexityResult()
    for i, chunks in _chunk_batches(tokens, plan):
        started = time.perf_counter()
        all_logits = chunk_logits(transformer, chunks, plan, bos_id)
        for s, (chunk, logits) in enumerate(zip(chunks, all_logits)):
            targets = np.asarray(chunk[plan.first + 1:], np.int64)       # [n_scored]
            scored = logits[:plan.n_scored]
            if base_out is not None:
                records, nll = quantized_log_probs(scored, targets)
                base_out.write(records.tobytes())
            else:
                nll = nll_plain(scored, targets)
            for v in nll:
                result.nll += float(v)
                result.nll2 += float(v) * float(v)
            result.count += plan.n_scored
            result.running.append(math.exp(result.nll / result.count))
            if on_chunk is not None:
                on_chunk(i + s + 1, result.running[-1], time.perf_counter() - started)
    return result


def format_running(i: int, ppl: float) -> str:
    """One chunk's entry of llama-perplexity's running line: "[i]PPL," (no newline)."""
    return f"[{i}]{ppl:.4f},"


def format_final(result: PerplexityResult) -> str:
    """llama-perplexity's last line: "Final estimate: PPL = x +/- y" (or its error line)."""
    if math.isnan(result.uncertainty):
        return "Unexpected negative standard deviation of log(prob)"
    return f"Final estimate: PPL = {result.ppl:.4f} +/- {result.uncertainty:.5f}"


# -- KL divergence ------------------------------------------------------------------------------

@dataclass
class KLDSums:
    """perplexity.cpp's kl_divergence_result: float64 sums over the scored rows so far."""
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0          # a float32 in llama.cpp; every value it takes is one
    n_same_top: int = 0
    count: int = 0

    def add(self, rows: KLDRows) -> None:
        """Add a chunk's rows in order. The squares and the product nll * nll_base are float32
        products (their factors are floats), added to the float64 sums."""
        nll2, nll_base2 = rows.nll * rows.nll, rows.nll_base * rows.nll_base         # float32 [m]
        nll_nll_base, p_diff2 = rows.nll * rows.nll_base, rows.p_diff * rows.p_diff
        for r in range(len(rows.nll)):
            self.sum_nll += float(rows.nll[r])
            self.sum_nll2 += float(nll2[r])
            self.sum_nll_base += float(rows.nll_base[r])
            self.sum_nll_base2 += float(nll_base2[r])
            self.sum_nll_nll_base += float(nll_nll_base[r])
            kld = float(rows.kld[r])
            self.sum_kld += kld
            self.sum_kld2 += kld * kld
            self.sum_p_diff += float(rows.p_diff[r])
            square = float(p_diff2[r])
            self.sum_p_diff2 += square
            self.sum_p_diff4 += square * square
            self.max_p_diff = max(self.max_p_diff, abs(float(rows.p_diff[r])))
            self.n_same_top += bool(rows.same_top[r])
            self.count += 1


@dataclass
class KLDResult:
    """kl_divergence()'s sums, and every row's KLD and Δp (float32, as llama.cpp keeps them)."""
    sums: KLDSums
    kld_values: np.ndarray       # float32 [count]
    p_diff_values: np.ndarray    # float32 [count]


def kl_plan(transformer, base: BaseLogits, n_batch: int) -> ChunkPlan:
    """The plan of kl_divergence: the base file's chunks fed n_batch tokens at a time.
    PerplexityError when the model's vocabulary is not the base's, its trained context is
    shorter than the base's n_ctx, or n_batch is impossible for that n_ctx."""
    n_vocab = transformer.config.n_vocab
    if n_vocab != base.n_vocab:
        raise PerplexityError(f"{base.path}: was written for a vocabulary of {base.n_vocab} tokens; "
                              f"this model has {n_vocab}")
    if base.n_ctx > transformer.config.n_ctx_train:
        raise PerplexityError(f"{base.path}: was computed with a context of {base.n_ctx}, more than this model's "
                              f"trained context {transformer.config.n_ctx_train}")
    return chunk_plan(base.n_ctx, n_batch, base.n_chunk)


def kl_divergence(transformer, base: BaseLogits, n_batch: int, bos_id: int | None,
                  on_chunk: Callable[[int, KLDSums, float], None] | None = None) -> KLDResult:
    """llama-perplexity --kl-divergence: evaluate the base file's chunks (its n_ctx, its tokens,
    the first of each replaced by bos_id unless None) with `transformer`, n_batch tokens a batch,
    and compare each scored row with the base's. on_chunk(i, sums, seconds) is called after
    chunk i (1-based). PerplexityError as kl_plan raises it."""
    plan = kl_plan(transformer, base, n_batch)
    sums = KLDSums()
    kld_values, p_diff_values = [], []
    for i, chunks in _chunk_batches(base.tokens, plan):
        started = time.perf_counter()
        all_logits = chunk_logits(transformer, chunks, plan, bos_id)
        for s, (chunk, logits) in enumerate(zip(chunks, all_logits)):
            targets = np.asarray(chunk[plan.first + 1:], np.int64)
            rows = kld_rows(logits[:plan.n_scored], targets, base.chunk_records(i + s))
            sums.add(rows)
            kld_values.append(rows.kld.astype(F32))
            p_diff_values.append(rows.p_diff)
            if on_chunk is not None:
                on_chunk(i + s + 1, sums, time.perf_counter() - started)
    return KLDResult(sums, np.concatenate(kld_values), np.concatenate(p_diff_values))


# printf's "%f" for the statistics, which can be NaN or infinite where llama.cpp divides by zero
# (one row, or a model identical to its base): glibc writes "nan", "-nan", "inf", "-inf"

def _c_float(value, width: int, precision: int) -> str:
    value = float(value)
    if math.isnan(value):
        return ("-nan" if math.copysign(1.0, value) < 0 else "nan").rjust(width)
    return f"{value:{width}.{precision}f}"


def _f64(value) -> np.float64:
    return np.float64(value)


def _exp(value) -> np.float64:
    """The C library's exp (NumPy's own float64 exp can differ in the last bit), inf on overflow."""
    try:
        return np.float64(math.exp(value))
    except OverflowError:
        return np.float64(math.inf)


def _mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[np.float64, np.float64]:
    """perplexity.cpp's mean_and_uncertainty: the mean, and sqrt(var / (count - 1)) when the
    variance is positive and count > 10, else 0."""
    if count < 1:
        return _f64(0), _f64(0)
    mean = _f64(total) / count
    variance = _f64(total2) / count - mean * mean
    return mean, (np.sqrt(variance / (count - 1)) if variance > 0 and count > 10 else _f64(0))


def _covariance(total_a: float, total_b: float, total_ab: float, count: int) -> np.float64:
    """perplexity.cpp's covariance: of two means' estimates (0 below 10 values)."""
    if count < 10:
        return _f64(0)
    return (_f64(total_ab) / count - (_f64(total_a) / count) * (_f64(total_b) / count)) / (count - 1)


KLD_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
              "Δp RMS            Same top p")


def kld_chunk_line(i: int, sums: KLDSums) -> str:
    """llama-perplexity's line after chunk i in --kl-divergence mode (running statistics)."""
    with np.errstate(all="ignore"):
        log_ppl = _mean_and_uncertainty(sums.sum_nll, sums.sum_nll2, sums.count)
        log_ppl_base = _mean_and_uncertainty(sums.sum_nll_base, sums.sum_nll_base2, sums.count)
        cov = _covariance(sums.sum_nll, sums.sum_nll_base, sums.sum_nll_nll_base, sums.count)
        ppl = _exp(log_ppl[0])
        ratio = log_ppl[0] - log_ppl_base[0]
        ratio_unc = np.sqrt(log_ppl[1] * log_ppl[1] + log_ppl_base[1] * log_ppl_base[1] - 2.0 * cov)
        kl = _mean_and_uncertainty(sums.sum_kld, sums.sum_kld2, sums.count)
        mse = _mean_and_uncertainty(sums.sum_p_diff2, sums.sum_p_diff4, sums.count)
        rms = np.sqrt(mse[0])
        rms_unc = 0.5 / rms * mse[1]
        top = _f64(sums.n_same_top) / sums.count
        top_unc = np.sqrt(top * (1 - top) / _f64(sums.count - 1))
        return (f"{i:4d}"
                f"    {_c_float(ppl, 9, 4)} ± {_c_float(ppl * log_ppl[1], 9, 4)}"
                f"    {_c_float(ratio, 10, 5)} ± {_c_float(ratio_unc, 10, 5)}"
                f"    {_c_float(kl[0], 10, 5)} ± {_c_float(kl[1], 10, 5)}"
                f"    {_c_float(100.0 * rms, 6, 3)} ± {_c_float(100.0 * rms_unc, 6, 3)} %"
                f"    {_c_float(100.0 * top, 6, 3)} ± {_c_float(100.0 * top_unc, 6, 3)} %")


def _percentile(values: np.ndarray, fraction: float) -> np.float32:
    """perplexity.cpp's percentile lambda on sorted float32 values, in float32: p = fraction *
    (n - 1), interpolated between values[int(p)] and the next."""
    if fraction <= 0:
        return values[0]
    if fraction >= 1:
        return values[-1]
    p = F32(fraction) * F32(len(values) - 1)
    ip = int(p)
    p = p - F32(ip)
    return (F32(1) - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]


def _median(values: np.ndarray) -> np.float32:
    n = len(values)
    return F32(0.5) * (values[n // 2] + values[n // 2 - 1]) if n % 2 == 0 else values[n // 2]


def kld_statistics_lines(result: KLDResult) -> list[str]:
    """llama-perplexity's closing statistics of --kl-divergence mode, line by line (none below
    100 scored tokens, as llama.cpp prints none)."""
    s = result.sums
    if s.count < 100:
        return []
    kld_values, p_diff_values = np.sort(result.kld_values), np.sort(result.p_diff_values)
    lines = ["====== Perplexity statistics ======"]
    with np.errstate(all="ignore"):
        log_ppl = _mean_and_uncertainty(s.sum_nll, s.sum_nll2, s.count)
        ppl, ppl_unc = _exp(log_ppl[0]), _exp(log_ppl[0]) * log_ppl[1]
        lines.append(f"Mean PPL(Q)                   : {_c_float(ppl, 10, 6)} ± {_c_float(ppl_unc, 10, 6)}")
        log_base = _mean_and_uncertainty(s.sum_nll_base, s.sum_nll_base2, s.count)
        base, base_unc = _exp(log_base[0]), _exp(log_base[0]) * log_base[1]
        lines.append(f"Mean PPL(base)                : {_c_float(base, 10, 6)} ± {_c_float(base_unc, 10, 6)}")
        cov = _covariance(s.sum_nll, s.sum_nll_base, s.sum_nll_nll_base, s.count)
        lines.append(f"Cor(ln(PPL(Q)), ln(PPL(base))): {_c_float(100.0 * (cov / (log_ppl[1] * log_base[1])), 6, 2)}%")
        ratio = log_ppl[0] - log_base[0]
        ratio_unc = np.sqrt(log_ppl[1] * log_ppl[1] + log_base[1] * log_base[1] - 2.0 * cov)
        lines.append(f"Mean ln(PPL(Q)/PPL(base))     : {_c_float(ratio, 10, 6)} ± {_c_float(ratio_unc, 10, 6)}")
        lines.append(f"Mean PPL(Q)/PPL(base)         : {_c_float(_exp(ratio), 10, 6)} ± "
                     f"{_c_float(_exp(ratio) * ratio_unc, 10, 6)}")
        ppl_cov = ppl * base * cov
        diff_unc = np.sqrt(ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl_cov)
        lines.append(f"Mean PPL(Q)-PPL(base)         : {_c_float(ppl - base, 10, 6)} ± {_c_float(diff_unc, 10, 6)}")
        lines += ["", "====== KL divergence statistics ======"]
        kl = _mean_and_uncertainty(s.sum_kld, s.sum_kld2, s.count)
        lines.append(f"Mean    KLD: {_c_float(kl[0], 10, 6)} ± {_c_float(kl[1], 10, 6)}")
        lines.append(f"Maximum KLD: {_c_float(kld_values[-1], 10, 6)}")
        for label, fraction in (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900)):
            lines.append(f"{label}   KLD: {_c_float(_percentile(kld_values, fraction), 10, 6)}")
        lines.append(f"Median  KLD: {_c_float(_median(kld_values), 10, 6)}")
        for label, fraction in (("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001)):
            lines.append(f"{label}   KLD: {_c_float(_percentile(kld_values, fraction), 10, 6)}")
        lines.append(f"Minimum KLD: {_c_float(kld_values[0], 10, 6)}")
        lines += ["", "====== Token probability statistics ======"]
        p_diff = _mean_and_uncertainty(s.sum_p_diff, s.sum_p_diff2, s.count)
        lines.append(f"Mean    Δp: {_c_float(100.0 * p_diff[0], 6, 3)} ± {_c_float(100.0 * p_diff[1], 5, 3)} %")
        lines.append(f"Maximum Δp: {_c_float(100.0 * _f64(p_diff_values[-1]), 6, 3)}%")
        for label, fraction in (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900),
                                ("75.0%", 0.750)):
            lines.append(f"{label}   Δp: {_c_float(100.0 * _f64(_percentile(p_diff_values, fraction)), 6, 3)}%")
        lines.append(f"Median  Δp: {_c_float(100.0 * _f64(_median(p_diff_values)), 6, 3)}%")
        for label, fraction in (("25.0%", 0.250), ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010),
                                (" 0.1%", 0.001)):
            lines.append(f"{label}   Δp: {_c_float(100.0 * _f64(_percentile(p_diff_values, fraction)), 6, 3)}%")
        lines.append(f"Minimum Δp: {_c_float(100.0 * _f64(p_diff_values[0]), 6, 3)}%")
        mse = _mean_and_uncertainty(s.sum_p_diff2, s.sum_p_diff4, s.count)
        rms = np.sqrt(mse[0])
        lines.append(f"RMS Δp    : {_c_float(100.0 * rms, 6, 3)} ± {_c_float(100.0 * (0.5 / rms * mse[1]), 5, 3)} %")
        top = _f64(s.n_same_top) / s.count
        lines.append(f"Same top p: {_c_float(100.0 * top, 6, 3)} ± "
                     f"{_c_float(100.0 * np.sqrt(top * (1.0 - top) / (s.count - 1)), 5, 3)} %")
    return lines
