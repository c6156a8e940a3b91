"""Calibration data: ONE deterministic, rewindable iterable of batched feed dicts, plus the ONNX Runtime reader.

    data = CalibrationData.from_dataset(spec, load_dataset(spec.dataset), model_dir, size=256, batch_size=32)
    for feed in data: ...                    # dict[input name, np.ndarray]; iterate again = same batches
    OrtCalibrationReader(data)               # onnxruntime.quantization CalibrationDataReader (get_next/rewind)

Samples come from the dataset's TRAINING split only (seeded choice without replacement); validation and
test splits are never touched here. Parity-only models (no dataset) use :meth:`CalibrationData.synthetic_images`:
seeded smooth multi-octave noise, closer to natural image statistics than white noise.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from runtime.errors import EdgeattnError
from runtime.preprocess import TextEncoder, feed_batches, normalize_images, trim_padding
from zoo.synthetic import normalize_nchw, synthetic_uint8_images

log = logging.getLogger("edgeattn.calibration")

# The calibration methods we expose, by onnxruntime.quantization.CalibrationMethod member name.
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


class CalibrationError(EdgeattnError, ValueError):
    """Calibration data cannot be built or used; the message says which input/split and what was expected."""


def _spec_attr(spec: Any, name: str, default: Any = None) -> Any:
    return getattr(spec, name, default) if not isinstance(spec, Mapping) else spec.get(name, default)


def encode_inputs(spec: Any, x: np.ndarray | Sequence[str], model_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Raw split data -> model input array, exactly as training saw it.

    Images: uint8 (N, H, W) -> float32 (N, C, H, W) normalised with the spec's mean/std.
    Text: sentences -> int64 (N, max_len) ids from ``<model_dir>/<tokenizer>``, padded with pad_id.
    """
    pp = dict(_spec_attr(spec, "preprocess", {}) or {})
    kind = pp.get("kind")
    if kind == "image":
        arr = np.asarray(x)
        if arr.ndim == 4 and arr.dtype == np.float32:  # already normalised
            return arr
        return normalize_images(arr, pp["mean"], pp["std"])
    if kind == "text":
        if model_dir is None:
            raise CalibrationError("text calibration: model_dir is needed to find the tokenizer JSON")
        enc = TextEncoder(Path(model_dir) / pp.get("tokenizer", "tokenizer.json"))
        return enc.encode(list(x), pad_to=int(pp.get("max_len", 0)) or None)
    raise CalibrationError(f"spec preprocess kind: got {kind!r}, expected 'image' or 'text'")


def batch_feeds(arrays: Mapping[str, np.ndarray], batch_size: int, pad_id: int | None = None) -> list[dict[str, np.ndarray]]:
    """Split aligned arrays (same leading dim) into feed dicts of ``batch_size`` rows (last may be smaller).
    With ``pad_id``, int inputs are trimmed to the longest row of each batch."""
    if batch_size < 1:
        raise CalibrationError(f"batch_size: got {batch_size}, expected >= 1")
    names = list(arrays)
    if not names:
        raise CalibrationError("calibration arrays: got none, expected at least one input")
    n = len(arrays[names[0]])
    bad = {k: len(v) for k, v in arrays.items() if len(v) != n}
    if bad:
        raise CalibrationError(f"calibration arrays: leading dims differ ({n} for '{names[0]}', {bad})")
    return list(feed_batches({k: np.asarray(v) for k, v in arrays.items()}, batch_size, pad_id))


