"""Labelled evaluation feeds, one array per model input (validation split, user data, or seeded synthetic
inputs for parity-only models).

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
from runtime.preprocess import feed_batches
from zoo.data import load_dataset
from zoo.synthetic import normalize_nchw, synthetic_uint8_images

# Seeded images for models without a dataset (torchvision:vit_b_16): verify judges parity on this many, and the
# quantize stage's budget loop judges on as many held-out ones, so both state a verdict on the same n.
PARITY_SAMPLES = 32


@dataclass
class EvalSet:
    """Sample-aligned inputs (name -> (N, ...), every model input) with optional labels ``y`` (N,). With ``pad_id``
    (text classifiers), each batch's 2-D int inputs lose their all-padding trailing columns."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray | None = None
    pad_id: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise CalibrationError("eval set: no inputs; expected one array per model input")
        n = {k: len(v) for k, v in self.inputs.items()}
        if len(set(n.values())) != 1 or (self.y is not None and len(self.y) != next(iter(n.values()))):
            raise CalibrationError(f"eval set: inputs have {n} samples and labels "
                                   f"{None if self.y is None else len(self.y)}; expected one N for all")

    def __len__(self) -> int:
        return int(len(next(iter(self.inputs.values()))))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        return feed_batches(self.inputs, batch_size, self.pad_id)

    def subset_index(self, n: int | None, seed: int = 0) -> np.ndarray:
        """The rows :meth:`subset` takes (sorted), so a reference computed on this set serves the subset too."""
        if n is None or n >= len(self):
            return np.arange(len(self))
        return np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))

    def subset(self, n: int | None, seed: int = 0) -> "EvalSet":
        """A seeded random subset of ``n`` rows (all rows if n is None or >= N), in sorted index order."""
        if n is None or n >= len(self):
            return self
        idx = self.subset_index(n, seed)
        return EvalSet({k: v[idx] for k, v in self.inputs.items()}, None if self.y is None else self.y[idx],
                       self.pad_id, f"{self.description} (subset {n}, seed {seed})")

    def save_npz(self, path: str | os.PathLike) -> None:
        np.savez(path, **{f"input:{k}": v for k, v in self.inputs.items()},
                 pad_id=np.array(-1 if self.pad_id is None else self.pad_id))

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "EvalSet":
        with np.load(path, allow_pickle=False) as z:
            pad = int(z["pad_id"])
            inputs = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
            return cls(inputs, None, None if pad < 0 else pad)


def load_eval_set(spec: Any, model_dir: str | os.PathLike, split: str = "val", n: int | None = None, seed: int = 0,
                  synthetic_n: int = 16, synthetic_seed: int = 1, dataset: Any = None) -> EvalSet:
    """The model's ``split`` (default validation) as an :class:`EvalSet`; a model without a dataset gets
    ``synthetic_n`` seeded inputs (a seed different from calibration's): natural-ish images for an image input, else
    the spec's example inputs (token ids within its vocabulary, float features) at its opt sizes."""
    if split == "train":
        raise CalibrationError("eval set: got split 'train', expected 'val' (or 'test'): judge on held-out data")
    pp = spec.preprocess or {}
    inp = spec.inputs[0]
    if spec.dataset is None:
        if len(spec.inputs) != 1 or len(inp.shape) != 4 or not inp.dtype.startswith("float"):
            sizes = {k: r.opt for k, r in spec.dynamic.items()}
            feeds = spec.example_inputs({**sizes, "batch": synthetic_n}, seed=synthetic_seed)
            kinds = ", ".join(f"{t.name} {t.dtype}" for t in spec.inputs)
            return EvalSet(feeds, None, None, f"synthetic inputs ({kinds}) n={synthetic_n} seed={synthetic_seed}")
        c = int(pp.get("channels", inp.shape[1] if not isinstance(inp.shape[1], str) else 3))
        h, w = pp.get("size", inp.shape[2:])
        u8 = synthetic_uint8_images(synthetic_n, c, int(h), int(w), seed=synthetic_seed)
        x = normalize_nchw(u8, pp.get("mean", 0.0), pp.get("std", 1.0))
        return EvalSet({inp.name: x}, None, None, f"synthetic images n={synthetic_n} seed={synthetic_seed}")
    if len(spec.inputs) != 1:
        raise CalibrationError(f"eval set: dataset '{spec.dataset}' feeds one input; the model has "
                               f"{[t.name for t in spec.inputs]}: give its data as an .npz of one array per input "
                               "(--data)")
    if dataset is None:
        dataset = load_dataset(spec.dataset)
    s = getattr(dataset, split)
    x = encode_inputs(spec, s.x, Path(model_dir))
    y = np.asarray(s.y, np.int64) if spec.scored_on_labels() else None  # a feature extractor: its sentences only
    es = EvalSet({inp.name: x}, y, spec.trim_pad_id(), f"{dataset.name} {split} n={len(s)}")
    return es.subset(n, seed)
