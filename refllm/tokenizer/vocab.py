"""The vocabulary of a model, read from its GGUF metadata as llama.cpp reads it.

`Vocab.from_metadata(metadata)` follows `llama_vocab::impl::load` (llama.cpp@0c1e57098):

1. the tokenizer type from `tokenizer.ggml.model`, with that type's default special ids;
2. the type's default flags, then the pre-tokenizer's flags (BPE only, see pretokenizers.py);
3. `tokenizer.ggml.add_space_prefix` and `remove_extra_whitespaces` override;
4. the tokens, scores and token types; token types become attribute bit flags;
5. the special ids from `tokenizer.ggml.*_token_id` (an id past the vocabulary is ignored);
6. `add_bos_token`, `add_eos_token`, `add_sep_token` override; gemma4 forces add_bos;
7. EOT, EOM and FIM tokens found by their text when no key names them, the EOG set, and the
   attribute fixes llama.cpp makes by token text and model name (e.g. RSTRIP for Phi-3).

Keys keep GGUF's names, typos included (`tokenizer.ggml.seperator_token_id`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from functools import cached_property
from typing import Any

import numpy as np

from refllm.errors import RefllmError
from refllm.formats.values import StringArray
from refllm.tokenizer import pretokenizers


class TokenizerError(RefllmError, ValueError):
    """A vocabulary that cannot be used: a missing or badly typed key, an unknown type."""


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.h, LLAMA_TOKEN_TYPE_*)."""
    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class TokenAttr(IntFlag):
    """Per-token attribute bits (llama.h, LLAMA_TOKEN_ATTR_*)."""
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# token_type value -> attribute; anything else is UNDEFINED.
ATTR_OF_TYPE = {
    TokenType.NORMAL: TokenAttr.NORMAL, TokenType.UNKNOWN: TokenAttr.UNKNOWN,
    TokenType.CONTROL: TokenAttr.CONTROL, TokenType.USER_DEFINED: TokenAttr.USER_DEFINED,
    TokenType.UNUSED: TokenAttr.UNUSED, TokenType.BYTE: TokenAttr.BYTE,
}

# The tokens the special-token partition splits out (llama.cpp's cache_special_tokens).
SPECIAL_ATTRS = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN

# Special roles, in llama.cpp's key order. Later keys win (the deprecated FIM spellings last).
SPECIAL_KEYS: tuple[tuple[str, str], ...] = (
    ("bos", "tokenizer.ggml.bos_token_id"), ("eos", "tokenizer.ggml.eos_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"), ("eom", "tokenizer.ggml.eom_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"), ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"), ("mask", "tokenizer.ggml.mask_token_id"),
    ("fim_pre", "tokenizer.ggml.fim_pre_token_id"), ("fim_suf", "tokenizer.ggml.fim_suf_token_id"),
    ("fim_mid", "tokenizer.ggml.fim_mid_token_id"), ("fim_pad", "tokenizer.ggml.fim_pad_token_id"),
    ("fim_rep", "tokenizer.ggml.fim_rep_token_id"), ("fim_sep", "tokenizer.ggml.fim_sep_token_id"),
    ("fim_pre", "tokenizer.ggml.prefix_token_id"), ("fim_suf", "tokenizer.ggml.suffix_token_id"),
    ("fim_mid", "tokenizer.ggml.middle_token_id"),
)
ROLES = ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
         "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")


@dataclass(frozen=True)
class ModelType:
    """What a `tokenizer.ggml.model` value means: the algorithm, its default ids and flags."""
    kind: str                       # "spm", "bpe", "wpm" or "ugm"
    ids: dict[str, int]             # default special ids (roles not named are None)
    flags: dict[str, bool]          # the type's default flags (step 2)


