"""Running a model: its configuration, weights, numerics, KV cache, forward pass, prompt building,
session and sampling.

    from refllm.engine import Session, SamplingOptions, Transformer, prompt_tokens
    session = Session(Transformer(refllm.open("model.gguf")), n_ctx=2048)
    logits = session.evaluate(ids, all_logits=True)

The names below come from their modules on first use, so that importing one light module
(`refllm.engine.sampling`, as the CLI does) does not load the forward pass and its kernels.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refllm.engine.config import ModelConfig, ModelConfigError
    from refllm.engine.prompt import PromptError, prompt_tokens
    from refllm.engine.sampling import Sampler, SamplingError, SamplingOptions
    from refllm.engine.session import ContextFullError, Session
    from refllm.engine.transformer import Transformer

__all__ = ["ModelConfig", "ModelConfigError", "Transformer", "Session", "ContextFullError",
           "Sampler", "SamplingOptions", "SamplingError", "prompt_tokens", "PromptError"]


def __getattr__(name: str):
    """The public names of __all__, each from its module."""
    if name in ("ModelConfig", "ModelConfigError"):
        from refllm.engine import config as module
    elif name in ("prompt_tokens", "PromptError"):
        from refllm.engine import prompt as module
    elif name in ("Sampler", "SamplingError", "SamplingOptions"):
        from refllm.engine import sampling as module
    elif name in ("ContextFullError", "Session"):
        from refllm.engine import session as module
    elif name == "Transformer":
        from refllm.engine import transformer as module
    else:
        raise AttributeError(f"module 'refllm.engine' has no attribute {name!r}")
    return getattr(module, name)
