// Command render executes golden/go_templates cases with Go's own text/template and writes
// what Go prints (or the error it returns) to a JSON golden file.
//
//	go run render.go cases.json ollama/ expected.json
//
// A "raw" case parses its template as ollama does (template.New("").Option("missingkey=zero")
// .Funcs(ollama's funcs)) and executes it on its JSON data (integers as int, other numbers as
// float64). An "ollama" case goes through this file's mirror of ollama's template package
// (Parse, Vars, Execute with its three modes, collate, the legacy cut at {{ .Response }}) on
// structs mirroring ollama's template* types. Written for refllm from ollama's documented
// behaviour; standard library only.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ---- ollama's types as its templates see them ----

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

func (pt PropertyType) String() string {
	if len(pt) == 0 {
		return ""
	}
	if len(pt) == 1 {
		return pt[0]
	}
	return fmt.Sprintf("%v", []string(pt))
}

// PropertiesMap keeps JSON object keys in their order.
type PropertiesMap struct {
	keys []string
	m    map[string]ToolProperty
}

func (p *PropertiesMap) UnmarshalJSON(data []byte) error {
	p.m = map[string]ToolProperty{}
	keys, err := objectKeys(data)
	if err != nil {
		return err
	}
	p.keys = keys
	return json.Unmarshal(data, &p.m)
}

func (p PropertiesMap) MarshalJSON() ([]byte, error) {
	if p.m == nil {
		return []byte("null"), nil
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range p.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(p.m[k])
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func objectKeys(data []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var keys []string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, t.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

type ToolProperty struct {
	AnyOf       []ToolProperty `json:"anyOf,omitempty"`
	Type        PropertyType   `json:"type,omitempty"`
	Items       any            `json:"items,omitempty"`
	Description string         `json:"description,omitempty"`
	Enum        []any          `json:"enum,omitempty"`
	Properties  *PropertiesMap `json:"properties,omitempty"`
}

var tsTypes = map[string]string{"string": "string", "number": "number", "integer": "number",
	"boolean": "boolean", "array": "any[]", "object": "Record<string, any>", "null": "null"}

func (tp ToolProperty) ToTypeScriptType() string {
	if len(tp.AnyOf) > 0 {
		var types []string
		for _, a := range tp.AnyOf {
			types = append(types, a.ToTypeScriptType())
		}
		return strings.Join(types, " | ")
	}
	if len(tp.Type) == 0 {
		return "any"
	}
	var types []string
	for _, t := range tp.Type {
		ts, ok := tsTypes[t]
		if !ok {
			ts = "any"
		}
		types = append(types, ts)
	}
	return strings.Join(types, " | ")
}

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(t))
	return string(b)
}

type templateProperties map[string]ToolProperty

func (t templateProperties) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]ToolProperty(t))
	return string(b)
}

type templateToolFunctionParameters struct {
	Type       string             `json:"type"`
	Defs       any                `json:"$defs,omitempty"`
	Items      any                `json:"items,omitempty"`
	Required   []string           `json:"required,omitempty"`
	Properties templateProperties `json:"properties"`
}

type templateToolFunction struct {
	Name        string                         `json:"name"`
	Description string                         `json:"description"`
	Parameters  templateToolFunctionParameters `json:"parameters"`
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

type templateTools []templateTool

func (t templateTools) String() string {
	b, _ := json.Marshal([]templateTool(t))
	return string(b)
}

type templateToolCallFunction struct {
	Index     int
	Name      string
	Arguments templateArgs
}

type templateToolCall struct {
	ID       string
	Function templateToolCallFunction
}

type ImageData []byte

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     []ImageData
	ToolCalls  []templateToolCall
	ToolName   string
	ToolCallID string
}

// request-side shapes, decoded from the case JSON
type toolIn struct {
	Type     string `json:"type"`
	Items    any    `json:"items"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Parameters  struct {
			Type       string                  `json:"type"`
			Defs       any                     `json:"$defs"`
			Items      any                     `json:"items"`
			Required   []string                `json:"required"`
			Properties map[string]ToolProperty `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type messageIn struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	ToolCalls []struct {
		ID       string `json:"id"`
		Function struct {
			Index     int            `json:"index"`
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
	ToolName   string `json:"tool_name"`
	ToolCallID string `json:"tool_call_id"`
}

// ---- ollama's template functions and Parse ----

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string {
		if p, ok := v.(ToolProperty); ok {
			return p.ToTypeScriptType()
		}
		if p, ok := v.(*ToolProperty); ok && p != nil {
			return p.ToTypeScriptType()
		}
		return "any"
	},
}

type ollamaTemplate struct {
	*template.Template
}

func responseAction() *parse.ActionNode {
	return &parse.ActionNode{NodeType: parse.NodeAction, Pipe: &parse.PipeNode{NodeType: parse.NodePipe,
		Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand,
			Args: []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}}}}}}
}

