"""golden/matmul: llama.cpp's single matrix products, one weight type at a time, against refllm.

golden/matmul/<T>.npz holds what llama.cpp's CPU backend read and wrote in the matrix products of
a one-layer synthetic llama whose layer matrices are all of type T (golden/matmul/make_golden.py,
run token by token and in one batch). Here every model rebuilds to the sha256 llama.cpp saw, and
refllm's float32 reference product (x @ W.T, W decoded by refllm) on llama.cpp's own input is
close to llama.cpp's output: within what llama.cpp's rounding of the activations (to Q8_0, Q8_1,
Q8_K, F16 or BF16 before the dot products) explains; with the activations rounded that way it
lands within float32 summation noise, which shows the stored input is what llama.cpp multiplied.

For other checks of the same files (a stricter one for a llama.cpp numerics mode):
`load_matmul_golden` (the decoded arrays), `rebuild_model`, `weight_of`, `reference_product`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import refllm
from refllm.tools.synth import write_synthetic_model

GOLDEN = Path(__file__).parent.parent / "golden" / "matmul"
PROVENANCE = json.loads((GOLDEN / "provenance.json").read_text(encoding="utf-8"))
TYPES = tuple(PROVENANCE["types"])
MODES = tuple(PROVENANCE["modes"])             # "nb512" (one batch), "nb1" (token by token)

# max|refllm - llama.cpp| / max|llama.cpp| a product may reach, by the weight's type. llama.cpp
# rounds the activations before its dot products, to the weight type's vec_dot_type: nothing for
# F32 (float32 sums in another order), f16 for F16 (and for kq/kqv, whose src0 is the f16 cache),
# bf16 for BF16, 8-bit blocks for the quantized types (Q8_0, Q8_1, or Q8_K: 256 values to one
# scale, the coarsest: ffn_down's heavy-tailed input loses up to ~3%).
LOOSE_BOUND = {"F32": 1e-5, "F16": 2e-3, "BF16": 1e-2}
QUANTIZED_LOOSE_BOUND = 5e-2
# With the activations rounded as llama.cpp rounds them, what is left is float32 summation order.
ROUNDED_BOUND = 1e-5


@dataclass(frozen=True)
class MatmulGolden:
    """One golden/matmul/<T>.npz, decoded.

    ids:      the token ids llama.cpp evaluated (int32 [n_tokens])
    products: per product key ("blk.0.attn_q.weight", "output.weight", "kq-0", "kqv-0") its graph
              names and ggml types: {"name", "src0_name", "src0_type", "src1_name", "src1_type", "dst_type"}
    runs:     per mode ("nb512", "nb1") and key, the arrays {"src1", "dst"} (and "src0" for kq-0 /
              kqv-0), exactly as llama.cpp had them (shapes: make_golden.py's docstring)
    """
    kind: str
    ids: np.ndarray
    products: dict[str, dict]
    runs: dict[str, dict[str, dict[str, np.ndarray]]]


@cache
def load_matmul_golden(kind: str) -> MatmulGolden:
    """golden/matmul/<kind>.npz with every array decoded to llama.cpp's exact values (cached)."""
    with np.load(GOLDEN / f"{kind}.npz") as npz:
        index = json.loads(str(npz["index"]))

        def decode(name: str) -> np.ndarray:
            how = index["arrays"][name]
            if how[0] == "raw":
                return npz[how[1]]
            assert how[0] == "delta", how
            return (decode(how[2]).view(np.uint32) + npz[how[1]]).view(np.float32)

        runs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for name in index["arrays"]:
            mode, key, role = name.split("/")
            runs.setdefault(mode, {}).setdefault(key, {})[role] = decode(name)
        return MatmulGolden(kind, npz["ids"], index["products"], runs)


def rebuild_model(kind: str, directory: Path) -> Path:
    """Write the synthetic model of golden/matmul/<kind>.npz into `directory` with refllm, from
    the write_models.py arguments its provenance records; returns its path (the sha256 is
    test_model_rebuilds_to_the_sha256_llama_cpp_saw's to check)."""
    args = dict(PROVENANCE["types"][kind]["write_models_args"])
    return write_synthetic_model(Path(directory) / f"{kind}.gguf", args.pop("arch"), **args)


@cache
def weight_of(model_path: Path, key: str) -> np.ndarray:
    """The float32 [n_out, n_in] weight `key` of a model file, decoded by refllm as ggml decodes it."""
    model = refllm.open(model_path)
    t = model.tensor(key)
    return refllm.dequantize(model.tensor_bytes(key), t.ggml_type, t.shape)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Every type's model, rebuilt once for this module."""
    root = tmp_path_factory.mktemp("matmul-golden")
    return {kind: rebuild_model(kind, root) for kind in TYPES}


def reference_product(src0: np.ndarray, src1: np.ndarray, *, cells_read_by_step: bool = False) -> np.ndarray:
    """ggml_mul_mat's result in plain float32 numpy: dst = src1 @ src0.T, per head for a 3-D
    src1 (head h reads src0's head h // (n_head / n_head_kv), as ggml broadcasts).

    cells_read_by_step is for kq-0 of nb1: token t was multiplied by a cache whose cells past t
    were still zero, so dst[:, t, c > t] is 0 there (the stored src0 is the last step's cache).
    """
    src0 = src0.astype(np.float32)
    if src1.ndim == 2:
        return src1 @ src0.T
    repeat = src1.shape[0] // src0.shape[0]
    dst = np.stack([src1[h] @ src0[h // repeat].T for h in range(src1.shape[0])])
    if cells_read_by_step:
        dst = np.where(np.tri(dst.shape[1], dst.shape[2], dtype=bool), dst, np.float32(0))
    return dst


def src0_of(golden: MatmulGolden, model_path: Path, mode: str, key: str) -> np.ndarray:
    """A product's src0: the stored KV cache for kq-0/kqv-0, else the weight refllm decodes from
    the model (rebuild_model's)."""
    arrays = golden.runs[mode][key]
    return arrays["src0"] if "src0" in arrays else weight_of(model_path, key)


def weight_type(kind: str, key: str) -> str:
    """The ggml type of product `key`'s src0 in the model of <kind>.npz ("F16" for kq/kqv: the cache)."""
    if not key.endswith(".weight"):
        return "F16"
    base = key.split(".", 2)[-1] if key.startswith("blk.") else key
    return PROVENANCE["types"][kind]["write_models_args"]["weight_types"][base]


def measure(golden: MatmulGolden, model_path: Path,
            round_activations=None) -> dict[tuple[str, str], tuple[float, float]]:
    """(mode, key) -> (max|Δ|, max|Δ| / max|dst|) of reference_product on llama.cpp's src1 (passed
    through round_activations(src1, src0 type) when given) against llama.cpp's dst."""
    out = {}
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            src1 = arrays["src1"]
            if round_activations is not None:
                src1 = round_activations(src1, weight_type(golden.kind, key))
            ref = reference_product(src0_of(golden, model_path, mode, key), src1,
                                    cells_read_by_step=(key == "kq-0" and mode == "nb1"))
            dst = arrays["dst"]
            delta = float(np.abs(ref - dst).max())
            out[mode, key] = (delta, delta / float(np.abs(dst).max()))
    return out


def write_models_module():
    spec = importlib.util.spec_from_file_location("golden_matmul_write_models", GOLDEN / "write_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_provenance_covers_every_type_with_write_models_arguments():
    write_models = write_models_module()
    assert TYPES == write_models.TYPES and MODES == ("nb512", "nb1")
    for kind in TYPES:
        assert PROVENANCE["types"][kind]["write_models_args"] == json.loads(json.dumps(write_models.model_args(kind)))


@pytest.mark.parametrize("kind", TYPES)
def test_model_rebuilds_to_the_sha256_llama_cpp_saw(models, kind):
    path = models[kind]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PROVENANCE["types"][kind]["sha256"]
    model = refllm.open(path)
    layer = {t.type_name for t in model.tensors if t.name.startswith("blk.0.") and len(t.shape) == 2}
    assert layer == {kind}


@pytest.mark.parametrize("kind", TYPES)
def test_golden_file_matches_its_provenance(kind):
    golden = load_matmul_golden(kind)
    stored = {key for key, p in PROVENANCE["types"][kind]["products"].items() if p["stored"]}
    assert list(golden.ids) == PROVENANCE["ids"]["ids"]
    assert set(golden.runs) == set(MODES) and all(set(run) == stored for run in golden.runs.values())
    n = len(golden.ids)
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            shapes = PROVENANCE["types"][kind]["products"][key]["shapes"]
            assert {role: list(a.shape) for role, a in arrays.items()} == shapes, (mode, key)
            assert all(np.all(np.isfinite(a)) for a in arrays.values()), (mode, key)
            if key.endswith(".weight"):
                assert arrays["src1"].shape[0] == arrays["dst"].shape[0] == n


@pytest.mark.parametrize("kind", TYPES)
def test_refllm_float32_product_is_close_to_llama_cpp(models, kind):
    """refllm's float32 product on llama.cpp's input, against llama.cpp's output: apart by no
    more than llama.cpp's rounding of the activations explains (LOOSE_BOUND)."""
    for (mode, key), (delta, rel) in measure(load_matmul_golden(kind), models[kind]).items():
        src0_type = weight_type(kind, key)
        assert rel < LOOSE_BOUND.get(src0_type, QUANTIZED_LOOSE_BOUND), (kind, mode, key, delta, rel)


def q8_k_values(x: np.ndarray) -> np.ndarray:
    """x rounded as ggml's quantize_row_q8_K_ref rounds it: per 256 values, the one of largest
    magnitude m, iscale = -127 / m, q = min(nearest(iscale * x), 127), y = (1 / iscale) * q."""
    blocks = x.reshape(-1, 256).astype(np.float32)
    m = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    with np.errstate(divide="ignore"):
        iscale = np.where(m != 0, np.float32(-127) / m, np.float32(0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(iscale[:, None] * blocks), np.float32(127))
    return (d[:, None] * q).astype(np.float32).reshape(x.shape)


def bf16_values(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 (nearest, ties to even; x is finite), as float32."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32)


def round_like_llama_cpp(x: np.ndarray, src0_type: str) -> np.ndarray:
    """x as ggml-cpu hands it to the dot products against a src0 of `src0_type`."""
    if src0_type == "F32":
        return x
    if src0_type == "F16":
        return x.astype(np.float16).astype(np.float32)
    if src0_type == "BF16":
        return bf16_values(x)
    if src0_type.endswith("_K"):
        return q8_k_values(x)
    assert src0_type in ("Q4_0", "Q5_0", "Q8_0"), src0_type
    raw = refllm.quantize(np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1]), "Q8_0")
    return refllm.dequantize(raw.reshape(-1), "Q8_0", x.shape)


# Q4_1 and Q5_1 multiply against Q8_1 blocks, whose fp16 sum of the block enters the dot
# product apart from the rounded values, so rounding src1 alone does not reproduce them.
@pytest.mark.parametrize("kind", [k for k in TYPES if k not in ("Q4_1", "Q5_1")])
def test_golden_output_is_its_input_rounded_then_multiplied(models, kind):
    """The stored src1 is what llama.cpp multiplied: rounded as llama.cpp rounds activations,
    refllm's float32 product lands within float32 summation-order noise of the stored dst."""
    for (mode, key), (delta, rel) in measure(load_matmul_golden(kind), models[kind], round_like_llama_cpp).items():
        assert rel < ROUNDED_BOUND, (kind, mode, key, delta, rel)


def ggml_product(golden: MatmulGolden, model_path: Path, mode: str, key: str) -> np.ndarray:
    """refllm --numerics ggml's product for one stored product, on llama.cpp's own src1: the
    weight products through refllm.engine.numerics.matmul_ggml (as the forward pass calls it:
    token by token for nb1), kq-0/kqv-0 through refllm.ggml_cpu.x86.f16_matmul (attention's)."""
    from refllm.engine.numerics import matmul_ggml
    from refllm.engine.weights import Matrix
    from refllm.ggml_cpu.x86 import f16_matmul

    arrays = golden.runs[mode][key]
    src1 = arrays["src1"]
    if key.endswith(".weight"):
        model = refllm.open(model_path)
        t = model.tensor(key)
        w = Matrix(key, model.tensor_bytes(key), t.ggml_type, tuple(t.shape), model.byteorder)
        if mode == "nb1":
            return np.concatenate([matmul_ggml(src1[i:i + 1], w) for i in range(len(src1))])
        return matmul_ggml(src1, w)
    src0 = arrays["src0"]                                   # [n_kv_head, rows, k], fp16 values
    repeat = src1.shape[0] // src0.shape[0]
    out = []
    for h in range(src1.shape[0]):
        columns = src1[h].astype(np.float16).astype(np.float32)
        if mode == "nb1":                                   # token t saw the cells up to t, zeros after
            out.append(np.concatenate([
                f16_matmul(np.where(np.arange(len(src0[0]))[:, None] <= t, src0[h // repeat], 0),
                           columns[t:t + 1], tinyblas=False) for t in range(len(columns))]
                if key == "kq-0" else [f16_matmul(src0[h // repeat], columns[t:t + 1], tinyblas=False)
                                       for t in range(len(columns))]))
        else:
            out.append(f16_matmul(src0[h // repeat], columns, tinyblas=True))
    return np.stack(out)


@pytest.mark.parametrize("kind", TYPES)
def test_ggml_numerics_products_are_llama_cpp_bits(models, kind):
    """--numerics ggml's single products on llama.cpp's input equal llama.cpp's output bit for
    bit, for every weight type, one batch of 32 tokens and token by token: max|Δ| = 0 (the
    figure golden/RESULTS.md records per type)."""
    golden = load_matmul_golden(kind)
    for mode, run in golden.runs.items():
        for key, arrays in run.items():
            ours = ggml_product(golden, models[kind], mode, key)
            assert ours.shape == arrays["dst"].shape, (mode, key)
            assert np.array_equal(ours.view(np.uint32), arrays["dst"].view(np.uint32)), \
                (kind, mode, key, float(np.abs(ours - arrays["dst"]).max()))
