"""refllm perplexity against llama-perplexity (golden/perplexity: make_golden.py ran an
out-of-tree AVX2 build of llama.cpp@0c1e57098's tools/perplexity on golden/perplexity/text.md,
-t 2, -c 128, with flash attention off and, in the runs named *-fa, on).

Under --numerics ggml, with --flash-attn off and on as the run had it, refllm prints
llama-perplexity's figures to every digit: the running
"[i]PPL," entries and the final estimate (SmolLM2's first 4 chunks, Gemma-3's first 2, and
SmolLM2 with two chunks a batch and with four batches a chunk), the KL-divergence lines and
closing statistics against a base-logits file llama.cpp wrote, and base-logits files with
llama.cpp's bytes (the committed synthetic model's; SmolLM2's by sha256). Then the file
format, `refllm compare` on base files, and every bad input as one line and exit code 2.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from refllm.cli import main
from refllm.ggml_cpu import libm
from refllm.tools import perplexity as ppl

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "perplexity"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
TEXT = GOLDEN / "text.md"
# llama.cpp's attention paths checked: the runs made with -fa off, and those made with -fa on
# (named RUN-fa, reading the -fa base files); `refllm perplexity` gets the same --flash-attn.
# (Its --threads is left alone: the golden ran -t 2, which flash attention would show only over
# 512 KV cells or more, and these chunks have 128.)
FLASH_ATTN = ("off", "on")


def golden_run(name: str, fa: str) -> str:
    return name + ("-fa" if fa == "on" else "")


def synth_base(fa: str) -> Path:
    """The synthetic model's base-logits file, written by llama-perplexity with -fa `fa`."""
    return GOLDEN / f"{golden_run('synth-f32-n4-base', fa)}.kld"


SYNTH_BASE = synth_base("off")


def llama_output(name: str, fa: str) -> tuple[str, str]:
    """llama-perplexity's stdout and stderr for run `name` with -fa `fa`."""
    run_name = golden_run(name, fa)
    return ((GOLDEN / f"{run_name}.stdout").read_text(encoding="utf-8"),
            (GOLDEN / f"{run_name}.stderr").read_text(encoding="utf-8"))


def llama_args(name: str, fa: str = "off") -> dict[str, str]:
    """The run's -c, -b and --chunks, as refllm's options."""
    args = PROVENANCE["runs"][golden_run(name, fa)]["args"]
    flags = {"-c": "--ctx", "-b": "--batch", "--chunks": "--chunks"}
    return {flags[a]: args[i + 1] for i, a in enumerate(args) if a in flags}


def running_entries(stdout: str) -> list[str]:
    """The "[i]PPL," entries of a perplexity run's output."""
    return re.findall(r"\[\d+\]\d+\.\d{4},", stdout)


def final_estimate(text: str) -> str:
    return re.search(r"Final estimate: PPL = \d+\.\d{4} \+/- \d+\.\d{5}", text).group(0)


def kld_report(stdout: str) -> list[str]:
    """A KL-divergence run's lines from the "chunk" header on, without trailing blank lines."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("chunk "))
    lines = lines[start:]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def cli_args(args, fa: str) -> list[str]:
    """The command line as strings; `refllm perplexity` with --flash-attn `fa`."""
    args = [str(a) for a in args]
    return args + ["--flash-attn", fa] if args[:1] == ["perplexity"] else args


def run(args, capsys, fa: str = "off") -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(cli_args(args, fa))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def synth_models(tmp_path_factory) -> dict[str, Path]:
    """golden/perplexity's synthetic models, rebuilt and checked against the sha256 llama.cpp saw."""
    # by its path: golden/ has other write_models.py modules
    spec = importlib.util.spec_from_file_location("golden_perplexity_write_models", GOLDEN / "write_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.write_models(tmp_path_factory.mktemp("ppl-synth"))
    for name, path in paths.items():
        assert sha256_file(path) == PROVENANCE["models"][name]["sha256"], f"{name}: not the model llama.cpp ran"
    return paths


@pytest.fixture(params=FLASH_ATTN, ids=lambda fa: f"fa-{fa}")
def fa(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=FLASH_ATTN, ids=lambda fa: f"fa-{fa}")
def smollm2_base(request, tmp_path_factory, smollm2_path):
    """(flash attention, refllm's base-logits file of SmolLM2's first 4 chunks, what `refllm
    perplexity` printed while writing it)."""
    fa = request.param
    out = tmp_path_factory.mktemp("ppl-smollm2") / "base.kld"
    capture = _Capture()
    code = capture.run(["perplexity", smollm2_path, TEXT, "--numerics", "ggml", "--kl-divergence-base", out,
                        *_flat(llama_args("smollm2-c128-n4-base", fa))], fa)
    assert code == 0, capture.err
    return fa, out, capture.out


class _Capture:
    """Run the CLI outside a test's capsys (for module fixtures): stdout and stderr to strings."""

    def run(self, args, fa: str) -> int:
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
            main(cli_args(args, fa))
        self.out, self.err = out.getvalue(), err.getvalue()
        return e.value.code


def _flat(options: dict[str, str]) -> list[str]:
    return [part for item in options.items() for part in item]


# -- the figures --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, model", [
    ("smollm2-c128-n4", "smollm2_path"),            # 4 chunks of 128, one a batch
    ("gemma3-c128-n2", "gemma3_path"),              # BOS first in each chunk
    ("smollm2-c128-n4-b256", "smollm2_path"),       # two chunks a batch (n_seq 2)
    ("smollm2-c128-n4-b32", "smollm2_path"),        # four batches a chunk
])
def test_perplexity_prints_llama_perplexity_figures(name, model, fa, request, capsys):
    stdout, stderr = llama_output(name, fa)
    args = ["perplexity", request.getfixturevalue(model), TEXT, "--numerics", "ggml", *_flat(llama_args(name, fa))]
    code, out, err = run(args, capsys, fa)
    assert code == 0, err
    assert running_entries(out) == running_entries(stdout)
    assert len(running_entries(out)) == int(llama_args(name, fa)["--chunks"])
    assert final_estimate(out) == final_estimate(stderr)
    assert "n_seq=" in err


