"""Lays out a small ollama model store for tests, the way ollama writes one.

    root/manifests/<host>/<namespace>/<model>/<tag>   compact JSON, Docker v2 schema 2
    root/blobs/sha256-<hex>                            each blob under its true sha256
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from refllm.formats.writer import GGUFWriter

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.ollama.image."

TEMPLATE = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
            "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n")
SYSTEM = "You are a helpful assistant."
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6}
LICENSE = "Apache License\nVersion 2.0, January 2004\n"


def tiny_gguf(scratch: Path) -> bytes:
    """The bytes of a small valid GGUF (one F32 tensor), written with refllm's GGUFWriter."""
    writer = GGUFWriter()
    writer.add_kv("general.architecture", "llama")
    writer.add_kv("general.name", "tiny")
    writer.add_tensor("token_embd.weight", "F32", (2, 4), np.arange(8, dtype=np.float32))
    path = scratch / "tiny.gguf"
    writer.write(path)
    data = path.read_bytes()
    path.unlink()
    return data


def write_blob(root: Path, data: bytes) -> str:
    """Store `data` as a blob under its sha256; return 'sha256:<hex>'."""
    hex_digits = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{hex_digits}").write_bytes(data)
    return f"sha256:{hex_digits}"


def layer(root: Path, kind: str, data: bytes, **extra) -> dict:
    """A manifest layer entry for `data`, stored as a blob."""
    return {"mediaType": LAYER_MEDIA_TYPE + kind, "digest": write_blob(root, data), "size": len(data),
            **extra}


def write_manifest(root: Path, relpath: str, config: dict, layers: list[dict]) -> Path:
    """Write a manifest at manifests/<relpath> ('host/namespace/model/tag')."""
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
           "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": write_blob(root, config_bytes),
                      "size": len(config_bytes)},
           "layers": layers}
    path = root / "manifests" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    return path


def add_model(root: Path, relpath: str = "registry.ollama.ai/library/SmolLM2/latest",
              model_bytes: bytes | None = None) -> Path:
    """A complete model like `ollama pull` leaves: config, model, template, system, params and
    license layers. Returns the manifest path."""
    root.mkdir(parents=True, exist_ok=True)
    model_bytes = tiny_gguf(root) if model_bytes is None else model_bytes
    config = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
              "model_type": "135M", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": []}}
    layers = [layer(root, "model", model_bytes),
              layer(root, "template", TEMPLATE.encode()),
              layer(root, "system", SYSTEM.encode()),
              layer(root, "params", json.dumps(PARAMS).encode()),
              layer(root, "license", LICENSE.encode())]
    return write_manifest(root, relpath, config, layers)
