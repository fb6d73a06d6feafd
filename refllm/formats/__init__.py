"""Bytes to structures: GGUF v1-3 (both byte orders), legacy GGML/GGMF/GGJT, the GGUF writer
and ollama's model store. Nothing here depends on the rest of refllm."""

from refllm.formats.errors import FormatError, LFSPointerError, TruncatedError, UnknownTypeError
from refllm.formats.model import ModelFile, Problem, TensorInfo
from refllm.formats.reader import open_model, read_model
from refllm.formats.values import NestedArray, StringArray, ValueType
from refllm.formats.writer import GGUFWriter, copy_model

__all__ = ["FormatError", "LFSPointerError", "TruncatedError", "UnknownTypeError", "ModelFile",
           "Problem", "TensorInfo", "open_model", "read_model", "NestedArray", "StringArray",
           "ValueType", "GGUFWriter", "copy_model"]
