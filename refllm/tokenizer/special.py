"""Cutting special tokens out of text before the tokenizer proper sees it.

llama.cpp's `tokenizer_st_partition`: take every CONTROL, USER_DEFINED and UNKNOWN token,
longest text first; for each, cut every remaining piece of plain text at each occurrence of
the token's text, left to right, leaving the token's id in its place. With parse_special off,
CONTROL and UNKNOWN tokens are left as text, but USER_DEFINED tokens are still cut out (as
Hugging Face tokenizers do). A token with LSTRIP eats the whitespace to its left, RSTRIP the
whitespace to its right (C isspace: space, \\t, \\n, \\v, \\f, \\r).

Going through thousands of special tokens one by one would scan the text thousands of times,
so refllm first finds which special texts occur at all (one regex pass over a trie of the
texts), then runs llama.cpp's procedure over those only. A text that does not occur cannot cut
anything, so the result is the same.
"""

from __future__ import annotations

import re

from refllm.tokenizer.vocab import TokenAttr, Vocab

C_SPACE = " \t\n\v\f\r"
PARSE_ONLY = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN)     # cut out only with parse_special
LSTRIP, RSTRIP = int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP)


class SpecialTokenSplitter:
    """Cuts text into plain-text pieces (str) and special token ids (int)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._order = {token: k for k, token in enumerate(vocab.special_tokens)}
        self._finders: dict[bool, tuple[re.Pattern | None, dict[str, list[int]]]] = {}

    def split(self, text: str, parse_special: bool) -> list[str | int]:
        """`text` as a list of plain-text pieces and special token ids, in order."""
        if not text:
            return []
        pieces: list[str | int] = [text]
        attrs = self.vocab.attrs
        for token in self._present(text, parse_special):
            special = self.vocab.text(token)
            lstrip, rstrip = attrs[token] & LSTRIP, attrs[token] & RSTRIP
            cut: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or special not in piece:
                    cut.append(piece)
                else:
                    cut += _cut_at(piece, special, token, lstrip, rstrip)
            pieces = cut
        return pieces

    def _present(self, text: str, parse_special: bool) -> list[int]:
        """The special tokens whose text occurs in `text`, in partition order."""
        finder, by_text = self._finder(parse_special)
        if finder is None:
            return []
        found: set[str] = set()
        for m in finder.finditer(text):
            found.add(m.group())
            for start in range(m.start() + 1, m.end()):      # matches overlapping this one
                if (inner := finder.match(text, start)) is not None:
                    found.add(inner.group())
        # a shorter special text that starts where a longer one matched occurs too
        for longest in list(found):
            found.update(longest[:k] for k in range(1, len(longest)) if longest[:k] in by_text)
        tokens = [token for t in found for token in by_text[t]]
        return sorted(tokens, key=self._order.__getitem__)

    def _finder(self, parse_special: bool):
        """(a regex matching the longest special text at a position, text -> token ids), for
        the tokens that this mode cuts out; built on first use."""
        if parse_special not in self._finders:
            vocab = self.vocab
            by_text: dict[str, list[int]] = {}
            for token in vocab.special_tokens:
                if parse_special or not vocab.attrs[token] & PARSE_ONLY:
                    by_text.setdefault(vocab.text(token), []).append(token)
            pattern = re.compile(trie_regex(by_text), re.DOTALL) if by_text else None
            self._finders[parse_special] = (pattern, by_text)
        return self._finders[parse_special]


def _cut_at(text: str, special: str, token: int, lstrip: int, rstrip: int) -> list[str | int]:
    """`text` cut at every occurrence of `special`, left to right, as llama.cpp cuts it."""
    out: list[str | int] = []
    start = 0
    while (match := text.find(special, start)) >= 0:
        left = text[start:match]
        if lstrip:
            left = left.rstrip(C_SPACE)
        if left:
            out.append(left)
        out.append(token)
        start = match + len(special)
        if rstrip:
            while start < len(text) and text[start] in C_SPACE:
                start += 1
    if start < len(text):
        out.append(text[start:])
    return out


def trie_regex(words) -> str:
    """A regex matching, at a position, the longest of `words` that starts there.

    Words share their prefixes in a trie, so the regex tries one branch per next character
    instead of every word; an optional group prefers the longer continuation.
    """
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}                       # end of a word

    def pattern(node: dict) -> str:
        branches = []
        for ch, child in node.items():
            if not ch:
                continue
            run = ch
            while len(child) == 1 and "" not in child:      # a chain without choices: one literal
                (ch, child), = child.items()
                run += ch
            branches.append(re.escape(run) + pattern(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return pattern(root)
