"""UGM (`tokenizer.ggml.model` = t5): SentencePiece's unigram model, as `llm_tokenizer_ugm_session`
does it (llama.cpp@0c1e57098).

1. Normalize the UTF-8 bytes: a prefix that is the start of a USER_DEFINED token passes through
   as is; otherwise the longest prefix found in the precompiled charsmap (an XOR-compressed
   double array, `tokenizer.ggml.precompiled_charsmap`) is replaced by its replacement string;
   otherwise one valid UTF-8 character passes, and an invalid byte becomes U+FFFD. Spaces become
   ▁, with one in front (add_space_prefix) and runs merged (remove_extra_whitespaces).
2. Viterbi over byte offsets: the best-scoring way to cover the text with NORMAL, USER_DEFINED
   (score 0) and UNUSED tokens; a character no token covers costs the lowest score minus 10 and
   becomes UNK, and runs of UNK collapse into one.
"""

from __future__ import annotations

import numpy as np

from refllm.tokenizer.vocab import TokenAttr, TokenizerError, Vocab

UNKNOWN_PENALTY = np.float32(10.0)


def utf8_len(lead: int) -> int:
    """Bytes in the UTF-8 sequence starting with `lead`, from its top four bits (unicode_len_utf8)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


class CharsMap:
    """The precompiled charsmap: an XCDA trie of byte prefixes -> NUL-terminated replacements."""

    def __init__(self, blob: bytes):
        self.xcda = np.zeros(0, np.uint32)
        self.replacements = b""
        if not blob:
            return
        if len(blob) < 4:
            raise TokenizerError("tokenizer.ggml.precompiled_charsmap is too small for its size header")
        size = int.from_bytes(blob[:4], "little")
        if size + 4 >= len(blob):
            raise TokenizerError("tokenizer.ggml.precompiled_charsmap: its trie runs past its end")
        self.xcda = np.frombuffer(blob, "<u4", size // 4, 4).astype(np.uint32).tolist()
        self.replacements = blob[4 + size:]

    def _node(self, index: int) -> int:
        if index >= len(self.xcda):
            raise TokenizerError("tokenizer.ggml.precompiled_charsmap: trie index out of range")
        return self.xcda[index]

    def _base(self, index: int) -> int:
        node = self._node(index)
        return (node >> 10) << ((node & (1 << 9)) >> 6)

    def longest(self, data: bytes, start: int) -> tuple[int, bytes]:
        """(bytes matched, replacement) for the longest prefix of data[start:] in the map, or (0, b"")."""
        if not self.xcda:
            return 0, b""
        matched, value = 0, 0
        index = self._base(0)
        for pos in range(start, len(data)):
            c = data[pos]
            if c == 0:
                break
            index ^= c
            node = self._node(index)
            if node & ((1 << 31) | 0xFF) != c:          # LCHECK: not a child of the last node
                break
            is_leaf = (node >> 8) & 1
            index ^= self._base(index)
            if is_leaf:
                matched, value = pos - start + 1, self._node(index) & ((1 << 31) - 1)
        if not matched:
            return 0, b""
        if value >= len(self.replacements):
            raise TokenizerError("tokenizer.ggml.precompiled_charsmap: replacement index out of range")
        end = self.replacements.find(b"\x00", value)
        if end < 0:
            raise TokenizerError("tokenizer.ggml.precompiled_charsmap: unterminated replacement")
        return matched, self.replacements[value:end]


def valid_utf8_len(data: bytes, start: int) -> int:
    """Length of the UTF-8 character at data[start] if well formed as llama.cpp checks it
    (lead byte and continuation bytes only), else 0."""
    lead = data[start]
    if lead < 0x80:
        return 1
    for length, mask, value in ((2, 0xE0, 0xC0), (3, 0xF0, 0xE0), (4, 0xF8, 0xF0)):
        if lead & mask == value:
            tail = data[start + 1:start + length]
            return length if len(tail) == length - 1 and all(b & 0xC0 == 0x80 for b in tail) else 0
    return 0


class UgmSession:
    """Turns text fragments into ids for one unigram vocabulary."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.charsmap = CharsMap(vocab.precompiled_charsmap)
        attrs, scores = vocab.attrs, vocab.scores
        matchable = int(TokenAttr.NORMAL | TokenAttr.USER_DEFINED | TokenAttr.UNUSED)
        self.matcher: dict[bytes, int] = {vocab.text_bytes(i): i for i in range(len(vocab))
                                          if attrs[i] & matchable}
        self.longest_token = max(map(len, self.matcher), default=0)
        user_defined = [vocab.text_bytes(i) for i in range(len(vocab)) if attrs[i] & int(TokenAttr.USER_DEFINED)]
        # every prefix of a user-defined token: llama.cpp's trie walk stops at the longest one
        self.user_prefixes = {t[:k] for t in user_defined for k in range(1, len(t) + 1)}
        self.longest_user = max(map(len, user_defined), default=0)
        normal = [scores[i] for i in range(len(vocab)) if attrs[i] & int(TokenAttr.NORMAL)]
        min_score = np.float32(min(normal)) if normal else np.float32(np.finfo(np.float32).max)
        self.unknown_score = float(min_score - UNKNOWN_PENALTY)     # float32 arithmetic, as llama.cpp

    def tokenize(self, text: str, out: list[int]) -> None:
        """Append the ids of `text` to `out`."""
        data = self.normalize(text.encode("utf-8", "surrogatepass"))
        n = len(data)
        if n == 0:
            return
        vocab, unk = self.vocab, self.vocab.unk_id
        user_defined = int(TokenAttr.USER_DEFINED)
        best_token = [unk] * (n + 1)
        best_start = [0] * (n + 1)
        best_score = [-np.finfo(np.float64).max] * (n + 1)
        best_score[0] = 0.0
        start = 0
        while start < n:
            char_len = min(utf8_len(data[start]), n - start)
            here = best_score[start]
            single_char_token = False
            for length in range(1, min(self.longest_token, n - start) + 1):
                token = self.matcher.get(data[start:start + length])
                if token is None:
                    continue
                if length == char_len:
                    single_char_token = True
                score = here + (0.0 if vocab.attrs[token] & user_defined else vocab.scores[token])
                end = start + length
                if score > best_score[end]:
                    best_token[end], best_start[end], best_score[end] = token, start, score
            if not single_char_token:
                score, end = here + self.unknown_score, start + char_len
                if score > best_score[end]:
                    best_token[end], best_start[end], best_score[end] = unk, start, score
            start += char_len

        ids: list[int] = []
        end, previous_unknown = n, False
        while True:
            token = best_token[end]
            unknown = token == unk
            if not (previous_unknown and unknown):
                ids.append(token)
            if best_start[end] == 0:
                break
            previous_unknown, end = unknown, best_start[end]
        out.extend(reversed(ids))

    def normalize(self, data: bytes) -> bytes:
        """The normalized UTF-8 bytes of `data` (llm_tokenizer_ugm_session::normalize)."""
        vocab = self.vocab
        space = "\u2581".encode() if vocab.escape_whitespaces else b" "
        prepend = not vocab.treat_whitespace_as_suffix and vocab.add_space_prefix
        append = vocab.treat_whitespace_as_suffix and vocab.add_space_prefix
        merge = vocab.remove_extra_whitespaces
        out = bytearray()
        space_prepended = in_word = False
        pos = 0
        while pos < len(data):
            piece, consumed = self._normalize_prefix(data, pos)
            for c in piece:
                if c != 0x20:
                    if not in_word:
                        in_word = True
                        if (prepend and not space_prepended) or merge:
                            out += space
                            space_prepended = True
                    out.append(c)
                else:
                    in_word = False
                    if not merge:
                        out += space
            pos += consumed
        if append:
            out += space
        return bytes(out)

    def _normalize_prefix(self, data: bytes, start: int) -> tuple[bytes, int]:
        """(replacement, bytes consumed) for the input at `start`."""
        for length in range(min(self.longest_user, len(data) - start), 0, -1):
            if data[start:start + length] in self.user_prefixes:
                return data[start:start + length], length
        matched, replacement = self.charsmap.longest(data, start)
        if matched:
            return replacement, matched
        length = valid_utf8_len(data, start)
        if length:
            return data[start:start + length], length
        return "\ufffd".encode(), 1
