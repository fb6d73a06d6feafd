"""Make golden/go_templates/expected.json: Go templates rendered by Go's own text/template.

Needs Go (made with Debian 12's golang-go, go1.19.8 linux/amd64: `apt-get install golang-go`);
refllm and its tests never need Go. Run from anywhere:

    python golden/go_templates/make_golden.py

It runs `go run render.go cases.json ollama expected.json` in this folder (render.go is standard
library only). Each case of cases.json is either "raw" (a template and its JSON data, executed as
ollama parses templates: template.New("").Option("missingkey=zero").Funcs(ollama's funcs)) or
"ollama" (a template, inline or one of ollama/*.gotmpl, and a request: messages, tools, prompt,
suffix, think, think_level, force_legacy), which goes through render.go's mirror of ollama's
template.Parse and Template.Execute. expected.json records Go's output or its error text, and
the Go version. ollama/PROVENANCE.md names the ollama commit of each template file.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:  # a throwaway module, so `go run` needs no go.mod here
        (Path(tmp) / "go.mod").write_text("module render\n\ngo 1.19\n")
        (Path(tmp) / "render.go").write_bytes((HERE / "render.go").read_bytes())
        subprocess.run(["go", "run", "render.go", str(HERE / "cases.json"), str(HERE / "ollama"),
                        str(HERE / "expected.json")], cwd=tmp, check=True)
    print(subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout.strip())


if __name__ == "__main__":
    main()
