"""ollama's template layer (template/template.go) on top of go_template: Parse, Vars and Execute.

ollama renders a model's Go TEMPLATE in one of three modes, chosen per request:

- Prompt+Suffix (fill-in-the-middle): when both prompt and suffix are set, one execution on
  {Prompt, Suffix, Response "", Think, ThinkLevel, IsThinkSet}.
- Messages: when the template refers to .Messages, one execution on {System (every system
  message joined by blank lines), Messages (consecutive same-role messages merged, tool messages
  kept apart), Tools, Response "", Think, ThinkLevel, IsThinkSet}. Messages and Tools are
  ollama's template-compatible copies (templateMessage, templateTool): tool-call arguments are a
  map whose String() is its JSON, tool properties likewise.
- Legacy: otherwise, the template runs once per (system, user, assistant) turn on {System,
  Prompt, Response, Think, ...}, and the last turn runs on a copy of the tree cut after the first
  {{ .Response }}, so that generation continues from there.

At Parse, a template that refers to neither .Messages nor .Response gets `{{ .Response }}`
appended. Read from ollama's template/template.go and api/types.go (the newest stored version,
with ThinkLevel, currentDate/yesterdayDate/toTypeScriptType and the template* conversions).
"""

from __future__ import annotations

import copy
from typing import Any

from refllm.tokenizer import go_values as gv
from refllm.tokenizer.go_template import Action, Branch, Command, Field, Func, GoTemplate, GoTemplateError, Node, Pipe
from refllm.tokenizer.go_values import ANY, INT, STRING, GoField, GoType, GoValue

DEFAULT_TEMPLATE = "{{ .Prompt }}"  # ollama's DefaultTemplate


# ---- ollama's Go types, as templates see them ---------------------------------------------

def _stringer_json_or_empty(v: GoValue) -> str:
    """templateArgs/templateProperties String(): "{}" for nil, else the JSON."""
    return "{}" if v.v is None else gv.json_marshal(GoValue(v.type.elem_map, v.v))


def _map_type(name: str, elem: GoType, stringer) -> GoType:
    plain = gv.map_of(elem)
    t = gv.map_of(elem, name, stringer=stringer)
    object.__setattr__(t, "elem_map", plain)  # the unnamed map, to marshal without recursing on String
    return t


def _property_type_string(v: GoValue) -> str:
    pt = v.v or []
    if not pt:
        return ""
    return pt[0] if len(pt) == 1 else "[" + " ".join(pt) + "]"


def _property_type_json(v: GoValue) -> str:
    pt = v.v
    if pt is not None and len(pt) == 1:
        return gv.json_string(pt[0])
    return gv.json_marshal(GoValue(gv.slice_of(STRING), pt))


PROPERTY_TYPE = gv.slice_of(STRING, "api.PropertyType", stringer=_property_type_string,
                            marshal_json=_property_type_json)


def _properties_map_json(v: GoValue) -> str:
    if v.v is None:
        return "null"
    return "{" + ",".join(gv.json_string(k) + ":" + gv.json_marshal(p) for k, p in v.v) + "}"


# *api.ToolPropertiesMap: an insertion-ordered map behind a pointer; only its JSON is modelled
PROPERTIES_MAP = GoType("opaque", "*api.ToolPropertiesMap", marshal_json=_properties_map_json)

_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


def _to_typescript_type(p: GoValue) -> str:
    """api.ToolProperty.ToTypeScriptType."""
    any_of = p.v["AnyOf"].v or []
    if any_of:
        return " | ".join(_to_typescript_type(a) for a in any_of)
    types = p.v["Type"].v or []
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


TOOL_PROPERTY = GoType("struct", "api.ToolProperty", methods={"ToTypeScriptType": Func(_to_typescript_type, ())})
object.__setattr__(TOOL_PROPERTY, "fields", (
    GoField("AnyOf", gv.slice_of(TOOL_PROPERTY), "anyOf", omitempty=True),
    GoField("Type", PROPERTY_TYPE, "type", omitempty=True),
    GoField("Items", ANY, "items", omitempty=True),
    GoField("Description", STRING, "description", omitempty=True),
    GoField("Enum", gv.SLICE_ANY, "enum", omitempty=True),
    GoField("Properties", PROPERTIES_MAP, "properties", omitempty=True),
))

