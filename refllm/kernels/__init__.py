"""ggml's tensor types <-> float32: every type decoded to its exact values, and quantized to
the bytes llama.cpp's reference quantizers write.

    from refllm.kernels import dequantize, quantize
    values = dequantize(raw_bytes, "Q4_K", shape=(rows, cols), backend="numba")
    raw = quantize(values, "Q4_K")          # llama.cpp's reference quantizer, bit for bit

dequant.py and quantize.py are the APIs and dispatch by refllm/type_traits.py's decode and
quantize families. Per family, the decoder and the quantizer sit side by side: reference/F.py
and reference/F_quant.py (readable NumPy, each with its block layout), cpu/F.py and
cpu/F_quant.py (Numba, the same bits), cuda/F.cu (decoders in CUDA). tables.py and iq_grids.py
hold the lookup tables they share.
"""

from refllm.kernels.dequant import BACKENDS, DequantError, dequantize, supported_types
from refllm.kernels.quantize import QuantizeError, quantizable_types, quantize

__all__ = ["dequantize", "DequantError", "BACKENDS", "supported_types",
           "quantize", "QuantizeError", "quantizable_types"]
