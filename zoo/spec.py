"""Declarative model specs: one place that export, calibration, engines, runtime and bench read.

This module imports numpy only, so a spec can be written to JSON beside an artifact and read back
on a device by ``runtime/`` without torch.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DimRange:
    """A dynamic dimension: its name in the graph and the min/opt/max sizes engines are built for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"DimRange: expected 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, numpy dtype name and shape; str entries are dynamic dims."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Tolerance:
    """Parity tolerances for one precision against PyTorch fp32 logits."""

    max_abs: float | None  # None: reported, not gated (reduced precision: judged by cosine, top-1, accuracy)
    min_cosine: float
    min_top1_agreement: float
    max_drop_points: float  # accuracy points, the one budget unit (make quantize MAX_DROP=0.5 is this too)
    cosine_on: str = "min"  # "min" over samples, or "mean" (INT8/bf16: one outlier sample must not fail 10k)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tolerance":
        d = dict(d)
        if "max_accuracy_drop" in d:  # specs written before the budget moved to points held a fraction
            d.setdefault("max_drop_points", round(100.0 * float(d.pop("max_accuracy_drop")), 6))
        return cls(**d)


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1_agreement=1.0, max_drop_points=0.0),
    "fp16": Tolerance(max_abs=None, min_cosine=0.999, min_top1_agreement=0.99, max_drop_points=0.1),
    "bf16": Tolerance(max_abs=None, min_cosine=0.99, min_top1_agreement=0.99, max_drop_points=0.5, cosine_on="mean"),
    "int8": Tolerance(max_abs=None, min_cosine=0.99, min_top1_agreement=0.99, max_drop_points=0.5, cosine_on="mean"),
}


@dataclass
class ModelSpec:
    """Everything downstream stages need to know about a model besides its weights."""

    name: str
    task: str  # "image_classification" | "text_classification"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic: dict[str, DimRange]  # dim name -> range, e.g. {"batch": DimRange(1, 8, 64)}
    labels: list[str]
    preprocess: dict[str, Any] = field(default_factory=dict)
    opset: int = 18  # >= 17 for LayerNormalization as one op; 18 is the dynamo exporter's native opset
    dataset: str | None = None  # name of the zoo dataset it is evaluated on, None for parity-only
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    # ---- shapes -------------------------------------------------------------------------------
    def concrete_shape(self, tensor: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
        """Shape of ``tensor`` with dynamic dims taken from ``sizes`` (default: the opt size)."""
        out = []
        for d in tensor.shape:
            if isinstance(d, str):
                out.append(int(sizes.get(d, self.dynamic[d].opt)))
            else:
                out.append(int(d))
        return tuple(out)

    def profile(self, which: str) -> dict[str, tuple[int, ...]]:
        """Input shapes at ``which`` in {"min", "opt", "max"}: a TensorRT optimisation profile row."""
        sizes = {k: getattr(r, which) for k, r in self.dynamic.items()}
        return {t.name: self.concrete_shape(t, sizes) for t in self.inputs}

    def example_inputs(self, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Random but valid inputs: token ids in [first_real_id, vocab) with a CLS first, pixels ~ N(0, 1)."""
        rng = np.random.default_rng(seed)
        sizes = sizes or {}
        feed = {}
        for t in self.inputs:
            shape = self.concrete_shape(t, sizes)
            if t.dtype.startswith("int"):
                vocab = int(self.preprocess.get("vocab_size", 100))
                lo = int(self.preprocess.get("first_real_id", 1))
                ids = rng.integers(lo, vocab, size=shape, dtype=np.int64)
                if "cls_id" in self.preprocess and ids.ndim == 2:
                    ids[:, 0] = int(self.preprocess["cls_id"])
                feed[t.name] = ids.astype(t.dtype)
            else:
                feed[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feed

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [dict(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in self.inputs]
        d["outputs"] = [dict(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(
            name=d["name"],
            task=d["task"],
            inputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"]],
            outputs=[TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"]],
            dynamic={k: DimRange(**v) for k, v in d["dynamic"].items()},
            labels=list(d["labels"]),
            preprocess=dict(d.get("preprocess", {})),
            opset=int(d.get("opset", 18)),
            dataset=d.get("dataset"),
            tolerances={k: Tolerance.from_dict(v) for k, v in d.get("tolerances", {}).items()} or dict(DEFAULT_TOLERANCES),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))
