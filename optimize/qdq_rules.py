"""Q/DQ rules TensorRT's ONNX parser (10.x, 11.x, RTX) accepts for explicit INT8, checked on any ONNX graph.

``check_qdq_rules(model_or_path) -> list[str]``: one message per violation, empty when the graph is fine.

Rules (read from the ONNX parser's Q/DQ handling in TensorRT 10.x/11.x and RTX):
- every QuantizeLinear / DequantizeLinear has a constant int8 zero point that is all 0 (a missing zero
  point on QuantizeLinear means uint8);
- scales are constant, finite and > 0;
- no DequantizeLinear of int32 data and no DQ feeding a Conv/Gemm bias input: bias stays float;
- weights (constant DQ inputs) are int8 and per-channel on the output-channel axis: Conv/ConvTranspose
  KCRS axis 0 (ConvTranspose: 1), MatMul B[K, N] axis 1 (last), Gemm B axis 0 if transB=1 else 1, with a 1-D
  scale as long as that axis;
- activations (non-constant inputs) are per-tensor (scalar scale);
- float16 scales (the mixed INT8/FP16 graph, optimize.qdq_fp16: a DequantizeLinear's output type is its scale's, so
  the DQ feeds an FP16 GEMM directly) need opset >= 19 (opset 13's Q/DQ take float32 scales only) and every value a
  normal float16, in [2**-14, 65504]: a subnormal scale keeps only a few bits (2**-24 steps), so w_q * scale would
  no longer be the weight the fp32 graph was judged with.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FP16_QDQ_MIN_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 input/scale from opset 19
FP16_SCALE_RANGE = (2.0 ** -14, 65504.0)  # normal float16: smallest normal, largest finite


def fp16_scale_problem(scale: Any) -> str | None:
    """Why ``scale`` (any float array) cannot be a float16 Q/DQ scale (None: it can): a value outside the normal
    float16 range FP16_SCALE_RANGE, judged on the values as given (before any cast)."""
    s = np.asarray(scale, dtype=np.float64)
    lo, hi = FP16_SCALE_RANGE
    bad = s[~((s >= lo) & (s <= hi))].ravel()
    if bad.size:
        return (f"{bad.size} of {s.size} values outside the normal float16 range [{lo:.3g}, {hi:g}] "
                f"(e.g. {bad[:3].tolist()})")
    return None


def _default_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _load(model_or_path: Any):
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        return onnx.load(str(model_or_path))
    return model_or_path


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_axis(consumer, input_index: int, weight_rank: int) -> tuple[int, str] | None:
    """Expected per-channel axis for a weight feeding ``consumer`` at ``input_index`` (None: not a weight slot)."""
    op = consumer.op_type
    if op == "Conv" and input_index == 1:
        return 0, "Conv weight KCRS: output channels"
    if op == "ConvTranspose" and input_index == 1:
        return 1, "ConvTranspose weight CKRS: output channels"
    if op == "MatMul" and input_index == 1:
        return weight_rank - 1, "MatMul B[K, N]: N"
    if op == "Gemm" and input_index == 1:
        return (0, "Gemm B[N, K] (transB=1): N") if int(_attr(consumer, "transB", 0)) else (1, "Gemm B[K, N]: N")
    if op in ("MatMul", "Gemm") and input_index == 0:
        return None
    return None


def check_qdq_rules(model_or_path: Any, weights_per_channel: bool = True) -> list[str]:
    """Check every Q/DQ node of an ONNX graph (path or ModelProto) against the TensorRT explicit-INT8 rules."""
    model = _load(model_or_path)
    graph = model.graph
    consts = _constants(graph)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    errors: list[str] = []
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        what = f"{node.op_type} '{node.name or node.output[0]}'"
        x_name = node.input[0]
        scale_name = node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if _attr(node, "block_size", 0):
            errors.append(f"{what}: blocked quantisation (block_size) is not supported, expected per-tensor or "
                          "per-channel")
        # -- zero point: constant int8 zeros
        if not zp_name:
            if node.op_type == "QuantizeLinear" and _attr(node, "output_dtype", 0) not in (3,):
                errors.append(f"{what}: no zero point (means uint8 output), expected an int8 zero point of 0")
        elif zp_name not in consts:
            errors.append(f"{what}: zero point '{zp_name}' is not a constant, expected a constant int8 0")
        else:
            zp = consts[zp_name]
            if zp.dtype != np.int8:
                errors.append(f"{what}: zero point '{zp_name}' has dtype {zp.dtype}, expected int8")
            if np.any(zp != 0):
                errors.append(f"{what}: zero point '{zp_name}' is {zp.ravel()[:4].tolist()}"
                              f"{'...' if zp.size > 4 else ''}, expected 0 (symmetric)")
        # -- scale: constant, finite, > 0
        scale = consts.get(scale_name)
        if scale is None:
            errors.append(f"{what}: scale '{scale_name}' is not a constant, expected a constant positive scale")
        else:
            s = np.asarray(scale, dtype=np.float64)
            if not np.all(np.isfinite(s)) or np.any(s <= 0):
                bad = s[~(np.isfinite(s) & (s > 0))].ravel()[:4].tolist()
                errors.append(f"{what}: scale '{scale_name}' has non-positive or non-finite values {bad}, expected > 0")
            elif scale.dtype == np.float16:
                why = fp16_scale_problem(scale)
                if why:
                    errors.append(f"{what}: float16 scale '{scale_name}' has {why}; expected normal float16 values "
                                  "(keep this Q/DQ in float32)")
                if _default_opset(model) < FP16_QDQ_MIN_OPSET:
                    errors.append(f"{what}: float16 scale '{scale_name}' in an opset {_default_opset(model)} graph, "
                                  f"expected opset >= {FP16_QDQ_MIN_OPSET} (float16 Q/DQ)")
        axis = int(_attr(node, "axis", 1))
        per_channel = scale is not None and np.asarray(scale).size > 1
        if scale is not None and np.asarray(scale).ndim > 1:
            errors.append(f"{what}: scale '{scale_name}' has shape {np.asarray(scale).shape}, expected a scalar "
                          "or a 1-D per-channel vector")
        x_const = consts.get(x_name)
        # -- bias: no int32 DQ, no DQ into a bias slot
        if node.op_type == "DequantizeLinear":
            if x_const is not None and x_const.dtype == np.int32:
                errors.append(f"{what}: dequantises int32 '{x_name}' (a quantised bias), expected the bias to stay "
                              "float")
            for cons, idx in consumers.get(node.output[0], []):
                if cons.op_type in ("Conv", "ConvTranspose", "Gemm") and idx == 2:
                    errors.append(f"{what}: feeds the bias of {cons.op_type} '{cons.name}', expected a float bias")
        # -- weights: constant int8 data behind a DQ, per-channel on the output-channel axis
        if node.op_type == "DequantizeLinear" and x_const is not None and x_const.dtype != np.int32:
            if x_const.dtype != np.int8:
                errors.append(f"{what}: weight '{x_name}' has dtype {x_const.dtype}, expected int8")
            rank = x_const.ndim
            ax = axis + rank if axis < 0 else axis
            if per_channel:
                if not 0 <= ax < rank:
                    errors.append(f"{what}: axis {axis} out of range for weight '{x_name}' of rank {rank}")
                elif np.asarray(scale).size != x_const.shape[ax]:
                    errors.append(f"{what}: {np.asarray(scale).size} scales for axis {axis} of weight '{x_name}' "
                                  f"shape {tuple(x_const.shape)}, expected {x_const.shape[ax]}")
            for cons, idx in consumers.get(node.output[0], []):
                want = _weight_axis(cons, idx, rank)
                if want is None:
                    continue
                want_axis, desc = want
                if not per_channel:
                    if weights_per_channel and x_const.shape[want_axis] > 1:
                        errors.append(f"{what}: weight '{x_name}' of {cons.op_type} '{cons.name}' is per-tensor, "
                                      f"expected per-channel on axis {want_axis} ({desc})")
                elif ax != want_axis:
                    errors.append(f"{what}: weight '{x_name}' of {cons.op_type} '{cons.name}' is per-channel on axis "
                                  f"{axis}, expected axis {want_axis} ({desc})")
        # -- activations: per-tensor
        if x_const is None and per_channel:
            errors.append(f"{what}: activation '{x_name}' is per-channel ({np.asarray(scale).size} scales on axis "
                          f"{axis}), expected per-tensor")
    return errors


def qdq_counts(model_or_path: Any) -> dict[str, int]:
    """Counts of Q, DQ, weight DQ (constant input) and the quantised compute nodes (a DQ on their input)."""
    model = _load(model_or_path)
    consts = _constants(model.graph)
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "weight_DequantizeLinear": 0, "quantized_nodes": 0}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS:
            counts[n.op_type] += 1
            if n.op_type == "DequantizeLinear" and n.input[0] in consts:
                counts["weight_DequantizeLinear"] += 1
        elif any(i in dq_out for i in n.input):
            counts["quantized_nodes"] += 1
    return counts
