"""Text <-> token ids as llama.cpp builds its tokenizers from GGUF metadata, and chat templates.

    from refllm.tokenizer import Tokenizer, ChatTemplate
    tok = Tokenizer.from_model(refllm.open("model.gguf"))
    ids = tok.tokenize("Hello", add_special=True, parse_special=False)   # llama.cpp's ids

vocab.py (GGUF keys -> vocabulary), special.py (special-token partition), pretokenizers.py (the
regex table), spm.py, bpe.py, wpm.py, ugm.py (one algorithm each), tokenizer.py (the API),
chat_template.py (Jinja2 in a sandbox). Nothing here depends on the model's weights.
"""

from refllm.tokenizer.chat_template import ChatTemplate, ChatTemplateError
from refllm.tokenizer.tokenizer import StreamDecoder, Tokenizer
from refllm.tokenizer.vocab import TokenizerError

__all__ = ["Tokenizer", "StreamDecoder", "TokenizerError", "ChatTemplate", "ChatTemplateError"]
