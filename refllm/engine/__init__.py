"""The model side of refllm: tokenizers and chat templates as llama.cpp builds them from GGUF
metadata, the forward pass, the KV cache and sampling.

    from refllm.engine import Tokenizer, ChatTemplate
    tok = Tokenizer.from_model(refllm.open("model.gguf"))
    ids = tok.tokenize("Hello", add_special=True, parse_special=False)   # llama.cpp's ids
"""

from refllm.engine.chat_template import ChatTemplate, ChatTemplateError
from refllm.engine.config import ModelConfig, ModelConfigError
from refllm.engine.sampling import Sampler, SamplingError, SamplingOptions
from refllm.engine.session import ContextFullError, Session
from refllm.engine.tokenizer import StreamDecoder, Tokenizer
from refllm.engine.transformer import Transformer
from refllm.engine.vocab import TokenizerError

__all__ = ["Tokenizer", "StreamDecoder", "TokenizerError", "ChatTemplate", "ChatTemplateError",
           "ModelConfig", "ModelConfigError", "Transformer", "Session", "ContextFullError",
           "Sampler", "SamplingOptions", "SamplingError"]
