"""Modelfiles: parsing them as ollama does, and printing one that recreates a model.

    FROM ./model.gguf                      a GGUF path (relative to the Modelfile's folder, ~ expanded)
    FROM llama3:8b                         ... or a model already in the store
    PARAMETER temperature 0.6              typed by the option's Go type; `stop` accumulates
    PARAMETER stop <|im_end|>
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"           \"\"\" quotes a value over several lines
    SYSTEM "You are terse."                a double-quoted value on one line
    LICENSE \"\"\"...\"\"\"                        repeatable
    MESSAGE user Hello                     seeded history: system, user or assistant
    ADAPTER ./lora.gguf                    recorded; refllm does not apply adapters
    REQUIRES 0.14.0                        the ollama version the model needs (semver)
    # a comment, at the start of an instruction only

The grammar is ollama's `parser.ParseFile` (parser/parser.go), read as behaviour: instruction
names are letters, case-insensitive; a value runs to the end of its line, unless it opens a
quote (`\"\"\"` or `"`), in which case it runs to the first line end where the quote is closed.
Single quotes mean nothing (ollama has a TODO for them): they stay in the value. Errors carry
ollama's `(line N): ` prefix and its messages where it has one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refllm.errors import RefllmError


class ModelfileError(RefllmError, ValueError):
    """A Modelfile ollama would refuse; the message names the line and what was expected there."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(f"(line {line}): {message}" if line else message)
        self.line = line


# ollama's commands, in the order its error message lists them.
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
ROLES = ("system", "user", "assistant")
ERR_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS[:-1]) + f', or "{COMMANDS[-1]}"'
ERR_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_REQUIRES = "requires must be a valid semver (e.g. 0.14.0)"
ERR_NO_FROM = "no FROM line"

# PARAMETER name -> the Go type of its api.Options field (ollama.md §3.2). The same names as
# refllm.server.options.OPTIONS (tests/test_modelfile.py checks that the two agree).
PARAMETER_TYPES: dict[str, str] = {
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int", "use_mmap": "bool",
    "num_thread": "int", "draft_num_predict": "int", "num_keep": "int", "seed": "int",
    "num_predict": "int", "top_k": "int", "top_p": "float32", "min_p": "float32",
    "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string",
}
# Options ollama removed: a Modelfile may still name them; ollama warns and skips them.
DEPRECATED_PARAMETERS = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
                         "mirostat", "mirostat_tau", "mirostat_eta")


@dataclass(frozen=True)
class Command:
    """One instruction: `name` is lower-case ('model' for FROM, the option name for PARAMETER),
    `args` its value with quotes removed; MESSAGE args read 'role: text', as in ollama."""
    name: str
    args: str
    line: int


@dataclass
class Modelfile:
    """A parsed Modelfile. `folder` is where relative FROM and ADAPTER paths start (the
    Modelfile's own folder when it was read from a file, else the working directory)."""
    commands: list[Command]
    folder: Path = field(default_factory=Path.cwd)
    warnings: list[str] = field(default_factory=list)

    def args(self, name: str) -> list[str]:
        """Every value given for one instruction, in order."""
        return [c.args for c in self.commands if c.name == name]

    def last(self, name: str) -> str | None:
        """The value of a single-valued instruction (the last one wins, as in ollama)."""
        found = self.args(name)
        return found[-1] if found else None

    @property
    def parameters(self) -> dict[str, Any]:
        """The PARAMETER lines as ollama stores them: typed values, `stop` a list of strings."""
        params: dict[str, Any] = {}
        for c in self.commands:
            if c.name in PARAMETER_TYPES:
                value = parse_parameter(c.name, c.args, c.line)
                params[c.name] = params.get(c.name, []) + value if isinstance(value, list) else value
        return params

    @property
    def messages(self) -> list[dict[str, str]]:
        """MESSAGE lines as [{"role": ..., "content": ...}]."""
        return [dict(zip(("role", "content"), c.args.split(": ", 1))) for c in self.commands
                if c.name == "message"]

    @property
    def requires(self) -> str | None:
        """REQUIRES as ollama stores it, without a leading 'v'."""
        value = self.last("requires")
        return None if value is None else value.removeprefix("v")


