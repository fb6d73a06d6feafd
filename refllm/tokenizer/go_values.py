"""Go values as text/template sees them: types, zero values, fmt printing and encoding/json.

ollama executes its templates on Go data (maps, slices, structs with String methods), and what a
template prints depends on Go's types: a nil slice prints `[]` but marshals to `null`, a float64
prints `1e+06`, a struct prints `{a b}`. This module models just enough of Go's type system for
that, so that the go_template package can print and compare values byte for byte as Go does.

Python values stand for Go values of their natural type: str is string, bool is bool, int is int,
float is float64, list is []interface {}, dict is map[string]interface {}, None is a nil
interface. A GoValue carries any other Go type (a struct, a pointer, a typed slice or map).
NO_VALUE is Go's invalid reflect.Value (what a nil interface becomes once a pipeline returns it).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


class GoValueError(Exception):
    """A Go-side failure (a bad printf argument type is not one: fmt prints those inline)."""


class _NoValue:
    """Go's invalid reflect.Value: a template prints it as `<no value>`."""

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE = _NoValue()


@dataclass(frozen=True)
class GoField:
    name: str
    type: GoType
    json: str = ""          # the json tag's name; "" means the Go field name
    omitempty: bool = False
    skip_json: bool = False  # `json:"-"`


@dataclass(frozen=True, eq=False)
class GoType:
    """One Go type: its kind, the name Go prints for it, and the methods templates can reach.

    `stringer` is the type's String() (fmt calls it when printing), `marshal_json` its
    MarshalJSON (returning JSON text), `methods` what a template may call as `.Name args`.
    """

    kind: str                       # string int float64 bool interface slice map struct ptr opaque
    name: str
    elem: GoType | None = None      # slice/map element, pointer target
    fields: tuple[GoField, ...] = ()
    stringer: Callable[[Any], str] | None = None
    marshal_json: Callable[[Any], str] | None = None
    methods: dict[str, Callable] = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name

    def field(self, name: str) -> GoField | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


STRING = GoType("string", "string")
INT = GoType("int", "int")
FLOAT64 = GoType("float64", "float64")
BOOL = GoType("bool", "bool")
ANY = GoType("interface", "interface {}")
SLICE_ANY = GoType("slice", "[]interface {}", elem=ANY)
MAP_ANY = GoType("map", "map[string]interface {}", elem=ANY)


def slice_of(elem: GoType, name: str | None = None, **kw) -> GoType:
    return GoType("slice", name or "[]" + elem.name, elem=elem, **kw)


def map_of(elem: GoType, name: str | None = None, **kw) -> GoType:
    return GoType("map", name or "map[string]" + elem.name, elem=elem, **kw)


def ptr_to(elem: GoType, **kw) -> GoType:
    return GoType("ptr", "*" + elem.name, elem=elem, **kw)


class GoValue:
    """A value of an explicit Go type. `v` is a dict of fields (struct), a list or None (slice),
    a dict or None (map), a GoValue or None (pointer), or anything (opaque)."""

    __slots__ = ("type", "v")

    def __init__(self, type: GoType, v: Any):
        self.type = type
        self.v = v

    def __repr__(self) -> str:
        return f"GoValue({self.type.name}, {self.v!r})"


def struct(type: GoType, **values) -> GoValue:
    """A struct value of `type`, fields not given set to their zero value."""
    unknown = set(values) - {f.name for f in type.fields}
    if unknown:
        raise GoValueError(f"{type.name} has no fields {sorted(unknown)}")
    return GoValue(type, {f.name: values[f.name] if f.name in values else zero(f.type) for f in type.fields})


def zero(t: GoType) -> Any:
    """Go's zero value of t."""
    return {"string": "", "int": 0, "float64": 0.0, "bool": False, "interface": None}.get(
        t.kind, NO_VALUE) if t.kind not in ("struct", "slice", "map", "ptr", "opaque") else (
        struct(t) if t.kind == "struct" else GoValue(t, None))


def type_of(v: Any) -> GoType | None:
    """The dynamic Go type of v; None for a nil interface or NO_VALUE."""
    if isinstance(v, GoValue):
        return v.type
    if v is None or v is NO_VALUE:
        return None
    return _NATIVE[type(v)] if type(v) in _NATIVE else _native_type(v)


_NATIVE = {str: STRING, bool: BOOL, int: INT, float: FLOAT64, list: SLICE_ANY, dict: MAP_ANY}


def _native_type(v: Any) -> GoType:
    raise GoValueError(f"no Go type for a Python {type(v).__name__}")


def kind(v: Any) -> str:
    """The reflect kind of v ('invalid' for NO_VALUE, 'interface' for a nil interface)."""
    if v is NO_VALUE:
        return "invalid"
    if v is None:
        return "interface"
    return type_of(v).kind


