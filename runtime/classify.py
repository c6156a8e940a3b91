"""Raw sentence or image file -> label and class probabilities, on any backend. numpy + tokenizers/Pillow only.

    clf = Classifier("artifacts/text_transformer/fp32.onnx")
    clf.classify_text(["a gripping, beautiful film"])   # [("positive", {"negative": 0.08, "positive": 0.92})]

The model's spec (ONNX metadata or ``spec.json`` beside it) gives the labels and the preprocessing; a text
model's tokenizer JSON (``spec.preprocess["tokenizer"]``) is read from the model's folder. The tokenizer JSON
truncates to the positional table itself, so long sentences never reach the model too long.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.base import Runner
from runtime.errors import ModelLoadError, PreprocessError
from runtime.loader import open_runner
from runtime.preprocess import TextEncoder, load_image, softmax

log = logging.getLogger("edgeattn.runtime.classify")

Prediction = tuple[str, dict[str, float]]  # (top label, {label: probability})


class Classifier:
    """A classification model plus its preprocessing. ``pad_to``: None pads each text batch to its longest
    sentence, an int or "max" pads to that many tokens / the largest sequence the model accepts (the padding
    mask makes the logits the same; a fixed length suits static-shape engines)."""

    def __init__(self, model_path: str | Path, backend: str = "auto", tokenizer: str | Path | None = None,
                 pad_to: int | str | None = None, runner: Runner | None = None, **runner_kw: Any):
        self.model_path = Path(model_path)
        self.runner = runner if runner is not None else open_runner(self.model_path, backend, **runner_kw)
        spec = getattr(self.runner, "spec", None)
        if not spec:
            raise ModelLoadError(f"model '{self.model_path}': no spec (neither in its metadata nor a spec.json beside "
                                 "it); expected the spec that export writes, to know labels and preprocessing")
        self.spec: dict[str, Any] = spec
        self.labels: list[str] = list(spec.get("labels") or [])
        self.preprocess: dict[str, Any] = dict(spec.get("preprocess") or {})
        self.kind: str = self.preprocess.get("kind", "text" if spec.get("task") == "text_classification" else "image")
        self.input_name = self.runner.inputs[0].name
        outs = [o.name for o in self.runner.outputs]
        self.output_name = "logits" if "logits" in outs else outs[0]
        self._encoder: TextEncoder | None = None
        self.pad_to = pad_to
        if self.kind == "text":
            self._encoder = self._load_tokenizer(tokenizer)

    # -- setup -----------------------------------------------------------------------------------------
    def _dim_bounds(self, axis: int):
        dim = self.runner.inputs[0].shape[axis]
        return self.runner.contract.bounds.get(dim) if isinstance(dim, str) else None

    def _load_tokenizer(self, tokenizer: str | Path | None) -> TextEncoder:
        name = self.preprocess.get("tokenizer", "tokenizer.json")
        path = Path(tokenizer) if tokenizer else self.model_path.parent / name
        enc = TextEncoder(path)
        vocab = self.preprocess.get("vocab_size")
        if vocab is not None and enc.vocab_size > int(vocab):
            raise PreprocessError(f"tokenizer '{path}': has {enc.vocab_size} tokens, expected at most the model's "
                                  f"vocab_size {vocab} (ids beyond the embedding table); use the model's own tokenizer")
        seq = self._dim_bounds(1)
        if seq is not None and seq.max is not None and (enc.max_len is None or enc.max_len > seq.max):
            raise PreprocessError(f"tokenizer '{path}': truncates to {enc.max_len} tokens, expected at most the "
                                  f"model's sequence max {seq.max}")
        return enc

    # -- running -----------------------------------------------------------------------------------------
    def _batches(self, n: int) -> list[slice]:
        b = self._dim_bounds(0)
        step = b.max if b is not None and b.max else n
        return [slice(i, i + step) for i in range(0, n, step)]

    def _predict(self, x: np.ndarray) -> list[Prediction]:
        """(N, ...) feed -> N predictions, in batches the model accepts."""
        probs = np.concatenate([softmax(self.runner.infer({self.input_name: x[s]})[self.output_name].astype(np.float64))
                                for s in self._batches(len(x))])  # (N, classes)
        labels = self.labels if len(self.labels) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
        return [(labels[int(p.argmax())], {lab: float(v) for lab, v in zip(labels, p)}) for p in probs]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Sentences -> (N, T) int64 ids, padded as ``pad_to`` says."""
        if self._encoder is None:
            raise PreprocessError(f"model '{self.model_path}': is an {self.kind} model, got text input")
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise PreprocessError("text: got no sentences, expected at least one")
        seq = self._dim_bounds(1)
        pad_to = self.pad_to
        if pad_to == "max":
            pad_to = seq.max if seq is not None and seq.max else self._encoder.max_len
        minimum = seq.min if seq is not None else 1
        return self._encoder.encode(texts, pad_to=max(int(pad_to or 0), minimum))

    def classify_text(self, texts: Sequence[str]) -> list[Prediction]:
        """Sentences -> [(label, {label: probability})], one per sentence."""
        return self._predict(self.encode_text(texts))

    def load_images(self, paths: str | Path | Sequence[str | Path]) -> np.ndarray:
        """Image file(s) -> (N, C, H, W) float32 normalised as in training."""
        if self.kind != "image":
            raise PreprocessError(f"model '{self.model_path}': is a {self.kind} model, got an image")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        return np.concatenate([load_image(p, self.preprocess) for p in paths])

    def classify_image(self, paths: str | Path | Sequence[str | Path]) -> list[Prediction]:
        """Image file(s) -> [(label, {label: probability})], one per file."""
        return self._predict(self.load_images(paths))

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
