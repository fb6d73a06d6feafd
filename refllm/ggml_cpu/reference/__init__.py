"""NumPy references of llama.cpp's x86 matmul kernels, one module per matmul family, and of its
activation converters (quantize_activations.py): readable, naming the C they follow."""
