"""Outlier-aware post-training quantisation of the TensorRT Q/DQ graph, for models whose quantised nodes are all
MatMul/Gemm with constant 2-D weights (transformers): one forward pass over calibration batches gives what the three
steps below need (optimize.smoothquant.capture_rows: per-channel activation maxima and a sample of rows).

1. Smoothing (optimize.smoothquant): per group of MatMuls sharing an input, alpha chosen from ALPHAS or none by the
   error the group adds at its outputs; 1/s folded into a LayerNorm where exact, else one Mul inserted.
2. Calibration method per tensor: the smoothed graph is calibrated with ``QuantOptions.method`` and each of
   ``QuantOptions.calib_choice`` (ONNX Runtime's MinMax / Percentile / Entropy; default Percentile and MinMax, each
   cached in ``calib.smoothed.<method>.json``, or ``calib.<method>.json`` when nothing was smoothed); each quantised
   MatMul input takes the range whose per-tensor int8 gives the least summed error at its consumers' outputs. Other
   tensors keep ``QuantOptions.method``'s range. (The CPU forms of optimize.quantize stay on the unsmoothed graph.)
3. Ranking: the error each node alone adds at its output with its chosen range (optimize.layer_error's score), most
   harmful first: the ``rank`` of optimize.int8_budget.budget_search (bisection over it), instead of one full
   evaluation per node.

Models with other quantised nodes (Conv) keep the plain path (one method, sweep ranking): :func:`outlier_aware`
returns None for them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration import CalibrationData, RangeCache, TensorRange
from optimize.calib_shared import RangeRequest, calibrate_shared
from optimize.qdq_graph import NodeInfo
from optimize.smoothquant import ALPHAS, Group, apply_smoothing, capture_rows, choose_alphas, group_weights, \
    node_errors, smoothing_groups

log = logging.getLogger("edgeattn.optimize.ptq")


@dataclass
class PtqPlan:
    src: Path  # the graph to quantise (smoothed, or the input graph when no group was smoothed)
    ranges: dict[str, TensorRange]  # every tensor's range, the chosen method's for quantised MatMul inputs
    calibration: dict[str, Any]  # the manifest's calibration record (per method: cache, seconds)
    rows: list[dict[str, Any]]  # the ranking: most harmful first
    record: dict[str, Any]  # the manifest's ``ptq`` record
    unsmoothed: tuple[dict[str, TensorRange], dict[str, Any]] | None = None  # (ranges, info) of the input graph
    # (QuantOptions.method) for the CPU forms, from the same calibration pass; None: nothing was smoothed


def applies(model, nodes: Sequence[NodeInfo]) -> list[Group] | None:
    """The smoothing groups when every weight node of ``nodes`` is in one, else None (the plain path)."""
    groups = smoothing_groups(model, nodes)
    covered = {n for g in groups for n in g.nodes}
    weights = [nd.name for nd in nodes if nd.kind == "weight"]
    return groups if groups and all(n in covered for n in weights) else None


def outlier_aware(src: Path, nodes: Sequence[NodeInfo], calib: CalibrationData, opts, model_dir: Path, work: Path,
                  progress: bool = False) -> PtqPlan | None:
    """The smoothed graph, its per-tensor ranges and the node ranking (module docstring); None where it does not
    apply (``opts.ptq == "off"`` or nodes other than MatMul/Gemm). ``opts``: optimize.int8_budget.QuantOptions."""
    import onnx

    if opts.ptq == "off":
        return None
    model = onnx.load(str(src))
    groups = applies(model, nodes)
    if groups is None:
        return None
    t0 = time.perf_counter()
    sample = CalibrationData(list(calib)[:max(1, -(-opts.ptq_samples // calib.batch_size))], calib.source)
    absmax, rows = capture_rows(src, groups, sample, opts.ptq_rows, opts.seed, opts.threads)
    t_capture = time.perf_counter() - t0
    if opts.smoothing == "auto":
        choose_alphas(model, groups, absmax, rows, ALPHAS)
    smoothed = any(g.alpha is not None for g in groups)
    ssrc = src
    if smoothed:
        ssrc = work / "smoothed.onnx"
        onnx.save(apply_smoothing(model, groups), str(ssrc))
    t_smooth = time.perf_counter() - t0 - t_capture
    methods = list(dict.fromkeys([opts.method, *opts.calib_choice]))
    requests = [RangeRequest(ssrc, m, RangeCache(model_dir / f"calib.{'smoothed.' if smoothed else ''}{m.lower()}.json"))
                for m in methods]
    if smoothed:  # the CPU forms' ranges: the unsmoothed graph, QuantOptions.method, from the same pass
        requests.append(RangeRequest(src, opts.method, RangeCache(model_dir / f"calib.{opts.method.lower()}.json"),
                                     scale={g.tensor: g.s for g in groups if g.alpha is not None and g.fold}))
    results = calibrate_shared(ssrc, calib, requests, progress=progress)
    by_method = {m: results[i][0] for i, m in enumerate(methods)}
    cinfo = {m: results[i][1] for i, m in enumerate(methods)}
    unsmoothed = results[-1] if smoothed else None
    t_cal = time.perf_counter() - t0 - t_capture - t_smooth
    ranges = dict(by_method[opts.method])
    chosen, ranking = {}, []
    kinds = {nd.name: nd for nd in nodes}
    for g in groups:
        ws = group_weights(model, g)
        x = rows[g.tensor]
        s = g.s if g.s is not None else np.ones(x.shape[1], np.float32)
        ys = [x @ w for w in ws]
        t = g.quantized_input
        errs = {m: node_errors(x, ws, s, by_method[m][t].amax, ys) for m in methods if t in by_method[m]}
        best = min(errs, key=lambda m: (sum(errs[m]), methods.index(m)))
        ranges[t] = by_method[best][t]
        chosen[t] = {"method": best, "amax": round(by_method[best][t].amax, 6),
                     **{f"error_{m}": round(sum(e), 8) for m, e in errs.items()}}
        ranking += [{"node": n, "op_type": kinds[n].op_type, "kind": kinds[n].kind, "output_rel_mse": e,
                     "accuracy_delta": None, "top1_agreement": None} for n, e in zip(g.nodes, errs[best])]
    ranking.sort(key=lambda r: -r["output_rel_mse"])
    ranking += [{"node": nd.name, "op_type": nd.op_type, "kind": nd.kind, "output_rel_mse": None,
                 "accuracy_delta": None, "top1_agreement": None} for nd in nodes if nd.kind != "weight"]
    counts = {m: sum(1 for c in chosen.values() if c["method"] == m) for m in methods}
    record = {
        "smoothing": {"mode": opts.smoothing, "alphas_tried": ["none", *ALPHAS] if opts.smoothing == "auto" else [],
                      "groups": [g.record() for g in groups],
                      "smoothed_groups": sum(1 for g in groups if g.alpha is not None),
                      "layernorm_folds": sum(1 for g in groups if g.alpha is not None and g.fold),
                      "muls_inserted": sum(1 for g in groups if g.alpha is not None and not g.fold)},
        "calibration_choice": {"methods": methods, "default": opts.method, "chosen_counts": counts, "tensors": chosen},
        "ranking": "one pass (output error of each node alone, cached calibration activations)",
        "samples": sample.n_samples, "rows": int(max(len(r) for r in rows.values())),
        "seconds": {"capture": round(t_capture, 2), "smoothing": round(t_smooth, 2), "calibration": round(t_cal, 2),
                    "choice_and_ranking": round(time.perf_counter() - t0 - t_capture - t_smooth - t_cal, 2)},
    }
    log.info("int8 %s: smoothing %d/%d groups (alpha %s), calibration per tensor %s", model_dir.name,
             record["smoothing"]["smoothed_groups"], len(groups),
             sorted({g.alpha for g in groups if g.alpha is not None}), counts)
    calibration = {**cinfo[opts.method], "per_tensor_choice": counts,
                   "methods": {m: {k: cinfo[m].get(k) for k in ("cache", "seconds", "tensors")} for m in methods}}
    if unsmoothed is not None:
        calibration["cpu_forms"] = {k: unsmoothed[1].get(k) for k in ("method", "cache", "cache_file", "seconds",
                                                                     "tensors", "shared_pass")}
    return PtqPlan(ssrc, ranges, calibration, ranking, record, unsmoothed)
