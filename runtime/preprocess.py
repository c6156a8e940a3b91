"""Pre/post-processing a device needs to go from raw input to a label. numpy (+ tokenizers, Pillow) only.

The training code in ``zoo`` imports these same functions, so what a device does to a raw sentence or
image is exactly what the model saw in training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from runtime.errors import PreprocessError


def normalize_images(images_u8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) uint8 -> float32 (N, C, H, W), (x/255 - mean) / std."""
    x = np.asarray(images_u8)
    if x.dtype != np.uint8:
        raise PreprocessError(f"images: got dtype {x.dtype}, expected uint8 pixels 0..255")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise PreprocessError(f"images: got shape {x.shape}, expected (N, H, W) or (N, C, H, W)")
    return ((x.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)).astype(np.float32)


def load_image(path: str | Path, preprocess: dict[str, Any]) -> np.ndarray:
    """Read a PNG/JPEG file and return a (1, C, H, W) float32 feed for the model described by ``preprocess``
    (``decode_image`` on the file's bytes)."""
    p = Path(path)
    if not p.is_file():
        raise PreprocessError(f"image '{p}': no such file")
    return decode_image(p.read_bytes(), preprocess, source=f"image '{p}'")


def decode_image(data: bytes, preprocess: dict[str, Any], source: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG bytes (a file's, or a request's) -> a (1, C, H, W) float32 feed for the model described by
    ``preprocess``: size [H, W], channels (1 or 3), mean, std, invert (bool: Fashion-MNIST items are light-on-dark,
    a product photo on white is not). Anything Pillow cannot decode raises PreprocessError naming ``source``."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a runtime dependency for images only
        raise PreprocessError("images: Pillow is not installed (pip install pillow)") from e
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PreprocessError(f"{source}: got {type(data).__name__}, expected encoded image bytes")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises many types; report them as one
        raise PreprocessError(f"{source}: cannot decode ({e}); expected a PNG or JPEG file") from e
    h, w = preprocess["size"]
    img = img.convert("L" if int(preprocess.get("channels", 1)) == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if preprocess.get("invert"):
        arr = 255 - arr
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    mean, std = preprocess["mean"], preprocess["std"]
    if isinstance(mean, (list, tuple)):
        x = (arr.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
        return x[None].astype(np.float32)
    return normalize_images(arr[None], mean, std)


class TextEncoder:
    """Wraps a tokenizer JSON file (HF ``tokenizers`` format): raw sentences -> padded int64 ids.

    The JSON carries truncation to the model's positional table and a post-processor that prepends
    [CLS], so every caller encodes the same way.
    """

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover
            raise PreprocessError("text: the 'tokenizers' package is not installed (pip install tokenizers)") from e
        p = Path(path)
        if not p.is_file():
            raise PreprocessError(f"tokenizer '{p}': no such file (it is written next to the checkpoint by make train)")
        try:
            self._tok = Tokenizer.from_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise PreprocessError(f"tokenizer '{p}': cannot load ({e}); expected a tokenizers JSON file") from e
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_id = self._tok.token_to_id("[CLS]")
        if self.pad_id is None or self.cls_id is None:
            raise PreprocessError(f"tokenizer '{p}': has no [PAD] or [CLS] token")
        trunc = self._tok.truncation
        self.max_len = int(trunc["max_length"]) if trunc else None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, texts: Sequence[str], pad_to: int | None = None) -> np.ndarray:
        """Sentences -> (N, T) int64 ids, [CLS] first, padded with [PAD] to the longest (or ``pad_to``)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise PreprocessError(f"text: item {bad[0]} is {type(texts[bad[0]]).__name__}, expected str (decode bytes "
                                  "as UTF-8 first)")
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PreprocessError(f"text: item {i} is not valid Unicode ({e.reason} at character {e.start}: "
                                      "invalid UTF-8 bytes decoded with surrogateescape?); expected UTF-8 text") from None
        try:
            encs = self._tok.encode_batch(texts)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own types
            raise PreprocessError(f"text: the tokenizer failed ({type(e).__name__}: {str(e)[:200]})") from e
        longest = max((len(e.ids) for e in encs), default=1)
        t = max(longest, pad_to or 0)
        out = np.full((len(encs), t), self.pad_id, dtype=np.int64)
        for i, e in enumerate(encs):
            out[i, : len(e.ids)] = e.ids
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def trim_padding(ids: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """Drop trailing columns that are padding in every row of an int batch (B, T) -> (B, T')."""
    if ids.dtype.kind not in "iu" or ids.ndim != 2:
        return ids
    used = np.nonzero((ids != pad_id).any(axis=0))[0]
    keep = int(used.max()) + 1 if used.size else 1
    return ids[:, :keep]


def feed_batches(arrays: Mapping[str, np.ndarray], batch_size: int,
                 pad_id: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts of ``batch_size`` rows (the last may be smaller) from sample-aligned arrays (name -> (N, ...)), C
    contiguous; with ``pad_id``, each batch's 2-D int arrays lose their all-padding trailing columns
    (``trim_padding``). The one batching of every stage: calibration, the budget loops, verify and bench."""
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch_size):
        feed = {}
        for k, v in arrays.items():
            vb = v[i:i + batch_size]
            feed[k] = np.ascontiguousarray(trim_padding(vb, pad_id) if pad_id is not None else vb)
        yield feed

