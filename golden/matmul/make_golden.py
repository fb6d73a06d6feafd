"""Make golden/matmul: the inputs and outputs of llama.cpp's matrix products, one weight type at a time.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment),
after writing the models with refllm (write_models.py):

    python golden/matmul/write_models.py /tmp/refllm-matmul                 # refllm's Python
    python golden/matmul/make_golden.py /tmp/refllm-matmul

Each model DIR/<T>.gguf is a one-layer llama whose seven layer matrices are all of type T. The
script creates a llama.cpp context through the low-level API with an eval callback
(llama_context_params.cb_eval) and evaluates the same ids (BOS and N_RANDOM ids drawn with
numpy's PCG64(IDS_SEED)) twice, in a fresh context each time:

    nb512   n_batch = n_ubatch = 512: all the ids in one llama_decode
    nb1     n_batch = n_ubatch = 1: one llama_decode per id

The callback asks for every node whose op is GGML_OP_MUL_MAT and, once it is computed, copies
its src[1] (the activation the product read, through its strides: views are read as views) and
its result from host memory. Every product is captured and checked; a product's key is

    the weight's name   for a product with a model weight ("blk.0.attn_q.weight", ..., "output.weight")
    the node's name     for attention's two products ("kq-0", "kqv-0"), whose src[0] is the f16 KV cache

<T>.npz stores (STORED) the products of attn_q, attn_output, ffn_gate and ffn_down; Q8_0.npz also
the output product (output.weight is Q8_0 in every model), F16.npz also kq-0 and kqv-0 (the KV
cache is f16 in every model). For each mode and stored key there are "<mode>/<key>/src1" and
"<mode>/<key>/dst" (and for kq-0/kqv-0 "<mode>/<key>/src0"): float32 (src0: float16, the cache's
own values), in numpy order (ggml's ne reversed, size-1 outer dimensions dropped):

    weight product   src1 [n_tokens, n_in]       dst [n_tokens, n_out]
    kq-0             src0 [n_head_kv, n_kv, head_dim] (K)   src1 [n_head, n_tokens, head_dim] (Q)
                     dst [n_head, n_tokens, n_kv]
    kqv-0            src0 [n_head_kv, head_dim, n_kv] (V, as the cache holds it: transposed)
                     src1 [n_head, n_tokens, n_kv] (the softmax)   dst [n_head, n_tokens, head_dim]

so that dst[h] = src1[h] @ src0[h // (n_head / n_head_kv)].T (a weight's src0 is W [n_out, n_in]).
For nb1 the per-token captures are stacked along the token axis in order. The attention
products are cropped to the first n_tokens KV cells: the cells past them hold zeros in the
cache and zero attention weights (asserted), so what is cut is a product with zeros. For nb1,
src0 is the cache as the last step read it; step t read the same cells 0..t (asserted) and zeros
after them, so its kq row has zeros past cell t.

How the arrays are kept small (encode): the JSON string "index" has "arrays", mapping every
"<mode>/<key>/<role>" to how it is stored: ["raw", npz key] (an array equal byte for byte to one
stored before it points to that one), or ["delta", npz key, nb512 name] for an nb1 float32
array stored as the uint32 difference of its bits from its nb512 twin's (bits = (twin's bits +
delta) mod 2**32; the two runs mostly differ by a few ulps). "index" also has "products": each
stored product's graph names (dst, src0, src1) and ggml types. "ids" holds the ids.

The script checks what it stores: the output product's dst is llama_get_logits exactly, the
attn_q product is the node "Qcur-0" and reads "attn_norm-0", both modes find the same products,
every value is finite, and the written file decodes back to the captured bits. provenance.json
holds the library versions, the CPU features of the build, every context setting, the ids, and
per type the model's sha256 and write_models.py arguments, the weights llama.cpp repacked
(CPU_REPACK runs other kernels), and every captured product's graph names, shapes, whether it is
stored and whether nb1 gave the same bits as nb512.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import io
import json
import os
import platform
import re
import sys
from importlib.metadata import version
from pathlib import Path

import llama_cpp
import numpy as np
# the models are write_models.py's (this script's folder; it imports refllm only in its main)
from write_models import TYPES, model_args

HERE = Path(__file__).parent


IDS_SEED = 7
N_RANDOM = 31
# Every llama_context_params field the runs set (the rest, type_k/type_v included: f16 KV cache,
# are llama_context_default_params(); provenance records them all).
CONTEXT = dict(n_ctx=1024, n_threads=2, n_threads_batch=2,
               flash_attn_type=llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
MODES = {"nb512": dict(n_batch=512, n_ubatch=512), "nb1": dict(n_batch=1, n_ubatch=1)}
FIRST_MODE = "nb512"
ATTENTION = ("kq-0", "kqv-0")
# What <T>.npz stores (every product is captured and checked; provenance lists them all): the
# layer's attn_q, attn_output, ffn_gate and ffn_down products; the output product (Q8_0 in every
# model) only in Q8_0.npz; attention's kq and kqv (f16 KV cache in every model) only in F16.npz.
STORED_LAYER = ("blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight")
OUTPUT_TYPE, ATTENTION_TYPE = "Q8_0", "F16"

# -- struct ggml_tensor (ggml/include/ggml.h of llama.cpp@0c1e57098) ------------------------------
GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_NAME, GGML_MAX_OP_PARAMS = 4, 10, 64, 64
GGML_OP_MUL_MAT = 29            # enum ggml_op; checked against ggml_op_name below
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor, field for field."""
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def check_layout() -> None:
    """Check GGMLTensor and GGML_OP_MUL_MAT against the loaded libggml-base."""
    base = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    base.ggml_tensor_overhead.restype = ctypes.c_size_t
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    ggml_object_size = 32                        # struct ggml_object: offs, size, next, type, padding[4]
    assert base.ggml_tensor_overhead() - ggml_object_size == ctypes.sizeof(GGMLTensor), "struct ggml_tensor"
    assert base.ggml_op_name(GGML_OP_MUL_MAT) == b"MUL_MAT", base.ggml_op_name(GGML_OP_MUL_MAT)


