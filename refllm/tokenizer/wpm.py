"""WPM (`tokenizer.ggml.model` = bert): BERT's WordPiece, as `llm_tokenizer_wpm_session` does it.

1. Normalize: with strip_accents, each character becomes the first character of its NFD
   decomposition (é -> e) and accents are dropped; with lowercase, characters are lowercased.
2. Cut into words at whitespace; punctuation, ASCII symbols and CJK ideographs are words of
   their own; control characters, U+0000 and U+FFFD are dropped.
3. Each word, with ▁ in front (the GGUF vocabulary marks word starts with ▁, not continuations
   with ##), is covered greedily by the longest tokens; if some position matches no token, the
   whole word becomes UNK.

Character classes come from Python's unicodedata (Unicode 14 in Python 3.11); llama.cpp uses
its own 15.x tables, so characters assigned in between may be classed differently.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from refllm.tokenizer.vocab import Vocab

WHITESPACE = frozenset(map(chr, (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)))
# CJK ideograph blocks BERT isolates (its is_chinese_char, including the 0x2B920 quirk)
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

SPACE, DROP, ALONE, KEEP = "space", "drop", "alone", "keep"


@lru_cache(maxsize=1 << 16)
def char_class(ch: str, strip_accents: bool) -> str:
    """What the normalizer does with `ch` (already NFD-mapped): SPACE ends a word, DROP removes
    it, ALONE makes it a word of its own, KEEP appends it to the current word."""
    if ch in WHITESPACE:
        return SPACE
    category = unicodedata.category(ch)
    cpt = ord(ch)
    if cpt == 0 or cpt == 0xFFFD or (category[0] == "C" and category != "Cn"):
        return DROP
    if strip_accents and category[0] == "M":
        return DROP
    if category[0] == "P" or (cpt < 0x7F and category[0] == "S") or \
            any(lo <= cpt <= hi for lo, hi in CJK_RANGES):
        return ALONE
    return KEEP


@lru_cache(maxsize=1 << 16)
def nfd_first(ch: str) -> str:
    """The first character of `ch`'s canonical decomposition (llama.cpp's one-to-one NFD table)."""
    return unicodedata.normalize("NFD", ch)[0]


@lru_cache(maxsize=1 << 16)
def lower_first(ch: str) -> str:
    """`ch` lowercased to one character (llama.cpp's one-to-one lowercase table: İ -> i)."""
    return ch.lower()[0]


def words(text: str, lowercase: bool, strip_accents: bool) -> list[str]:
    """BertNormalizer + BertPreTokenizer as llama.cpp does them (llm_tokenizer_wpm_session::preprocess)."""
    out: list[str] = []
    word: list[str] = []
    for ch in text:
        if strip_accents:
            ch = nfd_first(ch)
        kind = char_class(ch, strip_accents)
        if kind is SPACE or kind is ALONE:
            if word:
                out.append("".join(word))
                word = []
            if kind is ALONE:
                out.append(lower_first(ch) if lowercase else ch)
        elif kind is KEEP:
            word.append(lower_first(ch) if lowercase else ch)
    if word:
        out.append("".join(word))
    return out


class WpmSession:
    """Turns text fragments into ids for one WordPiece vocabulary."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab

    def tokenize(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` to `out`."""
        vocab = self.vocab
        token_to_id, longest = vocab.token_to_id, vocab.max_token_len
        for word in words(text, vocab.lowercase, vocab.strip_accents):
            word = "\u2581" + word
            n, start = len(word), len(out)
            i = 0
            while i < n:
                # the longest token starting at i (a token has at most `longest` bytes, so at
                # most that many characters)
                for j in range(min(n, i + longest), i, -1):
                    token = token_to_id.get(word[i:j])
                    if token is not None:
                        out.append(token)
                        i = j
                        break
                else:
                    del out[start:]          # one unmatched position discards the whole word
                    break
            if len(out) == start:
                out.append(vocab.unk_id)
