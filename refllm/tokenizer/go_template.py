"""Go's text/template, the subset ollama's TEMPLATEs use, rendered byte for byte as Go renders it.

Three parts, in the order data flows: a lexer (`_lex`: text, `{{ }}` actions with Go's `{{- `/` -}}`
trimming, comments, literals), a parser (`_Parser`: Go's parse tree of text, actions, if/range/with,
template/define/block, pipelines, commands, fields and variables) and an executor (`_Exec`: Go's
exec.go rules: missingkey=zero, truth, variable scopes, range over slices and sorted maps, the
builtin functions and ollama's own). Values are go_values' model of Go data.

Behaviour follows Go 1.19 (the golden files' Go) plus `{{else with}}` (Go 1.23, which ollama
builds with). Whatever is not implemented raises GoTemplateError naming the construct and the
line, never a wrong prompt. Errors read like Go's: `template: NAME:LINE: ...` when parsing,
`template: NAME:LINE:COL: executing "NAME" at <NODE>: ...` when executing.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from refllm.errors import RefllmError
from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_values import NO_VALUE, GoValueError

MAX_EXEC_DEPTH = 100000  # Go's maxExecDepth: nested {{template}} calls


class GoTemplateError(RefllmError):
    """A Go template that does not parse, fails to execute, or uses what refllm does not support."""


# ---- lexer ------------------------------------------------------------------------------

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


# ---- parse tree -------------------------------------------------------------------------

@dataclass
class Node:
    pos: int
    line: int


@dataclass
class Text(Node):
    text: str


@dataclass
class Field(Node):  # .A.B
    idents: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


@dataclass
class Variable(Node):  # $x.A.B
    idents: list[str]

    def __str__(self) -> str:
        return ".".join(self.idents)


@dataclass
class Chain(Node):  # (pipeline).A.B
    node: Node
    fields: list[str]

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, Pipe) else str(self.node)
        return inner + "".join("." + f for f in self.fields)


@dataclass
class Ident(Node):  # a function name
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass
class Dot(Node):
    def __str__(self) -> str:
        return "."


@dataclass
class Nil(Node):
    def __str__(self) -> str:
        return "nil"


@dataclass
class Const(Node):  # string, number, bool, char; `value` is its Go value
    text: str
    value: Any
    kind: str  # string bool int float

    def __str__(self) -> str:
        return self.text


@dataclass
class Command(Node):
    args: list[Node]

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, Pipe) else str(a) for a in self.args)


@dataclass
class Pipe(Node):
    decl: list[Variable]
    is_assign: bool
    cmds: list[Command]

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


@dataclass
class Action(Node):
    pipe: Pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass
class Branch(Node):  # if, range, with
    kind: str
    pipe: Pipe
    body: list[Node]
    else_body: list[Node] | None

    def __str__(self) -> str:
        return "{{" + self.kind + " " + str(self.pipe) + "}}"


@dataclass
class TemplateCall(Node):
    name: str
    pipe: Pipe | None

    def __str__(self) -> str:
        return "{{template " + gv._quote(self.name) + (" " + str(self.pipe) if self.pipe else "") + "}}"


@dataclass
class Break(Node):
    def __str__(self) -> str:
        return "{{break}}"


@dataclass
class Continue(Node):
    def __str__(self) -> str:
        return "{{continue}}"


@dataclass
class _End(Node):
    def __str__(self) -> str:
        return "{{end}}"


@dataclass
class _Else(Node):
    def __str__(self) -> str:
        return "{{else}}"


_UNQUOTE_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unquote(tok: Tok) -> str:
    """strconv.Unquote of a Go string, raw string or char literal's body."""
    s = tok.val
    if tok.typ == "raw":
        return s[1:-1].replace("\r", "")
    quote = s[0]
    body = s[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _UNQUOTE_ESC:
            out.append(_UNQUOTE_ESC[e])
            i += 2
        elif e == quote:
            out.append(e)
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            hexs = body[i + 2:i + 2 + width]
            if len(hexs) != width or any(h not in "0123456789abcdefABCDEF" for h in hexs):
                raise _ParseError("invalid syntax", tok)
            code = int(hexs, 16)
            # \x is a byte: only ASCII bytes make a whole character on their own
            if e == "x" and code > 0x7F:
                raise _ParseError(f"the byte escape \\x{hexs} (not a whole UTF-8 character) is not supported", tok)
            out.append(chr(code))
            i += 2 + width
        elif e in "01234567":
            octs = body[i + 1:i + 4]
            code = int(octs, 8)
            if code > 0x7F:
                raise _ParseError(f"the byte escape \\{octs} is not supported", tok)
            out.append(chr(code))
            i += 4
        else:
            raise _ParseError("invalid syntax", tok)
    return "".join(out)


def _number(tok: Tok) -> Const:
    """A number or char literal, typed as text/template's idealConstant types it: a char or an
    integer literal is an int, a literal with . e E p P (not hex) is a float64."""
    text = tok.val
    if tok.typ == "charconst":
        s = _unquote(tok)
        if len(s) != 1:
            raise _ParseError(f"malformed character constant: {text}", tok)
        return Const(tok.pos, tok.line, text, ord(s), "int")
    clean = text.replace("_", "")
    try:
        is_hex = clean.lstrip("+-")[:2].lower() == "0x"
        if any(c in clean for c in ".eEpP") and not (is_hex and not any(c in clean for c in ".pP")):
            value = float.fromhex(clean) if is_hex else float(clean)
            return Const(tok.pos, tok.line, text, value, "float")
        value = int(clean, 0) if not _legacy_octal(clean) else int(clean.lstrip("+-"), 8) * (
            -1 if clean.startswith("-") else 1)
    except ValueError:
        raise _ParseError(f"bad number syntax: {gv._quote(text)}", tok) from None
    if not -(1 << 63) <= value < (1 << 63):
        raise _ParseError(f"{text} overflows int", tok)
    return Const(tok.pos, tok.line, text, value, "int")


def _legacy_octal(s: str) -> bool:
    s = s.lstrip("+-")
    return len(s) > 1 and s[0] == "0" and s[1].isdigit()


class _ParseError(Exception):
    def __init__(self, msg: str, tok: Tok):
        super().__init__(msg)
        self.msg = msg
        self.tok = tok


@dataclass
class _Tree:
    name: str
    root: list[Node] = field(default_factory=list)


class _Parser:
    """Go's parse.Tree over one source: the main tree and every {{define}}/{{block}} in it."""

    def __init__(self, src: str, name: str, funcs: set[str]):
        self.toks = _lex(src)
        self.i = 0
        self.name = name
        self.funcs = funcs
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.trees: dict[str, _Tree] = {}
        self.last = self.toks[0]

    # tokens
    def next(self) -> Tok:
        tok = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        self.last = tok
        if tok.typ == "error":
            raise _ParseError(tok.val, tok)
        return tok

    def peek(self) -> Tok:
        return self.toks[self.i]

    def next_non_space(self) -> Tok:
        tok = self.next()
        while tok.typ == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> Tok:
        j = self.i
        while self.toks[j].typ == "space":
            j += 1
        return self.toks[j]

    def expect(self, typ: str, context: str) -> Tok:
        tok = self.next_non_space()
        if tok.typ != typ:
            self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: Tok, context: str):
        raise _ParseError(f"unexpected {tok} in {context}", tok)

    def error(self, msg: str):
        raise _ParseError(msg, self.last)

    # structure
    def parse(self) -> dict[str, _Tree]:
        main = _Tree(self.name)
        while self.peek().typ != "eof":
            if self.peek().typ == "left":
                j = self.i + 1
                while self.toks[j].typ == "space":
                    j += 1
                if self.toks[j].typ == "keyword" and self.toks[j].val == "define":
                    self.next()
                    self.next_non_space()
                    self.definition()
                    continue
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                self.error(f"unexpected {node}")
            if node is not None:
                main.root.append(node)
        self.add(main)
        return self.trees

    def add(self, tree: _Tree):
        old = self.trees.get(tree.name)
        if old is not None and not _is_empty(old.root):
            if not _is_empty(tree.root):
                self.error(f"template: multiple definition of template {gv._quote(tree.name)}")
            return
        self.trees[tree.name] = tree

    def definition(self):
        context = "define clause"
        tok = self.next_non_space()
        if tok.typ not in ("string", "raw"):
            self.unexpected(tok, context)
        name = _unquote(tok)
        self.expect("right", context)
        saved = self.vars
        self.vars = ["$"]
        body, end = self.item_list()
        self.vars = saved
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.add(_Tree(name, body))

    def item_list(self) -> tuple[list[Node], Node]:
        nodes: list[Node] = []
        while self.peek_non_space().typ != "eof":
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                return nodes, node
            if node is not None:
                nodes.append(node)
        self.next_non_space()
        self.error("unexpected EOF")

    def text_or_action(self) -> Node | None:
        tok = self.next_non_space()
        if tok.typ == "text":
            return Text(tok.pos, tok.line, tok.val)
        if tok.typ == "left":
            return self.action(tok)
        self.unexpected(tok, "input")

    def action(self, left: Tok) -> Node:
        tok = self.peek_non_space()
        if tok.typ == "keyword":
            self.next_non_space()
            kw = tok.val
            if kw in ("if", "range", "with"):
                return self.control(kw, tok)
            if kw == "end":
                self.expect("right", "end")
                return _End(tok.pos, tok.line)
            if kw == "else":
                return self.else_control(tok)
            if kw == "template":
                return self.template_control(tok)
            if kw == "block":
                return self.block_control(tok)
            if kw in ("break", "continue"):
                self.expect("right", "{{" + kw + "}}")
                if self.range_depth == 0:
                    self.error(f"{{{{{kw}}}}} outside {{{{range}}}}")
                return (Break if kw == "break" else Continue)(tok.pos, tok.line)
            self.unexpected(tok, "command")  # define here, or nil
        pipe = self.pipeline("command", "right")
        return Action(left.pos, left.line, pipe)

    def else_control(self, tok: Tok) -> Node:
        peek = self.peek_non_space()
        if peek.typ == "keyword" and peek.val in ("if", "with"):
            # "{{else if x}}" is read as "{{else}}{{if x}}...{{end}}" sharing the outer {{end}}
            return _Else(peek.pos, peek.line)
        self.expect("right", "else")
        return _Else(tok.pos, tok.line)

    def control(self, kind: str, tok: Tok) -> Branch:
        mark = len(self.vars)
        if kind == "range":
            self.range_depth += 1
        pipe = self.pipeline(kind, "right")
        if kind == "range" and pipe.is_assign:
            raise _ParseError("range with an assignment ($x = ...) is not supported", tok)
        body, nxt = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        else_body = None
        if isinstance(nxt, _Else):
            peek = self.peek_non_space()
            if kind in ("if", "with") and peek.typ == "keyword" and peek.val == kind:
                self.next_non_space()
                else_body = [self.control(kind, peek)]
            else:
                else_body, nxt = self.item_list()
                if not isinstance(nxt, _End):
                    self.error(f"expected end; found {nxt}")
        del self.vars[mark:]
        return Branch(tok.pos, tok.line, kind, pipe, body, else_body)

    def template_control(self, tok: Tok) -> TemplateCall:
        context = "template clause"
        name_tok = self.next_non_space()
        if name_tok.typ not in ("string", "raw"):
            self.unexpected(name_tok, context)
        name = _unquote(name_tok)
        pipe = None
        if self.peek_non_space().typ != "right":
            pipe = self.pipeline(context, "right")
        else:
            self.next_non_space()
        return TemplateCall(tok.pos, tok.line, name, pipe)

    def block_control(self, tok: Tok) -> TemplateCall:
        context = "block clause"
        name_tok = self.next_non_space()
        if name_tok.typ not in ("string", "raw"):
            self.unexpected(name_tok, context)
        name = _unquote(name_tok)
        pipe = self.pipeline(context, "right")
        saved, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved, saved_depth
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.add(_Tree(name, body))
        return TemplateCall(tok.pos, tok.line, name, pipe)

    def pipeline(self, context: str, end: str) -> Pipe:
        start = self.peek_non_space()
        pipe = Pipe(start.pos, start.line, [], False, [])
        while True:  # declarations: $x := / $x = / $i, $v :=
            v = self.peek_non_space()
            if v.typ != "var":
                break
            save = self.i
            self.next_non_space()
            after = self.peek_non_space()
            if after.typ in ("assign", "declare"):
                pipe.is_assign = after.typ == "assign"
                self.next_non_space()
                pipe.decl.append(Variable(v.pos, v.line, [v.val]))
                self.vars.append(v.val)
                break
            if after.typ == "comma":
                self.next_non_space()
                pipe.decl.append(Variable(v.pos, v.line, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in ("var", "right", "rparen"):
                        continue
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            self.i = save
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if tok.typ in ("bool", "charconst", "dot", "field", "ident", "number", "nil", "raw", "string", "var",
                           "lparen"):
                self.i -= 1
                pipe.cmds.append(self.command())
            else:
                self.unexpected(tok, context)

    def check_pipeline(self, pipe: Pipe, context: str):
        if not pipe.cmds:
            self.error(f"missing value for {context}")
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (Const, Dot, Nil)):
                self.error(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> Command:
        first = self.peek_non_space()
        cmd = Command(first.pos, first.line, [])
        while True:
            self.peek_non_space()
            while self.peek().typ == "space":
                self.next()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.typ == "space":
                continue
            if tok.typ in ("right", "rparen"):
                self.i -= 1
            elif tok.typ != "pipe":
                self.unexpected(tok, "operand")
            break
        if not cmd.args:
            self.error("empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == "field":
            fields = []
            while self.peek().typ == "field":
                fields.append(self.next().val[1:])
            if isinstance(node, Field):
                return Field(node.pos, node.line, node.idents + fields)
            if isinstance(node, Variable):
                return Variable(node.pos, node.line, node.idents + fields)
            if isinstance(node, (Const, Nil, Dot)):
                self.error(f"unexpected . after term {gv._quote(str(node))}")
            return Chain(node.pos, node.line, node, fields)
        return node

    def term(self) -> Node | None:
        tok = self.next_non_space()
        t = tok.typ
        if t == "ident":
            if tok.val not in self.funcs:
                self.error(f"function {gv._quote(tok.val)} not defined")
            return Ident(tok.pos, tok.line, tok.val)
        if t == "dot":
            return Dot(tok.pos, tok.line)
        if t == "nil":
            return Nil(tok.pos, tok.line)
        if t == "var":
            if tok.val not in self.vars:
                self.error(f"undefined variable {gv._quote(tok.val)}")
            return Variable(tok.pos, tok.line, [tok.val])
        if t == "field":
            return Field(tok.pos, tok.line, [tok.val[1:]])
        if t == "bool":
            return Const(tok.pos, tok.line, tok.val, tok.val == "true", "bool")
        if t in ("number", "charconst"):
            try:
                return _number(tok)
            except _ParseError as e:
                self.error(e.msg)
        if t == "lparen":
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            return pipe
        if t in ("string", "raw"):
            try:
                return Const(tok.pos, tok.line, tok.val, _unquote(tok), "string")
            except _ParseError as e:
                self.error(e.msg)
        self.i -= 1
        return None


def _is_empty(nodes: list[Node]) -> bool:
    return all(isinstance(n, Text) and not n.text.strip() for n in nodes)


# ---- executor ---------------------------------------------------------------------------

class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _ExecError(Exception):
    def __init__(self, msg: str, node: Node | None, tname: str):
        super().__init__(msg)
        self.msg = msg
        self.node = node
        self.tname = tname  # the template executing: errors name it


_MISSING = object()  # no piped-in final argument (Go's missingVal)


@dataclass
class Func:
    """A template function: `fn(exec, args)` gets evaluated arguments (or, for builtins taking
    reflect.Value, raw values); `params` are Go parameter types for checking ('any', 'value',
    'string'), the last repeated when variadic."""

    fn: Callable
    params: tuple[str, ...]
    variadic: bool = False


class _Exec:
    def __init__(self, tmpl: GoTemplate, out: list[str], funcs: dict[str, Func], trees: dict[str, _Tree],
                 missing_zero: bool):
        self.tmpl = tmpl
        self.out = out
        self.funcs = funcs
        self.trees = trees
        self.missing_zero = missing_zero  # Option("missingkey=zero"); else Go's default
        self.vars: list[tuple[str, Any]] = []
        self.node: Node | None = None
        self.depth = 0
        self.tname = tmpl.name

    def fail(self, msg: str, node: Node | None = None):
        raise _ExecError(msg, node or self.node, self.tname)

    def at(self, node: Node):
        self.node = node

    # walking
    def walk(self, dot: Any, nodes: list[Node]):
        for node in nodes:
            self.walk_node(dot, node)

    def walk_node(self, dot: Any, node: Node):
        self.at(node)
        if isinstance(node, Text):
            self.out.append(node.text)
        elif isinstance(node, Action):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:  # declared variables stay in scope until the block ends
                self.print_value(node, val)
        elif isinstance(node, Branch):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_with(dot, node)
        elif isinstance(node, TemplateCall):
            self.walk_template(dot, node)
        elif isinstance(node, Break):
            raise _Break
        elif isinstance(node, Continue):
            raise _Continue
        else:
            self.fail(f"unknown node {node}")

    def walk_if_with(self, dot: Any, node: Branch):
        mark = len(self.vars)
        try:
            val = self.eval_pipeline(dot, node.pipe)
            if gv.truth(val):
                self.walk(val if node.kind == "with" else dot, node.body)
            elif node.else_body is not None:
                self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: Branch):
        mark = len(self.vars)
        try:
            self.at(node)
            val = _indirect(self.eval_pipeline(dot, node.pipe))
            inner = len(self.vars)
            k = gv.kind(val)
            if k == "slice":
                pairs = list(enumerate(gv.items(val) or []))
            elif k == "map":
                m = gv.items(val) or {}
                pairs = [(key, m[key]) for key in gv.sorted_keys(m)]
            elif k in ("invalid", "interface"):
                pairs = []
            elif k == "int":
                raise GoTemplateError(f"range over an integer (Go 1.22) is not supported (line {node.line})")
            else:
                self.fail(f"range can't iterate over {_sprint_for_error(val)}")
            for index, elem in pairs:
                if node.pipe.decl:  # the last declared variable is the element, the first the index
                    self.vars[inner - 1] = (self.vars[inner - 1][0], elem)
                if len(node.pipe.decl) > 1:
                    self.vars[inner - 2] = (self.vars[inner - 2][0], index)
                try:
                    self.walk(elem, node.body)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del self.vars[inner:]
            if not pairs and node.else_body is not None:
                self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def walk_template(self, dot: Any, node: TemplateCall):
        tree = self.trees.get(node.name)
        if tree is None:
            self.fail(f"template {gv._quote(node.name)} not defined")
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else NO_VALUE
        if self.depth >= MAX_EXEC_DEPTH:
            self.fail(f"exceeded maximum template depth ({MAX_EXEC_DEPTH})")
        saved = self.vars, self.tname
        self.vars, self.tname = [("$", new_dot)], node.name
        self.depth += 1
        try:
            self.walk(new_dot, tree.root)
        finally:
            self.depth -= 1
            self.vars, self.tname = saved

    def print_value(self, node: Node, val: Any):
        self.at(node)
        if gv.kind(val) == "ptr":
            val = val.v if val.v is not None else val
        if val is NO_VALUE:
            self.out.append("<no value>")
            return
        try:
            self.out.append(gv.sprint_value(val))
        except GoValueError as e:
            raise GoTemplateError(f"{e} (line {node.line})") from None

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: Pipe | None) -> Any:
        if pipe is None:
            return NO_VALUE
        self.at(pipe)
        val = _MISSING
        for cmd in pipe.cmds:
            val = self.eval_command(dot, cmd, val)
            if val is None:  # a nil interface{} dug out is no value at all
                val = NO_VALUE
        for v in pipe.decl:
            name = v.idents[0]
            if pipe.is_assign:
                self.set_var(name, val)
            else:
                self.vars.append((name, val))
        return val

    def set_var(self, name: str, val: Any):
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, val)
                return
        self.fail(f"undefined variable: {name}")

    def var_value(self, name: str) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        self.fail(f"undefined variable: {name}")

    def eval_command(self, dot: Any, cmd: Command, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, Field):
            self.at(first)
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, Chain):
            self.at(first)
            if len(first.fields) == 0:
                self.fail("internal error: no fields in evalChainNode")
            pipe_val = self.eval_arg_any(dot, first.node)
            return self.eval_field_chain(dot, pipe_val, first, first.fields, cmd.args, final)
        if isinstance(first, Ident):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, Variable):
            self.at(first)
            val = self.var_value(first.idents[0])
            if len(first.idents) == 1:
                self.not_a_function(cmd.args, final)
                return val
            return self.eval_field_chain(dot, val, first, first.idents[1:], cmd.args, final)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, Const):
            return first.value
        if isinstance(first, Dot):
            return dot
        if isinstance(first, Nil):
            self.fail("nil is not a command")
        self.fail(f"can't evaluate command {gv._quote(str(first))}")

    def not_a_function(self, args: list[Node], final: Any):
        if len(args) > 1 or final is not _MISSING:
            self.fail(f"can't give argument to non-function {args[0]}")

    def eval_field_chain(self, dot: Any, receiver: Any, node: Node, idents: list[str], args: list[Node],
                         final: Any) -> Any:
        for name in idents[:-1]:
            receiver = self.eval_field(dot, name, node, [], _MISSING, receiver)
        return self.eval_field(dot, idents[-1], node, args, final, receiver)

    def eval_field(self, dot: Any, name: str, node: Node, args: list[Node], final: Any, receiver: Any) -> Any:
        """Go's evalField: a method, a struct field or a map key of receiver."""
        if receiver is NO_VALUE:
            return NO_VALUE
        typ = gv.type_of(receiver)
        if receiver is None:
            self.fail(f"nil pointer evaluating interface {{}}.{name}")
        method = typ.methods.get(name) or (typ.elem.methods.get(name) if typ.kind == "ptr" and typ.elem else None)
        if method is not None:
            return self.call(dot, method, name, node, args[1:] if args else [], final, receiver)
        has_args = len(args) > 1 or final is not _MISSING
        target = receiver
        if typ.kind == "ptr":
            if target.v is None:
                if typ.elem.kind == "struct" and typ.elem.field(name) is None:
                    self.fail(f"can't evaluate field {name} in type {typ.name}")
                self.fail(f"nil pointer evaluating {typ.name}.{name}")
            target = target.v
        ttyp = gv.type_of(target)
        if ttyp.kind == "struct":
            f = ttyp.field(name)
            if f is not None:
                if not name[0].isupper():
                    self.fail(f"{name} is an unexported field of struct type {typ.name}")
                if has_args:
                    self.fail(f"{name} has arguments but cannot be invoked as function")
                return target.v[name]
        elif ttyp.kind == "map":
            if has_args:
                self.fail(f"{name} is not a method but has arguments")
            m = gv.items(target) or {}
            if name in m:
                return m[name]
            return gv.zero(ttyp.elem) if self.missing_zero else NO_VALUE
        self.fail(f"can't evaluate field {name} in type {typ.name}")

    def eval_function(self, dot: Any, node: Ident, args: list[Node], final: Any) -> Any:
        self.at(node)
        fn = self.funcs.get(node.name)
        if fn is None:
            self.fail(f"{gv._quote(node.name)} is not a defined function")
        return self.call(dot, fn, node.name, node, args[1:], final, None)

    def call(self, dot: Any, fn: Func, name: str, node: Node, args: list[Node], final: Any, receiver: Any) -> Any:
        n_in = len(args) + (final is not _MISSING)
        params = fn.params
        if fn.variadic:
            if n_in < len(params) - 1:
                self.fail(f"wrong number of args for {name}: want at least {len(params) - 1} got {len(args)}")
        elif n_in != len(params):
            self.fail(f"wrong number of args for {name}: want {len(params)} got {n_in}")
        if name in ("and", "or") and receiver is None and fn is BUILTINS[name]:
            val = NO_VALUE
            for arg in args:
                val = self.eval_arg(dot, "value", arg)
                if gv.truth(_indirect_iface(val)) == (name == "or"):
                    return val
            if final is not _MISSING:
                val = self.validate(final, "value")
            return val
        argv = []
        for i, arg in enumerate(args):
            argv.append(self.eval_arg(dot, params[min(i, len(params) - 1)], arg))
        if final is not _MISSING:
            argv.append(self.validate(final, params[min(len(argv), len(params) - 1)]))
        self.at(node)
        try:
            if receiver is not None:
                return fn.fn(receiver, *argv)
            return fn.fn(*argv)
        except _FuncError as e:
            self.fail(f"error calling {name}: {e}")
        except GoValueError as e:
            raise GoTemplateError(f"{e} (line {node.line})") from None

    def eval_arg(self, dot: Any, typ: str, n: Node) -> Any:
        self.at(n)
        if isinstance(n, Dot):
            return self.validate(dot, typ)
        if isinstance(n, Nil):
            if typ in ("any",):
                return None
            self.fail(f"cannot assign nil to {_param_name(typ)}")
        if isinstance(n, Field):
            return self.validate(self.eval_field_chain(dot, dot, n, n.idents, [n], _MISSING), typ)
        if isinstance(n, Variable):
            val = self.var_value(n.idents[0])
            if len(n.idents) > 1:
                val = self.eval_field_chain(dot, val, n, n.idents[1:], [], _MISSING)
            return self.validate(val, typ)
        if isinstance(n, Pipe):
            return self.validate(self.eval_pipeline(dot, n), typ)
        if isinstance(n, Ident):
            return self.validate(self.eval_function(dot, n, [n], _MISSING), typ)
        if isinstance(n, Chain):
            return self.validate(self.eval_command(dot, Command(n.pos, n.line, [n]), _MISSING), typ)
        if isinstance(n, Const):
            if typ in ("any", "value"):
                return n.value
            want = {"string": "string", "int": "int", "bool": "bool"}[typ]
            if n.kind == want:
                return n.value
            if typ == "string":
                self.fail(f"expected string; found {n.text}")
            if typ == "int":
                self.fail(f"expected integer; found {n.text}")
            self.fail(f"expected bool; found {n.text}")
        self.fail(f"can't handle {n} for arg of type {_param_name(typ)}")

    def eval_arg_any(self, dot: Any, n: Node) -> Any:
        if isinstance(n, Pipe):
            return self.eval_pipeline(dot, n)
        return self.eval_arg(dot, "any", n)

    def validate(self, val: Any, typ: str) -> Any:
        """Go's validateType for a parameter of type typ."""
        if val is NO_VALUE:
            if typ == "any":
                return None
            self.fail(f"invalid value; expected {_param_name(typ)}")
        if typ in ("any", "value"):
            return val
        inner = val.v if gv.kind(val) == "ptr" and val.v is not None else val
        want = {"string": "string", "int": "int", "bool": "bool"}[typ]
        if gv.kind(inner) == want:
            return inner
        if val is None:
            self.fail(f"wrong type for value; expected {_param_name(typ)}; got interface {{}}")
        self.fail(f"wrong type for value; expected {_param_name(typ)}; got {gv.type_of(val).name}")


