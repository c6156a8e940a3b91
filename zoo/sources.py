"""The zoo side of the source registry (pipeline.sources says which kind a name is; this says what zoo/ does for
it). One :class:`ZooSource` per kind, registered in ``zoo.registry.SOURCES``: make the model from its name, what
export exports, the reference verify and bench compare with, and what an export is made from. A new source is one
subclass (``zoo.onnx_source`` is one) plus a row in pipeline.sources."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import ModelRef
from zoo.built import BuiltModel, RegistryError


class ZooSource:
    """What zoo/ does for one source kind; see the module docstring."""

    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        """The model and its spec from the name alone (``overrides`` change config fields)."""
        raise NotImplementedError

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        """What export exports: ``weights`` a file given for it, ``task`` given for a model that does not say its
        own (an ONNX file), ``data`` the user's data export recorded."""
        raise NotImplementedError

    def reference(self, ref: ModelRef) -> BuiltModel:
        """What verify and bench compare the artifacts with, after export (PyTorch sources: :meth:`build` again)."""
        return self.build(ref)

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        """What an export is made from, for the up-to-date check (digests: a changed source re-exports)."""
        raise NotImplementedError


def no_task(ref: ModelRef, task: str | None) -> None:
    """RegistryError when a task is given to a model whose own spec says it."""
    if task:
        raise RegistryError(f"model '{ref.name}': got task '{task}', expected none: its spec gives its task (a task "
                            "is given only for an ONNX file)")