func ollamaParse(s string) (*ollamaTemplate, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(s)
	if err != nil {
		return nil, err
	}
	t := &ollamaTemplate{tmpl}
	vars, err := t.vars()
	if err != nil {
		return nil, err
	}
	if !contains(vars, "messages") && !contains(vars, "response") {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, responseAction())
	}
	return t, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (t *ollamaTemplate) vars() ([]string, error) {
	set := map[string]bool{}
	for _, tt := range t.Templates() {
		for _, n := range tt.Root.Nodes {
			ids, err := identifiers(n)
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				set[strings.ToLower(id)] = true
			}
		}
	}
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// identifiers: the field and variable names under n, walking lists, actions, template calls,
// branches (pipeline then lists) and pipelines' arguments.
func identifiers(n parse.Node) ([]string, error) {
	var out []string
	var err error
	add := func(m parse.Node) {
		if err != nil {
			return
		}
		var ids []string
		ids, err = identifiers(m)
		out = append(out, ids...)
	}
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			add(c)
		}
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil, fmt.Errorf("undefined template specified")
		}
		add(n.Pipe)
	case *parse.ActionNode:
		add(n.Pipe)
	case *parse.IfNode:
		add(&n.BranchNode)
	case *parse.RangeNode:
		add(&n.BranchNode)
	case *parse.WithNode:
		add(&n.BranchNode)
	case *parse.BranchNode:
		add(n.Pipe)
		add(n.List)
		if n.ElseList != nil {
			add(n.ElseList)
		}
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				add(a)
			}
		}
	case *parse.FieldNode:
		out = append(out, n.Ident...)
	case *parse.VariableNode:
		out = append(out, n.Ident...)
	}
	return out, err
}

// cutAfterResponse keeps nodes up to the first .Response field and drops every node walked
// after it; like ollama it panics when that leaves a branch's else list nil.
func cutAfterResponse(root parse.Node) parse.Node {
	cut := false
	drop := func(n parse.Node) bool {
		if f, ok := n.(*parse.FieldNode); ok && contains(f.Ident, "Response") {
			cut = true
			return false
		}
		return cut
	}
	var walk func(parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if drop(n) {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				if m := walk(c); m != nil {
					nodes = append(nodes, m)
				}
			}
			t.Nodes = nodes
			return t
		case *parse.IfNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.WithNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.RangeNode:
			t.BranchNode = *(walk(&t.BranchNode).(*parse.BranchNode))
		case *parse.BranchNode:
			t.List = walk(t.List).(*parse.ListNode)
			if t.ElseList != nil {
				t.ElseList = walk(t.ElseList).(*parse.ListNode)
			}
		case *parse.ActionNode:
			m := walk(t.Pipe)
			if m == nil {
				return nil
			}
			t.Pipe = m.(*parse.PipeNode)
		case *parse.PipeNode:
			var cmds []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if m := walk(a); m != nil {
						args = append(args, m)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				cmds = append(cmds, c)
			}
			if len(cmds) == 0 {
				return nil
			}
			t.Cmds = cmds
		}
		return n
	}
	return walk(root)
}

type values struct {
	Messages    []messageIn
	Tools       []toolIn
	ToolsSet    bool
	Prompt      string
	Suffix      string
	Think       bool
	ThinkLevel  string
	IsThinkSet  bool
	ForceLegacy bool
}