def tensor_at(address: int) -> GGMLTensor:
    return GGMLTensor.from_address(address)


def read_tensor(t: GGMLTensor) -> np.ndarray:
    """A copy of an F32 or F16 tensor's values in host memory, numpy shape (ne3, ne2, ne1, ne0),
    read through its strides nb (a view may be non-contiguous)."""
    dtype = {GGML_TYPE_F32: np.dtype("<f4"), GGML_TYPE_F16: np.dtype("<f2")}[t.type]
    ne, nb = list(t.ne), list(t.nb)
    assert nb[0] == dtype.itemsize and all(s % dtype.itemsize == 0 for s in nb), (t.name, nb)
    extent = sum((n - 1) * s for n, s in zip(ne, nb)) + dtype.itemsize          # bytes the view spans
    flat = np.frombuffer((ctypes.c_char * extent).from_address(t.data), dtype=dtype)
    view = np.lib.stride_tricks.as_strided(flat, shape=ne[::-1], strides=nb[::-1], writeable=False)
    return np.array(view, copy=True)


class Capture:
    """The eval callback: records every MUL_MAT node as llama.cpp computes it."""

    def __init__(self):
        self.products: list[dict] = []
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._callback)   # kept alive here

    def _callback(self, address, ask, _user_data) -> bool:
        t = tensor_at(address)
        if ask:
            return t.op == GGML_OP_MUL_MAT
        src0, src1 = tensor_at(t.src[0]), tensor_at(t.src[1])
        name = t.name.decode()
        entry = {"name": name, "src0_name": src0.name.decode(), "src0_type": src0.type,
                 "src1_name": src1.name.decode(), "src1_type": src1.type, "dst_type": t.type,
                 "src1": read_tensor(src1), "dst": read_tensor(t)}
        if name in ATTENTION:
            entry["src0"] = read_tensor(src0)
        self.products.append(entry)
        return True


