"""Your own calibration and evaluation data for a model without a dataset of ours: ``edgeattn export --data PATH``
(or ``edgeattn run --data PATH``, or EDGEATTN_DATA_<NAME>) records it in the model's manifest, and quantize and
verify then use it instead of seeded synthetic inputs. Three forms, labels optional:

- a folder of images (PNG/JPEG): flat (no labels), or one sub-folder per class (the sub-folder's name is the label:
  its index in the spec's labels, else in the sorted sub-folder names); resized and normalised with the spec's
  ``preprocess`` (size, channels, mean, std; defaults from the input's shape, mean 0 and std 1);
- a text file, one sample per line, ``label<TAB>text`` where labelled (label: an index or a name in the spec's
  labels); encoded with the model's tokenizer (``preprocess.tokenizer`` in the model folder);
- an ``.npz`` of arrays named like the model's inputs (all of them), plus ``labels`` if labelled.

The samples are split once, seeded: calibration reads one half, evaluation (the INT8/FP16 budget and verify) the
other, so an artifact is never judged on the data it was calibrated on; every stage says which half it used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import EdgeattnError
from runtime.files import sha256_file
from pipeline.artifacts import artifact_name
from runtime.preprocess import TextEncoder, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SEED = 0
HALVES = ("calibration", "evaluation")


class UserDataError(EdgeattnError, ValueError):
    """User data that cannot be read for this model: the message says what was found and what was expected."""


@dataclass
class UserData:
    inputs: dict[str, np.ndarray]  # input name -> (N, ...)
    labels: np.ndarray | None  # (N,) int64
    source: str  # what was read, for the reports

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def half(self, which: str) -> "UserData":
        """The seeded calibration or evaluation half (disjoint; evaluation gets the extra sample of an odd N)."""
        if which not in HALVES:
            raise UserDataError(f"user data: half '{which}' unknown; expected one of {list(HALVES)}")
        n = len(self)
        if n < 2:
            raise UserDataError(f"user data {self.source}: {n} sample(s); expected at least 2 (one per half)")
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        idx = np.sort(order[: n // 2] if which == "calibration" else order[n // 2:])
        return UserData({k: v[idx] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[idx],
                        f"{self.source}, {which} half n={len(idx)} of {n} (seed {SPLIT_SEED})")


def data_path(manifest: dict[str, Any], name: str, given: str | Path | None = None) -> str | None:
    """The user data for a model: ``given``, else EDGEATTN_DATA_<NAME>, else what export recorded (manifest
    ``export.data``); None: no user data (a dataset of ours, or synthetic inputs)."""
    if given:
        return str(given)
    env = os.environ.get(f"EDGEATTN_DATA_{artifact_name(name).upper()}")
    return env or (manifest.get("export") or {}).get("data")


def data_digest(path: str | Path) -> str:
    """What the data is, for up-to-date keys: the file's sha256, or a folder's file list and sizes."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return ";".join(f"{f.relative_to(p)}:{f.stat().st_size}" for f in files)


def load_user_data(path: str | Path, spec, model_dir: str | Path) -> UserData:
    p = Path(path)
    if not p.exists():
        raise UserDataError(f"user data '{p}': no such file or folder; expected a folder of images, a text file "
                            "(one sample per line) or an .npz of arrays named like the model's inputs")
    if p.is_dir():
        return _images(p, spec)
    if p.suffix == ".npz":
        return _npz(p, spec)
    return _text(p, spec, Path(model_dir))


def _label_index(label: str, names: list[str], source: str) -> int:
    if label.strip().lstrip("-").isdigit():
        return int(label)
    if label in names:
        return names.index(label)
    raise UserDataError(f"user data {source}: label '{label}' is neither an index nor one of {names[:20]}")


def _single_input(spec, kind: str, source: str):
    if len(spec.inputs) != 1:
        raise UserDataError(f"user data {source}: {kind} feed one input; the model has {len(spec.inputs)} "
                            f"({[t.name for t in spec.inputs]}): give an .npz with one array per input")
    return spec.inputs[0]


def _images(folder: Path, spec) -> UserData:
    inp = _single_input(spec, "images", str(folder))
    if len(inp.shape) != 4:
        raise UserDataError(f"user data {folder}: images need an (N, C, H, W) input; '{inp.name}' is {inp.shape}")
    _, c, h, w = inp.shape
    pp = {"channels": c, "size": [h, w], "mean": 0.0, "std": 1.0, **(spec.preprocess or {})}
    if any(isinstance(v, str) for v in (pp["channels"], *pp["size"])):
        raise UserDataError(f"user data {folder}: input '{inp.name}' {inp.shape} has dynamic image dims; expected "
                            "preprocess.size and preprocess.channels in the spec")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    names = list(spec.labels or []) or classes
    files, labels = [], []
    for sub in classes or [None]:
        d = folder / sub if sub else folder
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                if sub:
                    labels.append(_label_index(sub, names, str(folder)))
    if not files:
        raise UserDataError(f"user data {folder}: no {'/'.join(IMAGE_SUFFIXES)} files (flat, or one sub-folder per "
                            "class)")
    x = np.concatenate([load_image(f, pp) for f in files]).astype(inp.dtype)
    return UserData({inp.name: x}, np.asarray(labels, np.int64) if labels else None,
                    f"user images {folder} ({len(files)} files{', labelled by sub-folder' if labels else ''})")


def _text(path: Path, spec, model_dir: Path) -> UserData:
    inp = _single_input(spec, "text lines", str(path))
    pp = spec.preprocess or {}
    if not pp.get("tokenizer"):
        raise UserDataError(f"user data {path}: text needs the model's tokenizer (spec preprocess.tokenizer, a file "
                            "in the model folder); give an .npz of token ids instead")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UserDataError(f"user data {path}: empty; expected one sample per line (label<TAB>text if labelled)")
    labelled = all("\t" in ln for ln in lines)
    texts = [ln.split("\t", 1)[1] if labelled else ln for ln in lines]
    labels = [_label_index(ln.split("\t", 1)[0], list(spec.labels or []), str(path)) for ln in lines] if labelled else None
    ids = TextEncoder(model_dir / pp["tokenizer"]).encode(texts, pad_to=pp.get("max_len"))
    return UserData({inp.name: ids.astype(inp.dtype)}, None if labels is None else np.asarray(labels, np.int64),
                    f"user text {path} ({len(texts)} lines{', labelled' if labelled else ''})")


def _npz(path: Path, spec) -> UserData:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    missing = [t.name for t in spec.inputs if t.name not in arrays]
    if missing:
        raise UserDataError(f"user data {path}: arrays {sorted(arrays)}; expected one per model input "
                            f"{[t.name for t in spec.inputs]} (missing {missing}), plus optional 'labels'")
    inputs = {t.name: np.asarray(arrays[t.name]).astype(t.dtype) for t in spec.inputs}
    n = {k: len(v) for k, v in inputs.items()}
    if len(set(n.values())) != 1:
        raise UserDataError(f"user data {path}: inputs have different sample counts {n}; expected one N")
    labels = np.asarray(arrays["labels"], np.int64) if "labels" in arrays else None
    if labels is not None and len(labels) != next(iter(n.values())):
        raise UserDataError(f"user data {path}: {len(labels)} labels for {next(iter(n.values()))} samples")
    return UserData(inputs, labels, f"user arrays {path} (n={next(iter(n.values()))})")
