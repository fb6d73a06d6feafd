"""The engine on SmolLM2: prefix reuse, context shift, truncation, determinism, and the
generate / logits / compare commands. Fidelity against llama.cpp is in test_engine_golden.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.cli import main
from refllm.engine.config import ModelConfig, ModelConfigError
from refllm.engine.sampling import SamplingOptions
from refllm.engine.session import ContextFullError, Session
from refllm.engine.transformer import RopeFrequencies, Transformer, rope
from refllm.tokenizer import Tokenizer

GREEDY = SamplingOptions(temperature=0, num_predict=12)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    model = refllm.open(smollm2_path)
    return Transformer(model), Tokenizer.from_model(model)


def run(args, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# -- prefix reuse ---------------------------------------------------------------------------------

def test_logits_after_a_prefix_equal_a_fresh_evaluation(smollm2):
    net, tok = smollm2
    a = tok.tokenize("The quick brown fox jumps over")
    b = tok.tokenize(" the lazy dog and runs away.", add_special=False)
    fresh = Session(net, 128).evaluate(a + b, all_logits=True)           # [len(a + b), n_vocab]
    session = Session(net, 128)
    session.evaluate(a)
    reused = session.evaluate(a + b, all_logits=True)                    # rows of b only
    assert session.cached_tokens == len(a)
    assert reused.shape == (len(b), fresh.shape[1])
    assert np.max(np.abs(reused - fresh[len(a):])) <= 1e-4


def test_the_last_token_is_always_recomputed(smollm2):
    net, tok = smollm2
    ids = tok.tokenize("Hello there")
    session = Session(net, 64)
    first = session.evaluate(ids)
    again = session.evaluate(ids)
    assert session.cached_tokens == len(ids) - 1
    assert np.max(np.abs(first - again)) <= 1e-4       # batch of 2 vs 1: BLAS sums differently


def test_a_diverging_request_keeps_only_the_common_prefix(smollm2):
    net, tok = smollm2
    session = Session(net, 64)
    session.evaluate(tok.tokenize("one two three four"))
    other = tok.tokenize("one two five")
    session.evaluate(other)
    assert session.cached_tokens == 2 and session.cache.tokens == other


def test_greedy_text_is_the_same_with_and_without_the_cache(smollm2):
    net, tok = smollm2
    prompt = tok.tokenize("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
                          parse_special=True)
    cold = "".join(Session(net, 256).generate(prompt, tok, GREEDY))
    warm_session = Session(net, 256)
    warm_session.evaluate(prompt[:-3])
    warm = "".join(warm_session.generate(prompt, tok, GREEDY))
    assert warm_session.stats.cached_tokens == len(prompt) - 3
    assert warm == cold and len(cold) > 10


# -- context: shift, truncation, errors ----------------------------------------------------------

def test_context_shift_keeps_n_keep_and_re_ropes_moved_keys(smollm2):
    net, tok = smollm2
    ids = tok.tokenize("a b c d e f g h i j k l m n o p q r s t")
    session = Session(net, 64)
    session.evaluate(ids)
    n_keep, n_discard = 3, 6
    net.shift(session.cache, n_keep, n_discard)
    assert session.cache.tokens == ids[:n_keep] + ids[n_keep + n_discard:]
    # layer 0's keys depend only on the token and its position: after the shift they must be
    # the keys a fresh evaluation of the remaining tokens gives
    fresh = Session(net, 64)
    fresh.evaluate(session.cache.tokens)
    n = session.cache.n_past
    np.testing.assert_allclose(session.cache.k[0][:, :n], fresh.cache.k[0][:, :n], atol=2e-4)


def test_generation_past_the_context_shifts(smollm2):
    net, tok = smollm2
    session = Session(net, 24)
    prompt = tok.tokenize("Count: one, two, three,")
    text = "".join(session.generate(prompt, tok, SamplingOptions(temperature=0, num_predict=40)))
    assert session.stats.context_shifts >= 1 and session.stats.eval_count == 40 and text


def test_no_shift_makes_a_full_context_an_error(smollm2):
    net, tok = smollm2
    session = Session(net, 24, context_shift=False)
    prompt = tok.tokenize("Count: one, two, three,")
    with pytest.raises(ContextFullError, match="full"):
        "".join(session.generate(prompt, tok, SamplingOptions(temperature=0, num_predict=40)))


def test_a_prompt_longer_than_the_context_is_an_error_unless_truncated(smollm2):
    net, tok = smollm2
    prompt = tok.tokenize(" ".join(["word"] * 80))
    with pytest.raises(ContextFullError, match="--truncate"):
        "".join(Session(net, 32).generate(prompt, tok, GREEDY))
    session = Session(net, 32)
    "".join(session.generate(prompt, tok, SamplingOptions(temperature=0, num_predict=4, num_keep=4), truncate=True))
    kept = len(prompt) - session.stats.truncated_tokens
    assert session.stats.truncated_tokens > 0 and kept == 32 - (32 - 4) // 2
    assert session.stats.prompt_eval_count == kept


def test_forward_rejects_bad_tokens(smollm2):
    net, _ = smollm2
    with pytest.raises(ModelConfigError, match="out of range"):
        net.forward([net.config.n_vocab], net.new_cache(8))
    with pytest.raises(ModelConfigError, match="empty"):
        net.forward([], net.new_cache(8))
    with pytest.raises(ModelConfigError, match="do not fit"):
        net.forward([1] * 9, net.new_cache(8))


# -- stop conditions and determinism ----------------------------------------------------------------

def test_stop_strings_and_num_predict(smollm2):
    net, tok = smollm2
    prompt = tok.tokenize("<|im_start|>user\nCount from 1 to 20, separated by commas.<|im_end|>\n"
                          "<|im_start|>assistant\n", parse_special=True)
    full = "".join(Session(net, 256).generate(prompt, tok, SamplingOptions(temperature=0, num_predict=30)))
    assert "5" in full
    session = Session(net, 256)
    cut = "".join(session.generate(prompt, tok, SamplingOptions(temperature=0, num_predict=30, stop=("5",))))
    assert cut == full[:full.index("5")] and session.stats.done_reason == "stop"


def test_the_same_seed_gives_the_same_text_in_new_processes(smollm2_path):
    def generate() -> str:
        return subprocess.run(
            [sys.executable, "-m", "refllm.cli", "generate", smollm2_path, "Tell me a story.",
             "-n", "16", "--seed", "7", "--temperature", "1.0"],
            capture_output=True, text=True, check=True, timeout=300).stdout
    first, second = generate(), generate()
    assert first == second and len(first.strip()) > 0


# -- architecture support --------------------------------------------------------------------------

def test_unsupported_architecture_lists_the_supported_ones(smollm2_path):
    model = refllm.open(smollm2_path)
    model.metadata["general.architecture"] = "mamba"
    with pytest.raises(ModelConfigError, match="llama, qwen2, qwen3, gemma3"):
        ModelConfig.from_model(model)


def test_missing_tensors_and_keys_are_named(smollm2_path):
    model = refllm.open(smollm2_path)
    model.tensors = [t for t in model.tensors if t.name not in ("blk.3.ffn_up.weight", "blk.7.attn_k.weight")]
    with pytest.raises(ModelConfigError, match=r"blk\.3\.ffn_up\.weight is missing.*blk\.7\.attn_k\.weight|"
                                                r"blk\.7\.attn_k\.weight is missing.*blk\.3\.ffn_up\.weight"):
        ModelConfig.from_model(model)
    model = refllm.open(smollm2_path)
    del model.metadata["llama.attention.layer_norm_rms_epsilon"]
    with pytest.raises(ModelConfigError, match="llama.attention.layer_norm_rms_epsilon is missing"):
        ModelConfig.from_model(model)


@pytest.mark.parametrize("mode", ["f32", "ggml"])
def test_rope_by_a_then_b_is_rope_by_a_plus_b(mode):
    from refllm.engine.numerics import NUMERICS
    numerics = NUMERICS[mode]
    x = np.random.default_rng(0).standard_normal((5, 2, 8)).astype(np.float32)
    freqs = RopeFrequencies(10000.0, 1.0, None, 8, numerics.cos_sin)
    for kind in ("norm", "neox"):
        twice = rope(rope(x, np.arange(5), freqs, kind, numerics.rotate), np.full(5, 3), freqs, kind, numerics.rotate)
        once = rope(x, np.arange(5) + 3, freqs, kind, numerics.rotate)
        np.testing.assert_allclose(twice, once, atol=1e-5)
        assert not np.allclose(rope(x, np.arange(5), freqs, kind, numerics.rotate)[1:], x[1:])


def test_rope_angles_follow_ggml_float32_recurrence():
    """ggml's rope cache multiplies theta by theta_scale once per pair, in float32; a float64
    power differs in the last bits, which shows once q and k are rounded to f16."""
    freqs = RopeFrequencies(10000.0, 0.5, np.array([1.0, 2.0, 4.0, 8.0], np.float32), 8, None)
    theta = np.float32(7)
    expected = []
    for divisor in (1, 2, 4, 8):
        expected.append(np.float32(0.5) * (theta / np.float32(divisor)))
        theta = theta * freqs.theta_scale
    np.testing.assert_array_equal(freqs.angles(np.array([7]))[0], np.array(expected, np.float32))


# -- the commands ----------------------------------------------------------------------------------

def test_cli_generate_streams_text_and_prints_statistics(smollm2_path, capsys):
    # the default numerics (ggml) answers as llama.cpp's greedy decoding does, which on this
    # question is not "Paris" (checked once by hand against llama-cpp-python 0.3.36's raw
    # llama_decode loop: the same 12 token ids); the f32 reference names Paris
    code, out, err = run(["generate", smollm2_path, "What is the capital of France?", "--temperature", "0",
                          "-n", "12", "--verbose"], capsys)
    assert code == 0 and len(out.strip()) > 10
    for field in ("total duration", "load duration", "prompt eval count", "prompt eval rate",
                  "eval count", "eval rate", "cached tokens"):
        assert field in err
    assert "eval count:           12 token(s)" in err
    code, out, _ = run(["generate", smollm2_path, "What is the capital of France?", "--temperature", "0",
                        "-n", "12", "--numerics", "f32"], capsys)
    assert code == 0 and "Paris" in out


def test_cli_generate_reads_stdin_and_raw(smollm2_path, capsys, monkeypatch):
    code, out, _ = run(["generate", smollm2_path, "-", "--raw", "--temperature", "0", "-n", "5"], capsys,
                       b"The capital of France is", monkeypatch)
    assert code == 0 and out.strip()


@pytest.mark.parametrize("args, message", [
    (["--ctx", "4"], "--ctx must be between 8 and 8192 (the model's trained context), not 4"),
    (["--ctx", "0"], "--ctx must be between 8 and 8192 (the model's trained context), not 0"),
    (["--ctx", "100000000"], "--ctx must be between 8 and 8192 (the model's trained context), not 100000000"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--ctx", "8", "--no-shift"], "the prompt is"),
])
def test_cli_generate_bad_options_are_one_line(smollm2_path, capsys, args, message):
    """One line on stderr, and nothing on stdout (not even the newline that ends a reply)."""
    code, out, err = run(["generate", smollm2_path, "Hello, how are you today?"] + args, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and out == ""


def test_cli_generate_takes_a_prompt_too_long_for_a_file_name(smollm2_path, capsys):
    """One argument is the PROMPT unless it names a file; a 335-byte prompt cannot be a file name
    (the OS refuses names over 255 bytes), and is the prompt."""
    from refllm.cli import _split_model_and_prompt
    prompt = "Tell me about the sky. " * 15
    assert len(prompt.encode()) > 255 and _split_model_and_prompt((prompt,)) == (None, prompt)
    assert _split_model_and_prompt(("nul\0byte",)) == (None, "nul\0byte")
    code, out, err = run(["generate", prompt, "--temperature", "0", "-n", "2"], capsys)
    assert code == 0 and out.strip(), err


def test_cli_generate_says_it_reads_the_prompt_from_a_terminal(smollm2_path, capsys, monkeypatch):
    class Terminal(io.TextIOWrapper):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"Hello")))
    code, _, err = run(["generate", smollm2_path, "-n", "1", "--temperature", "0"], capsys)
    assert code == 0 and "reading the prompt from stdin; end it with Ctrl-D" in err


def test_cli_generate_strips_the_final_newline_of_stdin(smollm2_path, capsys, monkeypatch):
    """`echo P | refllm generate` and `refllm generate P` give the same greedy reply."""
    args = ["generate", smollm2_path, "--temperature", "0", "-n", "6"]
    _, from_argument, _ = run(args + ["What is the capital of France?"], capsys)
    _, from_stdin, _ = run(args, capsys, b"What is the capital of France?\n", monkeypatch)
    assert from_stdin == from_argument and from_argument.strip()


def test_session_stats_after_cache_reuse_say_what_was_evaluated(tmp_path):
    """ollama counts cached prompt tokens in "prompt eval count" but times only the evaluated
    ones: the report says so, and its rate is over the evaluated tokens."""
    from refllm.tools.synth import write_synthetic_model
    model = refllm.open(write_synthetic_model(tmp_path / "m.gguf", "llama", seed=2))
    session = Session(Transformer(model), n_ctx=64)
    tok = Tokenizer.from_model(model)
    ids = tok.tokenize("the cat sat on the mat and the dog sat on the log")
    options = SamplingOptions(temperature=0, num_predict=2)
    list(session.generate(ids, tok, options))
    assert session.stats.cached_tokens == 0 and "from the cache" not in session.stats.report()
    list(session.generate(ids, tok, options))
    stats = session.stats
    evaluated = stats.prompt_eval_count - stats.cached_tokens
    assert stats.cached_tokens == len(ids) - 1 and evaluated == 1
    lines = dict(line.split(":", 1) for line in stats.report().splitlines())
    assert lines["prompt eval count"].strip() == f"{len(ids)} token(s) ({len(ids) - 1} from the cache, 1 evaluated)"
    rate = float(lines["prompt eval rate"].split()[0])
    assert rate == pytest.approx(evaluated / stats.prompt_eval_duration, rel=0.01)


def test_cli_system_needs_a_chat_template(gemma3_path, capsys):
    code, out, err = run(["generate", gemma3_path, "Hello", "--system", "Be brief."], capsys)
    assert code == 2 and err.count("\n") == 1 and "a system message needs a chat template" in err


def test_cli_logits_and_compare(smollm2_path, tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, _, _ = run(["logits", smollm2_path, "--prompt", "Hello world, this is a test", "-o", a], capsys)
    assert code == 0
    code, _, _ = run(["logits", smollm2_path, "--tokens", ",".join(map(str, np.load(a)["tokens"])), "-o", b], capsys)
    assert code == 0
    with np.load(a) as fa, np.load(b) as fb:
        assert fa["logits"].dtype == np.float32 and fa["logits"].shape == (len(fa["tokens"]), 49152)
        np.testing.assert_array_equal(fa["logits"], fb["logits"])
    code, out, _ = run(["compare", a, b, "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["kld_mean"] == 0 and stats["same_top1_pct"] == 100


def test_cli_logits_numerics_ggml_is_the_golden_bits(smollm2_path, tmp_path, capsys):
    """`refllm logits --numerics ggml` writes llama.cpp's own logits: with flash attention (the
    default) golden/logits/smollm2-chat-fa's stored top-32 float32 logits, with --flash-attn off
    smollm2-chat's, exactly; --numerics f32 writes other (close) ones."""
    logits_dir = Path(__file__).parent.parent / "golden" / "logits"
    golden = {"on": np.load(logits_dir / "smollm2-chat-fa.npz"), "off": np.load(logits_dir / "smollm2-chat.npz")}
    tokens = ",".join(map(str, golden["on"]["tokens"][:12]))
    assert np.array_equal(golden["on"]["tokens"], golden["off"]["tokens"])
    for name, flags in {"ggml-on": ["--numerics", "ggml"], "ggml-off": ["--numerics", "ggml", "--flash-attn", "off"],
                        "f32": ["--numerics", "f32"]}.items():
        code, _, _ = run(["logits", smollm2_path, "--tokens", tokens, *flags, "-o", tmp_path / f"{name}.npz"], capsys)
        assert code == 0
    ours = {name: np.load(tmp_path / f"{name}.npz")["logits"] for name in ("ggml-on", "ggml-off", "f32")}
    for fa in ("on", "off"):
        ids = golden[fa]["topk_ids"][:12]
        top = np.take_along_axis(ours[f"ggml-{fa}"], ids, axis=1)
        np.testing.assert_array_equal(top, golden[fa]["topk_logits"][:12])
    assert not np.array_equal(ours["ggml-on"], ours["ggml-off"])
    assert not np.array_equal(ours["f32"], ours["ggml-on"])