MODEL_TYPES: dict[str, ModelType] = {
    "llama": ModelType("spm", {"bos": 1, "eos": 2, "unk": 0},
                       {"add_space_prefix": True, "clean_spaces": False, "add_bos": True, "add_eos": False}),
    "gpt2": ModelType("bpe", {"bos": 11, "eos": 11},
                      {"add_space_prefix": False, "escape_whitespaces": False, "clean_spaces": True}),
    "gemma4": ModelType("bpe", {},
                        {"add_space_prefix": False, "escape_whitespaces": False, "clean_spaces": True}),
    "bert": ModelType("wpm", {"bos": 101, "unk": 100, "sep": 102, "pad": 0, "mask": 103},
                      {"add_space_prefix": False, "clean_spaces": True, "add_bos": True, "add_eos": False,
                       "add_sep": True}),
    "t5": ModelType("ugm", {"eos": 1, "unk": 2, "pad": 0}, {"add_bos": False, "add_eos": True}),
}
# Types llama.cpp has that refllm does not implement (named in the error, not "unknown").
UNSUPPORTED_MODELS = ("rwkv", "plamo2", "hybriddna", "whitespace", "none", "no_vocab", "test")

# Tokens recognised by their text (llama.cpp's "auto-detect special tokens by text").
AUTO_ROLES: dict[str, tuple[str, ...]] = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Texts that end generation (each is also made CONTROL).
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
             "<｜end▁of▁sentence｜>", "[e~[")
# gpt-oss: these are always rendered, so llama.cpp makes them USER_DEFINED.
ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


