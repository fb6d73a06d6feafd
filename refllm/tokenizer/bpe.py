"""BPE (`tokenizer.ggml.model` = gpt2 or gemma4): pre-split into words, merge each word by rank.

Follows `llm_tokenizer_bpe_session` (llama.cpp@0c1e57098):

1. the pre-tokenizer cuts the text into words (pretokenizers.py);
2. each word is GPT-2 byte-encoded (every UTF-8 byte becomes one printable character), except
   for gemma4-style vocabularies, which keep raw UTF-8 with spaces already turned into ▁;
3. a word that is itself a token is kept whole when the vocabulary says `ignore_merges`
   (and, for gemma4, a run of newlines that is a token);
4. otherwise its characters merge pairwise, the pair with the lowest rank in
   `tokenizer.ggml.merges` first, ties to the leftmost, until no adjacent pair has a rank;
5. each final piece is looked up by its text. A piece that is not a token (possible only with a
   vocabulary missing single characters) falls back to one token per byte, and bytes with no
   token are dropped, as llama.cpp drops them.

Words repeat, so their ids are cached per tokenizer.
"""

from __future__ import annotations

import heapq

from refllm.tokenizer.pretokenizers import PRE_TOKENIZERS
from refllm.tokenizer.vocab import Vocab


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the
    other 68 bytes map to U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR: list[str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# Latin-1 decoding gives one character per byte; translate then swaps in GPT-2's characters.
_LATIN1_TO_GPT2 = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


def byte_encode(word: str) -> str:
    """`word`'s UTF-8 bytes, one GPT-2 character per byte (unicode_byte_encoding_process)."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_GPT2)


def single_byte_text(b: int) -> str:
    """The token text of a one-byte string holding byte b: an invalid byte reads back as
    refllm's surrogate escape, as the GGUF reader decodes it."""
    return chr(b) if b < 0x80 else chr(0xDC00 + b)


class BpeSession:
    """Turns text fragments (no special tokens left in them) into ids for one BPE vocabulary."""

    CACHE_LIMIT = 1 << 18          # words kept before the cache starts over

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        pre = PRE_TOKENIZERS[vocab.pre]
        self.pre_tokenizer = pre
        self.byte_encode = pre.byte_encode
        self.whole_newlines = pre.pre_type == "GEMMA4"      # llama.cpp's gemma4 fix (PR 21343)
        self._cache: dict[str, tuple[int, ...]] = {}           # word -> ids
        self._split_caches = [{} for _ in pre.regexes[1:]]      # fragment -> words, per regex

    def tokenize(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` to `out`."""
        cache = self._cache
        if len(cache) >= self.CACHE_LIMIT:
            cache.clear()
            for split_cache in self._split_caches:
                split_cache.clear()
        for word in self.pre_tokenizer.split(text, self._split_caches):
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = self._word_ids(word)
            out.extend(ids)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        vocab = self.vocab
        token_to_id = vocab.token_to_id
        text = byte_encode(word) if self.byte_encode else word
        whole = token_to_id.get(text)
        if whole is not None and (vocab.ignore_merges or (self.whole_newlines and not text.strip("\n"))):
            return (whole,)
        ids = []
        for piece in merge(text, vocab.merge_ranks):
            token = token_to_id.get(piece)
            if token is not None:
                ids.append(token)
                continue
            for b in piece.encode("utf-8", "surrogatepass"):
                token = token_to_id.get(single_byte_text(b) if self.byte_encode else f"<0x{b:02X}>")
                if token is not None:
                    ids.append(token)
        return tuple(ids)


def merge(word: str, ranks: dict[str, int]) -> list[str]:
    """Split `word` into characters and merge adjacent pairs, lowest rank first, ties to the
    leftmost; return the final pieces. `ranks` maps 'left right' to a rank (Vocab.merge_ranks).

    A linked list of symbols and a heap of candidate pairs, as llama.cpp does: a popped pair is
    stale when either side has since merged with something else, and is skipped.
    """
    n = len(word)
    if n < 2:
        return [word] if word else []
    symbols = list(word)                 # symbols[i]: text of the symbol starting at char i ("" once merged away)
    following = list(range(1, n + 1))    # index of the next live symbol, n for none
    preceding = list(range(-1, n - 1))   # index of the previous live symbol, -1 for none

    def rank_of(left: str, right: str):
        # a left part with a space after its first character never comes out of llama.cpp's
        # split of a merge string at find(' ', 1)
        return None if " " in left[1:] else ranks.get(left + " " + right)

    heap = []
    for i in range(n - 1):
        rank = rank_of(symbols[i], symbols[i + 1])
        if rank is not None:
            heap.append((rank, i, i + 1, symbols[i] + symbols[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, text = heapq.heappop(heap)
        if symbols[left] + symbols[right] != text or not symbols[left] or not symbols[right]:
            continue
        symbols[left], symbols[right] = text, ""
        after = following[right]
        following[left] = after
        if after < n:
            preceding[after] = left
        before = preceding[left]
        if before >= 0 and (rank := rank_of(symbols[before], text)) is not None:
            heapq.heappush(heap, (rank, before, left, symbols[before] + text))
        if after < n and (rank := rank_of(text, symbols[after])) is not None:
            heapq.heappush(heap, (rank, left, after, text + symbols[after]))
    return [s for s in symbols if s]