TEMPLATE_PROPERTIES = _map_type("template.templateProperties", TOOL_PROPERTY, _stringer_json_or_empty)
TEMPLATE_ARGS = _map_type("template.templateArgs", ANY, _stringer_json_or_empty)

TOOL_FUNCTION_PARAMETERS = GoType("struct", "template.templateToolFunctionParameters", fields=(
    GoField("Type", STRING, "type"),
    GoField("Defs", ANY, "$defs", omitempty=True),
    GoField("Items", ANY, "items", omitempty=True),
    GoField("Required", gv.slice_of(STRING), "required", omitempty=True),
    GoField("Properties", TEMPLATE_PROPERTIES, "properties"),
))
TOOL_FUNCTION = GoType("struct", "template.templateToolFunction", fields=(
    GoField("Name", STRING, "name"),
    GoField("Description", STRING, "description"),
    GoField("Parameters", TOOL_FUNCTION_PARAMETERS, "parameters"),
))
TOOL = GoType("struct", "template.templateTool", fields=(
    GoField("Type", STRING, "type"),
    GoField("Items", ANY, "items", omitempty=True),
    GoField("Function", TOOL_FUNCTION, "function"),
))


def _tools_string(v: GoValue) -> str:
    return gv.json_marshal(GoValue(gv.slice_of(TOOL), v.v))


TOOLS = gv.slice_of(TOOL, "template.templateTools", stringer=_tools_string)

TOOL_CALL_FUNCTION = GoType("struct", "template.templateToolCallFunction", fields=(
    GoField("Index", INT), GoField("Name", STRING), GoField("Arguments", TEMPLATE_ARGS),
))
TOOL_CALL = GoType("struct", "template.templateToolCall", fields=(
    GoField("ID", STRING), GoField("Function", TOOL_CALL_FUNCTION),
))
IMAGE_DATA = GoType("opaque", "api.ImageData")
MESSAGE = GoType("struct", "template.templateMessage", fields=(
    GoField("Role", STRING), GoField("Content", STRING), GoField("Thinking", STRING),
    GoField("Images", gv.slice_of(IMAGE_DATA)), GoField("ToolCalls", gv.slice_of(TOOL_CALL)),
    GoField("ToolName", STRING), GoField("ToolCallID", STRING),
))
MESSAGE_PTR = gv.ptr_to(MESSAGE)


# ---- from request JSON to Go values ---------------------------------------------------------

