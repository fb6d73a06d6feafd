"""refllm trace against llama.cpp's own intermediate tensors (golden/trace, made by
golden/trace/make_golden.py through llama.cpp's eval callback): under --numerics ggml every
named node, bit for bit (name, op, shape and the sha256 of its values), for both real models
with flash attention off and on and one synthetic model per architecture; under f32 the same
nodes, within a relative error this file reports. And the CLI: -o, --stats, --against."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.engine.transformer import Transformer
from refllm.formats.files import sha256_file
from refllm.tools import trace as tracing
from refllm.tools.synth import write_synthetic_model
from refllm.tools.trace import Trace, TraceError, first_difference, layer_of, load_trace, run_trace, save_trace

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "trace"
INDEX = json.loads((GOLDEN / "index.json").read_text(encoding="utf-8"))
SYNTH = json.loads((GOLDEN.parent / "logits" / "cases.json").read_text(encoding="utf-8"))["cases"]
REAL_FIXTURES = {"smollm2": "smollm2_path", "gemma3": "gemma3_path"}
# f32 against llama.cpp: the largest relative error (max |a - b| / max |b|) of a stored node, in
# layer 0 and anywhere (measured: at most 0.02 in layer 0; 0.19 at Gemma-3's last post-FFN norm)
F32_LAYER0, F32_ANYWHERE = 0.05, 0.3


def model_path(request, tmp_path_factory, case: str) -> str:
    key = case.removesuffix("-fa")
    if key in REAL_FIXTURES:
        path = request.getfixturevalue(REAL_FIXTURES[key])
    else:
        args = dict(SYNTH[key]["synth"])
        path = write_synthetic_model(tmp_path_factory.mktemp("synth") / f"{key}.gguf", args.pop("arch"), **args)
    assert sha256_file(path) == INDEX["cases"][case]["sha256"], f"{case}: not the model llama.cpp traced"
    return str(path)


_traces: dict[tuple[str, str], Trace] = {}


@pytest.fixture(params=[(case, mode) for mode in ("ggml", "f32") for case in INDEX["cases"]],
                ids=lambda p: f"{p[0]}-{p[1]}")
def traced(request, tmp_path_factory):
    """(case, mode, golden entry, refllm's trace of the case's ids)."""
    case, mode = request.param
    entry = INDEX["cases"][case]
    if (case, mode) not in _traces:
        net = Transformer(refllm.open(model_path(request, tmp_path_factory, case)), mode, decode_step=False,
                          flash_attn=entry["flash_attn"], threads=INDEX["context"]["n_threads"])
        _traces[case, mode] = run_trace(net, entry["ids"])
    return case, mode, entry, _traces[case, mode]


def test_ggml_trace_is_llama_cpps_node_for_node(traced):
    case, mode, entry, trace = traced
    if mode != "ggml":
        pytest.skip("only --numerics ggml reproduces llama.cpp's bits")
    golden = [node["name"] for node in entry["nodes"]]
    assert sorted(trace.names) == sorted(golden), f"{case}: node names differ"
    for node in entry["nodes"]:
        name, value = node["name"], trace.tensors[node["name"]]
        assert trace.ops[name] == node["op"], name
        assert list(value.shape) == node["shape"], name
        digest = hashlib.sha256(np.ascontiguousarray(value, np.float32).tobytes()).hexdigest()
        assert digest == node["sha256"], f"{case}: {name} differs from llama.cpp's"


def test_f32_trace_within_the_reported_relative_error(traced):
    case, mode, entry, trace = traced
    if mode != "f32":
        pytest.skip("ggml is checked bit for bit")
    stored = np.load(GOLDEN / f"{case}.npz")
    worst = {}
    for node in entry["nodes"]:
        if "values" not in node or node["name"] not in trace.tensors:    # f32: no flash attention of its own
            continue
        ours, axis = trace.tensors[node["name"]], node["token_axis"]
        for which, position in (("first", 0), ("last", ours.shape[axis] - 1)):
            theirs = stored[f"{node['values']}_{which}"]
            error = np.abs(np.take(ours, position, axis=axis) - theirs).max() / max(np.abs(theirs).max(), 1e-30)
            worst[node["name"]] = max(worst.get(node["name"], 0.0), float(error))
    assert worst
    print(f"\n{case} f32: largest relative errors", sorted(worst.items(), key=lambda kv: -kv[1])[:3])
    layer0 = [e for name, e in worst.items() if layer_of(name) == 0]
    assert max(layer0) <= F32_LAYER0, f"{case}: layer 0 {max(layer0):.3g}"
    assert max(worst.values()) <= F32_ANYWHERE, f"{case}: {max(worst, key=worst.get)} {max(worst.values()):.3g}"


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> tuple[Path, Trace]:
    path = write_synthetic_model(tmp_path_factory.mktemp("t") / "m.gguf", "qwen3", seed=2)
    trace = run_trace(Transformer(refllm.open(path), "ggml", decode_step=False), [1, 5, 9, 14])
    return path, trace


def run(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_against_finds_a_one_ulp_change_at_its_node(small_trace, tmp_path, capsys):
    path, trace = small_trace
    save_trace(tmp_path / "a.npz", trace)
    changed = load_trace(tmp_path / "a.npz")
    target = "ffn_out-1"
    value = changed.tensors[target]
    value[2, 7] = np.nextafter(value[2, 7], np.float32(np.inf))               # one ulp, token 2
    save_trace(tmp_path / "b.npz", changed)
    difference = first_difference(load_trace(tmp_path / "a.npz"), load_trace(tmp_path / "b.npz"))
    assert (difference.name, difference.layer, difference.position, difference.differing) == (target, 1, 2, 1)
    code, out, _ = run(["trace", tmp_path / "a.npz", "--against", tmp_path / "b.npz"], capsys)
    assert code == 1 and "ffn_out-1 (layer 1), token position 2" in out
    code, out, _ = run(["trace", path, "--tokens", "1,5,9,14", "--against", tmp_path / "a.npz"], capsys)
    assert code == 0 and out.startswith("identical")


def test_a_change_upstream_is_found_first(small_trace):
    _, trace = small_trace
    other = Trace(trace.tokens, dict(trace.meta), {k: v.copy() for k, v in trace.tensors.items()}, dict(trace.ops))
    other.tensors["l_out-1"][0, 0] += 1
    other.tensors["attn_norm-0"][3, 1] *= 2
    found = first_difference(trace, other)
    assert (found.name, found.position) == ("attn_norm-0", 3)


def test_names_are_llama_cpps():
    assert layer_of("Qcur-12#3") == 12 and layer_of("result_output") is None and layer_of("norm#4") is None
    synth_names = [n["name"] for n in INDEX["cases"]["synth-qwen3"]["nodes"]]
    assert {"embd", "attn_norm-0", "Qcur-0", "Qcur_normed-1", "kq_soft_max-1", "kqv_out-0", "ffn_out-1",
            "l_out-1", "result_norm", "result_output"} <= set(synth_names)


def test_stats_print_as_llama_cpps_eval_callback():
    x = np.arange(2 * 8, dtype=np.float32).reshape(2, 8) / 4
    lines = tracing.stats_lines(Trace([1, 2], {}, {"l_out-0": x}, {"l_out-0": "ADD"}))
    assert lines[0] == "common_debug_cb_eval:                  l_out-0 = (f32)        ADD(...) = {8, 2, 1, 1}"
    assert lines[3] == ("            [      0.0000,       0.2500,       0.5000,    ...,       1.2500,       "
                        "1.5000,       1.7500  ],")
    assert lines[-1] == "    sum = 30.000000"                                  # (0 + ... + 15) / 4


def test_bad_input(small_trace, tmp_path, capsys):
    path, trace = small_trace
    save_trace(tmp_path / "a.npz", trace)
    np.savez(tmp_path / "logits.npz", tokens=np.arange(3), logits=np.zeros((3, 4), np.float32))
    for args, message in [
        (["trace", tmp_path / "a.npz", "--against", tmp_path / "logits.npz"], "not a refllm trace"),
        (["trace", path, "--tokens", "1,2"], "nothing to do"),
        (["trace", path, "-o", tmp_path / "x.npz"], "exactly one of --prompt"),
        (["trace", tmp_path / "a.npz", "--tokens", "1", "--stats"], "is a trace already"),
        (["trace", path, "--tokens", "1,2", "--against", tmp_path / "a.npz"], "different tokens"),
    ]:
        code, out, err = run(args, capsys)
        assert code == 2, (args, out, err)
        assert message in err and "Traceback" not in err
    with pytest.raises(TraceError, match="share no tensor"):
        first_difference(trace, Trace(trace.tokens, {}, {"other": np.zeros(1, np.float32)}, {}))
