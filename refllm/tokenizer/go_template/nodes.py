"""The parse tree between the parser and the executor (source -> tokens -> tree -> text).

Go's parse package's node kinds: text, actions, if/range/with branches, {{template}} calls,
pipelines, commands and their arguments; `_Tree` is one named template's nodes and
`walk_nodes` visits every node under a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refllm.tokenizer import go_values as gv


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


@dataclass
class _Tree:
    name: str
    root: list[Node] = field(default_factory=list)


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
