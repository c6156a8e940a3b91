"""One calibration pass for several sets of ranges.

The outlier-aware path (optimize.ptq) needs three sets of activation ranges over the same calibration batches: the
smoothed graph's Percentile and MinMax ranges (the per-tensor choice), and the unsmoothed graph's ranges for the CPU
forms (which stay unsmoothed). Run one by one through ONNX Runtime's calibrators that is three forward passes with
every intermediate tensor fetched, and two full histogram passes (MiniLM on 256 reviews: 21 + 7 + 21 s of its
quantize stage).

:func:`calibrate_shared` gets them all from ONE forward pass of one graph:

- Percentile from ONNX Runtime's own histogram collector (optimize.int8_build.uniform_histogram_collector), so the
  thresholds are the ones ``create_calibrator(..., Percentile)`` computes;
- MinMax from the raw minimum and maximum that collector tracks per tensor: what ORT's MinMax calibrator's ReduceMin
  and ReduceMax give on the same activations (its ranges are not made symmetric: :func:`calibration_options`);
- another graph's ranges where that graph computes the same tensors (smoothing is float-equivalent: every tensor keeps
  its name and value except the LayerNorm outputs that 1/s was folded into, which are the pass graph's tensor times
  s on the last axis: ``RangeRequest.scale``) plus tensors the pass graph does not calibrate (the input of an inserted
  smoothing Mul), fetched as extra outputs.

The tensors of each graph are chosen by ORT's rule (:func:`calibration_tensors`: float inputs and outputs of the
``op_types`` nodes, initializers excluded), so the keys are the ones ORT's calibrator would give. Each set is saved
to its own calibration.RangeCache with its own key (its graph's sha256, the data, the method's options), so a later
run reads the caches exactly as if the sets had been computed one by one."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from calibration import CacheKey, CalibrationData, RangeCache, TensorRange
from optimize.int8_build import QuantizeError, calibrate_ranges, calibration_options, histogram_collector
from optimize.qdq_graph import WEIGHT_OPS
from zoo.io import save_onnx, sha256_file

SHARED_METHODS = ("Percentile", "MinMax")  # what one histogram pass yields


@dataclass
class RangeRequest:
    """One set of ranges: ``method``'s ranges of the calibration tensors of ``model_path`` (its sha256 keys
    ``cache``). ``scale``: tensors whose values in ``model_path`` are the pass graph's times this per-channel vector
    (last axis)."""
    model_path: Path
    method: str
    cache: RangeCache | None = None
    scale: dict[str, np.ndarray] = field(default_factory=dict)


def calibration_tensors(model, op_types: Sequence[str] = WEIGHT_OPS) -> set[str]:
    """ORT's ``CalibraterBase.select_tensors_to_calibrate`` on a shape-inferred ``model``: the float/float16 inputs
    and outputs of ``op_types`` nodes that are not initializers."""
    from onnx import TensorProto

    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({o.name: o for o in model.graph.output})
    infos.update({i.name: i for i in model.graph.input})
    inits = {t.name for t in model.graph.initializer}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    out = set()
    for n in model.graph.node:
        if not op_types or n.op_type in op_types:
            for t in (*n.input, *n.output):
                vi = infos.get(t)
                if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in floats \
                        and t not in inits:
                    out.add(t)
    return out


def _inferred(path: Path):
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    return load_model_with_shape_infer(Path(path))


def calibrate_shared(pass_model: str | os.PathLike, data: CalibrationData, requests: Sequence[RangeRequest],
                     op_types: Sequence[str] = WEIGHT_OPS, progress: bool = False,
                     ) -> list[tuple[dict[str, TensorRange], dict[str, Any]]]:
    """Every request's (ranges, info) from one forward pass of ``pass_model`` over ``data`` (module docstring); each
    request is read from its cache when the cache's key matches, and the pass runs only when one misses. Methods
    outside SHARED_METHODS, and MinMax when no Percentile set is to be computed, are calibrated graph by graph
    (optimize.int8_build.calibrate_ranges), with the same results."""
    import onnxruntime as ort

    pass_model = Path(pass_model)
    results: list[tuple[dict[str, TensorRange], dict[str, Any]] | None] = [None] * len(requests)
    keys: list[CacheKey | None] = [None] * len(requests)
    shas: dict[Path, str] = {}
    todo = []
    for i, r in enumerate(requests):
        if r.method not in SHARED_METHODS:
            results[i] = calibrate_ranges(r.model_path, data, r.method, r.cache, op_types, progress)
            continue
        sha = shas.setdefault(Path(r.model_path), sha256_file(r.model_path))
        keys[i] = CacheKey(model_sha256=sha, data_sha256=data.sha256, method=r.method,
                           options=calibration_options(r.method, op_types))
        info = {"method": r.method, "options": keys[i].options, "data": data.describe(), "key_digest": keys[i].digest}
        hit = r.cache.load(keys[i]) if r.cache is not None else None
        if hit is not None:
            info.update(cache="hit", cache_file=r.cache.path.name, batches_served=0, tensors=len(hit), seconds=0.0)
            results[i] = (hit, info)
        else:
            if r.cache is not None:
                info["cache_miss_reason"] = r.cache.last_miss
            results[i] = ({}, info)
            todo.append(i)
    if not any(requests[i].method == "Percentile" for i in todo):  # MinMax alone: ORT's own Reduce nodes are cheaper
        for i in todo:                                                # than histograms (each graph calibrated alone)
            r = requests[i]
            results[i] = calibrate_ranges(r.model_path, data, r.method, r.cache, op_types, progress)
        todo = []
    if not todo:
        return results  # type: ignore[return-value]

    t0 = time.perf_counter()
    base = _inferred(pass_model)
    infos = {vi.name: vi for vi in (*base.graph.value_info, *base.graph.output, *base.graph.input)}
    by_graph = {pass_model: calibration_tensors(base, op_types)}  # each graph shape-inferred once
    selections: dict[int, set[str]] = {}
    for i in todo:
        p = Path(requests[i].model_path)
        if p not in by_graph:
            by_graph[p] = calibration_tensors(_inferred(p), op_types)
        sel = by_graph[p]
        missing = sorted(t for t in sel if t not in infos)
        if missing:
            raise QuantizeError(f"shared calibration: {p.name}'s tensors {missing[:5]} are not tensors of "
                                f"{pass_model.name}; expected a float-equivalent graph (same tensor names)")
        selections[i] = sel

    # the histogram entries: a tensor as the pass computes it, or times a request's scale vector
    def entry(i: int, t: str) -> str:
        return f"{t}\x00scaled{i}" if t in requests[i].scale else t

    fetch = sorted(set().union(*selections.values()))
    existing = {o.name for o in base.graph.output}
    for t in fetch:
        if t not in existing:
            base.graph.output.append(infos[t])
    scaled = {entry(i, t): (t, np.asarray(requests[i].scale[t], np.float32))
              for i in todo for t in selections[i] if t in requests[i].scale}
    collector = histogram_collector(**{k: v for k, v in calibration_options("Percentile", op_types).items()
                                       if k in ("num_bins", "percentile", "symmetric")})
    with tempfile.TemporaryDirectory(prefix="edgeattn-calib-") as tmp:
        aug = Path(tmp) / "aug.onnx"
        save_onnx(base, aug)
        del base
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT's calibrators
        sess = ort.InferenceSession(str(aug), so, providers=["CPUExecutionProvider"])
        plain = sorted({entry(i, t) for i in todo for t in selections[i]} - set(scaled))
        chatter = io.StringIO()  # ORT's collector print()s progress lines
        with contextlib.redirect_stdout(chatter):
            for b in tqdm(range(len(data)), desc=f"calibrate {pass_model.parent.name} (one pass: "
                          f"{', '.join(sorted({requests[i].method for i in todo}))})", disable=not progress,
                          leave=False, dynamic_ncols=True):
                arrays = dict(zip(fetch, sess.run(fetch, data[b])))
                batch = {k: arrays[k] for k in plain}
                batch.update({k: arrays[t] * s for k, (t, s) in scaled.items()})
                collector.collect(batch)
                del arrays, batch
            thresholds = collector.compute_collection_result()
        del sess
    seconds = round(time.perf_counter() - t0, 2)
    hist = collector.histogram_dict
    for i in todo:
        r = requests[i]
        ranges = {}
        for t in selections[i]:
            e = entry(i, t)
            if r.method == "Percentile":
                lo, hi = thresholds[e][0], thresholds[e][1]
            else:  # MinMax: the raw extremes ORT's ReduceMin / ReduceMax give
                lo, hi = hist[e][2], hist[e][3]
            ranges[t] = TensorRange(float(np.asarray(lo).min()), float(np.asarray(hi).max()))
        info = results[i][1]
        info.update(cache="computed", shared_pass=pass_model.name, batches_served=len(data), tensors=len(ranges),
                    seconds=seconds)
        if r.cache is not None:
            r.cache.save(keys[i], ranges, seconds=seconds, extra={"data": data.describe(),
                                                                  "shared_pass": pass_model.name})
            info["cache_file"] = r.cache.path.name
        results[i] = (ranges, info)
    return results  # type: ignore[return-value]
