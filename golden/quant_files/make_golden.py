"""Make golden/quant_files: what llama-quantize writes for each FTYPE, as hashes.

Run with a Python that has llama-cpp-python==0.3.36 and gguf==0.19.0 (never refllm's own
environment), after writing the sources with refllm:

    python golden/quant_files/write_sources.py /tmp/refllm-qsrc            # refllm's Python
    python golden/quant_files/make_golden.py /tmp/refllm-qsrc

For each source and each FTYPE it calls `llama_cpp.llama_model_quantize` (llama-quantize's
library function: no importance matrix, every other parameter at its default but nthread) and
records in hashes.json the sha256 of the whole output file, and for each tensor, in file order,
its type and the sha256 of its data. The outputs themselves are not kept (model weights are
never committed). provenance.json holds the versions, the parameters and the sources' sha256.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp

HERE = Path(__file__).parent
SOURCES = ("synth-llama-f32", "smollm2-f32")
# FTYPE name -> llama_ftype (include/llama.h)
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "F16": 1, "BF16": 32}
NTHREAD = 2


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_hashes(path: Path) -> list[dict]:
    reader = gguf.GGUFReader(path)
    return [{"name": t.name, "type": t.tensor_type.name,
             "sha256": hashlib.sha256(t.data.tobytes()).hexdigest()} for t in reader.tensors]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src_dir = Path(sys.argv[1])
    hashes, sources = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in SOURCES:
            path = src_dir / f"{source}.gguf"
            sources[source] = sha256_file(path)
            hashes[source] = {}
            for name, ftype in FTYPES.items():
                out = Path(tmp) / f"{source}-{name}.gguf"
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype, params.nthread = ftype, NTHREAD
                rc = llama_cpp.llama_model_quantize(str(path).encode(), str(out).encode(), ctypes.byref(params))
                if rc != 0:
                    sys.exit(f"{source} {name}: llama_model_quantize returned {rc}")
                hashes[source][name] = {"sha256": sha256_file(out), "size": out.stat().st_size,
                                        "tensors": tensor_hashes(out)}
                print(source, name, hashes[source][name]["sha256"][:16], flush=True)
                out.unlink()
    (HERE / "hashes.json").write_text(json.dumps(hashes, indent=1) + "\n", encoding="utf-8")
    params = llama_cpp.llama_model_quantize_default_params()
    provenance = {
        "made_by": "golden/quant_files/make_golden.py",
        "command": "python golden/quant_files/write_sources.py DIR && python golden/quant_files/make_golden.py DIR",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36, per its CHANGELOG)",
        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "quantize_params": {f: (getattr(params, f) if isinstance(getattr(params, f), (int, float, bool)) else None)
                            for f, _ in params._fields_} | {"nthread": NTHREAD, "ftype": "per FTYPES"},
        "ftypes": FTYPES,
        "sources_sha256": sources,
        "sources_json_sha256": sha256_file(HERE / "sources.json"),
        "hashes_json_sha256": sha256_file(HERE / "hashes.json"),
    }
    (HERE / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
