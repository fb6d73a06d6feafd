"""SPM (`tokenizer.ggml.model` = llama): SentencePiece-style merging by token score.

Follows `llm_tokenizer_spm_session` (llama.cpp@0c1e57098). The text arrives with spaces already
turned into ▁ (U+2581). It starts as one symbol per character; every adjacent pair whose
concatenation is a token is a candidate, and the candidate whose token has the highest score
merges first (ties to the leftmost), until no adjacent pair forms a token. Each final symbol
is its token; a symbol that is not a token (a character the vocabulary lacks) becomes one
`<0xXX>` byte token per UTF-8 byte.

llama.cpp runs this over a whole fragment at once. refllm cuts the fragment first, before each
▁ that no token can straddle: a token straddles the cut before a ▁ only if it holds the
character in front of that ▁ followed by ▁, so if no token holds that pair, no merge ever
crosses the cut, the two sides merge independently, and the result is the same. The pieces
(mostly "▁word") repeat, so their ids are cached.
"""

from __future__ import annotations

import heapq
import re

from refllm.tokenizer.bpe import single_byte_text
from refllm.tokenizer.vocab import TokenizerError, Vocab

SPACE = "\u2581"      # ▁, SentencePiece's escaped space


class SpmSession:
    """Turns escaped text (spaces already ▁) into ids for one SPM vocabulary."""

    CACHE_LIMIT = 1 << 18

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cutter: re.Pattern | None = None

    def tokenize(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` (already escaped) to `out`."""
        cache = self._cache
        for piece in self.cutter.split(text):
            if not piece:
                continue
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= self.CACHE_LIMIT:
                    cache.clear()
                ids = cache[piece] = tuple(self._piece_ids(piece))
            out.extend(ids)

    @property
    def cutter(self) -> re.Pattern:
        """A zero-width pattern matching before every ▁ that no token straddles (built on first use)."""
        if self._cutter is None:
            # every character that some token holds right before a ▁ (the separator NUL comes
            # in too, which only forbids cuts after a NUL in the text: harmless)
            joined = "\x00".join(self.vocab.texts)
            before = {joined[m.start() - 1] for m in re.finditer(SPACE, joined) if m.start()}
            guard = f"(?<![{''.join(re.escape(c) for c in sorted(before))}])" if before else ""
            self._cutter = re.compile(f"{guard}(?={SPACE})")
        return self._cutter

    def _piece_ids(self, text: str) -> list[int]:
        token_to_id = self.vocab.token_to_id
        ids = []
        for symbol in merge_by_score(text, token_to_id, self.vocab.scores):
            token = token_to_id.get(symbol)
            if token is not None:
                ids.append(token)
            else:
                ids.extend(self._byte_token(b) for b in symbol.encode("utf-8", "surrogatepass"))
        return ids

    def _byte_token(self, b: int) -> int:
        """llama_vocab::byte_to_token for SPM: `<0xXX>`, else the one-byte string itself."""
        token_to_id = self.vocab.token_to_id
        token = token_to_id.get(f"<0x{b:02X}>")
        if token is None:
            token = token_to_id.get(single_byte_text(b))
        if token is None:   # llama.cpp throws here too (std::out_of_range)
            raise TokenizerError(f"the vocabulary has no token for byte 0x{b:02X}, neither <0x{b:02X}> "
                                 "nor the byte itself, so this text cannot be tokenized")
        return token


def merge_by_score(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Split `text` into characters and merge adjacent pairs that form a token, highest token
    score first, ties to the leftmost; return the final symbols.

    A linked list of symbols and a heap of candidate pairs; a popped pair is stale when either
    side has merged with something else since (its length changed), and is skipped.
    """
    n = len(text)
    if n < 2:
        return [text] if text else []
    symbols = list(text)                 # symbols[i]: text of the symbol starting at char i ("" once merged away)
    following = list(range(1, n + 1))    # next live symbol, n for none
    preceding = list(range(-1, n - 1))   # previous live symbol, -1 for none

    heap = []
    for i in range(n - 1):
        token = token_to_id.get(symbols[i] + symbols[i + 1])
        if token is not None:
            heap.append((-scores[token], i, i + 1, 2))
    heapq.heapify(heap)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        left_text, right_text = symbols[left], symbols[right]
        if not left_text or not right_text or len(left_text) + len(right_text) != size:
            continue
        merged = symbols[left] = left_text + right_text
        symbols[right] = ""
        after = following[right]
        following[left] = after
        if after < n:
            preceding[after] = left
        before = preceding[left]
        if before >= 0 and (token := token_to_id.get(symbols[before] + merged)) is not None:
            heapq.heappush(heap, (-scores[token], before, left, len(symbols[before]) + size))
        if after < n and (token := token_to_id.get(merged + symbols[after])) is not None:
            heapq.heappush(heap, (-scores[token], left, after, size + len(symbols[after])))
    return [s for s in symbols if s]
