"""Numba versions of ggml_cpu/reference/, bit for bit the same: one module per matmul family,
and the Q8 activation converters (quantize_activations.py)."""
