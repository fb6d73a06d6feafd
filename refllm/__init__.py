"""refllm: a reference implementation of GGUF/llama inference in Python.

    import refllm
    model = refllm.open("model.gguf")      # header decoded and checked, tensor data mmapped
    model.metadata["general.architecture"]
    model.tensors[0].name, model.tensor_bytes("token_embd.weight")
    refllm.dequantize(model.tensor_bytes(t.name), t.ggml_type, t.shape)   # exact float32 values
"""

from typing import TYPE_CHECKING

from refllm import numba_setup

numba_setup.configure()     # before anything loads Numba: see refllm/numba_setup.py

from refllm.errors import RefllmError  # noqa: E402
from refllm.formats import FormatError, ModelFile, TensorInfo  # noqa: E402
from refllm.formats import open_model as open  # noqa: A001, E402  (refllm.open is the public name)

if TYPE_CHECKING:
    from refllm.kernels import DequantError, QuantizeError, dequantize, quantize

__version__ = "0.1.0"
__all__ = ["open", "dequantize", "DequantError", "quantize", "QuantizeError", "FormatError", "ModelFile",
           "TensorInfo", "RefllmError", "__version__"]


def __getattr__(name: str):
    """refllm.dequantize, refllm.quantize and their errors, from refllm.kernels on first use: the
    kernels load Numba (about 0.2 s), which reading a file (`refllm inspect`) never needs."""
    if name in ("dequantize", "DequantError", "quantize", "QuantizeError"):
        from refllm import kernels
        return getattr(kernels, name)
    raise AttributeError(f"module 'refllm' has no attribute {name!r}")
