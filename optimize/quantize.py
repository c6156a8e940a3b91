"""FP16 + INT8 artifacts under an accuracy budget: ``python -m optimize quantize --models ... --artifacts DIR``.

Per model folder (``<artifacts>/<folder>/``, source ``fp32.sim.onnx``) it writes:

- ``fp16.onnx``: precision in the graph (optimize.fp16), checked on real validation samples in a
  crash-guarded child process; manifest section ``fp16`` (incl. ``ort_opt_level``).
- ``int8.qdq.onnx`` for TensorRT: explicit Q/DQ, symmetric int8 (zero points 0), weights per-channel on
  the output-channel axis, bias float, activations per-tensor, Q/DQ on the inputs of Conv/Gemm/MatMul
  projections and FFNs only (attention BMMs, Softmax and LayerNorm stay float by default). Calibrated on
  the TRAINING split (calibration/); a per-node sensitivity sweep on the VALIDATION split keeps the most
  sensitive nodes float until the model is within ``--max-drop`` accuracy points of fp32 and top-1
  agreement >= ``--min-agreement``. Checked by optimize.qdq_rules.
- ``int8.cpu.onnx`` for ONNX Runtime CPU: the fastest candidate that is within the same budget, measured
  here (dynamic int8 MatMul, static QDQ u8s8, static QOperator, the TensorRT Q/DQ graph itself).
- ``calib.<method>.json``: the range cache (reused while data, model and method are unchanged).

Manifest section ``int8`` records calibration, budget, sensitivity, the nodes kept float and what each
cost, every candidate's accuracy and latency, and which CPU method won. Up-to-date artifacts are skipped.
Models without a dataset (e.g. torchvision:vit_b_16) are calibrated on seeded natural-ish images and
judged by parity only (logit cosine vs fp32).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from calibration import CacheKey, CalibrationData, OrtCalibrationReader, RangeCache, TensorRange
from calibration.evalset import EvalSet, load_eval_set
from optimize.fp16 import Fp16Options, build_fp16, ort_logits, ort_session, run_guarded
from optimize.qdq_rules import check_qdq_rules, qdq_counts
from runtime.cpu import ISA_METADATA_KEY, cpu_info, int8_isa, int8_saturates
from runtime.modelspec import SPEC_METADATA_KEY
from runtime.ort_backend import QDQ_REFERENCE_LEVEL
from verify.compare import figures

log = logging.getLogger("edgeattn.optimize.quantize")
CODE_VERSION = "int8/2"
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
CPU_CANDIDATES = ("dynamic", "dynamic_conv", "static_qdq_u8s8", "static_qoperator", "qdq_s8s8")
# 7-bit weights (reduce_range): ORT's u8s8 kernels on CPUs without VNNI add pairs of u8*s8 products in int16 and
# saturate; 255 * 63 * 2 stays inside int16 (runtime.cpu). Built where the CPU at hand saturates.
RR_CANDIDATES = ("dynamic_rr", "static_qdq_u8s8_rr", "static_qoperator_rr")
ALL_CPU_CANDIDATES = CPU_CANDIDATES + RR_CANDIDATES


def default_cpu_candidates(isa: str | None = None) -> tuple[str, ...]:
    """The CPU int8 forms worth building on a CPU of class ``isa`` (runtime.cpu.int8_isa()): the full-range ones
    everywhere, plus the 7-bit ones where the int8 kernels saturate."""
    isa = isa or int8_isa()
    return CPU_CANDIDATES + (RR_CANDIDATES if int8_saturates(isa) else ())


class QuantizeError(RuntimeError):
    """Quantisation failed; the message names the model, the stage and what was expected."""


@dataclass
class QuantOptions:
    method: str = "Percentile"  # calibration: MinMax | Entropy | Percentile
    calib_size: int = 256
    calib_batch: int = 32
    seed: int = 0
    max_drop: float = 0.5  # accuracy points vs fp32 on the validation split
    min_agreement: float = 0.99  # top-1 agreement with fp32 on the validation split
    min_cosine: float = 0.99  # parity-only models (no dataset)
    quantize_attention: bool = False  # Q/DQ on attention BMMs (MatMul of two activations) too
    sweep: str = "auto"  # auto: only when the fully quantised model misses the budget | always | never
    sweep_samples: int = 1000  # validation rows used to rank nodes
    eval_samples: int | None = None  # validation rows for the budget (None: the whole split)
    max_excluded: int | None = None
    cpu_candidates: tuple[str, ...] | None = None  # None: default_cpu_candidates() for the CPU at hand
    # int8.cpu.onnx must be at least this much faster than fp32 here, else fp32 is kept: 5 % is the timing noise of
    # these shared 2-core machines (bench's INT8 guard margin), so a tie never ships an int8 artifact
    min_speedup: float = 1.05
    bench_runs: int = 50
    tie_tolerance: float = 0.05  # CPU candidates this close to the fastest count as equally fast
    min_int8_coverage: float = 0.5  # a CPU candidate must hold >= this share of Conv/Gemm/MatMul weights in int8
    bench_batch: int = 1
    threads: int = 2
    parity_calib_size: int = 32  # models without a dataset: synthetic calibration images
    parity_eval_size: int = 16
    fp16: bool = True
    int8: bool = True

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("threads", "bench_runs", "bench_batch", "fp16", "int8", "tie_tolerance"):
            d.pop(k)
        return d


# ---- graph helpers -----------------------------------------------------------------------------------
def _constants(graph) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return names


def ensure_node_names(model) -> int:
    """Give unnamed nodes a stable unique name (``<op>_<index>``); returns how many were named."""
    used = {n.name for n in model.graph.node if n.name}
    k = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
            k += 1
    return k


@dataclass
class NodeInfo:
    name: str
    op_type: str
    weight: str | None  # initializer name of the weight input (None for attention BMMs)
    kind: str  # "weight" | "attention"


def quantizable_nodes(model, quantize_attention: bool = False) -> list[NodeInfo]:
    """Conv/Gemm/MatMul nodes with a constant weight (projections, FFNs, convs), in graph order; with
    ``quantize_attention`` also MatMuls of two activations (attention score/context BMMs)."""
    consts = _constants(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        if n.input[1] in consts:
            out.append(NodeInfo(n.name, n.op_type, n.input[1], "weight"))
        elif n.op_type == "MatMul" and n.input[0] not in consts and quantize_attention:
            out.append(NodeInfo(n.name, n.op_type, None, "attention"))
    return out


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, B[, C]) (alpha=beta=1, transA=0, constant B) as MatMul(A, B') [+ Add(C)] in place,
    keeping the Gemm's node name on the MatMul so exclusions still apply. ORT's dynamic quantisation only
    handles MatMul. Returns the number of Gemms rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, done, transposed = [], 0, {}
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        ok = (n.op_type == "Gemm" and n.input[1] in inits and attrs.get("transA", 0) == 0
              and float(attrs.get("alpha", 1.0)) == 1.0 and float(attrs.get("beta", 1.0)) == 1.0)
        if not ok:
            new_nodes.append(n)
            continue
        b = n.input[1]
        if attrs.get("transB", 0):
            if b not in transposed:
                arr = numpy_helper.to_array(inits[b]).T.copy()
                tname = f"{b}_T"
                model.graph.initializer.append(numpy_helper.from_array(arr, tname))
                transposed[b] = tname
            b = transposed[b]
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = f"{n.output[0]}_matmul" if has_bias else n.output[0]
        new_nodes.append(helper.make_node("MatMul", [n.input[0], b], [mm_out], name=n.name))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for nd in model.graph.node for i in nd.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return done


# ---- calibration -------------------------------------------------------------------------------------
def calibration_options(method: str, op_types: Sequence[str] = WEIGHT_OPS) -> dict[str, Any]:
    """Calibrator options (part of the cache key). Ranges are kept asymmetric (min, max) where the method
    allows, so one cache serves the symmetric TensorRT graph and the asymmetric u8 CPU graphs."""
    if method not in ("MinMax", "Entropy", "Percentile"):
        raise QuantizeError(f"calibration method: got {method!r}, expected MinMax, Entropy or Percentile")
    opts: dict[str, Any] = {"op_types": list(op_types), "symmetric": method == "Percentile"}
    if method == "Entropy":
        # ORT's defaults (128 bins, 128 quantised bins) leave ONE candidate threshold: the full range, i.e. MinMax.
        # 2048 bins searched down to 128 quantised bins is TensorRT's entropy calibration.
        opts.update(num_bins=2048, num_quantized_bins=128)
    if method == "Percentile":
        opts.update(num_bins=2048, percentile=99.999)
    return opts


def calibrate_ranges(model_path: str | os.PathLike, data: CalibrationData, method: str = "MinMax",
                     cache: RangeCache | None = None, op_types: Sequence[str] = WEIGHT_OPS,
                     progress: bool = False) -> tuple[dict[str, TensorRange], dict[str, Any]]:
    """Ranges of every float input/output of ``op_types`` nodes, from ``cache`` when its key matches
    (model sha256, data sha256, method, options), else computed with ORT's calibrator and saved."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from zoo.io import sha256_file

    opts = calibration_options(method, op_types)
    key = CacheKey(model_sha256=sha256_file(model_path), data_sha256=data.sha256, method=method, options=opts)
    info: dict[str, Any] = {"method": method, "options": opts, "data": data.describe(), "key_digest": key.digest}
    if cache is not None:
        hit = cache.load(key)
        if hit is not None:
            info.update(cache="hit", cache_file=cache.path.name, batches_served=0, tensors=len(hit), seconds=0.0)
            return hit, info
        info["cache_miss_reason"] = cache.last_miss
    reader = OrtCalibrationReader(data)
    t0 = time.perf_counter()
    extra = {"symmetric": opts["symmetric"]}
    extra.update({k: opts[k] for k in ("num_bins", "num_quantized_bins", "percentile") if k in opts})
    with tempfile.TemporaryDirectory(prefix="edgeattn-calib-") as tmp:
        cal = create_calibrator(Path(model_path), list(op_types), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                calibrate_method=CalibrationMethod[method], extra_options=extra)
        # One batch per collect_data call: ORT merges ranges/histograms across calls, so memory stays at one
        # batch of intermediate tensors (histogram methods otherwise hold every batch) and batches may differ
        # in shape.
        from tqdm import tqdm

        import contextlib
        import io

        chatter = io.StringIO()  # ORT's histogram calibrators print() progress lines
        with contextlib.redirect_stdout(chatter):
            for i in tqdm(range(len(data)), desc=f"calibrate {Path(model_path).parent.name} ({method})",
                          disable=not progress, leave=False, dynamic_ncols=True):
                reader.set_range(i, i + 1)
                cal.collect_data(reader)
            td = cal.compute_data()
        del cal
    ranges = {}
    for name, t in td.items():
        lo, hi = t.range_value
        ranges[name] = TensorRange(float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    seconds = time.perf_counter() - t0
    info.update(cache="computed", batches_served=reader.batches_served, tensors=len(ranges), seconds=round(seconds, 2))
    if cache is not None:
        cache.save(key, ranges, seconds=round(seconds, 2), extra={"data": data.describe()})
        info["cache_file"] = cache.path.name
    return ranges, info


def _ort_range_file(ranges: dict[str, TensorRange], method: str, path: Path) -> Path:
    """Our ranges in ORT's calibration-cache JSON, so quantize_static skips calibration."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    td = TensorsData(CalibrationMethod[method], {
        k: TensorData(lowest=np.array(r.lowest, np.float32), highest=np.array(r.highest, np.float32))
        for k, r in ranges.items()})
    save_tensors_data(td, path)
    return path


# ---- building quantised graphs -----------------------------------------------------------------------
TRT_EXTRA = {
    "QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True,
    "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS),
    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
}


def quantize_static_cached(src: str | os.PathLike, dst: str | os.PathLike, ranges: dict[str, TensorRange],
                           method: str, nodes: Sequence[str], flavour: str = "trt",
                           quantize_attention: bool = False, reduce_range: bool = False) -> None:
    """quantize_static with precomputed ``ranges`` (no calibration pass) on exactly ``nodes``.

    flavour ``trt``: QDQ, int8 activations and weights, symmetric, per-channel weights, float bias, no Q/DQ on
    outputs. ``qdq_u8s8``: QDQ with uint8 asymmetric activations, int8 per-channel weights, int32 bias (ORT CPU).
    ``qoperator``: QLinear* operators, u8s8 (ORT CPU). ``reduce_range``: 7-bit weights (CPU flavours only)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not nodes:
        raise QuantizeError(f"{Path(src).name}: no nodes to quantise (all excluded)")
    with tempfile.TemporaryDirectory(prefix="edgeattn-q-") as tmp:
        cache = _ort_range_file(ranges, method, Path(tmp) / "ranges.json")
        common = dict(calibration_data_reader=None, calibrate_method=CalibrationMethod[method],
                      calibration_cache_path=str(cache), op_types_to_quantize=list(WEIGHT_OPS),
                      nodes_to_quantize=list(nodes), per_channel=True, weight_type=QuantType.QInt8)
        if flavour == "trt":
            if reduce_range:
                raise QuantizeError("reduce_range: the TensorRT graph keeps the full int8 range (TensorRT's kernels "
                                    "do not saturate); expected reduce_range only for the CPU flavours")
            extra = dict(TRT_EXTRA, MatMulConstBOnly=not quantize_attention)
            quantize_static(str(src), str(dst), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            extra_options=extra, **common)
        elif flavour == "qdq_u8s8":
            quantize_static(str(src), str(dst), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            extra_options={"MatMulConstBOnly": True}, reduce_range=reduce_range, **common)
        elif flavour == "qoperator":
            quantize_static(str(src), str(dst), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                            extra_options={"MatMulConstBOnly": True}, reduce_range=reduce_range, **common)
        else:
            raise QuantizeError(f"static flavour: got {flavour!r}, expected trt, qdq_u8s8 or qoperator")


def quantize_dynamic_matmul(src: str | os.PathLike, dst: str | os.PathLike, exclude: Sequence[str] = (),
                            conv: bool = False, reduce_range: bool = False) -> int:
    """Dynamic int8 (DynamicQuantizeLinear + MatMulInteger, fused by ORT into DynamicQuantizeMatMul) on every
    constant-weight MatMul, after rewriting Gemm as MatMul. Convs stay float unless ``conv`` (ConvInteger)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    ensure_node_names(model)
    n = gemm_to_matmul(model)
    with tempfile.TemporaryDirectory(prefix="edgeattn-dq-") as tmp:
        mm = Path(tmp) / "matmul.onnx"
        onnx.save(model, str(mm))
        quantize_dynamic(str(mm), str(dst), op_types_to_quantize=["MatMul"] + (["Conv"] if conv else []),
                         per_channel=False, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         reduce_range=reduce_range, extra_options={"MatMulConstBOnly": True})
    return n


def quantizable_weight_elements(model) -> int:
    """Elements of the constant weights of Conv/Gemm/MatMul nodes (what int8 can cover; embeddings are not)."""
    inits = {t.name: t for t in model.graph.initializer}
    names = {n.weight for n in quantizable_nodes(model) if n.weight in inits}
    return int(sum(int(np.prod(inits[w].dims)) for w in names))


def int8_weight_coverage(path: str | os.PathLike, quantizable: int) -> float:
    """Share of the source's Conv/Gemm/MatMul weight elements stored as 8-bit integers in ``path``: how much of
    the model really runs in int8 (a candidate that quantises only the classifier head is nearly fp32)."""
    import onnx

    m = onnx.load(str(path))
    q8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    n8 = sum(int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) >= 2 and t.data_type in q8)
    return round(min(1.0, n8 / max(quantizable, 1)), 4)


# ---- evaluation --------------------------------------------------------------------------------------
def judge(cmp: dict[str, Any], opts: QuantOptions, labelled: bool) -> bool:
    if cmp.get("nonfinite"):
        return False
    if labelled:
        return cmp["accuracy_delta"] >= -opts.max_drop - 1e-9 and cmp["top1_agreement"] >= opts.min_agreement
    return cmp["cosine_mean"] >= opts.min_cosine


def logit_error(ref: np.ndarray, out: np.ndarray) -> float:
    """Relative mean squared logit error (smooth ranking score for sensitivity)."""
    return float(np.mean((out - ref) ** 2) / max(np.mean(ref ** 2), 1e-12))


def evaluate_inprocess(path: str | os.PathLike, es: EvalSet, ref: np.ndarray, threads: int) -> tuple[dict, np.ndarray]:
    """A TensorRT Q/DQ graph judged by its float simulation (runtime.ort_backend.QDQ_REFERENCE_LEVEL): the same
    verdict on every CPU, and what TensorRT computes up to rounding."""
    out = ort_logits(path, es, QDQ_REFERENCE_LEVEL, threads)
    cmp = figures(ref, out, es.y)
    cmp["logit_rel_mse"] = logit_error(ref, out)
    return cmp, out


def sensitivity_sweep(src: Path, ranges: dict[str, TensorRange], method: str, nodes: Sequence[NodeInfo],
                      es: EvalSet, ref: np.ndarray, opts: QuantOptions, work: Path,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Quantise ONE node at a time; measure its accuracy drop and logit error on ``es``. Most harmful first."""
    from tqdm import tqdm

    rows = []
    for nd in tqdm(nodes, desc=f"sensitivity {src.parent.name}", disable=not progress, leave=False, dynamic_ncols=True):
        p = work / "one.onnx"
        quantize_static_cached(src, p, ranges, method, [nd.name], "trt", opts.quantize_attention)
        cmp, _ = evaluate_inprocess(p, es, ref, opts.threads)
        rows.append({"node": nd.name, "op_type": nd.op_type, "kind": nd.kind, "logit_rel_mse": cmp["logit_rel_mse"],
                     "accuracy_delta": cmp.get("accuracy_delta"), "top1_agreement": cmp["top1_agreement"],
                     "cosine_mean": cmp["cosine_mean"]})
    rows.sort(key=lambda r: -r["logit_rel_mse"])
    return rows


def budget_search(src: Path, ranges: dict[str, TensorRange], method: str, nodes: Sequence[NodeInfo],
                  es: EvalSet, ref: np.ndarray, es_sweep: EvalSet, ref_sweep: np.ndarray, opts: QuantOptions,
                  work: Path, progress: bool = True) -> dict[str, Any]:
    """Fully quantise; while outside the budget, keep the next most sensitive node float. Returns the
    excluded nodes (with what each cost), every step, the sensitivity table and the final evaluation."""
    labelled = es.y is not None
    names = [n.name for n in nodes]
    p = work / "candidate.onnx"
    quantize_static_cached(src, p, ranges, method, names, "trt", opts.quantize_attention)
    cmp, _ = evaluate_inprocess(p, es, ref, opts.threads)
    steps = [{"excluded": None, **_brief(cmp)}]
    sens: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    need = not judge(cmp, opts, labelled)
    if opts.sweep == "always" or (need and opts.sweep == "auto"):
        sens = sensitivity_sweep(src, ranges, method, nodes, es_sweep, ref_sweep, opts, work, progress)
    if need and sens:
        limit = opts.max_excluded if opts.max_excluded is not None else len(nodes) - 1
        for row in sens[:limit]:
            prev = cmp
            keep = [n for n in names if n != row["node"] and n not in {e["node"] for e in excluded}]
            if not keep:
                break
            quantize_static_cached(src, p, ranges, method, keep, "trt", opts.quantize_attention)
            cmp, _ = evaluate_inprocess(p, es, ref, opts.threads)
            cost = {"node": row["node"], "op_type": row["op_type"],
                    "alone_accuracy_delta": row["accuracy_delta"], "alone_logit_rel_mse": row["logit_rel_mse"],
                    "recovered_points": None if not labelled else round(cmp["accuracy_delta"] - prev["accuracy_delta"], 4),
                    "recovered_agreement": round(cmp["top1_agreement"] - prev["top1_agreement"], 4)}
            excluded.append(cost)
            steps.append({"excluded": row["node"], **_brief(cmp)})
            log.info("int8 %s: keep %s float -> %s", src.parent.name, row["node"], _brief(cmp))
            if judge(cmp, opts, labelled):
                break
    if len(excluded) > 1 and judge(cmp, opts, labelled):
        # Backward pass: a node kept float early may be unnecessary once later ones are float too.
        for cost in list(excluded[:-1]):
            trial = [n for n in names if n == cost["node"] or n not in {e["node"] for e in excluded}]
            quantize_static_cached(src, p, ranges, method, trial, "trt", opts.quantize_attention)
            c2, _ = evaluate_inprocess(p, es, ref, opts.threads)
            if judge(c2, opts, labelled):
                excluded.remove(cost)
                cmp = c2
                steps.append({"requantized": cost["node"], **_brief(c2)})
                log.info("int8 %s: %s can be int8 after all -> %s", src.parent.name, cost["node"], _brief(c2))
    return {"excluded": excluded, "steps": steps, "sensitivity": sens, "final": cmp,
            "passed": judge(cmp, opts, labelled), "quantized": [n for n in names if n not in {e["node"] for e in excluded}]}


def _miss(cmp: dict[str, Any], opts: QuantOptions, labelled: bool) -> str:
    """What missed the budget and by how much, in words."""
    if cmp.get("nonfinite"):
        return f"{cmp['nonfinite']} NaN/Inf values in the output"
    if not labelled:
        return f"cosine mean {cmp['cosine_mean']:.5f} < {opts.min_cosine} (short by {opts.min_cosine - cmp['cosine_mean']:.5f})"
    parts = []
    if cmp["accuracy_delta"] < -opts.max_drop - 1e-9:
        parts.append(f"accuracy delta {cmp['accuracy_delta']:+.2f} points, budget -{opts.max_drop} (over by "
                     f"{-cmp['accuracy_delta'] - opts.max_drop:.2f})")
    if cmp["top1_agreement"] < opts.min_agreement:
        parts.append(f"top-1 agreement {cmp['top1_agreement']:.4f} < {opts.min_agreement}")
    return "; ".join(parts) or "within the budget"


def _brief(cmp: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "accuracy_delta", "top1_agreement", "cosine_mean", "logit_rel_mse", "nonfinite")
    return {k: (round(cmp[k], 6) if isinstance(cmp.get(k), float) else cmp.get(k)) for k in keys if k in cmp}


# ---- latency -----------------------------------------------------------------------------------------
def bench_inprocess(models: dict[str, str], feed: dict[str, np.ndarray], runs: int, threads: int,
                    levels: dict[str, str] | None = None, warmup: int = 3,
                    seconds_per_model: float = 3.0) -> dict[str, dict[str, float]]:
    """Interleaved (round-robin) latency of several models on one feed: median / p10 / p90 ms per model.
    ``runs`` is a minimum: fast models get up to 10x more runs, ~``seconds_per_model`` each, to beat noise."""
    levels = levels or {}
    sessions = {k: ort_session(v, levels.get(k, "all"), threads) for k, v in models.items()}
    slowest = 0.0
    for s in sessions.values():
        for _ in range(warmup):
            t0 = time.perf_counter()
            s.run(None, feed)
            dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
    runs = max(runs, min(10 * runs, int(seconds_per_model / max(slowest, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": round(float(np.median(v)), 3), "p10_ms": round(float(np.percentile(v, 10)), 3),
                "p90_ms": round(float(np.percentile(v, 90)), 3), "runs": len(v)} for k, v in times.items()}


def bench_guarded(models: dict[str, str], feed: dict[str, np.ndarray], runs: int, threads: int,
                  levels: dict[str, str] | None = None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """:func:`bench_inprocess` in a child process, so a backend crash is reported instead of fatal."""
    from runtime.child import python_module, run_child

    with tempfile.TemporaryDirectory(prefix="edgeattn-bench-") as tmp:
        fp, out = Path(tmp) / "feed.npz", Path(tmp) / "out.json"
        np.savez(fp, **feed)
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"models": models, "levels": levels or {}, "runs": runs, "threads": threads}))
        res = run_child(python_module("optimize.quantize", "--child-bench", spec, fp, out), timeout_s)
        if not res.ok or not out.is_file():
            return {"error": f"benchmark child {res.describe()}"}
        return json.loads(out.read_text())


def _child_bench(argv: Sequence[str]) -> int:
    spec_path, feed_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    with np.load(feed_path) as z:
        feed = {k: z[k] for k in z.files}
    res = bench_inprocess(spec["models"], feed, int(spec["runs"]), int(spec["threads"]), spec.get("levels"))
    Path(out_path).write_text(json.dumps(res))
    return 0


# ---- CPU flavour -------------------------------------------------------------------------------------
def build_cpu_candidates(src: Path, ranges: dict[str, TensorRange], method: str, quantized: Sequence[str],
                         excluded: Sequence[str], qdq_path: Path, work: Path, opts: QuantOptions) -> dict[str, Path]:
    """Write each CPU candidate into ``work``; returns name -> path (failures are logged and skipped)."""
    out: dict[str, Path] = {}
    for name in opts.cpu_candidates or default_cpu_candidates():
        p = work / f"{name}.onnx"
        base, rr = (name[:-3], True) if name.endswith("_rr") else (name, False)
        try:
            if name not in ALL_CPU_CANDIDATES:
                raise QuantizeError(f"CPU candidate: got {name!r}, expected one of {ALL_CPU_CANDIDATES}")
            if base == "dynamic":
                quantize_dynamic_matmul(src, p, exclude=excluded, reduce_range=rr)
            elif base == "dynamic_conv":
                quantize_dynamic_matmul(src, p, exclude=excluded, conv=True)
            elif base == "static_qdq_u8s8":
                quantize_static_cached(src, p, ranges, method, quantized, "qdq_u8s8", reduce_range=rr)
            elif base == "static_qoperator":
                quantize_static_cached(src, p, ranges, method, quantized, "qoperator", reduce_range=rr)
            elif base == "qdq_s8s8":
                shutil.copyfile(qdq_path, p)
            out[name] = p
        except Exception as e:  # noqa: BLE001 - one failing candidate must not stop the others
            log.warning("int8 CPU candidate %s for %s failed: %s: %s", name, src.parent.name, type(e).__name__, e)
    return out


def pick_cpu(rows: dict[str, dict[str, Any]], fp32_ms: float | None, opts: QuantOptions,
             labelled: bool) -> tuple[str | None, str]:
    """(winner or None, why) from measured candidate rows: the fastest candidate that is within the budget, really
    int8 (``passed`` already holds both) and at least ``opts.min_speedup`` times faster than fp32 here; candidates
    within ``tie_tolerance`` of the fastest count as tied and the most accurate of them wins. None: no int8 form
    is both within the budget and faster on this CPU, so fp32 is kept."""
    within = [k for k, r in rows.items() if r.get("passed") and r.get("latency_ms") is not None]
    if fp32_ms is None:
        return None, "fp32 latency could not be measured, so no int8 form is known to be faster: fp32 kept"
    ok = [k for k in within if fp32_ms / rows[k]["latency_ms"] >= opts.min_speedup]

    def accuracy_rank(k: str) -> tuple:
        v = rows[k]["val"]
        return (v.get("accuracy_delta") or 0.0, v["top1_agreement"], v["cosine_mean"]) if labelled else \
            (v["cosine_mean"], v["top1_agreement"])

    if not ok:
        if within:
            fastest = min(within, key=lambda k: rows[k]["latency_ms"])
            return None, (f"no int8 form within the budget is faster than fp32 on this CPU (best: {fastest} "
                          f"{rows[fastest]['latency_ms']:.3f} ms vs fp32 {fp32_ms:.3f} ms, needs >= "
                          f"{opts.min_speedup:.2f}x): fp32 kept")
        return None, "no int8 form within the budget on this CPU: fp32 kept"
    best = min(rows[k]["latency_ms"] for k in ok)
    tied = [k for k in ok if rows[k]["latency_ms"] <= best * (1.0 + opts.tie_tolerance)]
    winner = max(tied, key=accuracy_rank)
    why = ("fastest within the budget" if len(tied) == 1 else
           f"most accurate of {sorted(tied)} (within {opts.tie_tolerance:.0%} of the fastest, within the budget)")
    return winner, why


def choose_cpu(src: Path, candidates: dict[str, Path], es: EvalSet, ref: np.ndarray, feed: dict[str, np.ndarray],
               opts: QuantOptions) -> dict[str, Any]:
    """Accuracy of each candidate on this CPU's integer kernels (crash-guarded child, ORT 'all'), latency of all
    survivors + fp32 side by side, then :func:`pick_cpu`. ``winner`` None: fp32 is kept."""
    import onnx

    labelled = es.y is not None
    quantizable = quantizable_weight_elements(onnx.load(str(src)))
    rows: dict[str, dict[str, Any]] = {}
    for name, p in candidates.items():
        coverage = int8_weight_coverage(p, quantizable)
        run = run_guarded(p, es, "all", opts.threads)
        if not run.ok:
            rows[name] = {"ran": False, "error": run.error, "passed": False, "int8_weight_coverage": coverage}
            continue
        rows[name] = {"int8_weight_coverage": coverage}
        cmp = figures(ref, run.logits, es.y)
        cmp["logit_rel_mse"] = logit_error(ref, run.logits)
        rows[name].update(ran=True, val=_brief(cmp), passed=judge(cmp, opts, labelled))
        if coverage < opts.min_int8_coverage:
            rows[name].update(passed=False, problem=f"only {coverage:.0%} of the Conv/Gemm/MatMul weights are int8, "
                                                    f"expected >= {opts.min_int8_coverage:.0%}")
    runnable = {k: str(candidates[k]) for k, r in rows.items() if r["ran"]}
    lat = bench_guarded({"fp32": str(src), **runnable}, feed, opts.bench_runs, opts.threads)
    fp32_ms = lat.get("fp32", {}).get("median_ms") if "error" not in lat else None
    for k in runnable:
        if k in lat:
            rows[k]["latency_ms"] = lat[k]["median_ms"]
            rows[k]["latency_p10_p90_ms"] = [lat[k]["p10_ms"], lat[k]["p90_ms"]]
            rows[k]["bench_runs"] = lat[k]["runs"]
            rows[k]["speedup_vs_fp32"] = round(fp32_ms / lat[k]["median_ms"], 3) if fp32_ms else None
    if not any(r["ran"] for r in rows.values()):
        raise QuantizeError(f"{src.parent.name}: every CPU int8 candidate crashed or failed: "
                            f"{ {k: r.get('error') for k, r in rows.items()} }")
    winner, why = pick_cpu(rows, fp32_ms, opts, labelled)
    return {"winner": winner, "why": why, "candidates": rows, "fp32_latency_ms": fp32_ms,
            "latency_error": lat.get("error"), "bench": {"batch": int(next(iter(feed.values())).shape[0]),
                                                        "runs": opts.bench_runs, "threads": opts.threads,
                                                        "ort_opt_level": "all"}}


# ---- one model ---------------------------------------------------------------------------------------
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _up_to_date(model_dir: Path, section: dict | None, key: str, files: Iterable[str]) -> bool:
    from zoo.io import sha256_file

    if not section or section.get("key") != key:
        return False
    shas = section.get("files_sha256", {})
    return all((model_dir / f).is_file() and shas.get(f) == sha256_file(model_dir / f) for f in files)


def load_spec(model_dir: Path):
    from zoo.spec import ModelSpec

    p = model_dir / "spec.json"
    if p.is_file():
        return ModelSpec.from_json(p.read_text(encoding="utf-8"))
    import onnx

    m = onnx.load(str(model_dir / "fp32.sim.onnx"), load_external_data=False)
    for prop in m.metadata_props:
        if prop.key == SPEC_METADATA_KEY:
            return ModelSpec.from_json(prop.value)
    raise QuantizeError(f"{model_dir}: no spec.json and no '{SPEC_METADATA_KEY}' metadata in fp32.sim.onnx")


def quantize_model(model_dir: str | os.PathLike, opts: QuantOptions | None = None, force: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """FP16 + INT8 artifacts for one model folder; returns {"fp16": section, "int8": section} (as written)."""
    from zoo.io import read_json, sha256_file, update_manifest

    opts = opts or QuantOptions()
    isa = int8_isa()
    if opts.cpu_candidates is None:
        opts = replace(opts, cpu_candidates=default_cpu_candidates(isa))
    model_dir = Path(model_dir)
    src = model_dir / "fp32.sim.onnx"
    if not src.is_file():
        raise QuantizeError(f"{src}: not found; run 'make optimize' (python -m optimize simplify) first")
    spec = load_spec(model_dir)
    labelled = spec.dataset is not None
    manifest = read_json(model_dir / "manifest.json", {}) or {}
    src_sha = sha256_file(src)
    dataset = None
    if labelled:
        from zoo.data import load_dataset

        dataset = load_dataset(spec.dataset)
    es = load_eval_set(spec, model_dir, "val", opts.eval_samples, opts.seed, opts.parity_eval_size, dataset=dataset)
    result: dict[str, Any] = {}
    ref = None

    # -- fp16
    if opts.fp16:
        f16 = Fp16Options(threads=opts.threads)
        key = _digest({"src": src_sha, "opts": f16.key(), "code": CODE_VERSION})
        if not force and _up_to_date(model_dir, manifest.get("fp16"), key, ["fp16.onnx"]):
            print(f"quantize {model_dir.name}: fp16.onnx up to date")
            result["fp16"] = manifest["fp16"]
        else:
            es16 = es.subset(f16.check_samples, opts.seed)
            ref16 = ort_logits(src, es16, "all", opts.threads, progress=f"fp32 {model_dir.name}" if progress else None)
            sec = build_fp16(model_dir, es16, ref16, f16)
            sec.update(key=key, files_sha256={"fp16.onnx": sec["sha256"]})
            update_manifest(model_dir, "fp16", sec)
            result["fp16"] = sec

    # -- int8
    if opts.int8:
        if labelled:
            calib = CalibrationData.from_dataset(spec, dataset, model_dir, opts.calib_size, opts.calib_batch, opts.seed)
        else:
            calib = CalibrationData.synthetic_images(spec, opts.parity_calib_size, min(8, opts.calib_batch), opts.seed)
        # the CPU's int8 class is part of the key: int8.cpu.onnx is chosen and verified for the CPU at hand
        key = _digest({"src": src_sha, "data": calib.sha256, "dataset": getattr(dataset, "sha256", None),
                       "eval": es.description, "opts": opts.key(), "code": CODE_VERSION, "cpu_isa": isa})
        old = manifest.get("int8") or {}
        if not force and _up_to_date(model_dir, old, key, list(old.get("files_sha256", {})) or ["int8.qdq.onnx"]):
            print(f"quantize {model_dir.name}: {' and '.join(old['files_sha256'])} up to date"
                  + ("" if (old.get("cpu") or {}).get("file") else " (CPU: fp32 kept, no int8.cpu.onnx)"))
            result["int8"] = old
            return result
        ref = ort_logits(src, es, "all", opts.threads, progress=f"fp32 {model_dir.name} val" if progress else None)
        sec = build_int8(model_dir, src, calib, es, ref, opts, progress, isa)
        sec.update(key=key, source_sha256=src_sha)
        if labelled:
            tj = read_json(model_dir / "train.json", {}) or {}
            sec["pytorch_val_accuracy"] = tj.get("val_accuracy")
        update_manifest(model_dir, "int8", sec)
        result["int8"] = sec
    return result


def build_int8(model_dir: Path, src: Path, calib: CalibrationData, es: EvalSet, ref: np.ndarray,
               opts: QuantOptions, progress: bool = True, isa: str | None = None) -> dict[str, Any]:
    """Calibrate, budget-search the TensorRT Q/DQ graph (judged by its float simulation), pick the CPU graph for
    this CPU (judged on its integer kernels); write both atomically. When no int8 form is both within the budget
    and faster than fp32 here, no int8.cpu.onnx is written (a stale one is removed) and fp32 is the CPU artifact."""
    import onnx

    from zoo.io import atomic_write, sha256_file

    isa = isa or int8_isa()
    t0 = time.perf_counter()
    labelled = es.y is not None
    with tempfile.TemporaryDirectory(prefix=f"edgeattn-int8-{model_dir.name}-") as tmpd:
        work = Path(tmpd)
        model = onnx.load(str(src))
        qsrc = src
        if ensure_node_names(model):
            qsrc = work / "named.onnx"
            onnx.save(model, str(qsrc))
        nodes = quantizable_nodes(model, opts.quantize_attention)
        del model
        if not nodes:
            raise QuantizeError(f"{src}: no Conv/Gemm/MatMul node with a constant weight to quantise")
        cache = RangeCache(model_dir / f"calib.{opts.method.lower()}.json")
        ranges, cinfo = calibrate_ranges(qsrc, calib, opts.method, cache, progress=progress)
        es_sweep = es.subset(opts.sweep_samples, opts.seed + 1)
        ref_sweep = ref if es_sweep is es else ort_logits(src, es_sweep, "all", opts.threads)
        search = budget_search(qsrc, ranges, opts.method, nodes, es, ref, es_sweep, ref_sweep, opts, work, progress)
        cand = work / "candidate.onnx"
        quantize_static_cached(qsrc, cand, ranges, opts.method, search["quantized"], "trt", opts.quantize_attention)
        violations = check_qdq_rules(cand)
        qdq_dst = model_dir / "int8.qdq.onnx"
        atomic_write(qdq_dst, lambda p: shutil.copyfile(cand, p))
        excluded = [e["node"] for e in search["excluded"]]
        cands = build_cpu_candidates(qsrc, ranges, opts.method, search["quantized"], excluded, qdq_dst, work, opts)
        feed = next(es.subset(opts.bench_batch, opts.seed).batches(opts.bench_batch))
        cpu = choose_cpu(src, cands, es, ref, feed, opts)
        cpu_dst = model_dir / "int8.cpu.onnx"
        win = cpu["winner"]
        if win is not None:
            m = onnx.load(str(cands[win]))
            onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, ISA_METADATA_KEY: isa})
            atomic_write(cpu_dst, lambda p: onnx.save(m, str(p)))
            del m
        elif cpu_dst.exists():
            cpu_dst.unlink()  # a stale int8.cpu.onnx from another CPU or budget must not be verified or shipped
    qdq_lat = cpu["candidates"].get("qdq_s8s8", {}).get("latency_ms")
    wrow = cpu["candidates"].get(win, {}) if win else {}
    files = {qdq_dst.name: sha256_file(qdq_dst), **({cpu_dst.name: sha256_file(cpu_dst)} if win else {})}
    miss = None if search["passed"] else _miss(search["final"], opts, labelled)
    sec = {
        "artifacts": {"qdq": qdq_dst.name, "cpu": cpu_dst.name if win else None},
        "files_sha256": files,
        "source": src.name, "calibration": cinfo,
        "budget": {"split": "val" if labelled else "synthetic", "data": es.description, "n": len(es),
                   "max_drop_points": opts.max_drop if labelled else None,
                   "min_top1_agreement": opts.min_agreement if labelled else None,
                   "min_cosine": None if labelled else opts.min_cosine,
                   "fp32_ort_accuracy": float((ref.argmax(1) == es.y).mean()) if labelled else None},
        "qdq": {"file": qdq_dst.name, "passed": search["passed"], "rules_ok": not violations,
                "judged_by": "float simulation of its Q/DQ (ONNX Runtime, graph optimisations off): what TensorRT "
                             "computes up to rounding, the same on every CPU",
                "miss": miss, "fallback": None if search["passed"] else
                "int8.qdq.onnx kept (most accurate found) and marked failed; deploy fp16.onnx / the fp16 engine",
                "rule_violations": violations, "counts": qdq_counts(qdq_dst),
                "quantized_nodes": search["quantized"], "excluded_nodes": search["excluded"],
                "val": _brief(search["final"]), "steps": search["steps"], "sensitivity": search["sensitivity"],
                "latency_ms": qdq_lat, "format": "QDQ int8 symmetric, per-channel weights, float bias"},
        "cpu": {"file": cpu_dst.name if win else None, "method": win or "fp32", "why": cpu["why"],
                "ort_opt_level": "all", "cpu_isa": isa, "cpu_model": cpu_info().get("model"),
                "judged_by": "ONNX Runtime's integer kernels on this CPU",
                "fallback": None if win else "fp32.sim.onnx",
                "passed": True if win is None else wrow["passed"],
                "val": wrow.get("val"),
                "latency_ms": wrow.get("latency_ms"),
                "fp32_latency_ms": cpu["fp32_latency_ms"], "candidates": cpu["candidates"], "bench": cpu["bench"],
                "excluded_nodes": excluded},
        "options": opts.key(), "seconds": round(time.perf_counter() - t0, 1),
    }
    if violations:
        log.error("int8 %s: Q/DQ rule violations: %s", model_dir.name, violations)
    return sec


