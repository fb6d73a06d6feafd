"""Legacy GGML containers (ggml, ggmf, ggjt). Placeholder until the decoder lands."""

from __future__ import annotations

from refllm.formats.errors import FormatError

LEGACY_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}


def read_legacy(seeker, path=None):
    raise FormatError("legacy containers are not decoded yet", offset=0, path=path)
