"""Running a model: its configuration, weights, numerics, KV cache, forward pass, session and
sampling.

    from refllm.engine import Session, SamplingOptions, Transformer
    session = Session(Transformer(refllm.open("model.gguf")), n_ctx=2048)
    logits = session.evaluate(ids, all_logits=True)
"""

from refllm.engine.config import ModelConfig, ModelConfigError
from refllm.engine.prompt import prompt_tokens
from refllm.engine.sampling import Sampler, SamplingError, SamplingOptions
from refllm.engine.session import ContextFullError, Session
from refllm.engine.transformer import Transformer

__all__ = ["ModelConfig", "ModelConfigError", "Transformer", "Session", "ContextFullError",
           "Sampler", "SamplingOptions", "SamplingError", "prompt_tokens"]
