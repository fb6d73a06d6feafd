"""Bytes <-> structures: GGUF v1-3 (both byte orders), the pre-GGUF GGML/GGMF/GGJT files
(ggjt.py), the GGUF writer, ollama's model store and the inspect report. Nothing here depends on
the rest of refllm but its root modules (errors.py, type_traits.py)."""

from refllm.formats.errors import FormatError, LFSPointerError, TruncatedError, UnknownTypeError
from refllm.formats.model import ModelFile, Problem, TensorInfo
from refllm.formats.reader import open_model, read_model
from refllm.formats.values import NestedArray, StringArray, ValueType
from refllm.formats.writer import GGUFWriter, copy_model

__all__ = ["FormatError", "LFSPointerError", "TruncatedError", "UnknownTypeError", "ModelFile",
           "Problem", "TensorInfo", "open_model", "read_model", "NestedArray", "StringArray",
           "ValueType", "GGUFWriter", "copy_model"]