@dataclass(eq=False)
class Vocab:
    """A model's vocabulary and tokenizer settings, as llama.cpp holds them after loading.

    scores[i] is a float; attrs[i] a TokenAttr bit set (as an int). Special ids are None where
    the model has none. `texts` and `token_to_id` are built on first use (a few hundred
    thousand strings), so that reading a vocabulary stays fast.
    """

    model: str                      # tokenizer.ggml.model
    kind: str                       # "spm", "bpe", "wpm" or "ugm"
    pre: str                        # the effective pre-tokenizer name ("default" when absent)
    tokens: StringArray             # tokenizer.ggml.tokens, as stored
    scores: list[float]
    attrs: list[int]
    merges: StringArray | None      # BPE only: tokenizer.ggml.merges, in rank order
    special_ids: dict[str, int | None]
    eog_ids: frozenset[int]
    special_tokens: list[int]       # ids the partition cuts out, longest text first
    add_space_prefix: bool = False
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    ignore_merges: bool = False
    clean_spaces: bool = False
    remove_extra_whitespaces: bool = False
    escape_whitespaces: bool = True
    treat_whitespace_as_suffix: bool = False
    lowercase: bool = True          # WPM normalizer
    strip_accents: bool = True      # WPM normalizer
    precompiled_charsmap: bytes = b""   # UGM normalizer

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Vocab:
        """Read the vocabulary from GGUF metadata, as llama.cpp does at load time.

        Raises TokenizerError naming the key when a needed key is missing or badly typed, or
        when the tokenizer type or pre-tokenizer is unknown.
        """
        md = metadata
        model = _get(md, "tokenizer.ggml.model", str)
        if model is None:
            raise TokenizerError("no tokenizer in this model: the key tokenizer.ggml.model is missing")
        pre_key = _get(md, "tokenizer.ggml.pre", str) or ""
        mtype = MODEL_TYPES.get(model)
        if mtype is None:
            known = ", ".join(MODEL_TYPES)
            if model in UNSUPPORTED_MODELS:
                raise TokenizerError(f"tokenizer.ggml.model {model!r} is a tokenizer refllm does not "
                                     f"implement (it implements {known})")
            raise TokenizerError(f"unknown tokenizer.ggml.model {model!r} (known: {known})")

        flags: dict[str, bool] = {"escape_whitespaces": True}     # step 1: all else false
        flags.update(mtype.flags)                                   # step 2
        ids: dict[str, int | None] = {role: mtype.ids.get(role) for role in ROLES}
        pre = "default"
        merges = None
        if mtype.kind == "bpe":
            pre = "gemma4" if model == "gemma4" else (pre_key or "default")
            pre_tokenizer = pretokenizers.PRE_TOKENIZERS.get(pre)
            if pre_tokenizer is None:
                raise TokenizerError(f"unknown pre-tokenizer tokenizer.ggml.pre = {pre!r}; refllm knows "
                                     + ", ".join(sorted(pretokenizers.PRE_TOKENIZERS)))
            flags.update(pre_tokenizer.flags)
            merges = _get(md, "tokenizer.ggml.merges", StringArray)
            if merges is None:
                raise TokenizerError("a BPE vocabulary needs tokenizer.ggml.merges, and this model has none")
        for key, name in (("tokenizer.ggml.add_space_prefix", "add_space_prefix"),
                          ("tokenizer.ggml.remove_extra_whitespaces", "remove_extra_whitespaces")):
            if (value := _get(md, key, bool)) is not None:                  # step 3
                flags[name] = value

        tokens = _get(md, "tokenizer.ggml.tokens", StringArray)            # step 4
        if tokens is None:
            raise TokenizerError("no tokenizer.ggml.tokens in this model: there is no vocabulary")
        n = len(tokens)
        scores = _numeric_array(md, "tokenizer.ggml.scores", n, (np.float32, np.int32))
        scores_list = scores[:n].astype(np.float64).tolist() if scores is not None else [0.0] * n
        types = _numeric_array(md, "tokenizer.ggml.token_type", n, (np.int32,))
        attrs = np.full(n, int(TokenAttr.NORMAL), np.int32)
        if types is not None:
            table = np.zeros(256, np.int32)
            for t, a in ATTR_OF_TYPE.items():
                table[t] = a
            types = types[:n]
            attrs = np.where((types >= 0) & (types < 256), table[np.clip(types, 0, 255)], 0).astype(np.int32)

        for role in ROLES:                                                  # step 5
            if ids[role] is not None and ids[role] >= n:
                ids[role] = None
        for role, key in SPECIAL_KEYS:
            value = _get(md, key, int)
            if value is not None and 0 <= value < n:
                ids[role] = value

        for key, name in (("tokenizer.ggml.add_bos_token", "add_bos"),      # step 6
                          ("tokenizer.ggml.add_eos_token", "add_eos"),
                          ("tokenizer.ggml.add_sep_token", "add_sep")):
            if (value := _get(md, key, bool)) is not None:
                flags[name] = value
        if pre == "gemma4":
            flags["add_bos"] = True
        lowercase = _get(md, "tokenizer.ggml.normalizer.lowercase", bool)
        lowercase = True if lowercase is None else lowercase
        strip_accents = _get(md, "tokenizer.ggml.normalizer.strip_accents", bool)
        strip_accents = lowercase if strip_accents is None else strip_accents

        named = _find_texts(tokens, NAMED_TEXTS)                            # step 7
        eog = _detect_by_text(tokens, named, attrs, ids)
        special = np.flatnonzero(attrs & int(SPECIAL_ATTRS)).tolist()
        # longest text (in bytes) first; llama.cpp's std::sort leaves ties in no set order, refllm
        # keeps them by id
        special_tokens = sorted(special, key=lambda i: (-len(_text_bytes(tokens, i)), i))
        _fix_attrs_by_name(md, pre_key, named, attrs, special_tokens)

        charsmap = md.get("tokenizer.ggml.precompiled_charsmap") if mtype.kind == "ugm" else None
        return cls(
            model=model, kind=mtype.kind, pre=pre, tokens=tokens, scores=scores_list, attrs=attrs.tolist(),
            merges=merges, special_ids=ids, eog_ids=frozenset(eog), special_tokens=special_tokens,
            lowercase=lowercase, strip_accents=strip_accents, precompiled_charsmap=_charsmap_bytes(charsmap),
            **flags)

    # -- lookups -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @cached_property
    def texts(self) -> list[str]:
        """Every token's text; an empty one reads "[EMPTY_i]", as in llama.cpp."""
        texts = list(self.tokens)
        for i in [i for i, t in enumerate(texts) if not t]:
            texts[i] = f"[EMPTY_{i}]"
        return texts

    @cached_property
    def token_to_id(self) -> dict[str, int]:
        """Text -> id; a text held by several tokens maps to the last, as in llama.cpp."""
        return dict(zip(self.texts, range(len(self.texts))))

    def text(self, token_id: int) -> str:
        """Token `token_id`'s text (without decoding the whole vocabulary)."""
        return self.tokens[token_id] or f"[EMPTY_{token_id}]"

    def text_bytes(self, token_id: int) -> bytes:
        """Token `token_id`'s text as stored (invalid UTF-8 kept), or "[EMPTY_i]" for empty ones."""
        return _text_bytes(self.tokens, token_id)

    def is_eog(self, token_id: int) -> bool:
        """Whether the token ends generation (llama_vocab_is_eog)."""
        return token_id in self.eog_ids

    @cached_property
    def merge_ranks(self) -> dict[str, int]:
        """tokenizer.ggml.merges as 'left right' -> rank (lower merges first), built on first use.

        llama.cpp splits each merge string at its first space after position 0 (`find(' ', 1)`)
        and keeps the first rank of a repeated pair; keeping the whole string as the key is the
        same lookup, given that a left part with a space after its first character never has a
        rank (bpe.merge checks that).
        """
        strings = list(self.merges) if self.merges is not None else []
        # reversed, so the first occurrence of a repeated merge is the one kept
        return dict(zip(reversed(strings), range(len(strings) - 1, -1, -1)))

    @cached_property
    def max_token_len(self) -> int:
        """The longest token, in bytes (WPM bounds its longest-match search with it)."""
        return max(map(len, self.tokens.raw_items()), default=0)


