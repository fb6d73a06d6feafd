"""Stage three of source -> tokens -> tree -> text: Go's exec.go over a parsed tree.

`_Exec` walks the nodes, writing text: missingkey=zero, truth, variable scopes, range over
slices and sorted maps, {{template}} calls, and function calls through functions.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_template.errors import GoTemplateError
from refllm.tokenizer.go_template.functions import (
    BUILTINS,
    Func,
    _FuncError,
    _indirect,
    _indirect_iface,
    _sprint_for_error,
)
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
    _Tree,
)
from refllm.tokenizer.go_values import NO_VALUE, GoValueError

if TYPE_CHECKING:  # only for annotations: template.py imports this module
    from refllm.tokenizer.go_template.template import GoTemplate

MAX_EXEC_DEPTH = 100000  # Go's maxExecDepth: nested {{template}} calls


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
