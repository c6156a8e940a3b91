"""What the registry hands out and the errors it raises, below both zoo.registry and zoo.hf (which builds Hugging
Face models for it), so neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import EdgeattnError
from runtime.modelspec import ModelSpec
from pipeline.artifacts import artifact_name


class RegistryError(EdgeattnError, ValueError):
    """Unknown model name or bad override."""


class CheckpointError(EdgeattnError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model; the message names the file."""


@dataclass
class BuiltModel:
    name: str
    module: Any  # torch.nn.Module
    spec: ModelSpec
    config: dict[str, Any]
    graph: Path | None = None  # the ONNX file the model already is (onnx:<file>): export copies it, no tracing

    @property
    def artifact_name(self) -> str:
        return artifact_name(self.name)
