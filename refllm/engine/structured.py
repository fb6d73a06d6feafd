"""Constrained sampling: replies that are JSON, or JSON a schema allows (ollama's `format`,
OpenAI's `response_format`), with llguidance.

    constraint = OutputConstraint.from_format({"type": "object", ...}, tokenizer)   # or "json"
    for text in session.generate(ids, tokenizer, options, constraint=constraint): ...

Before each draw the session sets the logits of the tokens `mask()` forbids to -inf, and hands
the drawn token to `accept`; when `done`, the grammar accepts nothing more and the reply ends.

What each format allows, as ollama (llm/server.go, Completion) does:

    format          allows                                       whitespace between tokens
    None, ""        anything (no constraint)                     -
    "json"          any JSON object (ollama's grammarJSON has    any run of space, tab, newline
                    root ::= object: no array or scalar at top)
    a dict          JSON the schema allows (ollama: llama.cpp's  llama.cpp's `space` rule: one
                    json-schema-to-grammar; here llguidance's    space, or 1-2 newlines and up
                    own compiler; properties in schema order,    to 20 spaces or tabs
                    no others unless additionalProperties says)
    anything else   FormatError

Two differences from ollama's "json" grammar remain, both llguidance's JSON strings: no `\\/`
escape and no raw DEL (0x7F) character; neither comes up in model replies worth keeping.

llguidance works from each token's bytes (refllm's own `token_to_piece`), so any vocabulary
refllm reads works. End-of-generation tokens are allowed only where the JSON is complete; other
special tokens (CONTROL, UNKNOWN, UNUSED, and USER_DEFINED ones written like `<tag>`) never are.
Building llguidance's tokenizer walks the whole vocabulary (0.1 s for SmolLM2's 49k tokens,
0.8 s for Gemma-3's 262k): it is built once per Tokenizer and cached. Compiling a format then
takes under a millisecond, and a mask with its accept 16-45 microseconds, against a decode step
of 7-14 ms (bench/structured.py; bench/RESULTS.md compares llguidance with outlines-core).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from refllm.errors import RefllmError
from refllm.tokenizer.tokenizer import Tokenizer
from refllm.tokenizer.vocab import TokenAttr

INSTALL_HINT = 'constrained output needs llguidance: pip install "refllm[serve]"'
EXPECTED = 'expected "json" or a JSON schema (an object)'

# llguidance's JSON compiler options (JsonCompileOptions), per format. Schemas: llama.cpp's
# json-schema-to-grammar SPACE_RULE, `| " " | "\n"{1,2} [ \t]{0,20}`, which bounds whitespace so
# that a model cannot fill its reply with it. "json": ollama's grammarJSON, `ws ::= ([ \t\n] ws)?`.
SCHEMA_OPTIONS = {"whitespace_pattern": r"(?: |\n{1,2}[ \t]{0,20})"}
JSON_OPTIONS = {"whitespace_pattern": r"[ \t\n]+"}
ANY_OBJECT = {"type": "object"}        # additional properties of any JSON type are allowed

SPECIAL = int(TokenAttr.CONTROL | TokenAttr.UNKNOWN | TokenAttr.UNUSED)

# Where a JSON schema holds other schemas, by keyword: one schema, a list of them, or a map of
# names to them (JSON Schema 2020-12's applicators, and draft 7's definitions).
SUBSCHEMAS = {
    **dict.fromkeys(("items", "additionalProperties", "not", "if", "then", "else", "contains",
                     "propertyNames", "unevaluatedItems", "unevaluatedProperties"), "one"),
    **dict.fromkeys(("prefixItems", "anyOf", "oneOf", "allOf"), "list"),
    **dict.fromkeys(("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"), "map"),
}


class FormatError(RefllmError, ValueError):
    """A format that is neither "json" nor a JSON schema (dict), or a schema the library rejects;
    the message says what was expected."""


def _llguidance():
    """The llguidance module, imported on first use: refllm runs without the serve extra."""
    try:
        import llguidance
    except ImportError:
        raise RefllmError(INSTALL_HINT) from None
    return llguidance


@dataclass(frozen=True)
class _Vocabulary:
    """What every constraint over one tokenizer shares: llguidance's tokenizer and the tokens
    that may ever be drawn under a format."""
    lltokenizer: Any                  # llguidance.LLTokenizer
    drawable: np.ndarray              # bool [n_vocab]: ordinary tokens and the EOG ones
    n_vocab: int


class _TokenBytes:
    """The tokenizer object llguidance.TokenizerWrapper reads: each token's bytes, special ones
    marked by a leading 0xFF byte (llguidance's convention, as its llama.cpp bridge builds them),
    the EOS id, and a text -> ids function."""

    def __init__(self, tokenizer: Tokenizer, special: np.ndarray):
        vocab = tokenizer.vocab
        self.tokens = [b"\xff" * bool(special[t]) + tokenizer.token_to_piece(t, special=True)
                       for t in range(tokenizer.n_vocab)]
        self.special_token_ids = np.flatnonzero(special).tolist()
        self.eos_token_id = vocab.eos_id if vocab.eos_id is not None else min(vocab.eog_ids)
        self.bos_token_id = vocab.bos_id
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        # llguidance asks for text's tokens only to split forced text (which refllm does not use)
        return self._tokenizer.tokenize(text, add_special=False)


def special_tokens(tokenizer: Tokenizer) -> np.ndarray:
    """bool [n_vocab]: the tokens that are not text: CONTROL, UNKNOWN and UNUSED ones, and
    USER_DEFINED ones written like a tag (`<start_of_image>`), as llguidance's llama.cpp bridge
    marks them."""
    attrs = np.asarray(tokenizer.vocab.attrs, dtype=np.int64)
    special = (attrs & SPECIAL) != 0
    for t in np.flatnonzero(attrs & int(TokenAttr.USER_DEFINED)):
        text = tokenizer.token_to_piece(int(t), special=True)
        special[t] |= text.startswith(b"<") and text.endswith(b">")
    return special


@functools.lru_cache(maxsize=8)
def _vocabulary(tokenizer: Tokenizer) -> _Vocabulary:
    """llguidance's view of `tokenizer`, built once per Tokenizer object (the expensive part)."""
    llg = _llguidance()
    special = special_tokens(tokenizer)
    eog = sorted(tokenizer.vocab.eog_ids)
    if not eog:
        raise FormatError("this model's vocabulary has no end-of-generation token, so a constrained "
                          "reply could never end")
    lltokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_TokenBytes(tokenizer, special)), eos_token=eog)
    drawable = ~special
    drawable[eog] = True
    return _Vocabulary(lltokenizer, drawable, tokenizer.n_vocab)


