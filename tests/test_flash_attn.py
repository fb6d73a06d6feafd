"""Flash attention (refllm.ggml_cpu.flash_attn): llama.cpp's FLASH_ATTN_EXT kernels.

Bit-exactness against llama.cpp is checked by tests/test_engine_golden.py on the golden/logits
"-fa" cases (every kernel: tiled, one_chunk, split, with a sliding window). Here: each kernel
computes attention (against float64 softmax attention, to fp16 rounding), the choice of kernel
and of llama.cpp's KV view, that the thread count changes only the split kernel, and the
Transformer's switches."""

from __future__ import annotations

import numpy as np
import pytest

import refllm
from refllm.engine.config import ModelConfigError
from refllm.engine.transformer import Transformer
from refllm.ggml_cpu.flash_attn import flash_attention, kernel_name, kv_view
from refllm.tools.synth import write_synthetic_model


def reference(q, keys, values, positions, first, window, scale):
    """Causal attention in float64: [n, n_head * dv]."""
    n, n_head, _ = q.shape
    n_kv, n_keys, dv = values.shape
    key_pos = first + np.arange(n_keys)
    out = np.zeros((n, n_head, dv))
    for i, p in enumerate(positions):
        seen = (key_pos <= p) & ((p - key_pos < window) if window else True)
        for h in range(n_head):
            g = h // (n_head // n_kv)
            s = keys[g][seen].astype(np.float64) @ q[i, h].astype(np.float64) * scale
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ values[g][seen].astype(np.float64)
    return out.reshape(n, -1)


def inputs(n, n_keys, first=0, seed=0, d=64, n_head=4, n_kv=2):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_head, d)).astype(np.float32)
    keys = rng.standard_normal((n_kv, n_keys, d)).astype(np.float16)
    values = rng.standard_normal((n_kv, n_keys, d)).astype(np.float16)
    positions = np.arange(first + n_keys - n, first + n_keys)
    return q, keys, values, positions


@pytest.mark.parametrize("n, n_keys, window, n_view, kernel", [
    (100, 300, 0, 512, "tiled"),          # 64 tokens or more
    (100, 300, 40, 512, "tiled"),         # with a sliding window
    (20, 90, 0, 256, "one_chunk"),        # fewer
    (1, 90, 16, 256, "one_chunk"),
    (1, 700, 0, 768, "split"),            # one token over a view of 512 cells or more
    (1, 700, 100, 768, "split"),
])
def test_every_kernel_computes_attention(n, n_keys, window, n_view, kernel):
    q, keys, values, positions = inputs(n, n_keys)
    assert kernel_name(n, n_view) == kernel
    scale = np.float32(0.125)
    ours = flash_attention(q, keys.view(np.uint16), values.view(np.uint16), positions, 0, window, scale, n_view, 2)
    expected = reference(q, keys, values, positions, 0, window, scale)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    # one_chunk and split keep their running output in fp16 (3 decimal digits)
    tolerance = 1e-5 if kernel == "tiled" else 1e-2
    np.testing.assert_allclose(ours, expected, atol=tolerance, rtol=tolerance)


def test_keys_from_a_later_first_position_give_the_same_bits():
    """A sliding-window ring hands attention only the cells from `first` on; the tiles still
    start at multiples of 64 positions, so the result is that of the whole cache."""
    q, keys, values, positions = inputs(70, 260, seed=1)
    window, first = 50, 130                  # the queries (190..259) see positions 141 on; 130 is no tile start
    whole = flash_attention(q, keys.view(np.uint16), values.view(np.uint16), positions, 0, window, 1.0, 512, 2)
    part = flash_attention(q, keys[:, first:].view(np.uint16), values[:, first:].view(np.uint16), positions,
                           first, window, 1.0, 512, 2)
    assert np.array_equal(whole, part)


def test_threads_change_only_the_split_kernel():
    q, keys, values, positions = inputs(1, 700, seed=2)
    k, v = keys.view(np.uint16), values.view(np.uint16)
    split = [flash_attention(q, k, v, positions, 0, 0, 0.125, 768, t) for t in (1, 2, 3)]
    assert not np.array_equal(split[0], split[1]) or not np.array_equal(split[1], split[2])
    q, keys, values, positions = inputs(1, 300, seed=2)
    k, v = keys.view(np.uint16), values.view(np.uint16)
    chunk = [flash_attention(q, k, v, positions, 0, 0, 0.125, 512 - 256, t) for t in (1, 2, 3)]
    assert all(np.array_equal(chunk[0], c) for c in chunk[1:])


