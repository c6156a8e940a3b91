"""Calibration and the writing of quantised graphs: activation ranges from ORT's calibrators (cached in a
calibration.RangeCache), and quantize_static / quantize_dynamic run on those ranges for the TensorRT Q/DQ graph and
the CPU forms."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from calibration import CacheKey, CalibrationData, OrtCalibrationReader, RangeCache, TensorRange
from optimize.qdq_graph import WEIGHT_OPS, ensure_node_names, gemm_to_matmul
from runtime.errors import EdgeattnError
from zoo.io import save_onnx, sha256_file, uses_external_data
from optimize.node_scopes import carry_file, reattach_file, record


class QuantizeError(EdgeattnError, RuntimeError):
    """Quantisation failed; the message names the model, the stage and what was expected."""


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
                                calibrate_method=CalibrationMethod[method], extra_options=extra,
                                use_external_data_format=uses_external_data(model_path))
        if method == "Percentile":
            cal.collector = uniform_histogram_collector(cal)
        # One batch per collect_data call: ORT merges ranges/histograms across calls, so memory stays at one
        # batch of intermediate tensors (histogram methods otherwise hold every batch) and batches may differ
        # in shape.
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


def uniform_histogram_collector(cal):
    """:func:`histogram_collector` with the parameters of ``cal`` (an ORT HistogramCalibrater)."""
    return histogram_collector(method=cal.method, symmetric=cal.symmetric, num_bins=cal.num_bins,
                               num_quantized_bins=cal.num_quantized_bins, percentile=cal.percentile,
                               scenario=cal.scenario)


def histogram_collector(num_bins: int, percentile: float, symmetric: bool, method: str = "percentile",
                        num_quantized_bins: int = 128, scenario: str = "same", workers: int | None = None):
    """ONNX Runtime's HistogramCollector with two changes, neither of which changes a histogram:

    - from the second batch on, its absolute-value histogram is binned by numpy's uniform fast path
      (``bins=n, range=(first, last)``) instead of ``bins=<edge array>``, which sorts every batch (O(n log n);
      MiniLM's Percentile calibration went from 2.7 s for the first batch of 32 to 7 s for each later one). The
      edges stay ORT's (constant width, extended as the range grows), so the histogram and the percentile are ORT's
      up to values within float rounding of an edge;
    - tensors are binned on ``workers`` threads (default: up to 4 cores; numpy releases the GIL while binning), each
      tensor's histogram on one thread as before (1.4x on 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    from onnxruntime.quantization.calibrate import HistogramCollector

    n_workers = workers or max(1, min(4, os.cpu_count() or 1))

    class UniformHistogramCollector(HistogramCollector):
        def collect_absolute_value(self, name_to_arr):
            if n_workers > 1 and len(name_to_arr) > 1:
                with ThreadPoolExecutor(n_workers) as ex:
                    list(ex.map(lambda kv: self._one(*kv), name_to_arr.items()))
            else:
                for kv in name_to_arr.items():
                    self._one(*kv)

        def _one(self, tensor, data):
            arr = np.asarray(data).ravel()
            if tensor not in self.histogram_dict or arr.size == 0:
                HistogramCollector.collect_absolute_value(self, {tensor: data})
                return
            lo, hi = np.nanmin(arr), np.nanmax(arr)
            arr = np.absolute(arr)
            old_hist, edges, old_min, old_max = self.histogram_dict[tensor]
            amax = np.nanmax(arr)
            if amax > edges[-1]:  # ORT's growth: more bins of the same width
                width = edges[1] - edges[0]
                edges = np.hstack((edges, np.arange(edges[-1] + width, amax + width, width))).astype(arr.dtype)
            hist, _ = np.histogram(arr, bins=len(edges) - 1, range=(float(edges[0]), float(edges[-1])))
            hist[: len(old_hist)] += old_hist
            self.histogram_dict[tensor] = (hist, edges, min(old_min, lo), max(old_max, hi))

    return UniformHistogramCollector(method=method, symmetric=symmetric, num_bins=num_bins,
                                     num_quantized_bins=num_quantized_bins, percentile=percentile, scenario=scenario)


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
                           quantize_attention: bool = False, reduce_range: bool = False) -> dict[str, Any]:
    """quantize_static with precomputed ``ranges`` (no calibration pass) on exactly ``nodes``.

    flavour ``trt``: QDQ, int8 activations and weights, symmetric, per-channel weights, float bias, no Q/DQ on
    outputs. ``qdq_u8s8``: QDQ with uint8 asymmetric activations, int8 per-channel weights, int32 bias (ORT CPU).
    ``qoperator``: QLinear* operators, u8s8 (ORT CPU). ``reduce_range``: 7-bit weights (CPU flavours only).

    The nodes ORT inserts or replaces get the PyTorch module scopes of ``src``'s nodes (optimize.node_scopes), so
    verify.localize localises an int8 failure; returns that coverage report (nodes, scoped before/after)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static


    if not nodes:
        raise QuantizeError(f"{Path(src).name}: no nodes to quantise (all excluded)")
    with tempfile.TemporaryDirectory(prefix="edgeattn-q-") as tmp:
        cache = _ort_range_file(ranges, method, Path(tmp) / "ranges.json")
        common = dict(calibration_data_reader=None, calibrate_method=CalibrationMethod[method],
                      calibration_cache_path=str(cache), op_types_to_quantize=list(WEIGHT_OPS),
                      nodes_to_quantize=list(nodes), per_channel=True, weight_type=QuantType.QInt8,
                      use_external_data_format=uses_external_data(src))
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
    return carry_file(src, dst)


def quantize_dynamic_matmul(src: str | os.PathLike, dst: str | os.PathLike, exclude: Sequence[str] = (),
                            conv: bool = False, reduce_range: bool = False) -> int:
    """Dynamic int8 (DynamicQuantizeLinear + MatMulInteger, fused by ORT into DynamicQuantizeMatMul) on every
    constant-weight MatMul, after rewriting Gemm as MatMul. Convs stay float unless ``conv`` (ConvInteger). The
    written graph carries ``src``'s PyTorch module scopes (optimize.node_scopes). Returns the Gemms rewritten."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic


    model = onnx.load(str(src))
    scopes = record(model)  # before gemm_to_matmul replaces the Gemms with metadata-less MatMuls
    ensure_node_names(model)
    n = gemm_to_matmul(model)
    with tempfile.TemporaryDirectory(prefix="edgeattn-dq-") as tmp:
        mm = Path(tmp) / "matmul.onnx"
        save_onnx(model, mm)
        quantize_dynamic(str(mm), str(dst), op_types_to_quantize=["MatMul"] + (["Conv"] if conv else []),
                         per_channel=False, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                         reduce_range=reduce_range, extra_options={"MatMulConstBOnly": True},
                         use_external_data_format=uses_external_data(mm))
    reattach_file(dst, scopes)
    return n
