"""Text -> token ids -> text, exactly as llama.cpp does it (llama.cpp@0c1e57098, src/llama-vocab.cpp).

    tok = Tokenizer.from_model(refllm.open(path))
    ids = tok.tokenize("Hello world")             # add_special=True: BOS/EOS as the model says
    text = tok.detokenize(ids)                    # special tokens hidden unless unparse_special
    stream = tok.stream()                         # for generation: feed ids, get whole characters
    print(stream.feed(ids[0]), end=""); ...; print(stream.flush())

Tokenizing (`llama_vocab::impl::tokenize`):
1. cut out special tokens (special.py): with parse_special off only USER_DEFINED ones;
2. hand each plain-text piece to the vocabulary's algorithm, and keep each special id as is:

   type  model    per piece                                              add_special adds
   SPM   llama    " " in front if add_space_prefix and the piece is      BOS if add_bos,
                  first or follows a special token; " " -> ▁; spm.py      EOS if add_eos
   BPE   gpt2,    " " -> ▁ if escape_whitespaces (gemma4); bpe.py        BOS if add_bos,
         gemma4                                                           EOS if add_eos
   WPM   bert     wpm.py                                                 BOS and SEP, always
   UGM   t5       ugm.py                                                 BOS if add_bos,
                                                                          EOS if add_eos

Detokenizing (`llama_vocab::impl::token_to_piece` and `detokenize`): each token becomes bytes
(▁ back to a space; GPT-2 characters back to bytes; `<0xXX>` byte tokens to their byte;
CONTROL and UNKNOWN tokens to nothing unless asked for), SPM drops one leading space, and
BPE vocabularies with clean_spaces tidy " ," " 's" and the like.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from typing import Any

from refllm.tokenizer.bpe import CHAR_TO_BYTE, BpeSession
from refllm.tokenizer.special import SpecialTokenSplitter
from refllm.tokenizer.spm import SPACE, SpmSession
from refllm.tokenizer.ugm import UgmSession
from refllm.tokenizer.vocab import TokenAttr, TokenizerError, Vocab
from refllm.tokenizer.wpm import WpmSession

SESSIONS = {"spm": SpmSession, "bpe": BpeSession, "wpm": WpmSession, "ugm": UgmSession}
HIDDEN = int(TokenAttr.UNKNOWN | TokenAttr.CONTROL)     # pieces shown only with special=True
VERBATIM = HIDDEN | int(TokenAttr.USER_DEFINED)         # pieces that are their text, as is
NORMAL, BYTE = int(TokenAttr.NORMAL), int(TokenAttr.BYTE)
HEX = frozenset("0123456789abcdefABCDEF")


class Tokenizer:
    """A model's tokenizer: `tokenize`, `token_to_piece`, `detokenize` and `stream`."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.splitter = SpecialTokenSplitter(vocab)
        self._session = None
        self._pieces: dict[int, bytes] = {}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """The tokenizer a GGUF metadata dict describes; TokenizerError (a RefllmError) names
        the key when the vocabulary cannot be used."""
        return cls(Vocab.from_metadata(metadata))

    @classmethod
    def from_model(cls, model) -> Tokenizer:
        """The tokenizer of an opened model file (refllm.open)."""
        return cls.from_metadata(model.metadata)

    @property
    def n_vocab(self) -> int:
        return len(self.vocab)

    @property
    def session(self):
        """The vocabulary type's algorithm (built on first use: it builds lookup tables)."""
        if self._session is None:
            self._session = SESSIONS[self.vocab.kind](self.vocab)
        return self._session

    # -- text -> ids -------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """The token ids llama.cpp's llama_tokenize gives for `text`.

        add_special adds the BOS/EOS (WPM: CLS/SEP) tokens the vocabulary asks for;
        parse_special turns the text of CONTROL tokens (e.g. "<|im_start|>") into those tokens
        instead of tokenizing it as text. USER_DEFINED tokens are matched either way.
        """
        vocab, session = self.vocab, self.session
        kind = vocab.kind
        out: list[int] = []
        if add_special and (vocab.add_bos or kind == "wpm"):
            out.append(self._required("bos"))
        prefix_next = True              # SPM: a space goes in front of the first piece
        for piece in self.splitter.split(text, parse_special):
            if isinstance(piece, int):
                out.append(piece)
                prefix_next = True
                continue
            if kind == "spm":
                if vocab.add_space_prefix and prefix_next:
                    piece = " " + piece
                piece = piece.replace(" ", SPACE)
            elif kind == "bpe" and vocab.escape_whitespaces:
                piece = piece.replace(" ", SPACE)
            session.tokenize(piece, out)
            prefix_next = False
        if add_special and kind == "wpm":
            out.append(self._required("sep"))
        elif add_special and vocab.add_eos:
            out.append(self._required("eos"))
        return out

    def _required(self, role: str) -> int:
        token = self.vocab.special_ids[role]
        if token is None:       # llama.cpp asserts here
            raise TokenizerError(f"the vocabulary asks for a {role.upper()} token but has none "
                                 f"(set tokenizer.ggml.{role}_token_id or tokenize with add_special=False)")
        return token

    # -- ids -> text -------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """Token `token`'s bytes, as llama_token_to_piece gives them (lstrip 0).

        CONTROL and UNKNOWN tokens give b"" unless `special`; USER_DEFINED tokens give their
        text; byte tokens give their byte; other tokens give their text with ▁ as a space (SPM,
        WPM, UGM, gemma4) or with GPT-2's characters turned back into bytes (BPE).
        """
        if not 0 <= token < len(self.vocab):
            raise TokenizerError(f"token id {token} is out of range for a vocabulary of {len(self.vocab)}")
        if not special and self.vocab.attrs[token] & HIDDEN:
            return b""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        vocab = self.vocab
        attr = vocab.attrs[token]
        if attr & VERBATIM:
            return vocab.text_bytes(token)
        if attr & NORMAL:
            if vocab.kind == "bpe" and not vocab.escape_whitespaces:
                return decode_gpt2_text(vocab.text_bytes(token))
            return vocab.text_bytes(token).replace(SPACE.encode(), b" ")
        if attr & BYTE:                   # "<0xXX>"; llama.cpp's strtol reads junk as 0
            digits = vocab.text(token)[3:5]
            return bytes([int(digits, 16) if len(digits) == 2 and all(c in HEX for c in digits) else 0])
        return b""                       # UNUSED, UNDEFINED: llama.cpp gives nothing

    def detokenize_bytes(self, tokens: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """The bytes llama_detokenize gives for `tokens`.

        remove_special drops a leading BOS and a trailing EOS where the vocabulary adds them;
        unparse_special shows CONTROL and UNKNOWN tokens' text. SPM (add_space_prefix) drops the
        first token's leading space, unless a BOS was removed before it, as llama.cpp does.
        """
        vocab = self.vocab
        tokens = list(tokens)
        strip_space = vocab.add_space_prefix
        if remove_special and vocab.add_bos and tokens and tokens[0] == vocab.bos_id:
            strip_space = False
            tokens = tokens[1:]
        if remove_special and vocab.add_eos and tokens and tokens[-1] == vocab.eos_id:
            tokens = tokens[:-1]
        parts = []
        for k, token in enumerate(tokens):
            piece = self.token_to_piece(token, unparse_special)
            if k == 0 and strip_space and piece.startswith(b" "):
                piece = piece[1:]
            parts.append(piece)
        text = b"".join(parts)
        return clean_up_spaces(text) if vocab.clean_spaces else text

    def detokenize(self, tokens: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """The text of `tokens`: detokenize_bytes decoded as UTF-8 (bad bytes become U+FFFD)."""
        return self.detokenize_bytes(tokens, remove_special, unparse_special).decode("utf-8", "replace")

    def stream(self, special: bool = False) -> StreamDecoder:
        """A decoder for ids that arrive one at a time (see StreamDecoder)."""
        return StreamDecoder(self, special)

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (EOS, EOT, EOM and the like)."""
        return self.vocab.is_eog(token)