def test_base_file_has_llama_cpp_bytes(synth_models, fa, tmp_path, capsys):
    """The synthetic model's base-logits file, written by refllm, is llama.cpp's byte for byte
    (odd vocabulary: every record ends with its zero padding value), and the figures printed
    while writing it (-log p in float32 then) are llama-perplexity's."""
    stdout, stderr = llama_output("synth-f32-n4-base", fa)
    out_path = tmp_path / "base.kld"
    code, out, err = run(["perplexity", synth_models["synth-f32"], TEXT, "--numerics", "ggml",
                          "--kl-divergence-base", out_path, *_flat(llama_args("synth-f32-n4-base", fa))], capsys, fa)
    assert code == 0, err
    assert out_path.read_bytes() == synth_base(fa).read_bytes()
    assert running_entries(out) == running_entries(stdout) and final_estimate(out) == final_estimate(stderr)


@pytest.mark.parametrize("name, model", [
    ("smollm2-c128-n4-b256-base", "smollm2_path"),  # two chunks a batch (n_seq 2), evaluated one by one
    ("smollm2-c128-n4-b32-base", "smollm2_path"),   # four batches a chunk
    ("gemma3-c128-n2-base", "gemma3_path"),         # 262144 log-probabilities a row
])
def test_real_base_files_are_llama_cpps(name, model, fa, request, tmp_path, capsys):
    """llama.cpp's file, by sha256 (too large to commit; SmolLM2's is the same for -b 32, 128
    and 256)."""
    out_path = tmp_path / "base.kld"
    code, out, err = run(["perplexity", request.getfixturevalue(model), TEXT, "--numerics", "ggml",
                          "--kl-divergence-base", out_path, *_flat(llama_args(name, fa))], capsys, fa)
    assert code == 0, err
    assert sha256_file(out_path) == PROVENANCE["runs"][golden_run(name, fa)]["base_file"]["sha256"]


def test_smollm2_base_file_is_llama_cpps(smollm2_base):
    fa, path, printed = smollm2_base
    stdout, stderr = llama_output("smollm2-c128-n4-base", fa)
    assert sha256_file(path) == PROVENANCE["runs"][golden_run("smollm2-c128-n4-base", fa)]["base_file"]["sha256"]
    assert running_entries(printed) == running_entries(stdout) and final_estimate(printed) == final_estimate(stderr)


@pytest.mark.parametrize("name, model", [
    ("synth-f32-q4_0-kld", "synth-f32-q4_0"),       # a Q4_0 quantization against its F32 source
    ("synth-f32-kld-self", "synth-f32"),            # the model against its own base file
])
def test_kl_divergence_of_llama_cpps_base_file(name, model, synth_models, fa, capsys):
    stdout, _ = llama_output(name, fa)
    code, out, err = run(["perplexity", synth_models[model], "--kl-divergence", "--kl-divergence-base", synth_base(fa),
                          "--batch", llama_args(name, fa)["--batch"], "--numerics", "ggml"], capsys, fa)
    assert code == 0, err
    assert out.rstrip("\n").splitlines() == kld_report(stdout)
    assert "Same top p:" in out and "====== KL divergence statistics ======" in out