# bos_id, eos_id, ..., fim_sep_id: the special ids by role, None where the model has none
for _role in ROLES:
    setattr(Vocab, f"{_role}_id", property(lambda self, role=_role: self.special_ids[role],
                                           doc=f"The {_role} token id, or None."))


# -- helpers ---------------------------------------------------------------------------------

# Python types a key may hold, by what llama.cpp asks for.
_ACCEPTS = {str: (str,), bool: (bool, np.bool_), int: (int, np.integer), StringArray: (StringArray,)}


def _get(md: Mapping[str, Any], key: str, kind: type):
    """md[key] checked against `kind`, or None when absent; TokenizerError names a wrong type."""
    if key not in md:
        return None
    value = md[key]
    ok = _ACCEPTS[kind]
    if not isinstance(value, ok) or (kind is int and isinstance(value, (bool, np.bool_))):
        if kind is StringArray and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return StringArray.from_strings(value)
        raise TokenizerError(f"{key} should be {_KIND_NAMES[kind]}, but it is {type(value).__name__} "
                             f"{value!r:.60}")
    if kind is int and value < 0:
        raise TokenizerError(f"{key} should be a token id, but it is {value}")
    return kind(value) if kind in (bool, int) else value


_KIND_NAMES = {str: "a string", bool: "a bool", int: "an integer", StringArray: "an array of strings"}


def _numeric_array(md: Mapping[str, Any], key: str, n: int, dtypes: tuple) -> np.ndarray | None:
    """md[key] as a numpy array of one of `dtypes` with at least n items, or None when absent."""
    if key not in md:
        return None
    value = md[key]
    if isinstance(value, (list, tuple)):
        value = np.asarray(value, dtype=dtypes[0])
    if not isinstance(value, np.ndarray) or value.ndim != 1 or \
            value.dtype.newbyteorder("=") not in [np.dtype(d) for d in dtypes]:
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise TokenizerError(f"{key} should be an array of {names}, but it is {type(value).__name__} "
                             f"{getattr(value, 'dtype', '')}")
    if len(value) < n:
        raise TokenizerError(f"{key} has {len(value)} entries for {n} tokens")
    return value


def _charsmap_bytes(value) -> bytes:
    """tokenizer.ggml.precompiled_charsmap as bytes (an int8/uint8 array in the file)."""
    if value is None:
        return b""
    if isinstance(value, np.ndarray) and value.dtype.itemsize == 1:
        return value.tobytes()
    raise TokenizerError("tokenizer.ggml.precompiled_charsmap should be an array of bytes")