# ---- CLI ---------------------------------------------------------------------------------------------
def _print_tables(name: str, res: dict[str, Any]) -> None:
    f16 = res.get("fp16")
    if f16:
        c = f16.get("check", {})
        print(f"\n{name}: fp16.onnx  ORT level {f16.get('ort_opt_level')}  crashed {list(f16.get('ort_crashed_levels', {}))}"
              f"  nan/inf {c.get('nonfinite')}  delta {c.get('accuracy_delta')} pts  agree {c.get('top1_agreement')}"
              f"  cos {c.get('cosine_mean', float('nan')):.6f}  passed {f16.get('passed')}")
    i8 = res.get("int8")
    if not i8:
        return
    q, cpu = i8["qdq"], i8["cpu"]
    v = q["val"]
    print(f"{name}: int8.qdq.onnx  {len(q['quantized_nodes'])} nodes int8, {len(q['excluded_nodes'])} float  "
          f"delta {_f(v.get('accuracy_delta'), 2)} pts  agree {_f(v.get('top1_agreement'), 4)}  "
          f"cos {_f(v.get('cosine_mean'), 5)}  "
          f"rules {'ok' if q['rules_ok'] else q['rule_violations']}  passed {q['passed']}  (float-simulated Q/DQ: "
          f"the TensorRT reference)" + (f"\n  MISSED: {q['miss']}; {q['fallback']}" if q.get("miss") else ""))
    if q["excluded_nodes"]:
        print(f"  {'kept float':<40}{'op':<8}{'alone delta':>11}{'alone mse':>11}{'recovered':>11}")
        for e in q["excluded_nodes"]:
            print(f"  {e['node']:<40}{e['op_type']:<8}{_f(e['alone_accuracy_delta'], 2):>11}"
                  f"{e['alone_logit_rel_mse']:>11.2e}{_f(e['recovered_points'], 2):>11}")
    print(f"  {'cpu candidate':<18}{'ran':>5}{'int8 w':>8}{'delta pts':>10}{'agree':>8}{'cosine':>10}{'ms':>10}"
          f"{'x fp32':>8}  passed")
    print(f"  {'fp32':<18}{'':>5}{'':>8}{'':>10}{'':>8}{'':>10}{_f(cpu['fp32_latency_ms'], 3):>10}{'1.00':>8}")
    for k, r in cpu["candidates"].items():
        vv = r.get("val") or {}
        mark = " <- int8.cpu.onnx" if k == cpu["method"] else ""
        mark += " (7-bit weights)" if k.endswith("_rr") else ""
        print(f"  {k:<18}{str(r['ran']):>5}{_f(r.get('int8_weight_coverage'), 2):>8}{_f(vv.get('accuracy_delta'), 2):>10}"
              f"{_f(vv.get('top1_agreement'), 4):>8}{_f(vv.get('cosine_mean'), 5):>10}{_f(r.get('latency_ms'), 3):>10}"
              f"{_f(r.get('speedup_vs_fp32'), 2):>8}  {r['passed']}{mark}")
    print(f"  CPU ({cpu.get('cpu_isa')}): " + (f"int8.cpu.onnx = {cpu['method']}: {cpu['why']}" if cpu.get("file")
                                              else f"no int8.cpu.onnx, {cpu['why']}"))