# -- parsing ----------------------------------------------------------------------------------

def _unquote(s: str) -> tuple[str, bool]:
    """ollama's unquote: strip \"\"\" or " from both ends; False while a quote is still open."""
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _kept(ch: str) -> bool:
    """ollama keeps printable runes, spaces, tabs and line ends in a value; other controls vanish."""
    return ch.isprintable() or ch in " \t\r\n"


class _Reader:
    """The text, a position in it, and the line of that position."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text.removeprefix("\ufeff"), 0, 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        if ch == "\n":
            self.line += 1
        return ch

    def word(self, allowed) -> str:
        start = self.pos
        while self.peek() and allowed(self.peek()):
            self.pos += 1
        return self.text[start:self.pos]

    def skip_blanks(self) -> None:
        self.word(lambda ch: ch in " \t")


def _value(r: _Reader, line: int) -> str:
    """The rest of an instruction: up to the first line end where no quote is left open."""
    buf: list[str] = []
    while True:
        ch = r.take()
        if ch in ("", "\n", "\r"):
            value, closed = _unquote("".join(buf).strip(" \t\r\n"))
            if closed:
                return value
            if not ch:
                quote = '"""' if "".join(buf).lstrip().startswith('"""') else '"'
                raise ModelfileError(f"unexpected EOF: the {quote} quote opened here is never closed", line)
        if _kept(ch):
            buf.append(ch)


def _name_error(r: _Reader, name: str, line: int) -> ModelfileError:
    """Why an instruction name is not followed by a value: ollama's command message for an
    unknown name or a stray character (`SYSTEM:`); a known name at a line end needs a value."""
    if name.lower() not in COMMANDS or r.peek() not in ("", "\r", "\n"):
        return ModelfileError(ERR_COMMAND, line)
    return ModelfileError(f"{name.upper()} needs a value on the same line", line)


def parse_modelfile(text: str, folder: str | os.PathLike | None = None) -> Modelfile:
    """Parse a Modelfile's text as ollama does.

    Promises: every instruction is one Command (FROM is 'model', PARAMETER its option name,
    MESSAGE 'role: text'); PARAMETER values and REQUIRES are checked here, so a Modelfile that
    parses can be created. Raises ModelfileError with ollama's messages: `(line N): command must
    be one of ...`, the MESSAGE role message, `unknown parameter 'x'`, `requires must be a
    valid semver (e.g. 0.14.0)`, `no FROM line`; other problems name the line and what was
    expected. Deprecated parameters are skipped with a warning (Modelfile.warnings), as ollama does.
    """
    r, commands, warnings = _Reader(text), [], []
    while r.peek():
        ch = r.peek()
        if ch in " \t\r\n":
            r.take()
            continue
        if ch == "#":
            r.word(lambda c: c not in "\r\n")
            continue
        line = r.line
        name = r.word(lambda c: c.isascii() and c.isalpha())
        if r.peek() not in (" ", "\t") or name.lower() not in COMMANDS:
            raise _name_error(r, name, line) if name else ModelfileError(ERR_COMMAND, line)
        command = name.lower()
        r.skip_blanks()
        if command == "parameter":
            command = r.word(lambda c: c.isascii() and (c.isalnum() or c == "_"))
            if not command or r.peek() not in (" ", "\t"):
                raise ModelfileError("PARAMETER needs a name and a value, e.g. PARAMETER temperature 0.7", line)
            r.skip_blanks()
        elif command == "message":
            role = r.word(lambda c: c.isascii() and c.isalpha())
            if role not in ROLES:
                raise ModelfileError(ERR_ROLE, line)
            if r.peek() not in (" ", "\t"):
                raise ModelfileError(f"MESSAGE {role} needs a text after the role", line)
            r.skip_blanks()
        value = _value(r, line)
        if command == "message":
            value = f"{role}: {value}"
        commands.append(Command("model" if command == "from" else command, value, line))
    for c in commands:
        _check(c, warnings)
    commands = [c for c in commands if c.name not in DEPRECATED_PARAMETERS]
    if not any(c.name == "model" for c in commands):
        raise ModelfileError(ERR_NO_FROM)
    return Modelfile(commands, Path(folder) if folder is not None else Path.cwd(), warnings)


def read_modelfile(path: str | os.PathLike) -> Modelfile:
    """Read and parse a Modelfile; relative paths in it start at its folder. Raises
    ModelfileError (prefixed with the path) or OSError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelfileError(f"{path}: at byte {e.start}: not UTF-8 (expected a UTF-8 text file)") from None
    try:
        return parse_modelfile(text, path.parent)
    except ModelfileError as e:
        raise ModelfileError(f"{path}: {e}") from None


def _check(c: Command, warnings: list[str]) -> None:
    """The checks ollama makes when it turns commands into a create request."""
    if c.name in DEPRECATED_PARAMETERS:
        warnings.append(f"parameter {c.name} is deprecated")
    elif c.name in ("model", "adapter", "draft") and not c.args:
        raise ModelfileError(f"{c.name.upper().replace('MODEL', 'FROM')} needs a model name or a file path", c.line)
    elif c.name == "requires" and not _SEMVER.fullmatch("v" + c.args.removeprefix("v")):
        raise ModelfileError(ERR_REQUIRES, c.line)
    elif c.name not in COMMANDS and c.name not in ("model", "message"):
        parse_parameter(c.name, c.args, c.line)


# golang.org/x/mod/semver.IsValid: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]], no leading zeros.
_NUM = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(rf"v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+{_BUILD}(?:\.{_BUILD})*)?)?)?")


# -- parameter values -------------------------------------------------------------------------

_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_GO_FLOAT = re.compile(r"[+-]?(?:(?:[0-9](?:_?[0-9])*)?\.?[0-9](?:_?[0-9])*(?:[eE][+-]?[0-9]+)?|[0-9]+\.)")
INT64 = (-(1 << 63), (1 << 63) - 1)


def _parse_int(s: str) -> int | None:
    """strconv.ParseInt(s, 10, 64): an optional sign and decimal digits, in int64's range."""
    value = int(s) if _GO_INT.fullmatch(s) else None
    return value if value is not None and INT64[0] <= value <= INT64[1] else None


def _parse_float32(s: str) -> float | None:
    """strconv.ParseFloat(s, 32) for finite decimal numbers, rounded to float32; None when it
    is not a number, overflows float32, or is infinite or NaN (JSON cannot hold those)."""
    if not _GO_FLOAT.fullmatch(s) or "_" in s:
        return None
    value = float(s)
    narrowed = np.float32(value) if abs(value) <= float(np.finfo(np.float32).max) * (1 + 2**-24) else None
    return float(narrowed) if narrowed is not None and math.isfinite(narrowed) else None


# Go type -> (parse a PARAMETER value, what the error calls it)
_PARSERS = {
    "int": (_parse_int, "int"),
    "float32": (_parse_float32, "float"),
    "bool": (_GO_BOOL.get, "bool"),
    "[]string": (lambda s: [s], "string"),
}
_EXPECTED = {"int": "a whole number such as 40 or -1", "float": "a number such as 0.7",
             "bool": "true or false"}


def parse_parameter(name: str, value: str, line: int | None = None) -> Any:
    """A PARAMETER value typed as ollama's FormatParams types it: int, float (rounded to
    float32), bool (strconv.ParseBool's spellings), or a one-item list for `stop`. Raises
    ModelfileError: ollama's `unknown parameter 'x'`, or `invalid int value [x]` and the like
    followed by what was expected."""
    if name not in PARAMETER_TYPES:
        raise ModelfileError(f"unknown parameter '{name}'", line)
    parse, kind = _PARSERS[PARAMETER_TYPES[name]]
    typed = parse(value)
    if typed is None:
        raise ModelfileError(f"invalid {kind} value [{value}]: PARAMETER {name} takes {_EXPECTED[kind]}", line)
    return typed


# -- numbers as Go writes them ------------------------------------------------------------------

def go_float(x: float, bits: int = 64, json: bool = False) -> str:
    """A float as Go writes it with the shortest digits of its width (float32 or float64).
    json=True: encoding/json's form (an exponent below 1e-6 and from 1e21 on, written e-7);
    else fmt's %v (an exponent below 1e-4 and from 1e6 on, written e-07, e+06)."""
    value = np.float32(x) if bits == 32 else np.float64(x)
    if value == 0:
        return "-0" if np.signbit(value) else "0"
    mantissa, exp = np.format_float_scientific(value, unique=True, trim="-").split("e")
    exponent = int(exp)
    use_e = abs(value) < 1e-6 or abs(value) >= 1e21 if json else exponent < -4 or exponent >= 6
    if not use_e:
        return np.format_float_positional(value, unique=True, trim="-")
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):0{1 if json else 2}d}"


def go_format_value(value: Any) -> str:
    """A parameter value as `ollama show --modelfile` prints it (fmt's %v). Whole numbers stay
    whole: ollama reads them back as float64 and would print a large seed as 1.234567e+06,
    which its own parser then refuses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # a PARAMETER float is a float32: its shortest float32 digits are the JSON's digits
        return go_float(value, 32 if float(np.float32(value)) == value else 64)
    return str(value)


def go_quote(s: str) -> str:
    """strconv.Quote: a Go string literal, as fmt's %#v prints a string."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


# -- printing a Modelfile -----------------------------------------------------------------------

def quote(s: str) -> str:
    """A value as ollama's Command.String quotes it: \"\"\" when it spans lines or has edge
    spaces and holds a '"', else "..." in those cases, else as it is. One addition so that
    the output always reads back the same: a value that starts with '"' is also quoted."""
    if "\n" in s or s.startswith((" ", '"')) or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def command_line(c: Command) -> str:
    """One instruction as ollama prints it."""
    if c.name == "model":
        return f"FROM {c.args}"
    if c.name == "message":
        role, _, text = c.args.partition(": ")
        return f"MESSAGE {role} {quote(text)}"
    if c.name in COMMANDS:
        return f"{c.name.upper()} {quote(c.args)}"
    return f"PARAMETER {c.name} {quote(c.args)}"


def format_modelfile(short_name: str, model_path: str, *, template: str | None = None,
                     system: str | None = None, parameters: dict[str, Any] | None = None,
                     licenses: list[str] = (), messages: list[dict] = (), adapters: list[str] = (),
                     renderer: str | None = None, parser: str | None = None) -> str:
    """The Modelfile `ollama show --modelfile` prints (server ShowHandler and Model.String):
    its two header comments naming the model, then FROM the model blob, ADAPTER, TEMPLATE,
    SYSTEM, RENDERER, PARSER, one PARAMETER line per value (a list gives one line per item),
    LICENSE and MESSAGE lines. ollama prints parameters in Go's random map order; they are
    sorted here so that the output is stable."""
    commands = [Command("model", model_path, 0)] + [Command("adapter", a, 0) for a in adapters]
    for name, value in (("template", template), ("system", system), ("renderer", renderer), ("parser", parser)):
        if value:
            commands.append(Command(name, value, 0))
    for name, value in sorted((parameters or {}).items()):
        for item in value if isinstance(value, list) else [value]:
            commands.append(Command(name, go_format_value(item), 0))
    commands += [Command("license", text, 0) for text in licenses]
    commands += [Command("message", f"{m.get('role', '')}: {m.get('content', '')}", 0) for m in messages]
    header = ('# Modelfile generated by "ollama show"\n'
              "# To build a new Modelfile based on this, replace FROM with:\n"
              f"# FROM {short_name}\n\n")
    return header + "".join(command_line(c) + "\n" for c in commands)


def format_parameters(parameters: dict[str, Any]) -> str:
    """`ollama show --parameters`: one `%-30s %#v` line per value (a list, one line per item),
    sorted by name (ollama's order is Go's random map order)."""
    lines = []
    for name, value in sorted(parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            shown = go_quote(item) if isinstance(item, str) else go_format_value(item)
            lines.append(f"{name:<30} {shown}")
    return "\n".join(lines)


# -- FROM --------------------------------------------------------------------------------------

def expand_path(path: str, folder: str | os.PathLike) -> Path:
    """ollama's expandPath: absolute stays; '~' and '~/x' start at the home folder, '~user/x'
    at that user's; anything else is relative to `folder`. The result is absolute."""
    if path.startswith("~"):
        return Path(os.path.expanduser(path)).absolute()
    return (Path(folder) / path).absolute()