class Log:
    """llama.cpp's log, kept quiet: errors go to stderr, lines about repacked weights are kept
    (CPU_REPACK changes the kernel a product runs; provenance records which weights it took)."""

    def __init__(self):
        self.repack: list[str] = []
        self.callback = llama_cpp.llama_log_callback(self._callback)          # kept alive here
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _callback(self, level, text, _user_data) -> None:
        line = text.decode("utf-8", "replace")
        if "repack" in line and line.strip(". \n"):
            self.repack.append(line.strip(". \n"))
        if level == 4:                                          # GGML_LOG_LEVEL_ERROR
            print(line, end="", file=sys.stderr, flush=True)


LOG = None


def random_ids(model) -> list[int]:
    """BOS, then N_RANDOM ids drawn by PCG64(IDS_SEED) from the vocabulary's non-control tokens."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    candidates = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab))
                  if not llama_cpp.llama_vocab_is_control(vocab, i)]
    rng = np.random.Generator(np.random.PCG64(IDS_SEED))
    return [int(llama_cpp.llama_vocab_bos(vocab))] + [int(candidates[k]) for k in
                                                      rng.integers(0, len(candidates), N_RANDOM)]


def key_of(entry: dict) -> str:
    """A product's key: its weight's name, or its own node name for kq/kqv."""
    return entry["name"] if entry["name"] in ATTENTION else entry["src0_name"]


def crop_attention(key: str, e: dict, n_cells: int) -> dict:
    """kq/kqv cropped to the first n_cells KV cells; asserts that what is cut is a product with
    zeros (empty cache cells) and, for kqv, zero attention weights."""
    e = dict(e)
    if key == "kq-0":
        # src0 [1, n_head_kv, n_kv, head_dim], dst [1, n_head, n_tokens, n_kv]
        assert not e["src0"][:, :, n_cells:].any() and not e["dst"][..., n_cells:].any(), key
        e["src0"], e["dst"] = e["src0"][:, :, :n_cells], e["dst"][..., :n_cells]
    else:
        # src0 [1, n_head_kv, head_dim, n_kv] (V transposed), src1 [1, n_head, n_tokens, n_kv]
        assert not e["src0"][..., n_cells:].any() and not e["src1"][..., n_cells:].any(), key
        e["src0"], e["src1"] = e["src0"][..., :n_cells], e["src1"][..., :n_cells]
    return e


def run(path: Path, mode: str) -> tuple[list[int], dict, dict, np.ndarray]:
    """Evaluate the ids on a fresh context in `mode`: (ids, products by key, context settings,
    logits float32 [n, n_vocab]). A product's arrays are squeezed to 2-D for weights."""
    LOG.repack.clear()
    model_params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
    assert model, path
    capture = Capture()
    params = llama_cpp.llama_context_default_params()
    for name, value in {**CONTEXT, **MODES[mode]}.items():
        setattr(params, name, value)
    params.cb_eval = capture.callback
    params.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, params)
    assert ctx, path
    settings = {name: getattr(params, name) for name, ctype in params._fields_
                if isinstance(getattr(params, name), (bool, int, float))}
    ids = random_ids(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    step = MODES[mode]["n_batch"]
    batch = llama_cpp.llama_batch_init(step, 0, 1)
    logits, per_key = [], {}
    for start in range(0, len(ids), step):
        chunk = ids[start:start + step]
        batch.n_tokens = len(chunk)
        for i, tok in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, 1              # logits_all
        capture.products.clear()
        assert llama_cpp.llama_decode(ctx, batch) == 0, (path, mode, start)
        logits.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(len(chunk) * n_vocab,))
                      .reshape(len(chunk), n_vocab).copy())
        keys = [key_of(e) for e in capture.products]
        assert len(set(keys)) == len(keys), keys
        for e in capture.products:
            per_key.setdefault(key_of(e), []).append(e)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    logits = np.concatenate(logits)

    n = len(ids)
    products = {}
    for key, steps in per_key.items():
        assert len(steps) == len(range(0, n, step)), (key, len(steps))
        first = steps[0]
        meta = {k: first[k] for k in ("name", "src0_name", "src0_type", "src1_name", "src1_type", "dst_type")}
        for e in steps:
            assert {k: e[k] for k in meta} == meta, (key, e["name"])
        if key in ATTENTION:
            steps = [crop_attention(key, e, n) for e in steps]
            last = steps[-1]["src0"]
            cell_axis = 2 if key == "kq-0" else 3                  # of src0 [1, n_head_kv, ., .]
            if len(steps) > 1:                                     # nb1: step t read cells 0..t, then zeros
                for t, e in enumerate(steps):
                    cells = np.arange(n)
                    assert np.array_equal(np.take(e["src0"], cells[:t + 1], cell_axis),
                                          np.take(last, cells[:t + 1], cell_axis)), (key, t)
                    assert not np.take(e["src0"], cells[t + 1:], cell_axis).any(), (key, t)
            # src1 and dst are [1, n_head, n_tokens, x]: stack the steps on the token axis
            arrays = {"src0": last[0],
                      "src1": np.concatenate([e["src1"] for e in steps], axis=2)[0],
                      "dst": np.concatenate([e["dst"] for e in steps], axis=2)[0]}
        else:
            arrays = {role: np.concatenate([e[role].reshape(-1, e[role].shape[-1]) for e in steps])
                      for role in ("src1", "dst")}
            assert arrays["src1"].shape[0] == n and arrays["dst"].shape[0] == n, key
        products[key] = {"meta": meta, "arrays": arrays}
    settings["repack"] = list(LOG.repack)
    return ids, products, settings, logits


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def stored_keys(kind: str) -> tuple[str, ...]:
    """The products stored in <kind>.npz (see STORED)."""
    return (STORED_LAYER + (("output.weight",) if kind == OUTPUT_TYPE else ())
            + (ATTENTION if kind == ATTENTION_TYPE else ()))