def _f(v: Any, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child-bench"]:
        return _child_bench(argv[1:])
    from zoo.registry import artifact_name, model_names

    d = QuantOptions()
    ap = argparse.ArgumentParser(prog="python -m optimize quantize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma-separated zoo names, e.g. vit,torchvision:vit_b_16")
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--max-drop", type=float, default=d.max_drop, help="accuracy points vs fp32 on validation")
    ap.add_argument("--min-agreement", type=float, default=d.min_agreement)
    ap.add_argument("--min-cosine", type=float, default=d.min_cosine, help="parity-only models")
    ap.add_argument("--method", choices=("MinMax", "Entropy", "Percentile"), default=d.method)
    ap.add_argument("--calib-size", type=int, default=d.calib_size)
    ap.add_argument("--calib-batch", type=int, default=d.calib_batch)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--sweep", choices=("auto", "always", "never"), default=d.sweep)
    ap.add_argument("--sweep-samples", type=int, default=d.sweep_samples, help="validation rows to rank nodes")
    ap.add_argument("--eval-samples", type=int, default=None, help="validation rows for the budget (default: all)")
    ap.add_argument("--quantize-attention", action="store_true", help="Q/DQ on attention BMMs too")
    ap.add_argument("--cpu-candidates", default=None,
                    help=f"comma-separated subset of {','.join(ALL_CPU_CANDIDATES)} (default: the forms for this "
                         "CPU: the 7-bit '_rr' ones are added where int8 kernels saturate, i.e. without VNNI/AMX)")
    ap.add_argument("--min-speedup", type=float, default=d.min_speedup,
                    help="int8.cpu.onnx must be this much faster than fp32 here, else fp32 is kept")
    ap.add_argument("--bench-runs", type=int, default=d.bench_runs)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("EDGEATTN_THREADS", d.threads)))
    ap.add_argument("--only", choices=("fp16", "int8"), help="build only one precision")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    # onnxruntime.quantization logs hints ("please pre-process") on the root logger at WARNING: keep root at
    # ERROR and our own loggers at INFO.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    opts = replace(d, method=args.method, calib_size=args.calib_size, calib_batch=args.calib_batch, seed=args.seed,
                   max_drop=args.max_drop, min_agreement=args.min_agreement, min_cosine=args.min_cosine,
                   sweep=args.sweep, sweep_samples=args.sweep_samples, eval_samples=args.eval_samples,
                   quantize_attention=args.quantize_attention,
                   cpu_candidates=(tuple(c for c in args.cpu_candidates.split(",") if c) if args.cpu_candidates
                                   else None), min_speedup=args.min_speedup, bench_runs=args.bench_runs,
                   threads=args.threads, fp16=args.only != "int8", int8=args.only != "fp16")
    failed = []
    for name in model_names(args.models):
        model_dir = args.artifacts / artifact_name(name)
        mopts = opts
        if name.startswith("torchvision:"):  # big parity-only model: keep it to a few minutes on 2 cores
            mopts = replace(opts, bench_runs=min(opts.bench_runs, 10))
        t0 = time.perf_counter()
        try:
            res = quantize_model(model_dir, mopts, force=args.force)
        except QuantizeError as e:
            print(f"quantize {name}: FAILED: {e}", file=sys.stderr)
            failed.append(name)
            continue
        _print_tables(name, res)
        bad = [k for k, s in res.items() if not (s.get("passed", True) if k == "fp16" else
                                                   s["qdq"]["passed"] and s["cpu"]["passed"] and s["qdq"]["rules_ok"])]
        if bad:
            print(f"quantize {name}: {', '.join(bad)} outside the budget (see manifest.json)", file=sys.stderr)
            failed.append(name)
        print(f"quantize {name}: done in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
