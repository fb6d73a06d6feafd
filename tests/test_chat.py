"""`refllm chat` driven through a pseudo-terminal (pexpect), as a person types at it: turns that
reuse the cache, commands, a message of several lines, Ctrl-C during a reply and at the prompt,
/bye; and piped stdin as one prompt. Every expect is bounded by TIMEOUT."""

from __future__ import annotations

import subprocess
import sys

import pytest

pexpect = pytest.importorskip("pexpect", reason="the terminal tests need pexpect (the test extra)")

TIMEOUT = 120
PROMPT = ">>> "


@pytest.fixture
def terminal(smollm2_path):
    """`refllm chat SMOLLM2 --verbose` in a pseudo-terminal, greedy and short."""
    child = pexpect.spawn(sys.executable, ["-m", "refllm.cli", "chat", str(smollm2_path), "--verbose"],
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200))
    child.expect_exact(PROMPT)
    for command, answer in (("/set parameter temperature 0", "Set parameter 'temperature' to '0'"),
                            ("/set parameter num_predict 12", "Set parameter 'num_predict' to '12'")):
        child.sendline(command)
        child.expect_exact(answer)
        child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def turn(child, text: str) -> tuple[str, int, int]:
    """Send a message; the reply's text, and the prompt eval count and cached tokens printed."""
    child.sendline(text)
    child.expect(r"prompt eval count:\s+(\d+) token\(s\)")
    reply = child.before
    count = int(child.match.group(1))
    child.expect(r"cached tokens:\s+(\d+) token\(s\)")
    cached = int(child.match.group(1))
    child.expect_exact(PROMPT)
    return reply, count, cached


def test_two_turns_the_second_from_the_cache_then_bye(terminal):
    first, count, cached = turn(terminal, "Name a colour.")
    assert cached == 0 and first.strip()
    second, count2, cached2 = turn(terminal, "And another one?")
    # the whole first exchange came from the cache: only the new turn was evaluated
    assert cached2 >= count and count2 > count and count2 - cached2 < 20
    terminal.sendline("/bye")
    terminal.expect(pexpect.EOF)
    terminal.wait()
    assert terminal.exitstatus == 0


def test_ctrl_c_stops_a_reply_and_the_session_goes_on(terminal):
    terminal.sendline("/set parameter num_predict 2000")
    terminal.expect_exact(PROMPT)
    terminal.sendline("Write a very long story about a dragon.")
    terminal.expect(r"\w+ \w+ \w+")              # the reply is streaming
    terminal.sendintr()
    terminal.expect(r"eval count:\s+(\d+) token\(s\)")
    assert int(terminal.match.group(1)) < 2000
    terminal.expect_exact(PROMPT)
    terminal.sendline("/set parameter num_predict 5")
    terminal.expect_exact(PROMPT)
    _, _, cached = turn(terminal, "Hi")                         # still answering
    assert cached > 0
    terminal.sendintr()                                         # at the prompt: how to leave
    terminal.expect_exact("Use Ctrl + d or /bye to exit.")
    terminal.sendeof()
    terminal.expect(pexpect.EOF)


def test_commands_and_a_message_of_several_lines(terminal):
    terminal.sendline("/show info")
    terminal.expect(r"architecture\s+llama")
    terminal.expect(r"quantization\s+Q4_1")
    terminal.expect_exact(PROMPT)
    terminal.sendline("/set system You answer in French.")
    terminal.expect_exact("Set system message.")
    terminal.sendline("/show system")
    terminal.expect_exact("You answer in French.")
    terminal.sendline("/show template")
    terminal.expect_exact("<|im_start|>")
    terminal.expect_exact(PROMPT)
    terminal.sendline('"""Line one')
    terminal.expect_exact("... ")
    terminal.sendline('line two"""')
    terminal.expect(r"prompt eval count:\s+(\d+)")
    terminal.expect_exact(PROMPT)
    terminal.sendline("/clear")
    terminal.expect_exact("Cleared session context")
    terminal.sendline("/set parameter temperature hot")
    terminal.expect_exact("Couldn't set parameter")
    terminal.sendline("/set parameter nothing 1")
    terminal.expect_exact("unknown parameter 'nothing'")
    terminal.sendline("/frobnicate")
    terminal.expect_exact("Unknown command '/frobnicate'. Type /? for help")
    terminal.sendline("/?")
    terminal.expect_exact("/bye")
    terminal.sendline("/bye")
    terminal.expect(pexpect.EOF)


def test_piped_stdin_is_one_prompt(smollm2_path):
    result = subprocess.run([sys.executable, "-m", "refllm.cli", "run", str(smollm2_path)],
                            input="What is two plus two?\n", capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip()
    assert ">>>" not in result.stdout


def test_a_prompt_argument_is_one_prompt(smollm2_path):
    result = subprocess.run([sys.executable, "-m", "refllm.cli", "chat", str(smollm2_path), "Why is the sky blue?"],
                            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() and ">>>" not in result.stdout
