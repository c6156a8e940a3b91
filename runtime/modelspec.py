"""The model spec, at the bottom of the project (numpy only): what every stage and the thin runtime read.

- ``ModelSpec`` (and ``DimRange``, ``TensorSpec``, ``Tolerance``): input/output names, dtypes, dynamic axes with
  min/opt/max sizes, preprocessing, dataset, tolerances; JSON round trip. ``zoo.spec`` re-exports it.
- The one place the spec travels and is read back: ONNX metadata key ``SPEC_METADATA_KEY`` first, then
  ``spec.json`` beside the file (``read_spec``), as a plain dict on a device.
- Dim naming for runners (``name_dims``, ``bounds_from_spec``), the file-name precision (``precision_of``) and the
  model-file check (``check_model_file``).

Backends and the loader import from here, so nothing in runtime/ imports in a circle.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.base import DimBounds
from runtime.errors import ModelLoadError
from runtime.onnx_guard import check_external_data

log = logging.getLogger("edgeattn.runtime.spec")

SPEC_METADATA_KEY = "edgeattn.spec"
SPEC_FILE = "spec.json"
TEXT_GENERATION = "text_generation"  # the task of a decoder with KV cache: the one spelling of it
FEATURE_EXTRACTION = "feature_extraction"  # sentence embeddings (one vector per input, no classes): its one spelling


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

    # max |logit diff| over the RMS of the reference's logits (judge.figures' scaled_max_abs_diff), so 1e-4 is
    # float32 parity at any logit scale; None: reported, not gated (reduced precision: cosine, top-1, accuracy)
    max_abs: float | None
    min_cosine: float
    min_top1_agreement: float
    max_drop_points: float  # accuracy points, the one budget unit (make quantize MAX_DROP=0.5 is this too)
    cosine_on: str = "min"  # "min" over samples, or "mean" (INT8/bf16: one outlier sample must not fail 10k)
    # decoders: perplexity change allowed, percent of the reference's (fp16 rounds, int8 quantises: mean NLL + 0.01
    # nats is +1 %); None: not gated
    max_ppl_increase_pct: float | None = None
    # embeddings: the k nearest neighbours (cosine) of each sample among the others, reference vs candidate; the bar
    # is their mean overlap (judge.embedding). None: no neighbour figures, not gated (every task but feature extraction)
    neighbour_k: int | None = None
    min_neighbour_overlap: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tolerance":
        d = dict(d)
        if "max_accuracy_drop" in d:  # specs written before the budget moved to points held a fraction
            d.setdefault("max_drop_points", round(100.0 * float(d.pop("max_accuracy_drop")), 6))
        return cls(**d)


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1_agreement=1.0, max_drop_points=0.0),
    "fp16": Tolerance(max_abs=None, min_cosine=0.999, min_top1_agreement=0.99, max_drop_points=0.1,
                      max_ppl_increase_pct=0.1),
    "bf16": Tolerance(max_abs=None, min_cosine=0.99, min_top1_agreement=0.99, max_drop_points=0.5, cosine_on="mean",
                      max_ppl_increase_pct=0.5),
    "int8": Tolerance(max_abs=None, min_cosine=0.99, min_top1_agreement=0.99, max_drop_points=0.5, cosine_on="mean",
                      max_ppl_increase_pct=1.0),
    # weight-only 4-bit (int4.cpu.onnx) is judged chiefly by perplexity: published round-to-nearest 4-bit results on
    # 7B models lose a few percent of perplexity, so +5 % with a looser agreement and drop bar; fixed, not fitted
    "int4": Tolerance(max_abs=None, min_cosine=0.98, min_top1_agreement=0.95, max_drop_points=1.0, cosine_on="mean",
                      max_ppl_increase_pct=5.0),
}
NEIGHBOUR_K = 5  # feature extraction: overlap@5 of each sample's nearest neighbours
# feature extraction: the mean top-k neighbour overlap per precision, on top of DEFAULT_TOLERANCES' bars (the
# per-sample cosine of the embeddings is their cosine bar: int8 mean >= 0.99). fp32 is not 1.0: two neighbours at
# equal cosine may swap on float32 rounding (one swap on 1000 samples costs 0.0002).
NEIGHBOUR_OVERLAP = {"fp32": 0.999, "fp16": 0.98, "bf16": 0.95, "int8": 0.95, "int4": 0.90}


def default_tolerances(task: str | None = None) -> dict[str, Tolerance]:
    """The default tolerances of a model of ``task``: DEFAULT_TOLERANCES, with the neighbour bars of
    NEIGHBOUR_OVERLAP for feature extraction. An embedding's top-1 agreement is its nearest neighbour's (judge.figures):
    its bar is the overlap bar, below 1, so it is reported, and judged only through the overlap (a tie at float32
    rounding may swap one nearest neighbour of thousands)."""
    if task != FEATURE_EXTRACTION:
        return dict(DEFAULT_TOLERANCES)
    return {p: dataclasses.replace(t, neighbour_k=NEIGHBOUR_K, min_neighbour_overlap=NEIGHBOUR_OVERLAP[p],
                                   min_top1_agreement=min(t.min_top1_agreement, NEIGHBOUR_OVERLAP[p]))
            for p, t in DEFAULT_TOLERANCES.items()}


@dataclass
class ModelSpec:
    """Everything downstream stages need to know about a model besides its weights."""

    name: str
    task: str  # "image_classification" | "text_classification" | FEATURE_EXTRACTION | TEXT_GENERATION
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

    def trim_pad_id(self) -> int | None:
        """The pad id whose all-padding trailing columns every stage drops from a batch of token ids (a text
        classifier's ``preprocess.pad_id``), or None: not a text model, or an output with a dynamic axis past the
        batch (per-position outputs, whose length must follow the inputs as given). The one rule for every stage."""
        pp = self.preprocess or {}
        if pp.get("kind") != "text":
            return None
        if any(isinstance(d, str) for t in self.outputs for d in t.shape[1:]):
            return None
        return int(pp.get("pad_id", 0))

    def scored_on_labels(self) -> bool:
        """Whether its dataset's labels score its outputs (a classifier on its dataset); a feature extractor's
        dataset gives sentences only (judged on parity and neighbours, never on the dataset's labels)."""
        return self.dataset is not None and self.task != FEATURE_EXTRACTION

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


# ---- the spec as a plain dict (devices: no zoo) ----------------------------------------------------------
def precision_of(path: str | Path, default: str | None = "fp32") -> str | None:
    """The precision the pipeline's file naming states: fp32(.sim).onnx, fp16.onnx, int8.qdq.onnx, int8.cpu.onnx, int4.cpu.onnx,
    ``<precision>.<flavour>.engine``; another name with 'qdq' in it is int8; anything else is ``default``. The one
    place verify, bench, engines and the ONNX Runtime EP options read it from."""
    import re

    name = Path(path).name.lower()
    m = re.match(r"(fp32|fp16|bf16|int8|int4|fp8)\b", name)
    if m:
        return m.group(1)
    return "int8" if "qdq" in name else default


# ---- spec ---------------------------------------------------------------------------------------------
def parse_spec(text: str, source: str) -> dict[str, Any]:
    """JSON text -> spec dict; ModelLoadError naming ``source`` when it is not a spec."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"spec in {source}: not valid JSON ({e}); expected ModelSpec.to_json() output") from e
    if not isinstance(spec, dict) or not {"inputs", "outputs", "dynamic"} <= set(spec):
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ModelLoadError(f"spec in {source}: got keys {got}, expected at least inputs, outputs, dynamic")
    return spec


def read_spec(model_path: str | Path, metadata: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The model's spec: ``metadata[edgeattn.spec]`` first, else ``spec.json`` beside the file, else None."""
    model_path = Path(model_path)
    if metadata and SPEC_METADATA_KEY in metadata:
        return parse_spec(metadata[SPEC_METADATA_KEY], f"'{model_path}' metadata '{SPEC_METADATA_KEY}'")
    beside = model_path.parent / SPEC_FILE
    if beside.is_file():
        return parse_spec(beside.read_text(encoding="utf-8"), f"'{beside}'")
    log.info("model '%s': no spec in its metadata nor a %s beside it; dynamic dims are unbounded",
             model_path, SPEC_FILE)
    return None


def bounds_from_spec(spec: dict[str, Any] | None) -> dict[str, DimBounds]:
    """``spec['dynamic']`` ({dim: {min, opt, max}}) -> {dim: DimBounds(min, max)}."""
    if not spec:
        return {}
    return {name: DimBounds(int(r["min"]), int(r["max"])) for name, r in spec.get("dynamic", {}).items()}


def value_ranges_from_spec(spec: dict[str, Any] | None) -> dict[str, tuple[int, int]]:
    """Integer inputs -> (0, vocab_size - 1) when the spec states ``preprocess.vocab_size``: ids outside it would
    index past an embedding table (ONNX Runtime raises mid-run, TensorRT reads out of bounds)."""
    vocab = ((spec or {}).get("preprocess") or {}).get("vocab_size")
    if not vocab:
        return {}
    return {t["name"]: (0, int(vocab) - 1) for t in (spec or {}).get("inputs", [])
            if str(t.get("dtype", "")).startswith(("int", "uint"))}


def spec_dim_names(spec: dict[str, Any] | None, tensor: str, which: str = "inputs") -> tuple[int | str, ...] | None:
    """Shape of ``tensor`` as the spec declares it (str entries are dynamic dim names), or None."""
    for t in (spec or {}).get(which, []):
        if t.get("name") == tensor:
            return tuple(t["shape"])
    return None


def name_dims(tensor: str, graph_shape: list, spec: dict[str, Any] | None, which: str = "inputs") -> tuple[int | str, ...]:
    """A graph shape (ints, dim-name strings, None/-1 for unnamed dynamic) -> IOInfo shape.

    Unnamed or differently named dynamic dims take the spec's name for that axis, so the spec's bounds apply;
    dims neither the graph nor the spec names become ``<tensor>_dim<axis>`` (unbounded)."""
    declared = spec_dim_names(spec, tensor, which)
    if declared is not None and len(declared) != len(graph_shape):
        declared = None  # the graph and the spec disagree on rank: trust the graph
    out: list[int | str] = []
    for axis, d in enumerate(graph_shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif declared is not None and isinstance(declared[axis], str):
            out.append(declared[axis])
        elif isinstance(d, str) and d:
            out.append(d)
        else:
            out.append(f"{tensor}_dim{axis}")
    return tuple(out)


def check_model_file(path: str | Path, what: str = "an ONNX model") -> Path:
    """Path -> Path, or ModelLoadError when it does not exist, is empty, or (ONNX) keeps tensor data outside its
    folder (``runtime.onnx_guard``)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model '{p}': no such file; expected {what}")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model '{p}': file is empty (0 bytes); expected {what}")
    if p.suffix.lower() == ".onnx":
        check_external_data(p)  # refused before any backend opens it
    return p
