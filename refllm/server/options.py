"""ollama's request `options`: which keys exist, their JSON types, and what refllm does with each.

    sampling, model = parse_options(request_options, defaults=model_params)

One row per option of ollama's `api.Options` (shared/research/ollama.md §3.2). The type check is
ollama's `Options.FromMap`: an integer option takes any JSON number (truncated), a float option
any number, a boolean only true/false, a list only strings; anything else is an
`option "x" must be of type ...` error (HTTP 400). A key ollama does not know is logged and
ignored, as ollama does; null leaves the default.

Where each option goes:
    sampling   SamplingOptions (the sampler chain and the generation loop)
    model      ModelSettings: the context, batch and threads a loaded model was made with;
               a request that asks for other ones reloads or resizes it
    ignored    ollama has it, refllm has nothing to do with it (GPUs, mmap, speculative
               drafts, typical_p); logged when a request sets it
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from refllm.engine.sampling import SamplingError, SamplingOptions
from refllm.errors import RefllmError
from refllm.formats.modelfile import PARAMETER_TYPES

log = logging.getLogger("refllm.server")


class OptionError(RefllmError, ValueError):
    """An option of the wrong JSON type or an impossible value; the message is ollama's shape."""


# Where each of ollama's options (refllm.formats.modelfile.PARAMETER_TYPES: names and Go types) goes.
WHERE: dict[str, str] = {
    "num_ctx": "model", "num_batch": "model", "num_thread": "model",
    "num_gpu": "ignored", "main_gpu": "ignored", "use_mmap": "ignored", "draft_num_predict": "ignored",
    "typical_p": "ignored",
    **dict.fromkeys(("num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "repeat_last_n", "temperature",
                     "repeat_penalty", "presence_penalty", "frequency_penalty", "stop"), "sampling"),
}
# Go type -> the JSON type FromMap names in its errors
JSON_TYPES = {"int": "integer", "float32": "float32", "bool": "boolean", "[]string": "array"}
# name: (JSON type, where it goes)
OPTIONS: dict[str, tuple[str, str]] = {name: (JSON_TYPES[go], WHERE[name]) for name, go in PARAMETER_TYPES.items()}


@dataclass(frozen=True)
class ModelSettings:
    """What a loaded model is made with. num_ctx None: the server's default (at most the
    model's trained context); num_thread 0: all cores."""
    num_ctx: int | None = None
    num_batch: int = 512
    num_thread: int = 0


def _typed(name: str, kind: str, value: Any) -> Any:
    """value as option `name` of JSON type `kind`, or OptionError with ollama's message."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and not math.isfinite(value):          # 1e400 reads as inf; Go's decoder refuses it
        raise OptionError(f'option "{name}" must be a finite number, not {value}')
    if kind == "integer" and is_number:
        return int(value)               # Go's int64(float64): truncated toward zero
    if kind == "float32" and is_number:
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise OptionError(f'option "{name}" must be of type array')
        if not all(isinstance(item, str) for item in value):
            raise OptionError(f'option "{name}" must be of an array of strings')
        return tuple(value)
    raise OptionError(f'option "{name}" must be of type {kind}')


def parse_options(given: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None,
                  base: SamplingOptions | None = None) -> tuple[SamplingOptions, ModelSettings]:
    """The sampling options and model settings of a request's `options`, over `defaults` (a
    store model's params layer, already typed), over `base`.

    Raises OptionError for a value of the wrong type (ollama's message) or an impossible one
    (SamplingOptions' message, naming the option)."""
    sampling: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for source in (defaults or {}, given or {}):
        for name, value in source.items():
            if name not in OPTIONS:
                log.warning("invalid option provided: %s", name)
                continue
            if value is None:
                continue
            kind, target = OPTIONS[name]
            value = _typed(name, kind, value)
            if target == "sampling":
                sampling[name] = value
            elif target == "model":
                model[name] = value
            elif source is given:
                log.info("option %s is not used by refllm (it runs on the CPU, one model file at a time)", name)
    for name in ("num_ctx", "num_batch"):
        if name in model and model[name] < 1:
            raise OptionError(f"{name} must be at least 1, got {model[name]}")
    if model.get("num_thread", 0) < 0:
        raise OptionError(f"num_thread must be 0 (all cores) or more, got {model['num_thread']}")
    try:
        options = replace(base or SamplingOptions(), **sampling)
    except SamplingError as e:
        raise OptionError(str(e)) from None
    known = {f.name for f in fields(ModelSettings)}
    return options, ModelSettings(**{k: v for k, v in model.items() if k in known})
