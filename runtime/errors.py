"""Typed errors of the thin runtime, and ``EdgeattnError``, the base of every error the project raises on purpose.
Each message says what was received and what was expected."""
from __future__ import annotations


class EdgeattnError(Exception):
    """Base of every error the project raises on purpose (a bad model, a missing file, a failed stage): every stage's
    CLI prints its message as one line ``error: <stage> <model>: ...`` and exits 2 (pipeline.stage), never a
    traceback. An exception of another type is a bug and keeps its traceback."""


class RuntimeErrorBase(EdgeattnError):
    """Base class of every error the runtime raises on purpose."""


class ModelLoadError(RuntimeErrorBase):
    """A model file is missing, truncated, corrupt, or not what the backend can load."""


class InputError(RuntimeErrorBase, ValueError):
    """A feed does not match the model's inputs: name, dtype, rank or dynamic-dimension range."""


class BackendError(RuntimeErrorBase):
    """A backend failed while running a valid feed, or is not available on this machine."""


class PreprocessError(RuntimeErrorBase, ValueError):
    """Raw input (sentence, image file, tokenizer) could not be turned into a feed."""


class EngineMismatchError(ModelLoadError):
    """An engine's manifest does not match the installed TensorRT flavour/version, the GPU, or its bytes."""
