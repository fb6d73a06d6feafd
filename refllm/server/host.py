"""Where the server listens, and running it.

    host, port = parse_host(os.environ.get("REFLLM_HOST"))    # like OLLAMA_HOST
    serve(registry, config, host, port)                        # blocks until Ctrl-C

REFLLM_HOST takes what OLLAMA_HOST takes: "HOST", "HOST:PORT", ":PORT", "[IPV6]:PORT", with or
without an http:// scheme. The default is 127.0.0.1:11434, ollama's.
"""

from __future__ import annotations

import os
import re

from refllm.errors import RefllmError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11434


def parse_host(value: str | None) -> tuple[str, int]:
    """(host, port) of a REFLLM_HOST-style value; RefllmError naming what was expected."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    text = re.sub(r"^https?://", "", text).rstrip("/")
    match = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>\d+))?|(?P<host>[^:/\s]*)(?::(?P<port>\d+))?", text)
    if match is None:
        raise RefllmError(f"invalid host {value!r}: expected HOST, HOST:PORT or :PORT (like OLLAMA_HOST)")
    host = match["v6"] or match["host"] or DEFAULT_HOST
    port = int(match["p6"] or match["port"] or DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise RefllmError(f"invalid port {port} in {value!r}: expected 0..65535")
    return host, port


def env_int(name: str, default: int, minimum: int) -> int:
    """An integer REFLLM_* variable; RefllmError naming it when it is not one."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RefllmError(f"{name}={text!r}: expected an integer") from None
    if value < minimum:
        raise RefllmError(f"{name}={value}: expected at least {minimum}")
    return value


def serve(app, host: str, port: int, log_level: str = "info") -> None:
    """Run the app on uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
