"""edgeattn thin runtime: load ONNX files or TensorRT engines and run them with numpy feeds.

Imports numpy and the chosen backend only: never torch, never onnx. Backends are imported lazily.
"""
from runtime.errors import (  # noqa: F401
    BackendError,
    EngineMismatchError,
    InputError,
    ModelLoadError,
    PreprocessError,
    RuntimeErrorBase,
)