def _param_name(typ: str) -> str:
    return {"value": "reflect.Value", "any": "interface {}"}.get(typ, typ)


def _indirect(v: Any) -> Any:
    """Through pointers to what they point at (a nil pointer stays itself)."""
    while gv.kind(v) == "ptr" and v.v is not None:
        v = v.v
    return v


def _indirect_iface(v: Any) -> Any:
    return NO_VALUE if v is None else v


def _sprint_for_error(v: Any) -> str:
    try:
        return gv.sprint_value(v)
    except GoValueError:
        return gv.type_of(v).name


# ---- builtin functions ------------------------------------------------------------------

class _FuncError(Exception):
    """A function's returned error: the executor reports it as `error calling NAME: ...`."""


_BASIC = {"bool": "bool", "int": "int", "float64": "float", "string": "string"}


def _basic_kind(v: Any) -> str | None:
    return _BASIC.get(gv.kind(v))


def _eq(arg1: Any, *rest: Any) -> bool:
    arg1 = _indirect_iface(arg1)
    if not rest:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in rest:
        arg = _indirect_iface(arg)
        k2 = _basic_kind(arg)
        if k1 != k2:
            if arg1 is not NO_VALUE and arg is not NO_VALUE:
                raise _FuncError("incompatible types for comparison")
            truth = False
        elif k1 is not None:
            truth = arg1 == arg
        else:
            truth = _eq_other(arg1, arg)
        if truth:
            return True
    return False


def _eq_other(a: Any, b: Any) -> bool:
    """eq of two values that are not basic kinds: only nil-ness and pointer identity compare."""
    if a is NO_VALUE and b is NO_VALUE:
        return True
    ta, tb = gv.type_of(a), gv.type_of(b)
    if ta is None or tb is None or ta.kind in ("slice", "map") or tb.kind in ("slice", "map"):
        if ta is not None and tb is not None and ta is not tb:
            raise _FuncError(f"non-comparable types {_sprint_for_error(a)}: {ta.name}, {tb.name}: "
                             f"{_sprint_for_error(b)}")
        a_nil = a is NO_VALUE or (isinstance(a, gv.GoValue) and a.v is None)
        b_nil = b is NO_VALUE or (isinstance(b, gv.GoValue) and b.v is None)
        if a_nil or b_nil:
            return a_nil == b_nil
        raise _FuncError(f"non-comparable type {_sprint_for_error(b)}: {tb.name}")
    raise GoValueError(f"eq of values of type {ta.name} and {tb.name} is not supported")


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    a, b = _indirect_iface(a), _indirect_iface(b)
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 is None or k2 is None:
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    if k1 == "bool":
        raise _FuncError("invalid type for comparison")
    return a < b


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _not(a: Any) -> bool:
    return not gv.truth(_indirect_iface(a))


def _and(*args):  # evaluated lazily by the executor; here only for the arity table
    raise AssertionError


def _len(item: Any) -> int:
    item = _indirect_iface(item)
    if item is NO_VALUE or (gv.kind(item) == "ptr" and item.v is None):
        raise _FuncError("len of nil pointer")
    item = _indirect(item)
    k = gv.kind(item)
    if k == "string":
        return len(item.encode("utf-8", "surrogatepass"))  # Go's len counts bytes
    if k in ("slice", "map"):
        return len(gv.items(item) or [])
    raise _FuncError(f"len of type {gv.type_of(item).name}")


def _index_arg(index: Any, cap: int) -> int:
    k = gv.kind(index)
    if k == "int":
        x = index
    elif k in ("invalid",):
        raise _FuncError("cannot index slice/array with nil")
    else:
        raise _FuncError(f"cannot index slice/array with type {gv.type_of(index).name}")
    if x < 0 or x > cap:
        raise _FuncError(f"index out of range: {x}")
    return x


def _index(item: Any, *indexes: Any) -> Any:
    item = _indirect_iface(item)
    if item is NO_VALUE:
        raise _FuncError("index of untyped nil")
    for index in indexes:
        index = _indirect_iface(index)
        if gv.kind(item) == "ptr":
            if item.v is None:
                raise _FuncError("index of nil pointer")
            item = _indirect(item)
        k = gv.kind(item)
        if k == "slice":
            elems = gv.items(item) or []
            x = _index_arg(index, len(elems))
            if x == len(elems):
                raise _FuncError("reflect: slice index out of range")
            item = elems[x]
        elif k == "string":
            raise GoValueError("index of a string (a byte, uint8) is not supported")
        elif k == "map":
            if gv.kind(index) != "string":
                if index is NO_VALUE:
                    raise _FuncError("value is nil; should be of type string")
                raise _FuncError(f"value has type {gv.type_of(index).name}; should be string")
            m = gv.items(item) or {}
            item = m[index] if index in m else gv.zero(gv.elem_type(item))
        else:
            raise _FuncError(f"can't index item of type {gv.type_of(item).name}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    item = _indirect_iface(item)
    if item is NO_VALUE:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    k = gv.kind(item)
    if k == "string":
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        if not item.isascii():
            raise GoValueError("slice of a non-ASCII string (Go slices bytes) is not supported")
        cap = len(item)
    elif k == "slice":
        if len(indexes) == 3:
            raise GoValueError("3-index slice is not supported")
        cap = len(gv.items(item) or [])
    else:
        raise _FuncError(f"can't slice item of type {gv.type_of(item).name}")
    idx = [0, cap]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, cap)
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if k == "string":
        return item[idx[0]:idx[1]]
    elems = gv.items(item)
    if elems is None:
        return item
    return elems[idx[0]:idx[1]] if not isinstance(item, gv.GoValue) else gv.GoValue(item.type, elems[idx[0]:idx[1]])


def _printf(fmt: str, *args: Any) -> str:
    return gv.go_sprintf(fmt, list(args))


def _json(v: Any) -> str:
    try:
        return gv.json_marshal(v)
    except GoValueError as e:
        if str(e).startswith("json: unsupported value"):
            return ""  # ollama's json ignores Marshal's error and prints the nil bytes
        raise


def _today() -> datetime.date:
    return datetime.datetime.now().astimezone().date()


def _current_date(*_format: str) -> str:
    # ollama: time.Now().Format("2006-01-02") in local time; the format argument is ignored
    return _today().isoformat()


def _yesterday_date(*_format: str) -> str:
    return (_today() - datetime.timedelta(days=1)).isoformat()


def _to_typescript_type(v: Any) -> str:
    """ollama's toTypeScriptType: a ToolProperty's TypeScript type, "any" for anything else."""
    v = _indirect(v)
    t = gv.type_of(v)
    if t is not None and "ToTypeScriptType" in t.methods:
        return t.methods["ToTypeScriptType"].fn(v)
    return "any"


BUILTINS: dict[str, Func] = {
    "and": Func(_and, ("value", "value"), variadic=True),
    "or": Func(_and, ("value", "value"), variadic=True),
    "not": Func(_not, ("value",)),
    "eq": Func(_eq, ("value", "value"), variadic=True),
    "ne": Func(_ne, ("value", "value")),
    "lt": Func(_lt, ("value", "value")),
    "le": Func(_le, ("value", "value")),
    "gt": Func(_gt, ("value", "value")),
    "ge": Func(_ge, ("value", "value")),
    "len": Func(_len, ("value",)),
    "index": Func(_index, ("value", "value"), variadic=True),
    "slice": Func(_slice, ("value", "value"), variadic=True),
    "print": Func(lambda *a: gv.go_sprint(list(a)), ("any",), variadic=True),
    "println": Func(lambda *a: gv.go_sprintln(list(a)), ("any",), variadic=True),
    "printf": Func(_printf, ("string", "any"), variadic=True),
}
# ollama's template.FuncMap (template/template.go)
OLLAMA_FUNCS: dict[str, Func] = {
    "json": Func(_json, ("any",)),
    "currentDate": Func(_current_date, ("string",), variadic=True),
    "yesterdayDate": Func(_yesterday_date, ("string",), variadic=True),
    "toTypeScriptType": Func(_to_typescript_type, ("any",)),
}
# Go's other builtins: known names, so that using one says "not supported" rather than "not defined"
UNSUPPORTED_BUILTINS = ("call", "html", "js", "urlquery")