def items(v: Any) -> list | None:
    """The elements of a slice (None for a nil slice)."""
    return v.v if isinstance(v, GoValue) else v


def elem_type(v: Any) -> GoType:
    return v.type.elem if isinstance(v, GoValue) else ANY


def truth(v: Any) -> bool:
    """Go's template truth: false for zero values, empty collections, nil and no value."""
    k = kind(v)
    if k in ("invalid", "interface"):
        return False
    if k in ("slice", "map"):
        return bool(items(v))
    if k in ("ptr", "opaque"):
        return v.v is not None
    if k == "struct":
        return True
    return bool(v)


def sorted_keys(m: dict) -> list:
    """Map keys in the order fmt and text/template's range visit them (Go's fmtsort)."""
    return sorted(m)


# ---- fmt: printing values as %v --------------------------------------------------------

def format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for verbs e, f, g (shortest when prec < 0)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    neg = math.copysign(1.0, f) < 0
    if prec < 0:
        digits, dp = _shortest_digits(abs(f))
    else:
        digits, dp = _rounded_digits(abs(f), verb, prec)
    s = _format_digits(digits, dp, verb, prec, prec < 0)
    return "-" + s if neg else s


def _shortest_digits(a: float) -> tuple[str, int]:
    """The shortest decimal digits that round-trip, and the decimal point position."""
    if a == 0:
        return "0", 1
    sign, ds, exp = Decimal(repr(a)).as_tuple()
    digits = "".join(map(str, ds)).lstrip("0") or "0"
    dp = len(ds) + exp - (len(ds) - len("".join(map(str, ds)).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    return digits, dp


def _rounded_digits(a: float, verb: str, prec: int) -> tuple[str, int]:
    """Digits rounded (half to even on the exact binary value, as Go) for a fixed precision."""
    d = Decimal(a)
    if a == 0:
        return "0", 1
    if verb == "f":
        q = d.quantize(Decimal(1).scaleb(-prec), rounding="ROUND_HALF_EVEN")
    else:
        n = max(prec, 1) if verb == "g" else prec + 1
        adj = d.adjusted()
        q = d.quantize(Decimal(1).scaleb(adj - n + 1), rounding="ROUND_HALF_EVEN")
    sign, ds, exp = q.as_tuple()
    raw = "".join(map(str, ds))
    stripped = raw.lstrip("0")
    if not stripped:
        return "0", 1
    dp = len(raw) + exp - (len(raw) - len(stripped))
    return stripped, dp


def _format_digits(digits: str, dp: int, verb: str, prec: int, shortest: bool) -> str:
    nd = len(digits)
    if verb == "g":
        eprec = prec
        if eprec > nd and nd >= dp:
            eprec = nd
        if shortest:
            eprec = 6
        exp = dp - 1
        if exp < -4 or exp >= eprec:
            p = nd if shortest or prec > nd else prec
            return _fmt_e(digits, dp, p - 1)
        p = nd if shortest or prec > dp else prec
        return _fmt_f(digits, dp, max(p - dp, 0))
    if verb == "e":
        return _fmt_e(digits, dp, nd - 1 if shortest else prec)
    return _fmt_f(digits, dp, max(nd - dp, 0) if shortest else prec)


def _fmt_e(digits: str, dp: int, prec: int) -> str:
    first = digits[0]
    rest = (digits[1:] + "0" * prec)[:prec]
    exp = dp - 1 if digits != "0" else 0
    sign = "+" if exp >= 0 else "-"
    return f"{first}{'.' + rest if prec > 0 else ''}e{sign}{abs(exp):02d}"


def _fmt_f(digits: str, dp: int, prec: int) -> str:
    if dp > 0:
        whole = (digits[:dp] + "0" * max(dp - len(digits), 0))
        frac = digits[dp:]
    else:
        whole = "0"
        frac = "0" * (-dp) + digits
    frac = (frac + "0" * prec)[:prec]
    return whole + ("." + frac if prec > 0 else "")


def sprint_value(v: Any, depth: int = 0) -> str:
    """fmt's %v of one value: what fmt.Sprint prints for it."""
    if v is None or v is NO_VALUE:
        return "<nil>"
    t = type_of(v)
    if t.stringer is not None:
        return t.stringer(v)
    k = t.kind
    if k == "string":
        return v
    if k == "bool":
        return "true" if v else "false"
    if k == "int":
        return str(v)
    if k == "float64":
        return format_float(v)
    if k == "slice":
        return "[" + " ".join(sprint_value(e, depth + 1) for e in (items(v) or [])) + "]"
    if k == "map":
        m = items(v) or {}
        return "map[" + " ".join(f"{sprint_value(key, depth + 1)}:{sprint_value(m[key], depth + 1)}"
                                 for key in sorted_keys(m)) + "]"
    if k == "struct":
        return "{" + " ".join(sprint_value(v.v[f.name], depth + 1) for f in t.fields) + "}"
    if k == "ptr":
        if v.v is None:
            return "<nil>"
        if depth == 0 and v.v.type.kind == "struct":
            return "&" + sprint_value(v.v, depth + 1)
        raise GoValueError(f"printing a {t.name} inside another value prints a memory address")
    raise GoValueError(f"printing a value of type {t.name} is not supported")


def go_sprint(args: list) -> str:
    """fmt.Sprint: operands printed with %v, a space between two operands when neither is a string."""
    out = []
    prev_string = True
    for i, a in enumerate(args):
        is_string = kind(a) == "string"
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(sprint_value(a))
        prev_string = is_string
    return "".join(out)


def go_sprintln(args: list) -> str:
    """fmt.Sprintln: operands printed with %v, always space-separated, and a newline."""
    return " ".join(sprint_value(a) for a in args) + "\n"


# ---- fmt: Sprintf ---------------------------------------------------------------------

_PRINTF_VERBS = set("vsdqtfgxXeEFcTb%")


def go_sprintf(fmt: str, args: list) -> str:
    """fmt.Sprintf for the verbs templates use: %v %s %d %q %t %f %F %e %g %x %X %c %T and %%,
    with flags (- + # 0 space), width and precision (numbers or *). Wrong argument types,
    missing and extra arguments print inline as Go does (%!d(string=x), %!s(MISSING), %!(EXTRA ...)).
    Any other verb raises GoValueError."""
    out = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            j = fmt.find("%", i)
            j = n if j < 0 else j
            out.append(fmt[i:j])
            i = j
            continue
        i += 1
        flags = ""
        while i < n and fmt[i] in "-+# 0":
            flags += fmt[i]
            i += 1
        width, i, argi = _printf_num(fmt, i, args, argi)
        prec = None
        if i < n and fmt[i] == ".":
            i += 1
            prec, i, argi = _printf_num(fmt, i, args, argi)
            prec = prec or 0
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if verb not in _PRINTF_VERBS:
            raise GoValueError(f"printf verb %{verb} is not supported")
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_pad(_format_one(verb, flags, prec, arg), width, flags, verb, arg))
    if argi < len(args):
        extra = ", ".join(_typed(a) for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _printf_num(fmt: str, i: int, args: list, argi: int) -> tuple[int | None, int, int]:
    if i < len(fmt) and fmt[i] == "*":
        if argi < len(args) and kind(args[argi]) == "int":
            return args[argi], i + 1, argi + 1
        raise GoValueError("printf: a * width or precision without an int argument is not supported")
    j = i
    while j < len(fmt) and fmt[j].isdigit():
        j += 1
    return (int(fmt[i:j]) if j > i else None), j, argi


def _typed(a: Any) -> str:
    t = type_of(a)
    return "<nil>" if t is None else f"{t.name}={sprint_value(a)}"


def _bad(verb: str, a: Any) -> str:
    return f"%!{verb}({_typed(a)})"


def _format_one(verb: str, flags: str, prec: int | None, a: Any) -> str:
    k = kind(a) if a is not NO_VALUE else "interface"
    t = type_of(a)
    if verb == "T":
        return "<nil>" if t is None else t.name
    if a is None:
        return "<nil>" if verb in "vs" else _bad(verb, a)
    if t.stringer is not None and verb in "vsq":
        s = t.stringer(a)
        return _quote(s) if verb == "q" else _trunc(s, prec)
    if verb == "v" and k not in ("int", "float64", "string"):
        if "#" in flags:
            raise GoValueError("printf %#v is not supported")
        return sprint_value(a)
    if k == "bool":
        return ("true" if a else "false") if verb in "vt" else _bad(verb, a)
    if k == "int":
        return _format_int(verb, flags, prec, a)
    if k == "float64":
        return _format_floatv(verb, flags, prec, a)
    if k == "string":
        if verb in "vs":
            return _trunc(a, prec)
        if verb == "q":
            return _quote(_trunc(a, prec)) if "#" not in flags or "`" in a else "`" + a + "`"
        if verb in "xX":
            h = a.encode("utf-8").hex()
            return h.upper() if verb == "X" else h
        return _bad(verb, a)
    if k in ("slice", "map", "struct", "ptr"):
        if verb in "vs":
            return sprint_value(a)
        raise GoValueError(f"printf %{verb} of a {t.name} is not supported")
    return _bad(verb, a)


def _trunc(s: str, prec: int | None) -> str:
    return s if prec is None else s[:prec]


def _format_int(verb: str, flags: str, prec: int | None, a: int) -> str:
    sign = "-" if a < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
    m = abs(a)
    if verb in "vd":
        body = str(m)
    elif verb in "xX":
        body = format(m, "x" if verb == "x" else "X")
        if "#" in flags:
            body = ("0x" if verb == "x" else "0X") + body
    elif verb == "b":
        body = format(m, "b")
    elif verb == "c":
        return chr(a)
    elif verb == "q":
        return _quote_rune(a)
    else:
        return _bad(verb, a)
    if prec is not None:
        body = body.rjust(prec, "0") if not (prec == 0 and m == 0) else ""
    return sign + body


def _format_floatv(verb: str, flags: str, prec: int | None, a: float) -> str:
    table = {"v": ("g", -1), "g": ("g", -1), "e": ("e", 6), "E": ("e", 6), "f": ("f", 6), "F": ("f", 6)}
    if verb not in table:
        return _bad(verb, a)
    if "#" in flags:
        raise GoValueError("printf '#' flag on a float is not supported")
    conv, default = table[verb]
    s = format_float(a, conv, default if prec is None else prec)
    if verb == "E":
        s = s.upper()
    if not s.startswith("-") and s not in ("NaN",):
        if "+" in flags:
            s = "+" + s
        elif " " in flags:
            s = " " + s
    return s


def _pad(s: str, width: int | None, flags: str, verb: str, a: Any) -> str:
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    numeric = kind(a) in ("int", "float64") and verb not in "cqT"
    if "0" in flags and numeric:
        sign = s[0] if s[0] in "+- " else ""
        return sign + s[len(sign):].rjust(width - len(sign), "0")
    return s.rjust(width)


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
            "\\": "\\\\", '"': '\\"'}


def _quote(s: str) -> str:
    """strconv.Quote: a double-quoted Go string literal, printable runes kept as they are."""
    return '"' + "".join(_quote_char(c, '"') for c in s) + '"'


def _quote_rune(r: int) -> str:
    c = chr(r)
    return "'" + ("\\'" if c == "'" else _quote_char(c, "'")) + "'"


def _quote_char(c: str, q: str) -> str:
    if c in _ESCAPES and (c != '"' or q == '"'):
        return _ESCAPES[c]
    if c == " " or (c.isprintable() and unicodedata.category(c)[0] != "Z"):
        return c
    o = ord(c)
    if o < 0x80:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


# ---- encoding/json --------------------------------------------------------------------

def json_marshal(v: Any) -> str:
    """encoding/json.Marshal(v) as text, with Go's default HTML escaping of <, >, & and of
    U+2028/U+2029. Raises GoValueError where Go's Marshal fails (NaN, infinities)."""
    return _json(v)


def _json(v: Any) -> str:
    if v is None or v is NO_VALUE:
        return "null"
    t = type_of(v)
    if t.marshal_json is not None:
        return t.marshal_json(v)
    k = t.kind
    if k == "string":
        return json_string(v)
    if k == "bool":
        return "true" if v else "false"
    if k == "int":
        return str(v)
    if k == "float64":
        return _json_float(v)
    if k == "slice":
        s = items(v)
        return "null" if s is None else "[" + ",".join(_json(e) for e in s) + "]"
    if k == "map":
        m = items(v)
        if m is None:
            return "null"
        return "{" + ",".join(json_string(key) + ":" + _json(m[key]) for key in sorted(m)) + "}"
    if k == "struct":
        parts = []
        for f in t.fields:
            val = v.v[f.name]
            if f.skip_json or (f.omitempty and _json_empty(val)):
                continue
            parts.append(json_string(f.json or f.name) + ":" + _json(val))
        return "{" + ",".join(parts) + "}"
    if k == "ptr":
        return "null" if v.v is None else _json(v.v)
    raise GoValueError(f"json of a {t.name} is not supported")


def _json_empty(v: Any) -> bool:
    """encoding/json's omitempty test: false, 0, "", nil, and empty slices and maps."""
    k = kind(v)
    if k in ("struct",):
        return False
    if k in ("slice", "map"):
        return not items(v)
    if k in ("ptr", "opaque"):
        return v.v is None
    if k in ("interface", "invalid"):
        return True
    return not v


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise GoValueError(f"json: unsupported value: {format_float(f)}")
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        s = format_float(f, "e", -1)
        mant, exp = s.split("e")
        sign, digits = exp[0], exp[1:].lstrip("0") or "0"
        return f"{mant}e{sign}{digits}"
    return format_float(f, "f", -1)


_JSON_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_string(s: str) -> str:
    """A Go JSON string literal: control bytes as \\u00XX (but \\n \\r \\t), HTML-escaped."""
    out = []
    for c in s:
        if c in _JSON_ESC:
            out.append(_JSON_ESC[c])
        elif ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            out.append("\\ufffd")  # a lone surrogate is invalid UTF-8: Go writes U+FFFD
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
