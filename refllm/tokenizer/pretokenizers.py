"""BPE pre-tokenizers: how `tokenizer.ggml.pre` cuts text into words before merging.

Each value of `tokenizer.ggml.pre` names one of llama.cpp's LLAMA_VOCAB_PRE_TYPEs, which is a
list of regexes and a few flags (`llm_tokenizer_bpe` and `llama_vocab::impl::load` in
llama.cpp@0c1e57098). The regexes are llama.cpp's own rewrites (CONTR below instead of
`(?i:'s|...)`), run here with the `regex` module, whose `\\p{..}` and `\\s` match what
llama.cpp's tables say, up to Unicode versions (llama.cpp embeds 15.x tables; `regex` is newer,
so characters assigned since can fall in another class).

The regexes run in order. Each one cuts every current fragment into its matches and the gaps
between them; both are kept (`unicode_regex_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import regex

# llama.cpp's case-insensitive contractions without (?i:), which std::regex lacks.
CONTR = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (CONTR + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
# CJK ideographs, U+0800..U+4E00 (sic: most scripts from Samaritan to CJK), Hangul syllables
DEEPSEEK_CJK = r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, ... letters, spelt out by DeepSeek
DEEPSEEK_LETTERS = (
    r"\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    r"\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    r"\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    r"\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    r"\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    r"\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    r"\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134"
    r"\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    r"\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    r"\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    r"\U0001e900-\U0001e943]+")

# LLAMA_VOCAB_PRE_TYPE -> its regexes, applied in order.
REGEXES: dict[str, tuple[str, ...]] = {
    "DEFAULT": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "LLAMA3": (LLAMA3,),
    "GPT2": (GPT2,),
    "STARCODER": (r"\p{N}", GPT2),
    "QWEN2": (QWEN2,),
    "QWEN35": (QWEN35,),
    "FALCON": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),
    "DEEPSEEK_CODER": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", DEEPSEEK_CJK, r"\p{N}"),
    # llama.cpp's "\s+$" runs in std::regex, where $ is only the end; Python's $ also matches
    # before a final newline, so \Z
    "DEEPSEEK_LLM": (r"[\r\n]", DEEPSEEK_LETTERS, r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                     r"\s+\Z", DEEPSEEK_CJK, r"\p{N}+"),
    # SPM-style BPE: spaces are already ▁; cut only at newlines
    "GEMMA4": (r"[^\n]+|[\n]+",),
    "SARVAM_MOE": (r"[^\n]+|[\n]+",),
}


@dataclass(frozen=True)
class PreTokenizer:
    """One `tokenizer.ggml.pre` value: its llama.cpp pre-type and the flags it sets."""
    pre_type: str                                   # key of REGEXES
    flags: dict[str, bool] = field(default_factory=dict)   # Vocab flags this pre-type sets
    byte_encode: bool = True                        # GPT-2 bytes-to-unicode before merging

    @property
    def regexes(self) -> tuple[str, ...]:
        return REGEXES[self.pre_type]

    @cached_property
    def splitters(self) -> tuple[regex.Pattern, ...]:
        """The regexes, each wrapped in a group so that `split` keeps the matches with the gaps."""
        compiled = tuple(regex.compile(f"({r})") for r in self.regexes)
        # an empty match would cut where llama.cpp does not; none of the table's regexes has one
        assert not any(p.match("") for p in compiled), self.pre_type
        return compiled

    @cached_property
    def whitespace_view(self) -> bool:
        """Whether the regexes must see non-ASCII whitespace as U+000B.

        llama.cpp runs a regex without \\p{..} through std::wregex on the text with every
        non-ASCII whitespace replaced by U+000B (std::wregex's \\s knows only ASCII). That is
        invisible unless the regex names non-ASCII characters itself, as DeepSeek-LLM's
        punctuation class names U+3000.
        """
        return any("\\p{" not in r and regex.search(r"\\u|[^\x00-\x7f]", r) for r in self.regexes)

    def split(self, text: str, caches: list[dict] | None = None) -> list[str]:
        """Cut `text` into words: every regex in turn cuts every fragment into matches and gaps.

        `caches` (one dict per regex after the first, kept by the caller) remembers how each
        fragment was cut: fragments repeat a lot.
        """
        view = text.translate(_NON_ASCII_SPACE_TO_VT) if self.whitespace_view else text
        first, *rest = self.splitters
        pieces = list(filter(None, first.split(view)))
        for k, pattern in enumerate(rest):
            cache = caches[k] if caches is not None else {}
            cut: list[str] = []
            for piece in pieces:
                words = cache.get(piece)
                if words is None:
                    words = cache[piece] = list(filter(None, pattern.split(piece)))
                cut += words
            pieces = cut
        if view is text:
            return pieces
        out, pos = [], 0            # the same cuts, in the original text
        for piece in pieces:
            out.append(text[pos:pos + len(piece)])
            pos += len(piece)
        return out


# llama.cpp's whitespace set (unicode_set_whitespace) beyond ASCII -> U+000B
_NON_ASCII_SPACE_TO_VT = {c: 0x0B for c in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                                            0x202F, 0x205F, 0x3000)}

_LLAMA3_FLAGS = {"ignore_merges": True, "add_bos": True}
_KEEP_SPACES = {"clean_spaces": False}

# tokenizer.ggml.pre -> PreTokenizer. Every value llama.cpp's test vocabularies use, `smollm`,
# and the other spellings llama.cpp maps to the same regexes and flags.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer("DEFAULT"),
    **{name: PreTokenizer("LLAMA3", _LLAMA3_FLAGS)
       for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                    "lfm2", "jina-v5-nano")},
    "dbrx": PreTokenizer("LLAMA3"),
    "smaug-bpe": PreTokenizer("LLAMA3"),
    **{name: PreTokenizer("GPT2")
       for name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                    "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais")},
    "trillion": PreTokenizer("GPT2", _KEEP_SPACES),
    "granite-docling": PreTokenizer("GPT2", _KEEP_SPACES),
    "jina-v1-en": PreTokenizer("GPT2", {"add_sep": True}),
    "jina-v2-code": PreTokenizer("GPT2", {"add_sep": True}),
    "roberta-bpe": PreTokenizer("GPT2", {"add_sep": True}),
    **{name: PreTokenizer("STARCODER")
       for name in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2")},
    "smollm": PreTokenizer("STARCODER", _KEEP_SPACES),
    "command-r": PreTokenizer("STARCODER", _KEEP_SPACES),
    **{name: PreTokenizer("QWEN2", _KEEP_SPACES)
       for name in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2")},
    "stablelm2": PreTokenizer("QWEN2"),
    "megrez": PreTokenizer("QWEN2"),
    "qwen35": PreTokenizer("QWEN35", _KEEP_SPACES),
    "falcon": PreTokenizer("FALCON"),
    "deepseek-coder": PreTokenizer("DEEPSEEK_CODER", _KEEP_SPACES),
    "deepseek-llm": PreTokenizer("DEEPSEEK_LLM", _KEEP_SPACES),
    "gemma4": PreTokenizer("GEMMA4", {"escape_whitespaces": True}, byte_encode=False),
    "granite-embed-multi-311m": PreTokenizer("GEMMA4", {"escape_whitespaces": True}, byte_encode=False),
    "sarvam-moe": PreTokenizer("SARVAM_MOE", {"escape_whitespaces": True, "clean_spaces": False},
                               byte_encode=False),
}
