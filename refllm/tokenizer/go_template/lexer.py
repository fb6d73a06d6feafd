"""Stage one of source -> tokens -> tree -> text: Go's text/template lexer.

`_lex` splits a source into text and `{{ }}` actions (with Go's `{{- `/` -}}` trimming and
comments) and the actions into tokens: identifiers, fields, variables and literals.
"""

from __future__ import annotations

from dataclasses import dataclass

from refllm.tokenizer import go_values as gv

KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"}
_SPACE = " \t\r\n"


@dataclass
class Tok:
    typ: str    # text left right space ident field var string raw char number bool nil dot pipe
    #             lparen rparen declare assign comma keyword eof error
    val: str
    pos: int    # offset in the source
    line: int

    def __str__(self) -> str:  # Go's item.String(), used in its error messages
        if self.typ == "eof":
            return "EOF"
        if self.typ == "error":
            return self.val
        if self.typ == "keyword":
            return f"<{self.val}>"
        return gv._quote(self.val[:10]) + "..." if len(self.val) > 10 else gv._quote(self.val)


def _lex(src: str) -> list[Tok]:
    """Tokens of a template source; a lexing error ends the list with an 'error' token."""
    toks: list[Tok] = []
    pos, n = 0, len(src)

    def line_at(p: int) -> int:
        return src.count("\n", 0, p) + 1

    trim_next = False
    while pos < n or not toks or toks[-1].typ != "eof":
        start = src.find("{{", pos)
        end = n if start < 0 else start
        text_start = pos
        if trim_next:  # the previous action ended with " -}}": drop leading white space
            while text_start < end and src[text_start] in _SPACE:
                text_start += 1
            trim_next = False
        if start < 0:
            if text_start < n:
                toks.append(Tok("text", src[text_start:], text_start, line_at(text_start)))
            toks.append(Tok("eof", "", n, line_at(n)))
            break
        trim_left = src.startswith("-", start + 2) and start + 3 < n and src[start + 3] in _SPACE
        text_end = start
        if trim_left:
            while text_end > text_start and src[text_end - 1] in _SPACE:
                text_end -= 1
        if text_end > text_start:
            toks.append(Tok("text", src[text_start:text_end], text_start, line_at(text_start)))
        p = start + 2 + (2 if trim_left else 0)
        if src.startswith("/*", p):  # a comment: {{/* ... */}} with nothing else inside
            close = src.find("*/", p + 2)
            if close < 0:
                toks.append(Tok("error", "unclosed comment", p, line_at(p)))
                return toks
            p = close + 2
            if _at_right_trim(src, p):
                p += 4
                trim_next = True
            elif src.startswith("}}", p):
                p += 2
            else:
                toks.append(Tok("error", "comment ends before closing delimiter", p, line_at(p)))
                return toks
            pos = p
            continue
        toks.append(Tok("left", "{{", start, line_at(start)))
        p, trim_next, err = _lex_action(src, p, toks, line_at)
        if err:
            return toks
        pos = p
    return toks