def _text_bytes(tokens: StringArray, i: int) -> bytes:
    return tokens.raw(i) or f"[EMPTY_{i}]".encode()


def _find_texts(tokens: StringArray, wanted: tuple[str, ...]) -> dict[str, int]:
    """text -> id of the last token with that text, for the `wanted` texts present."""
    by_bytes = {t.encode(): t for t in wanted}
    hits = list(map(by_bytes.get, tokens.raw_items()))
    return {hits[i]: i for i in range(len(hits)) if hits[i] is not None}


def _detect_by_text(tokens: StringArray, named: dict[str, int], attrs: np.ndarray,
                    ids: dict[str, int | None]) -> set[int]:
    """Fill unset EOT/EOM/FIM ids from token texts, mark CONTROL and UNUSED as llama.cpp does,
    and return the end-of-generation set. `named` maps the texts below to their ids.

    llama.cpp walks its hash map, so when several texts of one role are present it takes the
    first in hash order; refllm takes the lowest id.
    """
    control, unused = int(TokenAttr.CONTROL), int(TokenAttr.UNUSED)
    for role, candidates in AUTO_ROLES.items():
        if ids[role] is None:
            found = [named[t] for t in candidates if t in named]
            if found:
                ids[role] = min(found)
                attrs[ids[role]] |= control
    for i in np.flatnonzero((attrs & control) & ~(attrs & unused)).tolist():
        if b"unused" in tokens.raw(i):
            attrs[i] |= unused

    eog = {ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if ids[r] is not None}
    for text in EOG_TEXTS:
        if text in named:
            eog.add(named[text])
            attrs[named[text]] |= control
    for text in ALWAYS_RENDERED:
        if text in named:
            attrs[named[text]] = int(TokenAttr.USER_DEFINED)
    eog |= {ids[r] for r in ("eos", "eot", "eom") if ids[r] is not None}

    eog_texts = {_text_bytes(tokens, i).decode("utf-8", "replace"): i for i in eog}
    # o200k_harmony and solar-open: "<|end|>" ends a message, not generation
    if "<|end|>" in eog_texts and (("<|return|>" in eog_texts and "<|call|>" in eog_texts) or
                                   ("<|calls|>" in eog_texts and "<|flush|>" in eog_texts)):
        eog.discard(eog_texts["<|end|>"])
        attrs[eog_texts["<|end|>"]] = int(TokenAttr.USER_DEFINED)
    # gemma4 and plamo have a normal "</s>"
    if "</s>" in eog_texts and ("<|tool_response>" in eog_texts or "<|plamo:eos|>" in eog_texts):
        eog.discard(eog_texts["</s>"])
        attrs[eog_texts["</s>"]] = int(TokenAttr.NORMAL)
    return eog


def _fix_attrs_by_name(md: Mapping[str, Any], pre_key: str, named: dict[str, int],
                       attrs: np.ndarray, special_tokens: list[int]) -> None:
    """LSTRIP/RSTRIP set by model name, tokenizer and architecture, as llama.cpp does after
    building its special-token list."""
    name = str(md.get("general.name", "")).lower()
    arch = str(md.get("general.architecture", ""))
    lstrip, rstrip = int(TokenAttr.LSTRIP), int(TokenAttr.RSTRIP)
    if any(s in pre_key for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in named:
            attrs[named["<mask>"]] |= lstrip
    elif "phi-3" in name or "phi3" in name:
        attrs[special_tokens] |= rstrip
        if "</s>" in named:
            attrs[named["</s>"]] |= rstrip
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            if text in named:       # llama.cpp fails to load without them; refllm skips
                attrs[named[text]] &= ~rstrip
    elif "modern-bert" in name:
        if "[MASK]" in named:
            attrs[named["[MASK]"]] |= lstrip


# Every text the loader looks a token up by.
NAMED_TEXTS = tuple(dict.fromkeys(
    [t for texts in AUTO_ROLES.values() for t in texts] + list(EOG_TEXTS) + list(ALWAYS_RENDERED)
    + ["<mask>", "[MASK]", "</s>", "<unk>", "<s>", "<|endoftext|>"]))
