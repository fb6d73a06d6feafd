"""Go's text/template, the subset ollama's TEMPLATEs use, rendered byte for byte as Go renders it.

The stages, in the order data flows (source -> tokens -> tree -> text), one module each: a lexer
(lexer.py: text, `{{ }}` actions with Go's `{{- `/` -}}` trimming, comments, literals), a parser
(parser.py, building nodes.py's tree: Go's parse tree of text, actions, if/range/with,
template/define/block, pipelines, commands, fields and variables) and an executor (executor.py:
Go's exec.go rules: missingkey=zero, truth, variable scopes, range over slices and sorted maps),
which calls functions.py's builtin functions and ollama's own. template.py's GoTemplate is the
public class over them. Values are go_values' model of Go data.

Behaviour follows Go 1.19 (the golden files' Go) plus `{{else with}}` (Go 1.23, which ollama
builds with). Whatever is not implemented raises GoTemplateError naming the construct and the
line, never a wrong prompt. Errors read like Go's: `template: NAME:LINE: ...` when parsing,
`template: NAME:LINE:COL: executing "NAME" at <NODE>: ...` when executing.
"""

from refllm.tokenizer.go_template.errors import GoTemplateError
from refllm.tokenizer.go_template.functions import BUILTINS, OLLAMA_FUNCS, UNSUPPORTED_BUILTINS, Func
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
    walk_nodes,
)
from refllm.tokenizer.go_template.template import GoTemplate

__all__ = [
    "BUILTINS", "OLLAMA_FUNCS", "UNSUPPORTED_BUILTINS", "Action", "Branch", "Break", "Chain", "Command", "Const",
    "Continue", "Dot", "Field", "Func", "GoTemplate", "GoTemplateError", "Ident", "Nil", "Node", "Pipe",
    "TemplateCall", "Text", "Variable", "walk_nodes",
]