def test_cli_numerics_choices_are_the_engine_modes():
    from refllm.cli import NUMERICS_MODES
    from refllm.engine.numerics import NUMERICS
    assert NUMERICS_MODES == tuple(NUMERICS)


def test_cli_start_up_loads_neither_numba_nor_the_engine():
    """`refllm --help` and `refllm inspect` start in a tenth of a second: importing the CLI (and
    refllm itself) leaves Numba, the kernels and the forward pass unloaded until a command needs them."""
    code = ("import sys, refllm, refllm.cli; "
            "print(sorted(m for m in ('numba', 'refllm.kernels', 'refllm.engine.transformer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_sampling_flags_are_the_library_options():
    """Every SamplingOptions field is a `generate` flag whose default is the field's, and what the
    CLI parses goes to SamplingOptions unchanged."""
    import dataclasses

    from refllm.cli import cli
    generate = cli.commands["generate"]
    fields = [field.name for field in dataclasses.fields(SamplingOptions)]

    def options(args):
        parsed = generate.make_context("generate", args).params
        return SamplingOptions(**{name: parsed[name] for name in fields})

    assert options([]) == SamplingOptions()
    assert options(["--top-p", "0.5", "--top-k", "3", "--stop", "a", "--stop", "b", "--keep", "-1", "-n", "7"]) == \
        SamplingOptions(top_p=0.5, top_k=3, stop=("a", "b"), num_keep=-1, num_predict=7)


@pytest.mark.parametrize("args, message", [
    (["--tokens", "1,x"], "comma-separated"),
    (["--tokens", "99999999"], "out of range"),
    (["--prompt", "a", "--tokens", "1"], "exactly one"),
    (["--tokens", ",".join(["1"] * 8193)], "8193 tokens are more than the 8192"),
    (["--tokens", "1", "--numerics", "f64"], "'f64' is not one of 'f32', 'ggml'"),
])
def test_cli_logits_bad_input(smollm2_path, tmp_path, capsys, args, message):
    code, out, err = run(["logits", smollm2_path, "-o", tmp_path / "x.npz"] + args, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "x.npz").exists()


def test_cli_compare_refuses_different_tokens_and_bad_files(tmp_path, capsys):
    from refllm.tools.compare import save_logits
    logits = np.zeros((3, 10), np.float32)
    save_logits(tmp_path / "a.npz", np.array([1, 2, 3], np.int32), logits)
    save_logits(tmp_path / "b.npz", np.array([1, 2, 4], np.int32), logits)
    code, out, err = run(["compare", tmp_path / "a.npz", tmp_path / "b.npz"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "position 2" in err
    (tmp_path / "c.npz").write_bytes(b"not a zip file")
    code, out, err = run(["compare", tmp_path / "a.npz", tmp_path / "c.npz"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "c.npz" in err


def test_cli_compare_against_a_compact_golden_file(smollm2_path, tmp_path, capsys):
    from pathlib import Path
    golden = Path(__file__).resolve().parent.parent / "golden" / "logits" / "smollm2-chat.npz"
    with np.load(golden) as g:
        tokens, n_stored = g["tokens"], len(g["positions"])
    code, _, _ = run(["logits", smollm2_path, "--tokens", ",".join(map(str, tokens)), "-o", tmp_path / "ours.npz"],
                     capsys)
    code, out, _ = run(["compare", golden, tmp_path / "ours.npz", "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["n_positions"] == n_stored
    assert 0 < stats["kld_mean"] <= 2e-2 and 0 < stats["rms_dp_pct"] < 5      # the file holds the tokens


def without_matmul(monkeypatch, type_name: str) -> None:
    """Take a type's reproduced x86 kernels away (its matmul family in refllm/type_traits.py)."""
    import dataclasses

    from refllm import type_traits
    row = type_traits.ggml_type(type_name)
    monkeypatch.setitem(type_traits.GGML_TYPES_BY_NAME, row.name, dataclasses.replace(row, matmul=None))


def test_ggml_numerics_name_the_matrices_they_do_not_reproduce(tmp_path, capsys, monkeypatch):
    """Every synth type has a reproduced kernel; take Q8_0's away and its matrices are named by
    Transformer.inexact_matrices, and the CLI warns on one line (the logits are still written)."""
    from refllm.tools.synth import write_synthetic_model
    path = write_synthetic_model(tmp_path / "m.gguf", "llama", seed=3)
    assert Transformer(refllm.open(path), "ggml").inexact_matrices == []
    without_matmul(monkeypatch, "Q8_0")
    net = Transformer(refllm.open(path), "ggml")
    assert net.inexact_matrices == ["blk.0.attn_output.weight (Q8_0)", "blk.1.attn_output.weight (Q8_0)"]
    assert Transformer(refllm.open(path), "f32").inexact_matrices == []
    code, _, err = run(["logits", str(path), "--tokens", "1,2,3", "--numerics", "ggml", "-o", tmp_path / "l.npz"],
                       capsys)
    assert code == 0 and (tmp_path / "l.npz").exists()
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "blk.0.attn_output.weight (Q8_0)" in warning[0]


def test_ggml_matmuls_of_one_input_equal_separate_matmuls(tmp_path, monkeypatch):
    """numerics.matmuls_ggml converts an input once for all the matrices of one vec_dot_type
    (q/k/v, gate/up): the same bits as one matmul_ggml each, reproduced or not (Q8_0's family
    taken away), and one conversion per type."""
    from refllm.engine import numerics
    from refllm.ggml_cpu import vec_dot
    from refllm.tools.synth import write_synthetic_model
    from refllm.type_traits import type_name
    net = Transformer(refllm.open(write_synthetic_model(tmp_path / "m.gguf", "llama", seed=5)), "ggml")
    layer = net.weights.layers[0]
    matrices = [layer.matrices[name] for name in ("attn_q", "attn_k", "attn_v", "attn_output")]
    x = np.random.default_rng(0).standard_normal((20, matrices[0].shape[1])).astype(np.float32)   # batch kernels
    conversions = []
    original = vec_dot.activation_rows
    monkeypatch.setattr(vec_dot, "activation_rows", lambda *a, **k: conversions.append(a[1]) or original(*a, **k))
    together = numerics.matmuls_ggml(x, matrices)
    types = {vec_dot.vec_dot_type(type_name(m.ggml_type)) for m in matrices}
    assert len(conversions) == len(types) < len(matrices)
    for y, w in zip(together, matrices):
        assert np.array_equal(y.view(np.uint32), numerics.matmul_ggml(x, w).view(np.uint32))
    without_matmul(monkeypatch, "Q8_0")
    for y, w in zip(numerics.matmuls_ggml(x, matrices), matrices):
        assert np.array_equal(y.view(np.uint32), numerics.matmul_ggml(x, w).view(np.uint32))