def test_kl_divergence_of_smollm2(smollm2_base, smollm2_path, capsys):
    """SmolLM2 against its own base file (refllm's, which has llama.cpp's sha256)."""
    fa, path, _ = smollm2_base
    stdout, _ = llama_output("smollm2-c128-n4-kld-self", fa)
    code, out, err = run(["perplexity", smollm2_path, "--kl-divergence", "--kl-divergence-base", path,
                          "--batch", "128", "--numerics", "ggml"], capsys, fa)
    assert code == 0, err
    assert out.rstrip("\n").splitlines() == kld_report(stdout)


def test_f32_numerics_is_close(synth_models, capsys):
    """The float32 reference scores the same chunks: not llama.cpp's digits, but near them."""
    _, stderr = llama_output("synth-f32-n4-base", "off")
    code, out, _ = run(["perplexity", synth_models["synth-f32"], TEXT, "--ctx", "128", "--batch", "128",
                        "--chunks", "4"], capsys)
    value = float(re.search(r"PPL = (\S+)", out).group(1))
    expected = float(re.search(r"PPL = (\S+)", stderr).group(1))
    assert code == 0 and abs(value / expected - 1) < 1e-3


# -- the base-logits file -----------------------------------------------------------------------

def test_committed_base_files_are_the_runs():
    for name in ("synth-f32-n4-base", "synth-f32-n4-base-fa"):
        assert sha256_file(GOLDEN / f"{name}.kld") == PROVENANCE["runs"][name]["base_file"]["sha256"]


def test_llama_cpps_file_layout():
    """llama.cpp's file read with struct offsets alone: header, tokens, records of nv uint16."""
    data = SYNTH_BASE.read_bytes()
    n_ctx, n_vocab, n_chunk = np.frombuffer(data, "<i4", 3, offset=8)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    n_scored = n_ctx - 1 - n_ctx // 2
    assert data[:8] == b"_logits_" and (n_ctx, n_vocab, n_chunk) == (128, 383, 4) and nv == 388
    assert len(data) == 20 + 4 * n_ctx * n_chunk + 2 * nv * n_scored * n_chunk
    records = np.frombuffer(data, "<u2", offset=20 + 4 * n_ctx * n_chunk).reshape(-1, nv)
    assert np.all(records[:, -1] == 0)                             # the padding value of an odd vocabulary
    scale_and_min = records[:, :4].copy().view("<f4")                # [rows, 2]
    assert np.all(scale_and_min[:, 0] > 0) and np.all(scale_and_min[:, 1] < 0)
    base = ppl.read_base_logits(SYNTH_BASE)
    assert (base.n_ctx, base.n_vocab, base.n_chunk) == (128, 383, 4)
    assert np.array_equal(base.tokens, np.frombuffer(data, "<i4", n_ctx * n_chunk, offset=20))
    third = base.chunk_records(2)
    assert third.tobytes() == records[2 * n_scored:3 * n_scored].tobytes()
    assert np.array_equal(third["scale"], scale_and_min[2 * n_scored:3 * n_scored, 0])


c_expf = ctypes.CDLL(ctypes.util.find_library("m")).expf        # the C library's expf, through ctypes
c_expf.restype, c_expf.argtypes = ctypes.c_float, [ctypes.c_float]