@pytest.mark.parametrize("n, n_view", [(3, 256), (1, 768)])
def test_portable_scores_give_the_avx2_bits(n, n_view, monkeypatch):
    """one_chunk's and split's scores by avx2.f16_row_dot, or by the portable Numba loop."""
    from refllm.ggml_cpu import avx2, flash_attn
    if not avx2.AVAILABLE:
        pytest.skip("this machine has no AVX2: only the portable loop runs here")
    q, keys, values, positions = inputs(n, 600, seed=7)
    results = []
    for use_avx2 in (True, False):
        monkeypatch.setattr(flash_attn, "USE_AVX2", use_avx2)
        results.append(flash_attention(q, keys.view(np.uint16), values.view(np.uint16), positions, 0, 0, 0.125,
                                       n_view, 2))
    assert np.array_equal(*results)


def test_shared_and_serial_give_the_same_bits():
    q, keys, values, positions = inputs(80, 200, seed=3)
    k, v = keys.view(np.uint16), values.view(np.uint16)
    assert np.array_equal(flash_attention(q, k, v, positions, 0, 0, 0.2, 256, 2, shared=True),
                          flash_attention(q, k, v, positions, 0, 0, 0.2, 256, 2, shared=False))


@pytest.mark.parametrize("n_used, n_cells, view", [(1, 1024, 256), (256, 1024, 256), (257, 1024, 512),
                                                   (700, 1024, 768), (1000, 768, 768), (3, 256, 256)])
def test_kv_view_is_llama_cpps(n_used, n_cells, view):
    assert kv_view(n_used, n_cells) == view


def test_llama_view_of_the_cache(tmp_path):
    """n_ctx rounded up to 256 cells; a sliding-window layer (not swa_full) the window plus a
    batch, rounded up to 256, where that is fewer."""
    model = refllm.open(write_synthetic_model(tmp_path / "g.gguf", "gemma3", n_layer=2, n_swa=40, swa_pattern=2))
    net = Transformer(model, "ggml")
    cache = net.new_cache(1000, n_batch=64)
    swa, full = net.config.swa_layers.index(True), net.config.swa_layers.index(False)
    assert cache.llama_view(full, 600) == 768 and cache.llama_view(full, 100) == 256
    assert cache.llama_view(swa, 600) == 256                    # 40 + 64 cells, rounded up to 256
    assert net.new_cache(1000, n_batch=64, swa_full=True).llama_view(swa, 600) == 768


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return refllm.open(write_synthetic_model(tmp_path_factory.mktemp("fa") / "m.gguf", "qwen3", seed=4))


def test_decode_step_equals_block_with_flash_attention(model):
    """The decode step and block() call the same kernel: the same bits, past the split view."""
    tokens = np.random.default_rng(5).integers(0, 300, 300).tolist()
    runs = []
    for decode_step in (True, False):
        net = Transformer(model, "ggml", decode_step=decode_step, threads=2)
        cache = net.new_cache(1024)
        net.forward(tokens[:256], cache)
        runs.append([net.forward([t], cache) for t in tokens[256:]])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_flash_attention_is_a_rounding_not_another_model(model):
    tokens = np.random.default_rng(6).integers(0, 300, 80).tolist()
    logits = {}
    for flash in (True, False):
        net = Transformer(model, "ggml", flash_attn=flash)
        logits[flash] = net.forward(tokens, net.new_cache(128), all_logits=True)
    assert not np.array_equal(logits[True], logits[False])
    # a random synthetic model amplifies roundings (its activations are rounded to Q8 downstream)
    diff = np.abs(logits[True] - logits[False])
    assert diff.mean() < 0.02 * logits[False].std(), (diff.mean(), logits[False].std())


def test_switches(model):
    assert Transformer(model, "ggml").flash_attn                 # llama.cpp's CPU default
    assert not Transformer(model, "ggml", flash_attn=False).flash_attn
    assert not Transformer(model, "f32").flash_attn              # f32 computes one attention
    assert Transformer(model, "ggml", threads=3).threads == 3
    with pytest.raises(ModelConfigError, match="thread count"):
        Transformer(model, "ggml", threads=0)


def test_cli_flags(model, tmp_path, capsys):
    """--flash-attn and --threads on a running command: the choice reaches the logits, and an
    impossible thread count is one line and exit 2."""
    from refllm.cli import main
    outputs = {}
    for flash in ("on", "off"):
        with pytest.raises(SystemExit) as e:
            main(["logits", model.path, "--tokens", ",".join(map(str, range(1, 80))), "--numerics", "ggml",
                  "--flash-attn", flash, "-o", str(tmp_path / f"{flash}.npz")])
        assert e.value.code == 0
        outputs[flash] = np.load(tmp_path / f"{flash}.npz")["logits"]
    assert not np.array_equal(outputs["on"], outputs["off"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["logits", model.path, "--tokens", "1,2", "--threads", "0", "-o", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--threads must be between 1" in err and len(err.strip().splitlines()) == 1