def encode(runs: dict[str, dict], keys: tuple[str, ...]) -> tuple[dict, dict]:
    """The arrays of `keys` in every mode, as stored: (npz arrays by key, index["arrays"]).

    An array equal byte for byte to one stored before it is stored once (["raw", its key]);
    a float32 nb1 array of the shape of its nb512 twin is stored as the uint32 difference of
    their bits (["delta", key, twin's name]: bits = (twin's bits + delta) mod 2**32), which is
    small where the two runs differ by a few ulps; anything else as itself (["raw", key]).
    """
    arrays, index, by_bytes = {}, {}, {}
    for mode, products in runs.items():
        for key in keys:
            for role, a in products[key]["arrays"].items():
                name = f"{mode}/{key}/{role}"
                ident = (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
                twin = f"{FIRST_MODE}/{key}/{role}"
                if ident in by_bytes:
                    index[name] = ["raw", by_bytes[ident]]
                    continue
                by_bytes[ident] = name
                base = runs[FIRST_MODE][key]["arrays"][role]
                if mode != FIRST_MODE and a.dtype == np.float32 and base.shape == a.shape:
                    arrays[name] = a.view(np.uint32) - base.view(np.uint32)          # wraps mod 2**32
                    index[name] = ["delta", name, twin]
                else:
                    arrays[name] = a
                    index[name] = ["raw", name]
    return arrays, index


def decode(npz, index: dict, name: str) -> np.ndarray:
    """One stored array by its "<mode>/<key>/<role>" name (the inverse of encode)."""
    how = index[name]
    if how[0] == "raw":
        return npz[how[1]]
    return (decode(npz, index, how[2]).view(np.uint32) + npz[how[1]]).view(np.float32)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    global LOG
    check_layout()
    LOG = Log()
    model_dir = Path(sys.argv[1])
    types, all_ids, settings = {}, None, {}
    for kind in TYPES:
        path = model_dir / f"{kind}.gguf"
        runs = {}
        for mode in MODES:
            ids, products, settings[mode], logits = run(path, mode)
            repacked = settings[mode].pop("repack")
            assert all_ids is None or ids == all_ids, (kind, ids)
            all_ids = ids
            out = products["output.weight"]["arrays"]["dst"]
            assert np.array_equal(out, logits), (kind, mode, "output product != logits")
            q = products["blk.0.attn_q.weight"]["meta"]
            assert q["src1_name"] == "attn_norm-0" and q["name"] == "Qcur-0", (kind, q)
            for key, product in products.items():
                for role, a in product["arrays"].items():
                    assert a.dtype == (np.float16 if role == "src0" else np.float32), (kind, mode, key, role)
                    assert np.all(np.isfinite(a)), (kind, mode, key, role)
                    product["arrays"][role] = np.ascontiguousarray(a)
            runs[mode] = products
        assert all(sorted(p) == sorted(runs[FIRST_MODE]) for p in runs.values()), kind
        for key in runs[FIRST_MODE]:
            assert all(p[key]["meta"] == runs[FIRST_MODE][key]["meta"] for p in runs.values()), (kind, key)
        keys = stored_keys(kind)
        arrays, index = encode(runs, keys)
        products_meta = {key: runs[FIRST_MODE][key]["meta"] for key in keys}
        buf = io.BytesIO()
        np.savez_compressed(buf, ids=np.array(all_ids, np.int32),
                            index=np.array(json.dumps({"products": products_meta, "arrays": index}, sort_keys=True)),
                            **arrays)
        out = HERE / f"{kind}.npz"
        write_atomic(out, buf.getvalue())
        with np.load(out) as z:                                  # what was written reads back exactly
            for mode, products in runs.items():
                for key in keys:
                    for role, a in products[key]["arrays"].items():
                        got = decode(z, index, f"{mode}/{key}/{role}")
                        assert got.dtype == a.dtype and np.array_equal(got.view(np.uint8), a.view(np.uint8))
        captured = {key: {"graph": runs[FIRST_MODE][key]["meta"], "stored": key in keys,
                          "shapes": {role: list(a.shape) for role, a in runs[FIRST_MODE][key]["arrays"].items()},
                          "nb1_equals_nb512": {role: bool(np.array_equal(a, runs["nb1"][key]["arrays"][role]))
                                               for role, a in runs[FIRST_MODE][key]["arrays"].items()}}
                    for key in runs[FIRST_MODE]}
        types[kind] = {"model": path.name, "sha256": sha256_file(path), "write_models_args": model_args(kind),
                       "npz_sha256": sha256_file(out), "llama_cpp_repack_log": repacked,
                       "products": captured}
        n_delta = sum(v[0] == "delta" for v in index.values())
        n_same = sum(v[0] == "raw" and v[1] != k for k, v in index.items())
        print(f"{kind}: {len(runs[FIRST_MODE])} products, {len(keys)} stored, {len(arrays)} arrays "
              f"({n_same} names share one, {n_delta} deltas), {out.stat().st_size} bytes", flush=True)

    provenance = {
        "made_by": "golden/matmul/make_golden.py",
        "command": "python golden/matmul/write_models.py DIR  (refllm's Python) && "
                   "/tmp/golden-venv/bin/python golden/matmul/make_golden.py DIR",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "ids": {"seed": IDS_SEED, "about": f"BOS, then {N_RANDOM} ids drawn by numpy "
                "Generator(PCG64(seed)).integers(0, len(c)) indexing c, the ids that are not control tokens",
                "ids": all_ids},
        "context": CONTEXT, "modes": MODES,
        "context_params": settings,
        "model_params": "llama_model_default_params()",
        "eval": "llama_model_load_from_file + llama_init_from_model with cb_eval set; llama_batch_init(n_batch), "
                "every token's logits flag on (logits_all), seq 0, positions 0..n-1; one llama_decode per n_batch "
                "ids. The callback asks for every GGML_OP_MUL_MAT node and copies src[1] and the result (and, "
                "for kq/kqv, src[0]) once computed (see the script's docstring for shapes and crops).",
        "storage": {"stored_layer_products": STORED_LAYER, "output_product_in": f"{OUTPUT_TYPE}.npz",
                    "attention_products_in": f"{ATTENTION_TYPE}.npz",
                    "encoding": "index.arrays: ['raw', key] or ['delta', key, nb512 name] with bits = "
                                "(nb512 bits + delta) mod 2**32 (see the script's docstring)"},
        "types": types,
    }
    text = json.dumps(provenance, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    assert json.loads(text) == json.loads(json.dumps(provenance))     # lists of scalars on one line, same JSON
    write_atomic(HERE / "provenance.json", (text + "\n").encode("utf-8"))


if __name__ == "__main__":
    main()