class StreamDecoder:
    """Turns ids into text as they arrive, holding back the bytes of a character that is not
    complete yet, so a multi-byte character split across tokens is never cut.

    It gives the concatenated token pieces (token_to_piece): it does not drop SPM's leading
    space or tidy spaces as detokenize does, since those need the whole text.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token: int) -> str:
        """The text that `token` completes (maybe ""); bytes of an unfinished character wait."""
        return self._decoder.decode(self.tokenizer.token_to_piece(token, self.special))

    def flush(self) -> str:
        """Whatever is held back, with an unfinished character as U+FFFD; the decoder is reset."""
        return self._decoder.decode(b"", final=True)


def decode_gpt2_text(text: bytes) -> bytes:
    """A byte-encoded BPE token's bytes (llama_decode_text): each character back to its byte;
    a character outside GPT-2's table comes out as "[UNK_BYTE_0x..]", as in llama.cpp."""
    out = bytearray()
    decoded = text.decode("utf-8", "replace")
    for ch in decoded:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text + b"]"
    return bytes(out)


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_spaces passes over detokenized bytes (Hugging Face's
    clean_up_tokenization_spaces): drop the space in " ?", " !", " .", " ,", around a lone
    " ' ", and in " 's", " 'm", " 're", " 've"."""
    buf = bytearray(text)
    sp, q = ord(" "), ord("'")

    # pass 1: " ?", " !", " .", " ,"
    n, total = len(buf), 1 if buf else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == sp and x in b"?!.,":
            total -= 1
        buf[total] = x
        total += 1
    del buf[total:]

    # pass 2: " ' " -> "'"
    n, total, i = len(buf), 1 if buf else 0, 1
    while i < n:
        x = buf[i]
        if x == q and i + 1 < n and buf[i - 1] == sp and buf[i + 1] == sp:
            total -= 1
            i += 1
            buf[i] = 0               # llama.cpp writes a NUL over the space it skips
        buf[total] = x
        total += 1
        i += 1
    del buf[total:]

    # pass 3: " 's", " 'm", " 're", " 've" lose their space (" 't", " 'd", " 'll" keep it)
    n, total = len(buf), 1 if buf else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == sp and x == q and i + 1 < n:
            x1 = buf[i + 1]
            if x1 in b"sm" or (i + 2 < n and (x1, buf[i + 2]) in ((ord("r"), ord("e")), (ord("v"), ord("e")))):
                total -= 1
        buf[total] = x
        total += 1
    del buf[total:]
    return bytes(buf)