def closed_objects(schema: Any) -> Any:
    """A copy of `schema` in which every object schema that lists `properties` but says nothing
    of `additionalProperties` allows no others, as llama.cpp's json-schema-to-grammar (and so
    ollama) reads it: a model then writes the properties asked for and stops. (JSON Schema
    itself would allow any others, and a small model goes on inventing them.)"""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in SUBSCHEMAS.keys() & out.keys():
        value = out[key]
        if SUBSCHEMAS[key] == "map" and isinstance(value, dict):
            out[key] = {name: closed_objects(v) for name, v in value.items()}
        elif isinstance(value, list):           # "list" keywords, and draft 4's tuple `items`
            out[key] = [closed_objects(v) for v in value]
        else:
            out[key] = closed_objects(value)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _grammar(format: Any) -> str | None:
    """llguidance's grammar for `format` (None: no constraint); FormatError for what is not a
    format."""
    if format is None or format == "":
        return None
    if format == "json":
        schema, options = ANY_OBJECT, JSON_OPTIONS
    elif isinstance(format, dict):
        schema, options = closed_objects(format), SCHEMA_OPTIONS
    else:
        shown = repr(format) if isinstance(format, str) else f"{format!r:.60} ({type(format).__name__})"
        raise FormatError(f"format: {EXPECTED}, not {shown}")
    llg = _llguidance()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except (ValueError, TypeError) as e:       # not JSON-serializable, or not an object
        raise FormatError(f"format: {EXPECTED}; {e}") from None
    return grammar


class OutputConstraint:
    """Which tokens may come next for the reply to stay in a format; one per reply."""

    def __init__(self, matcher, vocabulary: _Vocabulary):
        self._matcher = matcher                       # llguidance.LLMatcher
        self._vocabulary = vocabulary

    @classmethod
    def from_format(cls, format: Any, tokenizer: Tokenizer) -> OutputConstraint | None:
        """The constraint of an ollama `format`: None or "" -> None (no constraint); "json" ->
        any JSON object, as ollama's format "json"; a dict -> JSON that JSON schema allows.
        Anything else, or a schema llguidance rejects (an unknown type, a $ref to nowhere, an
        unsatisfiable range), raises FormatError saying what was expected. RefllmError when
        llguidance is not installed."""
        grammar = _grammar(format)
        if grammar is None:
            return None
        llg = _llguidance()
        vocabulary = _vocabulary(tokenizer)
        matcher = llg.LLMatcher(vocabulary.lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise FormatError(f"format: llguidance rejects the JSON schema: {matcher.get_error()}")
        return cls(matcher, vocabulary)

    def mask(self) -> np.ndarray:
        """bool [n_vocab]: the tokens allowed next. End-of-generation tokens are allowed only
        where the JSON is complete; special tokens never are. Never all False while not done."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)   # 1 bit per token
        vocabulary = self._vocabulary
        allowed = np.unpackbits(bits, bitorder="little")[:vocabulary.n_vocab].view(bool)
        allowed &= vocabulary.drawable
        if not allowed.any():         # only on an error of llguidance's (a resource limit)
            raise RefllmError(f"constrained output: no token can come next ({self._matcher.get_error() or 'stuck'})")
        return allowed

    def accept(self, token: int) -> None:
        """Move past `token`, which must be one that `mask()` allowed (ValueError otherwise)."""
        if not self._matcher.consume_token(int(token)):
            raise ValueError(f"token {token} is not allowed here: {self._matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar accepts nothing more (the JSON is complete): the reply must end here."""
        return self._matcher.is_stopped()
