"""Make golden/trace: llama.cpp's intermediate tensors, every named node of the forward pass.

Run with a Python that has llama-cpp-python==0.3.36 and numpy (never refllm's own environment),
after writing the synthetic models with refllm (golden/logits/write_synth.py):

    python golden/logits/write_synth.py /tmp/refllm-synth                 # refllm's Python
    python golden/trace/make_golden.py SMOLLM2.gguf GEMMA3.gguf /tmp/refllm-synth

Each case evaluates a few token ids in one batch (n_batch 512) on a fresh context (n_ctx 1024,
2 threads, f16 KV cache) with the eval callback (`cb_eval`, through golden/matmul's ctypes
mirror of struct ggml_tensor), flash attention off or on. Every node the scheduler computes is
seen; the trace keeps those llama.cpp's graph names (cb(...) in src/models/*.cpp: `attn_norm-0`,
`Qcur-0`, ...), leaving out the nodes no cb() named (ggml calls them "node_<i>"), the views,
permutes and cache writes (names with " (", ops VIEW, PERMUTE, TRANSPOSE, SET_ROWS, CPY). A
reshape cb() names is kept (with flash attention, `kqv_out-N` is one). A name the graph gives
again (`Qcur-N` is the projection, its reshape into heads and the rotated heads; `norm-N` every
RMS norm of a layer) gets "#2", "#3", ... on its later nodes. The attention scores `kq-N` and `kq_soft_max-N` span llama.cpp's padded KV view;
they are kept for the batch's own cells (0..n-1, a fresh cache).

<case>.npz holds, for node k (in graph order; index.json names them):
    tokens                 int32 [n]
    k<i>_first, k<i>_last  float32: the node at the first and the last token (the token axis
                           taken out), for the nodes of layers 0 and n_layer - 1 and those outside
                           the layers with fewer than VALUES_LIMIT elements per token
index.json, per case: model, sha256, flash_attn, n_layer, and per node its name, op, numpy shape,
token axis, float64 sum, and the sha256 of its float32 bytes (C order, whole tensor).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import platform
import sys
from pathlib import Path

import llama_cpp
import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "matmul"))
import make_golden as matmul_golden  # noqa: E402  (golden/matmul: struct ggml_tensor in ctypes)

CONTEXT = dict(n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2)
SKIPPED_OPS = {"VIEW", "PERMUTE", "TRANSPOSE", "SET_ROWS", "CPY"}
VALUES_LIMIT = 20_000            # elements per token above which a node outside layers 0 and last is hashed only
REAL_TEXT = "The capital of France is"
# (case, model key, flash attention); synthetic models: the file write_synth.py wrote for that case
CASES = [
    ("smollm2", "smollm2", False), ("smollm2-fa", "smollm2", True),
    ("gemma3", "gemma3", False), ("gemma3-fa", "gemma3", True),
    ("synth-qwen2", "synth-qwen2", False), ("synth-qwen3", "synth-qwen3", False),
    ("synth-llama-rope-freqs", "synth-llama-rope-freqs", False), ("synth-gemma3", "synth-gemma3", False),
]
SYNTH_IDS = 7                    # the first ids of the synthetic case in golden/logits/cases.json

BASE = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
BASE.ggml_op_name.restype = ctypes.c_char_p
BASE.ggml_op_name.argtypes = [ctypes.c_int]


class Capture:
    """The eval callback: every computed node (name, op, float32 values)."""

    def __init__(self):
        self.nodes: list[tuple[str, str, np.ndarray]] = []
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._callback)

    def _callback(self, address, ask, _user_data) -> bool:
        t = matmul_golden.tensor_at(address)
        name, op = t.name.decode(), BASE.ggml_op_name(t.op).decode()
        wanted = (" (" not in name and not name.startswith("node_") and op not in SKIPPED_OPS
                  and t.type in (0, 1))
        if ask:
            return wanted
        if wanted:
            self.nodes.append((name, op, matmul_golden.read_tensor(t).astype(np.float32)))
        return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_for(path: Path, key: str) -> list[int]:
    if key.startswith("synth"):
        cases = json.loads((HERE.parent / "logits" / "cases.json").read_text(encoding="utf-8"))["cases"]
        return cases[key]["ids"][:SYNTH_IDS]
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = llm.tokenize(REAL_TEXT.encode(), add_bos=True, special=False)
    llm.close()
    return ids


def run(path: Path, ids: list[int], flash_attn: bool) -> tuple[list, int]:
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    assert model, path
    capture = Capture()
    params = llama_cpp.llama_context_default_params()
    for name, value in CONTEXT.items():
        setattr(params, name, value)
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    params.cb_eval = capture.callback
    params.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(model, params)
    assert ctx, path
    n = len(ids)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    batch.n_tokens = n
    for i, tok in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
        batch.seq_id[i][0], batch.logits[i] = 0, 1
    assert llama_cpp.llama_decode(ctx, batch) == 0, path
    n_layer = llama_cpp.llama_model_n_layer(model)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return capture.nodes, n_layer


def layer_of(name: str) -> int | None:
    base = name.split("#")[0]
    head, _, tail = base.rpartition("-")
    return int(tail) if head and tail.isdigit() else None


def make_case(case: str, path: Path, key: str, flash_attn: bool) -> dict:
    ids = ids_for(path, key)
    n = len(ids)
    nodes, n_layer = run(path, ids, flash_attn)
    arrays = {"tokens": np.array(ids, np.int32)}
    index, seen = [], {}
    for name, op, values in nodes:
        seen[name] = seen.get(name, 0) + 1
        key_name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        while values.ndim > 1 and values.shape[0] == 1:
            values = values[0]
        if name.startswith(("kq-", "kq_soft_max-")):
            values = np.ascontiguousarray(values[..., :n])            # the batch's own cells
        axes = [a for a, s in enumerate(values.shape) if s == n]
        assert axes, (case, name, values.shape)
        token_axis = axes[0] if not name.startswith(("kq-", "kq_soft_max-")) else values.ndim - 2
        entry = {"name": key_name, "op": op, "shape": list(values.shape), "token_axis": token_axis,
                 "sum": float(values.astype(np.float64).sum()),
                 "sha256": hashlib.sha256(np.ascontiguousarray(values, np.float32).tobytes()).hexdigest()}
        layer = layer_of(name)
        per_token = values.size // n
        if layer in (0, n_layer - 1) or (layer is None and per_token <= VALUES_LIMIT):
            i = len(index)
            arrays[f"k{i}_first"] = np.take(values, 0, axis=token_axis)
            arrays[f"k{i}_last"] = np.take(values, n - 1, axis=token_axis)
            entry["values"] = f"k{i}"
        index.append(entry)
    np.savez_compressed(HERE / f"{case}.npz", **arrays)
    print(f"{case}: {n} tokens, {len(index)} nodes, {(HERE / f'{case}.npz').stat().st_size} bytes", flush=True)
    return {"model": path.name, "sha256": sha256_file(path), "flash_attn": flash_attn, "n_layer": n_layer,
            "ids": ids, "npz_sha256": sha256_file(HERE / f"{case}.npz"), "nodes": index}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("smollm2", type=Path)
    ap.add_argument("gemma3", type=Path)
    ap.add_argument("synth_dir", type=Path)
    args = ap.parse_args()
    matmul_golden.check_layout()
    paths = {"smollm2": args.smollm2, "gemma3": args.gemma3}
    cases = {}
    for case, key, flash_attn in CASES:
        path = paths.get(key) or args.synth_dir / f"{key}.gguf"
        cases[case] = make_case(case, path, key, flash_attn)
    index = {
        "made_by": "golden/trace/make_golden.py",
        "command": "python golden/logits/write_synth.py DIR && python golden/trace/make_golden.py "
                   f"{args.smollm2.name} {args.gemma3.name} DIR",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "date": datetime.date.today().isoformat(),
        "context": CONTEXT, "real_text": REAL_TEXT, "synth_ids": SYNTH_IDS, "values_limit": VALUES_LIMIT,
        "skipped_ops": sorted(SKIPPED_OPS),
        "cases": cases,
    }
    tmp = HERE / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    tmp.replace(HERE / "index.json")


if __name__ == "__main__":
    main()
