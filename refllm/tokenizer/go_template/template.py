"""The public class over the whole pipeline, source -> tokens -> tree -> text.

`GoTemplate` parses once (lexer.py, parser.py) and executes on data (executor.py), turning
each stage's private errors into GoTemplateError with Go's message; `identifiers` and `uses`
walk the tree as ollama's template.Identifiers does.
"""

from __future__ import annotations

from typing import Any

from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_template.errors import GoTemplateError
from refllm.tokenizer.go_template.executor import _Break, _Continue, _Exec, _ExecError
from refllm.tokenizer.go_template.functions import BUILTINS, OLLAMA_FUNCS, UNSUPPORTED_BUILTINS, Func
from refllm.tokenizer.go_template.nodes import (
    Action,
    Branch,
    Field,
    Ident,
    Node,
    Pipe,
    TemplateCall,
    Variable,
    walk_nodes,
)
from refllm.tokenizer.go_template.parser import _ParseError, _Parser


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