def test_quantized_record_by_hand():
    """One row quantized as perplexity.cpp's log_softmax does: codes over [max - 16, max] in 65535
    steps, 0 below; min_log_prob = min - max - log(sum exp); -log p in float32."""
    logits = np.array([[0.0, -1.0, -20.0]], np.float32)
    records, nll = ppl.quantized_log_probs(logits, np.array([1]))
    sum_exp = 1.0 + c_expf(-1.0) + c_expf(-20.0)
    log_sum_exp = np.float32(np.log(sum_exp))
    scale = np.float32(16) / np.float32(65535)
    assert records["scale"][0] == scale
    assert records["min_log_prob"][0] == np.float32(np.float32(-16) - log_sum_exp)
    assert records["code"][0].tolist() == [65535, int(np.rint(np.float32(1 / scale) * np.float32(15))), 0]
    assert records.dtype.itemsize == 2 * (2 * ((3 + 1) // 2) + 4) and records["padding"][0].tolist() == [0]
    assert nll[0] == np.float32(np.float32(0) + log_sum_exp) - np.float32(-1)
    buffer = __import__("io").BytesIO()
    ppl.write_base_header(buffer, 8, 3, 1, np.arange(8) % 3)
    head = buffer.getvalue()
    assert head[:8] == b"_logits_" and np.frombuffer(head[8:20], "<i4").tolist() == [8, 3, 1]
    assert np.frombuffer(head[20:], "<i4").tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_compare_accepts_base_files(smollm2_base, tmp_path, synth_models, capsys):
    copy = tmp_path / "copy.kld"
    copy.write_bytes(SYNTH_BASE.read_bytes())
    code, out, err = run(["compare", SYNTH_BASE, copy, "--json"], capsys)
    stats = json.loads(out)
    assert code == 0 and stats["n_positions"] == 252 and stats["identical_rows"] == 252 and stats["kld_mean"] == 0
    # the Q4_0 model's base file, written by refllm for the same chunks
    q4 = tmp_path / "q4.kld"
    assert run(["perplexity", synth_models["synth-f32-q4_0"], TEXT, "--ctx", "128", "--batch", "128", "--chunks", "4",
                "--numerics", "ggml", "--kl-divergence-base", q4], capsys)[0] == 0
    code, out, _ = run(["compare", SYNTH_BASE, q4], capsys)
    assert code == 0 and "Positions      : 252" in out and "Identical rows : 0 of 252" in out
    mean_kld = float(re.search(r"Mean KLD\s+: (\S+)", out).group(1))
    assert 0.2 < mean_kld < 0.5                      # llama-perplexity's, from the unquantized logits: 0.345
    code, _, err = run(["compare", SYNTH_BASE, smollm2_base[1]], capsys)
    assert code == 2 and "expected the same" in err and len(err.splitlines()) == 1


# -- bad input: one line, exit code 2 ------------------------------------------------------------

@pytest.fixture
def bad_base(tmp_path):
    """A copy of llama.cpp's synthetic base file, spoiled by `spoil(bytes) -> bytes`."""
    def make(spoil) -> Path:
        path = tmp_path / "spoiled.kld"
        path.write_bytes(spoil(SYNTH_BASE.read_bytes()))
        return path
    return make


def _token_out_of_range(data: bytes) -> bytes:
    return data[:24] + np.int32(5000).tobytes() + data[28:]


@pytest.mark.parametrize("spoil, message", [
    (lambda d: d[:-1], "is truncated"),
    (lambda d: d + b"\0\0", "is longer"),
    (lambda d: d[:12], "inside the header"),
    (lambda d: b"_LOGITS_" + d[8:], "is not b'_logits_'"),
    (lambda d: b"", "is not b'_logits_'"),
    (lambda d: d[:8] + np.int32(4).tobytes() + d[12:], "expected n_ctx >= 8"),
    (_token_out_of_range, "token 5000 at position 1 is outside the vocabulary of 383"),
])
def test_bad_base_file(spoil, message, bad_base, synth_models, capsys):
    path = bad_base(spoil)
    code, out, err = run(["perplexity", synth_models["synth-f32"], "--kl-divergence", "--kl-divergence-base", path],
                         capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
    assert str(path) in err


def test_base_file_of_another_vocabulary(synth_models, tmp_path, capsys):
    from refllm.tools.synth import write_synthetic_model
    other = write_synthetic_model(tmp_path / "vocab384.gguf", "llama", n_vocab=384)
    code, out, err = run(["perplexity", other, "--kl-divergence", "--kl-divergence-base", SYNTH_BASE], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "vocabulary of 383 tokens; this model has 384" in err


@pytest.mark.parametrize("args, message", [
    (["--ctx", "4"], "--ctx must be at least 8 and at most 2048"),
    (["--ctx", "4096"], "--ctx must be at least 8 and at most 2048"),
    (["--ctx", "128", "--batch", "0"], "--batch must be between 1 and --ctx (128) or a multiple of --ctx, not 0"),
    (["--ctx", "128", "--batch", "200"], "or a multiple of --ctx, not 200"),
    (["--ctx", "128", "--chunks", "0"], "--chunks must be -1 (all) or at least 1, not 0"),
    (["--ctx", "128", "--chunks", "-2"], "--chunks must be -1 (all) or at least 1, not -2"),
    (["--kl-divergence"], "--kl-divergence reads its tokens from the base file; give no FILE"),
])
def test_impossible_options(args, message, synth_models, capsys):
    code, out, err = run(["perplexity", synth_models["synth-f32"], TEXT, *args], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("args, message", [
    ([], "missing FILE"),
    (["--kl-divergence"], "--kl-divergence needs --kl-divergence-base BASE"),
    (["--kl-divergence", "--kl-divergence-base", SYNTH_BASE, "--chunks", "2"], "--chunks does not apply"),
    (["--kl-divergence", "--kl-divergence-base", SYNTH_BASE, "--ctx", "64"], "computed with a context of 128"),
    (["--kl-divergence", "--kl-divergence-base", SYNTH_BASE, "--batch", "200"], "not 200"),
    (["--kl-divergence", "--kl-divergence-base", "/nonexistent/base.kld"], "no such file"),
])
def test_impossible_kl_divergence_options(args, message, synth_models, capsys):
    code, out, err = run(["perplexity", synth_models["synth-f32"], *args], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err


def test_bad_texts(synth_models, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("A few words are not enough for two chunks.\n", encoding="utf-8")
    code, _, err = run(["perplexity", synth_models["synth-f32"], short, "--ctx", "128"], capsys)
    assert code == 2 and f"{short} gives 28 tokens; perplexity with a context of 128 needs at least 256" in err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 200)
    code, _, err = run(["perplexity", synth_models["synth-f32"], latin1, "--ctx", "128"], capsys)
    assert code == 2 and "at byte 3: b'\\xe9' is not UTF-8" in err and len(err.splitlines()) == 1
    text = tmp_path / "text.md"
    text.write_bytes(TEXT.read_bytes())
    code, _, err = run(["perplexity", synth_models["synth-f32"], text, "--ctx", "128", "--chunks", "2",
                        "--kl-divergence-base", text], capsys)
    assert code == 2 and "refusing to overwrite the input" in err and text.read_bytes() == TEXT.read_bytes()


def test_compare_refuses_a_base_file_with_a_logits_file(tmp_path, capsys):
    logits = tmp_path / "logits.npz"
    np.savez(logits, tokens=np.zeros(3, np.int32), logits=np.zeros((3, 383), np.float32))
    code, out, err = run(["compare", SYNTH_BASE, logits], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "is not a base-logits file" in err


# -- the pieces ---------------------------------------------------------------------------------

def test_expf_is_the_c_librarys():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-104, 89, 20000), rng.uniform(-17, 0, 20000),
                        [0.0, -0.0, 1e-30, -16.0, 88.7, -103.9, -200.0]]).astype(np.float32)
    expected = np.array([c_expf(float(v)) for v in x], np.float32)
    assert libm.expf_array(x).tobytes() == expected.tobytes()


def test_sum_f64_adds_in_order():
    rows = np.array([[1e16, 1.0, -1e16, 1.0], [0.5, 0.25, 0.125, 3.0]], np.float32)
    expected = []
    for row in rows:
        total = 0.0
        for value in row:
            total += float(value)
        expected.append(total)
    assert libm.sum_f64(rows).tolist() == expected == [1.0, 3.875]   # pairwise would give 2.0


@pytest.mark.parametrize("n_ctx, n_batch, n_seqs, pieces", [
    (128, 128, 1, [(0, 128)]),
    (128, 32, 1, [(0, 32), (32, 64), (64, 96), (96, 128)]),
    (128, 256, 2, [(0, 128)]),                        # 256 // 2 tokens of each sequence a ubatch
    (512, 2048, 4, [(0, 128), (128, 256), (256, 384), (384, 512)]),   # llama-perplexity's defaults
    (512, 2048, 3, [(0, 170), (170, 340), (340, 510), (510, 512)]),   # the last batch's three chunks
    (1024, 1024, 1, [(0, 512), (512, 1024)]),         # n_ubatch 512
    (1024, 768, 1, [(0, 512), (512, 768), (768, 1024)]),
])
def test_pieces_follow_llama_cpps_ubatches(n_ctx, n_batch, n_seqs, pieces):
    plan = ppl.chunk_plan(n_ctx, n_batch, n_chunk=4)
    assert plan.pieces(n_seqs) == pieces


def test_plan_of_llama_perplexity_defaults():
    plan = ppl.plan_chunks(5000, n_ctx=512, n_batch=2048)
    assert (plan.n_chunk, plan.n_seq, plan.n_batch, plan.first, plan.n_scored) == (9, 4, 2048, 256, 255)
    assert ppl.plan_chunks(5000, 512, 2048, n_chunks=3).n_chunk == 3
    assert ppl.plan_chunks(5000, 512, 2048, n_chunks=30).n_chunk == 9
    with pytest.raises(ppl.PerplexityError, match="needs at least 1024"):
        ppl.plan_chunks(1000, 512, 512)
