"""refllm: a reference implementation of GGUF/llama inference in Python.

    import refllm
    model = refllm.open("model.gguf")      # header decoded and checked, tensor data mmapped
    model.metadata["general.architecture"]
    model.tensors[0].name, model.tensor_bytes("token_embd.weight")
"""

from refllm.errors import RefllmError
from refllm.formats import FormatError, ModelFile, TensorInfo
from refllm.formats import open_model as open  # noqa: A001  (refllm.open is the public name)

__version__ = "0.1.0"
__all__ = ["open", "FormatError", "ModelFile", "TensorInfo", "RefllmError", "__version__"]