class CalibrationData:
    """An immutable list of batched feed dicts. Iterating always yields the same batches in the same order
    (arrays are read-only), so it can be rewound any number of times; ``sha256`` names its exact bytes."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]], source: dict[str, Any] | None = None):
        if not batches:
            raise CalibrationError("calibration data: got 0 batches, expected at least one")
        frozen = []
        for b in batches:
            fb = {}
            for k, v in b.items():
                a = np.array(v, copy=True, order="C")
                a.setflags(write=False)
                fb[k] = a
            frozen.append(fb)
        names = [list(b) for b in frozen]
        if any(n != names[0] for n in names):
            raise CalibrationError(f"calibration data: batches have different inputs {names[0]} vs others")
        self._batches = frozen
        self.source = dict(source or {})
        self._sha = None

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, spec: Any, dataset: Any, model_dir: str | os.PathLike | None = None, size: int = 256,
                     batch_size: int = 32, seed: int = 0, split: str = "train") -> "CalibrationData":
        """``size`` samples chosen (seeded, without replacement) from ``dataset.train`` and preprocessed as in
        training. Only the training split is allowed: calibrating on validation/test data leaks them."""
        if split != "train":
            raise CalibrationError(f"calibration split: got '{split}', expected 'train' (validation and test data "
                                   "must never be used for calibration)")
        if size < 1:
            raise CalibrationError(f"calibration size: got {size}, expected >= 1")
        train = dataset.train
        n = len(train)
        if n == 0:
            raise CalibrationError(f"dataset '{getattr(dataset, 'name', '?')}': training split is empty")
        take = min(size, n)
        idx = np.random.default_rng(seed).choice(n, size=take, replace=False)
        xs = np.asarray(train.x)[idx] if isinstance(train.x, np.ndarray) else [train.x[int(i)] for i in idx]
        arr = encode_inputs(spec, xs, model_dir)
        inputs = _spec_attr(spec, "inputs")
        if len(inputs) != 1:
            raise CalibrationError(f"dataset calibration: model has {len(inputs)} inputs, expected 1")
        pp = _spec_attr(spec, "preprocess", {}) or {}
        if pp.get("kind") == "text":
            # One width for every batch (the longest sentence of the set): ORT's histogram calibrators
            # (Entropy, Percentile) stack each tensor across batches and need equal shapes.
            arr = trim_padding(arr, int(pp.get("pad_id", 0)))
        batches = batch_feeds({inputs[0].name: arr}, batch_size)
        src = {"kind": "dataset", "dataset": getattr(dataset, "name", None),
               "dataset_sha256": getattr(dataset, "sha256", None), "split": "train", "seed": seed,
               "requested": size, "n_samples": take, "batch_size": batch_size,
               "indices_sha256": hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest()}
        return cls(batches, src)

    @classmethod
    def synthetic_images(cls, spec: Any, size: int = 64, batch_size: int = 8, seed: int = 0) -> "CalibrationData":
        """Seeded natural-ish images normalised with the spec's mean/std (for models without a dataset)."""
        inputs = _spec_attr(spec, "inputs")
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CalibrationError(f"synthetic images: expected one (N, C, H, W) input, got {[i.shape for i in inputs]}")
        pp = _spec_attr(spec, "preprocess", {}) or {}
        _, c, h, w = inputs[0].shape
        c = int(pp.get("channels", c)) if isinstance(c, str) else int(c)
        h, w = (int(h), int(w)) if not isinstance(h, str) else tuple(pp["size"])
        u8 = synthetic_uint8_images(size, c, h, w, seed=seed)
        x = normalize_nchw(u8, pp.get("mean", 0.0), pp.get("std", 1.0))
        src = {"kind": "synthetic_images", "seed": seed, "n_samples": size, "batch_size": batch_size}
        return cls(batch_feeds({inputs[0].name: x}, batch_size), src)

    @classmethod
    def synthetic(cls, spec: Any, size: int = 64, batch_size: int = 8, seed: int = 0) -> "CalibrationData":
        """Seeded data valid for every input kind, for models without a dataset: natural-ish images for one
        (N, C, H, W) input, else ``spec.example_inputs`` for every input (token ids within the spec's vocabulary,
        float features ~ N(0, 1)) at the spec's opt sizes."""
        inputs = _spec_attr(spec, "inputs")
        if len(inputs) == 1 and len(inputs[0].shape) == 4 and inputs[0].dtype.startswith("float"):
            return cls.synthetic_images(spec, size, batch_size, seed)
        sizes = {k: r.opt for k, r in spec.dynamic.items()}
        feeds = spec.example_inputs({**sizes, "batch": size}, seed=seed)
        src = {"kind": "synthetic_inputs", "seed": seed, "n_samples": size, "batch_size": batch_size,
               "sizes": {k: v for k, v in sizes.items() if k != "batch"}}
        return cls(batch_feeds(feeds, batch_size), src)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], batch_size: int = 32, pad_id: int | None = None,
                    source: dict[str, Any] | None = None) -> "CalibrationData":
        """Already-preprocessed aligned arrays (name -> (N, ...)) split into batches."""
        n = len(next(iter(arrays.values())))
        return cls(batch_feeds(arrays, batch_size, pad_id),
                   {"kind": "arrays", "n_samples": n, "batch_size": batch_size, **(source or {})})

    # ---- access ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter([dict(b) for b in self._batches])

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return dict(self._batches[i])

    @property
    def input_names(self) -> list[str]:
        return list(self._batches[0])

    @property
    def batch_size(self) -> int:
        return int(len(next(iter(self._batches[0].values()))))

    @property
    def n_samples(self) -> int:
        return int(sum(len(next(iter(b.values()))) for b in self._batches))

    @property
    def sha256(self) -> str:
        """Hash of every batch's names, dtypes, shapes and bytes, in order."""
        if self._sha is None:
            h = hashlib.sha256()
            for b in self._batches:
                for k in sorted(b):
                    a = b[k]
                    h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
                    h.update(a.tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def describe(self) -> dict[str, Any]:
        return {**self.source, "n_samples": self.n_samples, "n_batches": len(self), "sha256": self.sha256}


class OrtCalibrationReader:
    """onnxruntime.quantization ``CalibrationDataReader`` over a :class:`CalibrationData` (duck-typed: ORT's
    ABC accepts any class with ``get_next``). ``rewind()`` restarts; ``set_range`` supports CalibStridedMinMax."""

    def __init__(self, data: CalibrationData):
        self.data = data
        self._start, self._end = 0, len(data)
        self._pos = 0
        self.batches_served = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        feed = self.data[self._pos]
        self._pos += 1
        self.batches_served += 1
        return feed

    def rewind(self) -> None:
        self._pos = self._start

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = max(0, start_index), min(len(self.data), end_index)
        self._pos = self._start

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        self.rewind()
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed
