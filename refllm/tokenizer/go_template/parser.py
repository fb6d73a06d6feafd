"""Stage two of source -> tokens -> tree -> text: Go's parse.Tree over the lexer's tokens.

`_Parser` builds the main template's tree and every {{define}}/{{block}} tree, checking
functions and variables as Go's parser does; literals become Go values here.
"""

from __future__ import annotations

from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_template.lexer import Tok, _lex
from refllm.tokenizer.go_template.nodes import (
    Action,
    Branch,
    Break,
    Chain,
    Command,
    Const,
    Continue,
    Dot,
    Field,
    Ident,
    Nil,
    Node,
    Pipe,
    TemplateCall,
    Text,
    Variable,
    _Else,
    _End,
    _Tree,
)

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