def _lex_action(src: str, p: int, toks: list[Tok], line_at) -> tuple[int, bool, bool]:
    """Tokens inside one action, from p; returns (position after it, trim after, error?)."""
    n = len(src)
    depth = 0

    def err(msg: str, at: int) -> tuple[int, bool, bool]:
        toks.append(Tok("error", msg, at, line_at(at)))
        return at, False, True

    while True:
        if _at_right_trim(src, p) or src.startswith("}}", p):
            trim = _at_right_trim(src, p)
            if depth:
                return err("unclosed left paren", p)
            toks.append(Tok("right", "}}", p + (2 if trim else 0), line_at(p)))
            return p + (4 if trim else 2), trim, False
        if p >= n:
            return err("unclosed action", p)
        c = src[p]
        if c in _SPACE:
            q = p
            while q < n and src[q] in _SPACE and not _at_right_trim(src, q):
                q += 1
            toks.append(Tok("space", src[p:q], p, line_at(p)))
            p = q
        elif c == "=":
            toks.append(Tok("assign", "=", p, line_at(p)))
            p += 1
        elif c == ":":
            if not src.startswith(":=", p):
                return err("expected :=", p)
            toks.append(Tok("declare", ":=", p, line_at(p)))
            p += 2
        elif c == "|":
            toks.append(Tok("pipe", "|", p, line_at(p)))
            p += 1
        elif c == '"':
            q = p + 1
            while q < n and src[q] != '"':
                if src[q] == "\\":
                    q += 1
                if q >= n or src[q] == "\n":
                    return err("unterminated quoted string", p)
                q += 1
            if q >= n:
                return err("unterminated quoted string", p)
            toks.append(Tok("string", src[p:q + 1], p, line_at(p)))
            p = q + 1
        elif c == "`":
            q = src.find("`", p + 1)
            if q < 0:
                return err("unterminated raw quoted string", p)
            toks.append(Tok("raw", src[p:q + 1], p, line_at(p)))
            p = q + 1
        elif c == "'":
            q = p + 1
            while q < n and src[q] != "'":
                if src[q] == "\\":
                    q += 1
                if q >= n or src[q] == "\n":
                    return err("unterminated character constant", p)
                q += 1
            toks.append(Tok("charconst", src[p:q + 1], p, line_at(p)))
            p = q + 1
        elif c == "$":
            q = p + 1
            while q < n and (src[q].isalnum() or src[q] == "_"):
                q += 1
            toks.append(Tok("var", src[p:q], p, line_at(p)))
            p = q
        elif c == "." and p + 1 < n and src[p + 1].isdigit():
            p = _lex_number(src, p, toks, line_at)
            if toks[-1].typ == "error":
                return p, False, True
        elif c == ".":
            q = p + 1
            while q < n and (src[q].isalnum() or src[q] == "_"):
                q += 1
            toks.append(Tok("field" if q > p + 1 else "dot", src[p:q], p, line_at(p)))
            p = q
        elif c in "+-" or c.isdigit():
            p = _lex_number(src, p, toks, line_at)
            if toks[-1].typ == "error":
                return p, False, True
        elif c.isalpha() or c == "_":
            q = p
            while q < n and (src[q].isalnum() or src[q] == "_"):
                q += 1
            word = src[p:q]
            if q < n and not _at_terminator(src, q):
                return err(f"bad character {_sharp_u(src[q])}", q)
            typ = "keyword" if word in KEYWORDS else "bool" if word in ("true", "false") else "ident"
            if word == "nil":
                typ = "nil"
            toks.append(Tok(typ, word, p, line_at(p)))
            p = q
        elif c == "(":
            depth += 1
            toks.append(Tok("lparen", "(", p, line_at(p)))
            p += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return err(f"unexpected right paren {_sharp_u(c)}", p)
            toks.append(Tok("rparen", ")", p, line_at(p)))
            p += 1
        elif c == ",":
            toks.append(Tok("comma", ",", p, line_at(p)))
            p += 1
        elif c.isascii() and c.isprintable():  # Go's itemChar: the parser says where it is unexpected
            toks.append(Tok("char", c, p, line_at(p)))
            p += 1
        else:
            return err(f"unrecognized character in action: {_sharp_u(c)}", p)


def _at_right_trim(src: str, p: int) -> bool:
    """At " -}}": white space, the trim marker and the right delimiter."""
    return p < len(src) and src[p] in _SPACE and src.startswith("-}}", p + 1)


def _at_terminator(src: str, q: int) -> bool:
    c = src[q]
    return c in _SPACE or c in ".,|:)(" or src.startswith("}}", q)


def _sharp_u(c: str) -> str:
    """Go's %#U: U+0021 '!'."""
    return f"U+{ord(c):04X} {gv._quote_rune(ord(c))}"


def _lex_number(src: str, p: int, toks: list[Tok], line_at) -> int:
    q = p
    n = len(src)
    if q < n and src[q] in "+-":
        q += 1
    digits = "0123456789_"
    if src.startswith(("0x", "0X"), q):
        q += 2
        digits = "0123456789abcdefABCDEF_"
    elif src.startswith(("0b", "0B"), q):
        q += 2
        digits = "01_"
    elif src.startswith(("0o", "0O"), q):
        q += 2
        digits = "01234567_"
    while q < n and src[q] in digits:
        q += 1
    if q < n and src[q] == ".":
        q += 1
        while q < n and src[q] in digits:
            q += 1
    if q < n and src[q] in ("pP" if "a" in digits else "eE"):
        q += 1
        if q < n and src[q] in "+-":
            q += 1
        while q < n and src[q] in "0123456789_":
            q += 1
    if q < n and src[q] == "i":
        toks.append(Tok("error", "complex numbers are not supported", p, line_at(p)))
        return q
    if q < n and (src[q].isalnum() or src[q] == "."):
        q2 = q + 1
        toks.append(Tok("error", f"bad number syntax: {gv._quote(src[p:q2])}", p, line_at(p)))
        return q2
    toks.append(Tok("number", src[p:q], p, line_at(p)))
    return q