func collate(msgs []messageIn) (string, []*messageIn) {
	var system []string
	var out []*messageIn
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[len(out)-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

func convertMessages(msgs []*messageIn) []*templateMessage {
	if msgs == nil {
		return nil
	}
	out := make([]*templateMessage, len(msgs))
	for i, m := range msgs {
		var calls []templateToolCall
		for _, c := range m.ToolCalls {
			calls = append(calls, templateToolCall{ID: c.ID, Function: templateToolCallFunction{
				Index: c.Function.Index, Name: c.Function.Name, Arguments: templateArgs(c.Function.Arguments)}})
		}
		out[i] = &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, ToolCalls: calls,
			ToolName: m.ToolName, ToolCallID: m.ToolCallID}
	}
	return out
}

func convertTools(tools []toolIn, set bool) templateTools {
	if !set {
		return nil
	}
	out := make(templateTools, len(tools))
	for i, t := range tools {
		p := t.Function.Parameters
		out[i] = templateTool{Type: t.Type, Items: t.Items, Function: templateToolFunction{
			Name: t.Function.Name, Description: t.Function.Description,
			Parameters: templateToolFunctionParameters{Type: p.Type, Defs: p.Defs, Items: p.Items,
				Required: p.Required, Properties: templateProperties(p.Properties)}}}
	}
	return out
}

func (t *ollamaTemplate) execute(w *bytes.Buffer, v values) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	system, messages := collate(v.Messages)
	vars, err := t.vars()
	if err != nil {
		return err
	}
	if v.Prompt != "" && v.Suffix != "" {
		return t.Template.Execute(w, map[string]any{"Prompt": v.Prompt, "Suffix": v.Suffix, "Response": "",
			"Think": v.Think, "ThinkLevel": v.ThinkLevel, "IsThinkSet": v.IsThinkSet})
	} else if !v.ForceLegacy && contains(vars, "messages") {
		return t.Template.Execute(w, map[string]any{"System": system, "Messages": convertMessages(messages),
			"Tools": convertTools(v.Tools, v.ToolsSet), "Response": "",
			"Think": v.Think, "ThinkLevel": v.ThinkLevel, "IsThinkSet": v.IsThinkSet})
	}
	system = ""
	var b bytes.Buffer
	var prompt, response string
	turn := func() error {
		if err := t.Template.Execute(&b, map[string]any{"System": system, "Prompt": prompt,
			"Response": response, "Think": v.Think, "ThinkLevel": v.ThinkLevel, "IsThinkSet": v.IsThinkSet}); err != nil {
			return err
		}
		system, prompt, response = "", "", ""
		return nil
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := turn(); err != nil {
					return err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := turn(); err != nil {
					return err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	nodes := cutAfterResponse(t.Template.Root.Copy())
	tree := parse.Tree{Root: nodes.(*parse.ListNode)}
	if err := template.Must(template.New("").AddParseTree("", &tree)).Execute(&b, map[string]any{
		"System": system, "Prompt": prompt, "Response": response,
		"Think": v.Think, "ThinkLevel": v.ThinkLevel, "IsThinkSet": v.IsThinkSet}); err != nil {
		return err
	}
	_, err = w.Write(b.Bytes())
	return err
}

// ---- cases ----

type ollamaCase struct {
	Messages    []messageIn     `json:"messages"`
	Tools       json.RawMessage `json:"tools"`
	Prompt      string          `json:"prompt"`
	Suffix      string          `json:"suffix"`
	Think       any             `json:"think"`
	ThinkLevel  *string         `json:"think_level"`
	ForceLegacy bool            `json:"force_legacy"`
}

type caseIn struct {
	Name         string          `json:"name"`
	Template     string          `json:"template"`
	TemplateFile string          `json:"template_file"`
	Data         json.RawMessage `json:"data"`
	Ollama       *ollamaCase     `json:"ollama"`
}

type result struct {
	Name   string  `json:"name"`
	Output *string `json:"output,omitempty"`
	Error  *string `json:"error,omitempty"`
}

// decodeData decodes JSON into interface{} values, integers as int and other numbers as float64.
func decodeData(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return numbers(v), nil
}

func numbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		if !strings.ContainsAny(string(v), ".eE") {
			if i, err := v.Int64(); err == nil {
				return int(i)
			}
		}
		f, _ := v.Float64()
		return f
	case []any:
		for i := range v {
			v[i] = numbers(v[i])
		}
	case map[string]any:
		for k := range v {
			v[k] = numbers(v[k])
		}
	}
	return v
}

func run(c caseIn, dir string) (string, error) {
	src := c.Template
	if c.TemplateFile != "" {
		b, err := os.ReadFile(filepath.Join(dir, c.TemplateFile))
		if err != nil {
			return "", err
		}
		src = strings.ReplaceAll(string(b), "\r\n", "\n")
	}
	var b bytes.Buffer
	if c.Ollama == nil {
		tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(src)
		if err != nil {
			return "", err
		}
		data, err := decodeData(c.Data)
		if err != nil {
			return "", err
		}
		err = tmpl.Execute(&b, data)
		return b.String(), err
	}
	t, err := ollamaParse(src)
	if err != nil {
		return "", err
	}
	o := c.Ollama
	v := values{Messages: o.Messages, Prompt: o.Prompt, Suffix: o.Suffix, ForceLegacy: o.ForceLegacy}
	if len(o.Tools) > 0 && string(o.Tools) != "null" {
		v.ToolsSet = true
		if err := json.Unmarshal(o.Tools, &v.Tools); err != nil {
			return "", err
		}
	}
	switch think := o.Think.(type) {
	case bool:
		v.Think, v.IsThinkSet = think, true
	case string:
		v.Think, v.IsThinkSet, v.ThinkLevel = true, true, think
	}
	if o.ThinkLevel != nil {
		v.ThinkLevel = *o.ThinkLevel
	}
	err = t.execute(&b, v)
	return b.String(), err
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go run render.go CASES.json TEMPLATE_DIR OUT.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var cases []caseIn
	if err := json.Unmarshal(raw, &cases); err != nil {
		panic(err)
	}
	var results []result
	for _, c := range cases {
		out, err := run(c, os.Args[2])
		r := result{Name: c.Name}
		if err != nil {
			msg := err.Error()
			r.Error = &msg
		} else {
			r.Output = &out
		}
		results = append(results, r)
	}
	doc := map[string]any{"go_version": runtime.Version(), "cases": results}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(doc); err != nil {
		panic(err)
	}
	if err := os.WriteFile(os.Args[3], buf.Bytes(), 0o644); err != nil {
		panic(err)
	}
}