# ---- the public class -------------------------------------------------------------------

class GoTemplate:
    """A parsed Go text/template with ollama's functions and Option("missingkey=zero")."""

    def __init__(self, source: str, name: str = "template", funcs: dict[str, Func] | None = None):
        """Parse source as Go's template.New(name).Funcs(...).Parse(source) does.

        Raises GoTemplateError with Go's message (`template: NAME:LINE: ...`) for a malformed
        template, an undefined function or variable, or a construct refllm does not support."""
        self.source = source
        self.name = name
        self._funcs = {**BUILTINS, **OLLAMA_FUNCS, **(funcs or {})}
        known = set(self._funcs) | set(UNSUPPORTED_BUILTINS)
        parser = _Parser(source, name, known)
        try:
            self._trees = parser.parse()
        except _ParseError as e:
            raise GoTemplateError(f"template: {name}:{e.tok.line}: {e.msg}") from None
        for unsupported in UNSUPPORTED_BUILTINS:
            line = self._first_use(unsupported)
            if line:
                raise GoTemplateError(f"template: {name}:{line}: the builtin function {unsupported!r} is not "
                                      "supported by refllm")

    @property
    def root(self) -> list[Node]:
        """The main template's nodes (ollama appends its {{ .Response }} here)."""
        return self._trees[self.name].root

    def templates(self) -> list[list[Node]]:
        """Every tree's nodes: the main template's and each {{define}}/{{block}}'s."""
        return [t.root for t in self._trees.values()]

    def _first_use(self, func: str) -> int:
        for root in self.templates():
            for node in walk_nodes(root):
                if isinstance(node, Ident) and node.name == func:
                    return node.line
        return 0

    def execute(self, data: Any) -> str:
        """The text Go's Execute writes for data (go_values' model of Go data; dicts are
        map[string]interface {}). Raises GoTemplateError with Go's message on an execution
        error, and for values or constructs refllm cannot render exactly."""
        return self.execute_tree(self.root, data)

    def execute_tree(self, root: list[Node], data: Any, bare: bool = False) -> str:
        """Execute a list of nodes (the main tree or a modified copy of it). With bare, as a
        fresh template.New("") holding only that tree: Go's builtins but none of the added
        functions, no {{define}}d templates, and missingkey at its default."""
        out: list[str] = []
        if bare:
            ex = _Exec(self, out, dict(BUILTINS), {}, missing_zero=False)
        else:
            ex = _Exec(self, out, self._funcs, self._trees, missing_zero=True)
        ex.vars = [("$", data)]
        try:
            ex.walk(data, root)
        except (_Break, _Continue):
            raise GoTemplateError("{{break}} or {{continue}} outside {{range}}") from None
        except _ExecError as e:
            raise GoTemplateError(self._exec_message(e)) from None
        except RecursionError:
            raise GoTemplateError(f"template: {self.name}: recursion too deep for refllm") from None
        return "".join(out)

    def _exec_message(self, e: _ExecError) -> str:
        node = e.node
        if node is None:
            return f"template: {e.tname}: {e.msg}"
        before = self.source[:node.pos]
        col = len(before[before.rfind("\n") + 1:].encode("utf-8"))  # Go counts bytes
        return (f"template: {self.name}:{node.line}:{col}: executing {gv._quote(e.tname)} at <{node}>: "
                f"{e.msg}")

    def identifiers(self, strict: bool = False) -> list[str]:
        """Every field and variable name the templates' actions refer to, as ollama's
        template.Identifiers walks them (a field chain .A.B gives A and B, $x.A gives $x and A;
        a (pipeline).Field chain is not walked). With strict, a {{template "x"}} without a
        pipeline raises GoTemplateError as ollama's Identifiers fails on it."""
        names: list[str] = []
        for root in self.templates():
            for node in root:
                names.extend(_identifiers(node, strict))
        return names

    def uses(self, field: str) -> bool:
        """Whether any action refers to the identifier `field` (".Messages" or "Messages";
        case-insensitive, as ollama's Vars lower-cases them)."""
        want = field.lstrip(".").lower()
        return any(n.lower() == want for n in self.identifiers())