def json_any(v: Any) -> Any:
    """A JSON value decoded into Go's interface{}: every number a float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [json_any(e) for e in v]
    if isinstance(v, dict):
        return {str(k): json_any(e) for k, e in v.items()}
    raise GoTemplateError(f"a {type(v).__name__} is not a JSON value")


def _property(d: dict) -> GoValue:
    t = d.get("type")
    types = None if t is None else ([t] if isinstance(t, str) else list(t))
    props = d.get("properties")
    return gv.struct(
        TOOL_PROPERTY,
        AnyOf=GoValue(gv.slice_of(TOOL_PROPERTY), [_property(a) for a in d["anyOf"]] if d.get("anyOf") else None),
        Type=GoValue(PROPERTY_TYPE, types),
        Items=json_any(d.get("items")),
        Description=d.get("description", ""),
        Enum=json_any(d["enum"]) if d.get("enum") is not None else GoValue(gv.SLICE_ANY, None),
        Properties=GoValue(PROPERTIES_MAP, None if props is None else
                           [(k, _property(p)) for k, p in props.items()]),
    )


def _tool(d: dict) -> GoValue:
    fn = d.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    required = params.get("required")
    return gv.struct(TOOL, Type=d.get("type", ""), Items=json_any(d.get("items")), Function=gv.struct(
        TOOL_FUNCTION, Name=fn.get("name", ""), Description=fn.get("description", ""),
        Parameters=gv.struct(
            TOOL_FUNCTION_PARAMETERS, Type=params.get("type", ""), Defs=json_any(params.get("$defs")),
            Items=json_any(params.get("items")),
            Required=GoValue(gv.slice_of(STRING), None if required is None else list(required)),
            Properties=GoValue(TEMPLATE_PROPERTIES, None if props is None else
                               {k: _property(p) for k, p in props.items()}))))


def _tool_call(d: dict) -> GoValue:
    fn = d.get("function") or {}
    args = fn.get("arguments")
    return gv.struct(TOOL_CALL, ID=d.get("id", ""), Function=gv.struct(
        TOOL_CALL_FUNCTION, Index=int(fn.get("index", 0)), Name=fn.get("name", ""),
        Arguments=GoValue(TEMPLATE_ARGS, None if args is None else json_any(args))))


def _message(m: dict) -> GoValue:
    calls = [_tool_call(c) for c in m.get("tool_calls") or []]
    images = [GoValue(IMAGE_DATA, i) for i in m.get("images") or []]
    return GoValue(MESSAGE_PTR, gv.struct(
        MESSAGE, Role=m.get("role", ""), Content=m.get("content", ""), Thinking=m.get("thinking", ""),
        Images=GoValue(gv.slice_of(IMAGE_DATA), images or None),
        ToolCalls=GoValue(gv.slice_of(TOOL_CALL), calls or None),
        ToolName=m.get("tool_name", ""), ToolCallID=m.get("tool_call_id", "")))


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """ollama's collate: every system message's content joined by blank lines, and the messages
    with consecutive same-role ones merged (content joined by a blank line), tool messages apart."""
    system = []
    out: list[dict] = []
    for m in messages:
        role = m.get("role", "")
        if role == "system":
            system.append(m.get("content", ""))
        if out and out[-1].get("role", "") == role and role != "tool":
            out[-1] = {**out[-1], "content": out[-1].get("content", "") + "\n\n" + m.get("content", "")}
        else:
            out.append(dict(m))
    return "\n\n".join(system), out


# ---- the legacy cut ----------------------------------------------------------------------------

class _Cut:
    """ollama's deleteNode with its predicate: keep everything up to the first {{ .Response }}
    field (itself kept), drop every node walked after it."""

    def __init__(self):
        self.cut = False

    def drop(self, n: Any) -> bool:
        if isinstance(n, Field) and "Response" in n.idents:
            self.cut = True
            return False
        return self.cut

    def walk(self, n: Any) -> Any:
        if self.drop(n):
            return None
        if isinstance(n, list):
            return [c for c in (self.walk(c) for c in n) if c is not None]
        if isinstance(n, Branch):  # only the lists are walked, not the condition's pipeline
            if self.drop(n):  # ollama walks the embedded BranchNode: the predicate sees it again
                return None
            n.body = self.walk(n.body)
            if n.else_body is not None:
                if self.drop(n.else_body):
                    # ollama's walk(t.ElseList).(*parse.ListNode) panics on the nil it gets
                    raise GoTemplateError("ollama panics here (interface conversion: parse.Node is nil, not "
                                          "*parse.ListNode): legacy mode cuts at a {{ .Response }} inside a branch "
                                          "that has an {{else}}")
                n.else_body = self.walk(n.else_body)
            return n
        if isinstance(n, Action):
            pipe = self.walk(n.pipe)
            if pipe is None:
                return None
            n.pipe = pipe
            return n
        if isinstance(n, Pipe):
            cmds = []
            for c in n.cmds:
                args = [a for a in (self.walk(a) for a in c.args) if a is not None]
                if not args:
                    return None
                cmds.append(Command(c.pos, c.line, args))
            if not cmds:
                return None
            n.cmds = cmds
            return n
        return n


def cut_at_response(root: list[Node]) -> list[Node]:
    """A copy of root cut after its first {{ .Response }}, as ollama's legacy final turn."""
    return _Cut().walk(copy.deepcopy(root))


