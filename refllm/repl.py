"""`refllm chat` (also `refllm run`): the `ollama run` experience in a terminal.

    >>> Why is the sky blue?          a turn: the reply streams as it comes
    >>> \"\"\"                           a message of several lines, ended by a line ending in \"\"\"
    >>> /set parameter temperature 0  ollama's options, typed as ollama types them
    >>> /set system Be brief.         a system prompt for the next turns
    >>> /set verbose                  ollama's timing statistics after each reply (/set quiet: none)
    >>> /show info                    the model; also license, modelfile, parameters, system, template
    >>> /clear                        forget the conversation (the cache keeps what it can reuse)
    >>> /bye                          leave (Ctrl-D too)

Ctrl-C while a reply streams stops it before the next token, and the session goes on; at the
prompt it says how to leave. Line editing and history come from Python's readline. With stdin
not a terminal (a pipe), stdin is one prompt: its reply is printed and the command ends, as
`echo "..." | ollama run MODEL` does.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import TextIO

from refllm.engine.conversation import Conversation
from refllm.engine.sampling import SamplingError
from refllm.errors import RefllmError

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""
SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
"""
SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
MULTILINE = '"""'


class ChatTerminal:
    """The loop of `refllm chat`: read a line, run a command or a turn, repeat.

    `show` answers /show's topics ("info", "license", ...) with text; `set_option(name, text)`
    turns `/set parameter NAME VALUE` into SamplingOptions changes (RefllmError when it can't).
    """

    def __init__(self, chat: Conversation, show: Callable[[str], str],
                 set_option: Callable[[Conversation, str, str], None], verbose: bool = False,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.chat, self.show, self.set_option = chat, show, set_option
        self.verbose = verbose
        self.out, self.err = out, err

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Read and answer lines until /bye or end of input."""
        try:
            import readline  # noqa: F401  (input() gains line editing and history)
        except ImportError:
            pass
        while True:
            try:
                text = self._read_message()
            except EOFError:
                self.out.write("\n")
                return
            except KeyboardInterrupt:
                self.out.write("\nUse Ctrl + d or /bye to exit.\n")
                continue
            if text is None:
                return
            if text.strip():
                self.turn(text)

    def _read_message(self) -> str | None:
        """One message or command; None for /bye. A line starting with \"\"\" opens a message of
        several lines, closed by a line ending with \"\"\"."""
        while True:
            line = input(">>> ")
            if line.startswith(MULTILINE):
                lines, line = [], line[len(MULTILINE):]
                while not line.rstrip().endswith(MULTILINE):
                    lines.append(line)
                    line = input("... ")
                lines.append(line.rstrip()[:-len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            if not line.startswith("/"):
                return line
            if self.command(line.strip()) is False:
                return None

    def command(self, line: str) -> bool:
        """Run a /command; False for /bye."""
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "/bye":
            return False
        if word in ("/?", "/help"):
            self.out.write(HELP)
        elif word == "/clear":
            self.chat.clear()
            self.out.write("Cleared session context\n")
        elif word == "/set":
            self._set(rest)
        elif word == "/show":
            topic = rest.split()[0] if rest else ""
            if topic not in ("info", "license", "modelfile", "parameters", "system", "template"):
                self.out.write(SHOW_HELP)
            else:
                self.out.write(self.show(topic).rstrip("\n") + "\n")
        else:
            self.out.write(f"Unknown command '{word}'. Type /? for help\n")
        return True

    def _set(self, rest: str) -> None:
        what, _, value = rest.partition(" ")
        if what == "parameter":
            name, _, text = value.strip().partition(" ")
            if not name or not text.strip():
                self.out.write("Usage: /set parameter <name> <value>\n")
                return
            try:
                self.set_option(self.chat, name, text.strip())
            except (RefllmError, SamplingError) as e:
                self.out.write(f"Couldn't set parameter: {e}\n")
                return
            self.out.write(f"Set parameter '{name}' to '{text.strip()}'\n")
        elif what == "system":
            self.chat.system = value.strip().strip('"') or None
            self.out.write("Set system message.\n")
        elif what == "verbose":
            self.verbose = True
            self.out.write("Set 'verbose' mode.\n")
        elif what == "quiet":
            self.verbose = False
            self.out.write("Set 'quiet' mode.\n")
        else:
            self.out.write(SET_HELP)

    # -- a turn -----------------------------------------------------------------------------------

    def turn(self, text: str) -> None:
        """Stream the reply to one message; Ctrl-C stops it at the next token."""
        with _interruptible() as interrupted:
            wrote = False
            for piece in self.chat.reply(text, should_stop=interrupted):
                self.out.write(piece)
                self.out.flush()
                wrote = True
        self.out.write("\n\n" if wrote else "\n")
        if self.verbose:
            self.err.write(self.chat.session.stats.report() + "\n")
        self.out.flush()

    def one_shot(self, text: str) -> None:
        """Answer one prompt (piped stdin, or a prompt given on the command line) and return."""
        for piece in self.chat.reply(text):
            self.out.write(piece)
            self.out.flush()
        self.out.write("\n")
        if self.verbose:
            self.err.write(self.chat.session.stats.report() + "\n")


@contextmanager
def _interruptible():
    """While a reply streams, Ctrl-C sets a flag (read before each token) instead of raising
    KeyboardInterrupt in the middle of a forward pass, which would leave the cache half written."""
    hit = [False]

    def on_interrupt(signum, frame):
        hit[0] = True
    try:
        previous = signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:                 # not the main thread: no signals to catch
        yield lambda: False
        return
    try:
        yield lambda: hit[0]
    finally:
        signal.signal(signal.SIGINT, previous)
