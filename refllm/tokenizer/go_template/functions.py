"""The functions templates call while the executor turns a tree into text.

Go's builtins (comparisons, len, index, slice, print/printf) and ollama's template.FuncMap
(json, currentDate, yesterdayDate, toTypeScriptType), each a `Func` the executor checks
arguments against; plus the value helpers both share.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_values import NO_VALUE, GoValueError


@dataclass
class Func:
    """A template function: `fn(exec, args)` gets evaluated arguments (or, for builtins taking
    reflect.Value, raw values); `params` are Go parameter types for checking ('any', 'value',
    'string'), the last repeated when variadic."""

    fn: Callable
    params: tuple[str, ...]
    variadic: bool = False


# value helpers the executor shares with the functions
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
