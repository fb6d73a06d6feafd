"""llama.cpp's x86 CPU arithmetic, reproduced bit for bit: what `--numerics ggml` computes.

    matmul.py      mul_mat: which of llama.cpp's kernels runs for a weight type and batch size
    vec_dot.py     the activation type each weight type's matmul converts its input to
    x86.py         AVX2/FMA/F16C float operations: fused multiply-adds, lane sums, expf, softmax,
                   the f16 KV-cache products, fp16 rounding, rope's cosf/sinf
    avx2.py        kernels written with LLVM's x86 intrinsics: register tiles for batches, one
                   weight row's dot product straight from its blocks for one token
    one_token.py   the decode step's compiled norms, rope and attention (ggml's operations, or
                   f32's), and f32's one-token products
    flash_attn.py  FLASH_ATTN_EXT, llama.cpp's default attention on the CPU: its tiled,
                   one_chunk and split kernels, and llama.cpp's KV view that picks among them
    threads.py     when a one-token kernel shares its work among Numba's threads
    sampler.py     llama.cpp's samplers (penalties, top_k, top_p, min_p, temp, dist) on a
                   candidate array, step for step, with the C library's expf
    libstdcxx.py   what those call from GCC's C++ library: std::sort and std::partial_sort (the
                   order of ties), std::mt19937, generate_canonical
    libm.py        the C library's expf and a C loop's float64 sum (llama-perplexity's scoring)
    reference/     NumPy, readable: one module per matmul family (type_traits.py's `matmul`
                   column, and repack), and quantize_activations.py (float32 -> Q8_0/Q8_1/Q8_K)
    cpu/           Numba, fast: the same modules, giving the same bits

refllm.engine's ggml numerics uses this package, its decode step (refllm.engine.decode) in
both numerics, and its Sampler in both; refllm.kernels (exact dequantization) does not depend on it.
"""