def _identifiers(node: Node | list, strict: bool) -> list[str]:
    """ollama's Identifiers(node): what its Vars() and mode choice look at."""
    if isinstance(node, list):
        return [n for c in node for n in _identifiers(c, strict)]
    if isinstance(node, (Action,)):
        return _identifiers(node.pipe, strict)
    if isinstance(node, TemplateCall):
        if node.pipe is None:
            if strict:  # ollama's Identifiers fails on a {{template "x"}} without a pipeline
                raise GoTemplateError("undefined template specified")
            return []
        return _identifiers(node.pipe, strict)
    if isinstance(node, Branch):
        names = _identifiers(node.pipe, strict)
        names += _identifiers(node.body, strict)
        if node.else_body is not None:
            names += _identifiers(node.else_body, strict)
        return names
    if isinstance(node, Pipe):
        return [n for c in node.cmds for a in c.args for n in _identifiers(a, strict)]
    if isinstance(node, (Field, Variable)):
        return list(node.idents)
    return []


def walk_nodes(nodes: list[Node]):
    """Every node under nodes, depth first (pipelines, commands and arguments included)."""
    for node in nodes:
        yield node
        if isinstance(node, Action):
            yield from walk_nodes([node.pipe])
        elif isinstance(node, Branch):
            yield from walk_nodes([node.pipe])
            yield from walk_nodes(node.body)
            if node.else_body is not None:
                yield from walk_nodes(node.else_body)
        elif isinstance(node, TemplateCall) and node.pipe is not None:
            yield from walk_nodes([node.pipe])
        elif isinstance(node, Pipe):
            yield from walk_nodes(node.cmds)
        elif isinstance(node, Command):
            yield from walk_nodes(node.args)
        elif isinstance(node, Chain):
            yield from walk_nodes([node.node])
