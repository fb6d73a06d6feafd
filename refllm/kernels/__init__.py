"""Numbers: ggml's tensor types decoded to exact float32 values.

    from refllm.kernels import dequantize
    values = dequantize(raw_bytes, "Q4_K", shape=(rows, cols), backend="numba")
    raw = quantize(values, "Q4_K")          # llama.cpp's reference quantizer, bit for bit

See dequant.py for the backends and how a decoder is found, reference/ for the readable
NumPy decoders (each with its block layout), cpu/ for Numba and cuda/ for CUDA.
"""

from refllm.kernels.dequant import BACKENDS, DequantError, dequantize, supported_types
from refllm.kernels.quantize import QuantizeError, quantizable_types, quantize

__all__ = ["dequantize", "DequantError", "BACKENDS", "supported_types",
           "quantize", "QuantizeError", "quantizable_types"]
