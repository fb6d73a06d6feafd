"""The decode step (refllm.engine.decode) against the reference block(): one token at a time,
the compiled path gives block()'s logits bit for bit under --numerics ggml, and within float32
summation order under f32, for every architecture, every weight type refllm synth writes, past
cache position 512, on both CPU paths; and generating does not grow the process's memory.

Each case runs two Transformers over one model file, one with the decode step and one without
(decode_step=False: block() for every batch), feeds both the same prefill (the batch path, the
same code in both) and then the same tokens one at a time."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import refllm
from refllm.engine.transformer import Transformer
from refllm.ggml_cpu import one_token
from refllm.tools.synth import DEFAULT_WEIGHT_TYPES, MATRIX_TYPES, write_synthetic_model

PREFILL = 520                       # the decoded tokens sit past position 512
STEPS = 6
F32_TOLERANCE = 1e-4                # f32: the same formulas, BLAS's and our loops' orders of summation

ARCHITECTURES = {
    "llama": dict(arch="llama"),
    "llama-rope-freqs": dict(arch="llama", rope="rope_freqs"),
    "qwen2": dict(arch="qwen2"),
    "qwen3": dict(arch="qwen3"),
    "gemma3-swa": dict(arch="gemma3", n_swa=40, swa_pattern=2, head_dim=64),
}


def write(tmp_path, name: str, **options):
    options = dict(options)
    arch = options.pop("arch", "llama")
    path = write_synthetic_model(tmp_path / f"{name}.gguf", arch, n_layer=2, n_head=4, n_head_kv=2,
                                 n_ff=256, **options)
    return refllm.open(path)


def decode_both(model, numerics: str, tokens: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The logits of tokens[PREFILL:], one at a time after a batch prefill of the rest: (decode
    step, block())."""
    results = []
    for decode_step in (True, False):
        net = Transformer(model, numerics, decode_step=decode_step, flash_attn=False)
        cache = net.new_cache(len(tokens) + 8)
        net.forward(tokens[:PREFILL], cache)
        results.append([net.forward([t], cache) for t in tokens[PREFILL:]])
        assert cache.tokens == tokens
    return results[0], results[1]


def check(fast: list[np.ndarray], reference: list[np.ndarray], numerics: str) -> None:
    assert len(fast) == len(reference) == STEPS
    for a, b in zip(fast, reference):
        assert a.shape == b.shape and a.dtype == np.float32
        if numerics == "ggml":
            assert np.array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=F32_TOLERANCE)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(5).integers(0, 384, PREFILL + STEPS).tolist()


@pytest.mark.parametrize("numerics", ["ggml", "f32"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_decode_step_equals_block_for_every_architecture(tmp_path, name, numerics, tokens, cpu_path):
    fast, reference = decode_both(write(tmp_path, name, **ARCHITECTURES[name]), numerics, tokens)
    check(fast, reference, numerics)


@pytest.mark.parametrize("numerics", ["ggml", "f32"])
@pytest.mark.parametrize("weight_type", MATRIX_TYPES)
def test_the_decode_step_equals_block_for_every_weight_type(tmp_path, weight_type, numerics, tokens, cpu_path):
    # every matrix of the type, the tied output too; k = 256 so that K-quants fit
    types = {name: weight_type for name in DEFAULT_WEIGHT_TYPES}
    model = write(tmp_path, weight_type, tied_output=True, weight_types=types)
    fast, reference = decode_both(model, numerics, tokens)
    check(fast, reference, numerics)


def test_the_attention_kernel_paths_agree_bit_for_bit():
    # attend_one's AVX2 row kernels and its Numba loops: fp16 and float32 caches, a window
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 64)).astype(np.float32)
    for dtype in (np.float16, np.float32):
        k = rng.standard_normal((2, 96, 64)).astype(dtype)
        v = rng.standard_normal((2, 96, 64)).astype(dtype)
        stored = [a.view(np.uint16) if dtype == np.float16 else a for a in (k, v)]
        for pos, window, exact in ((70, 0, True), (95, 20, True), (40, 0, False), (95, 33, False)):
            outs = []
            for vector in (True, False):
                if vector and not one_token.avx2.AVAILABLE:
                    continue
                out = np.empty((6, 64), np.float32)
                one_token.attend_one(q, *stored, pos, window, np.float32(0.125), exact, vector,
                                     np.empty((6, 160), np.float32), out, vector)
                outs.append(out)
            assert np.all(np.isfinite(outs[0]))
            assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("numerics", ["ggml", "f32"])
def test_generating_does_not_grow_the_process(tmp_path, numerics):
    # the cache's pages touched first (np.zeros maps them as positions fill), then 40 warm-up
    # tokens; 300 more tokens must not add a megabyte
    model = write(tmp_path, "memory", weight_types={name: "Q4_0" for name in DEFAULT_WEIGHT_TYPES})
    net = Transformer(model, numerics, flash_attn=False)
    cache = net.new_cache(400)
    for array in cache.k + cache.v:
        array.fill(0)

    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    token = 1
    for _ in range(40):
        token = int(np.argmax(net.forward([token], cache)))
    before = resident_bytes()
    for _ in range(300):
        token = int(np.argmax(net.forward([token], cache)))
    assert cache.n_past == 340
    assert resident_bytes() - before < 1 << 20
