"""Labelled evaluation feeds (validation split, or seeded synthetic images for parity-only models).

Used by optimize/ to judge FP16/INT8 artifacts: the accuracy budget is judged on the VALIDATION split,
never on test (``make verify`` reports test numbers later). numpy only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from calibration.readers import CalibrationError, encode_inputs
from runtime.preprocess import trim_padding
from zoo.data import load_dataset
from zoo.synthetic import normalize_nchw, synthetic_uint8_images


@dataclass
class EvalSet:
    """One input's data ``x`` (N, ...) with optional labels ``y`` (N,). Int inputs are trimmed per batch."""

    input_name: str
    x: np.ndarray
    y: np.ndarray | None = None
    pad_id: int | None = None
    description: str = ""

    def __len__(self) -> int:
        return int(len(self.x))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.x), batch_size):
            xb = self.x[i:i + batch_size]
            if self.pad_id is not None:
                xb = trim_padding(xb, self.pad_id)
            yield {self.input_name: np.ascontiguousarray(xb)}

    def subset(self, n: int | None, seed: int = 0) -> "EvalSet":
        """A seeded random subset of ``n`` rows (all rows if n is None or >= N), in sorted index order."""
        if n is None or n >= len(self.x):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.x), size=n, replace=False))
        return EvalSet(self.input_name, self.x[idx], None if self.y is None else self.y[idx], self.pad_id,
                       f"{self.description} (subset {n}, seed {seed})")

    def save_npz(self, path: str | os.PathLike) -> None:
        np.savez(path, x=self.x, input_name=np.array(self.input_name),
                 pad_id=np.array(-1 if self.pad_id is None else self.pad_id))

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "EvalSet":
        with np.load(path, allow_pickle=False) as z:
            pad = int(z["pad_id"])
            return cls(str(z["input_name"]), z["x"], None, None if pad < 0 else pad)


def load_eval_set(spec: Any, model_dir: str | os.PathLike, split: str = "val", n: int | None = None, seed: int = 0,
                  synthetic_n: int = 16, synthetic_seed: int = 1, dataset: Any = None) -> EvalSet:
    """The model's ``split`` (default validation) as an :class:`EvalSet`; a model without a dataset gets
    ``synthetic_n`` seeded inputs (a seed different from calibration's): natural-ish images for an image input, else
    the spec's example inputs (token ids within its vocabulary, float features) at its opt sizes."""
    if split == "train":
        raise CalibrationError("eval set: got split 'train', expected 'val' (or 'test'): judge on held-out data")
    inp = spec.inputs[0]
    if len(spec.inputs) != 1:
        raise CalibrationError(f"eval set: model has {len(spec.inputs)} inputs, expected 1")
    pp = spec.preprocess or {}
    if spec.dataset is None:
        if len(inp.shape) != 4 or not inp.dtype.startswith("float"):
            sizes = {k: r.opt for k, r in spec.dynamic.items()}
            x = spec.example_inputs({**sizes, "batch": synthetic_n}, seed=synthetic_seed)[inp.name]
            return EvalSet(inp.name, x, None, None, f"synthetic {inp.dtype} inputs n={synthetic_n} seed={synthetic_seed}")
        c = int(pp.get("channels", inp.shape[1] if not isinstance(inp.shape[1], str) else 3))
        h, w = pp.get("size", inp.shape[2:])
        u8 = synthetic_uint8_images(synthetic_n, c, int(h), int(w), seed=synthetic_seed)
        x = normalize_nchw(u8, pp.get("mean", 0.0), pp.get("std", 1.0))
        return EvalSet(inp.name, x, None, None, f"synthetic images n={synthetic_n} seed={synthetic_seed}")
    if dataset is None:
        dataset = load_dataset(spec.dataset)
    s = getattr(dataset, split)
    x = encode_inputs(spec, s.x, Path(model_dir))
    pad = int(pp.get("pad_id", 0)) if pp.get("kind") == "text" else None
    es = EvalSet(inp.name, x, np.asarray(s.y, np.int64), pad, f"{dataset.name} {split} n={len(s)}")
    return es.subset(n, seed)