# ---- the public class ----------------------------------------------------------------------

class OllamaTemplate:
    """A model's Go TEMPLATE as ollama parses and executes it (template.Parse, Template.Execute)."""

    def __init__(self, source: str):
        """ollama's template.Parse: parse with its functions and missingkey=zero (GoTemplateError
        on a parse error, or on a {{template}} call without a pipeline, which ollama's Vars
        rejects), and append {{ .Response }} when the template refers to neither .Messages nor
        .Response."""
        self.source = source
        self.template = GoTemplate(source, name="")
        self.vars = sorted({n.lower() for n in self.template.identifiers(strict=True)})
        if "messages" not in self.vars and "response" not in self.vars:
            self.template.root.append(Action(len(source), source.count("\n") + 1, Pipe(
                len(source), 0, [], False, [Command(len(source), 0, [Field(len(source), 0, ["Response"])])])))
            self.vars = sorted(set(self.vars) | {"response"})

    @property
    def uses_messages(self) -> bool:
        """The template refers to .Messages: ollama renders it in Messages mode."""
        return "messages" in self.vars

    @property
    def supports_tools(self) -> bool:
        """ollama's tools capability: the template refers to .Tools."""
        return "tools" in self.vars

    @property
    def supports_suffix(self) -> bool:
        """ollama's insert capability: the template refers to .Suffix."""
        return "suffix" in self.vars

    @property
    def supports_thinking(self) -> bool:
        """The template refers to .Think or .Thinking. (ollama's thinking capability also infers
        opening and closing tags from the template text, which refllm does not.)"""
        return "think" in self.vars or "thinking" in self.vars

    def execute(self, messages: list[dict], *, tools: list[dict] | None = None, prompt: str = "",
                suffix: str = "", think: bool | str | None = None, think_level: str | None = None,
                force_legacy: bool = False) -> str:
        """The prompt ollama's Template.Execute writes for Values{Messages, Tools, Prompt, Suffix,
        Think, ThinkLevel, IsThinkSet}. messages are API dicts (role, content, thinking,
        tool_calls, tool_name, tool_call_id, images); tools are API tool dicts. think is None
        (not set), a bool, or a level string ("high"...), which sets Think true and ThinkLevel.
        Raises GoTemplateError where Go's execution fails or ollama would panic."""
        is_set = think is not None
        think_on = bool(think)
        level = think_level if think_level is not None else (think if isinstance(think, str) else "")
        thinking = {"Think": think_on, "ThinkLevel": level, "IsThinkSet": is_set}
        system, collated = collate(messages)
        if prompt and suffix:
            return self.template.execute({"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking})
        if not force_legacy and self.uses_messages:
            return self.template.execute({
                "System": system,
                "Messages": GoValue(gv.slice_of(MESSAGE_PTR), [_message(m) for m in collated] or None),
                "Tools": GoValue(TOOLS, None if tools is None else [_tool(t) for t in tools]),
                "Response": "", **thinking})
        return self._execute_legacy(collated, thinking)

    def _execute_legacy(self, collated: list[dict], thinking: dict) -> str:
        out = []
        system = prompt = response = ""
        for m in collated:
            role, content = m.get("role", ""), m.get("content", "")
            if role == "system":
                if prompt or response:
                    out.append(self.template.execute({"System": system, "Prompt": prompt, "Response": response,
                                                      **thinking}))
                    system = prompt = response = ""
                system = content
            elif role == "user":
                if response:
                    out.append(self.template.execute({"System": system, "Prompt": prompt, "Response": response,
                                                      **thinking}))
                    system = prompt = response = ""
                prompt = content
            elif role == "assistant":
                response = content
        # the last turn: a fresh template holding only the cut tree (no functions, no defines)
        tree = cut_at_response(self.template.root)
        out.append(self.template.execute_tree(tree, {"System": system, "Prompt": prompt, "Response": response,
                                                      **thinking}, bare=True))
        return "".join(out)
