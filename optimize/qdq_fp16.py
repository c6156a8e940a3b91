"""Mixed INT8/FP16 for TensorRT: the finished fp32 Q/DQ graph rewritten so that whatever stays out of INT8 runs in
FP16, not FP32 (issue 20, item 3). Without it a strongly typed engine computes every unquantised GEMM of
``int8.qdq.onnx`` in FP32/TF32 (optimize.engines counts them) and can be slower than the FP16 engine.

:func:`to_fp16_qdq` (the rewrite): the graph's default opset is raised to 19 (float16 QuantizeLinear /
DequantizeLinear, optimize.qdq_rules.FP16_QDQ_MIN_OPSET), then optimize.fp16's converter (``convert_fp16``) turns
every float tensor into float16 except its block list (LayerNormalization, Softmax, reductions, Exp...: the FP16
stage's own tier for this model when the manifest has one), Q/DQ scales included. **Scales in float16, not a Cast
after a float32 DequantizeLinear**: in a strongly typed network a DQ's output type is its scale's type, so an fp16
scale makes the DQ feed the FP16 GEMM directly, the Q/DQ -> GEMM pattern TensorRT fuses into an INT8 kernel (and the
one NVIDIA ModelOpt writes for INT8: its autocast raises Q/DQ graphs to opset 19 and converts their scales). With a
Cast between DQ and the GEMM (the converter's output when Q/DQ are block-listed) the GEMM's inputs no longer come from
a DQ: tensorrt_rtx 1.7 builds it, but optimize.engines counts every such GEMM as FP16, not INT8, and the graph carries
15 more Casts on a one-layer encoder. A Q/DQ whose scale is not a normal float16 (optimize.qdq_rules.fp16_scale_problem:
a subnormal keeps too few bits) stays float32 with Casts around it, as do all Q/DQ sharing that scale.

:func:`mix_fp16` (build_int8's one call): rewrite, check the TensorRT Q/DQ rules, and judge the mixed graph with the
SAME verdict as the fp32 Q/DQ graph (judge.budget.reasons on judge.figures against the fp32 model, Q/DQ simulated in
float at runtime.ort_backend.QDQ_REFERENCE_LEVEL, in a crash-guarded child); the mixed file is written only when it
passes, else the fp32 Q/DQ graph is, and the returned record says why.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.evalset import EvalSet
from judge.budget import Budget, reasons
from judge.figures import figures
from optimize.fp16 import FP32_OPS, convert_fp16, run_guarded, stamp_ort_level
from optimize.int8_budget import brief_figures
from optimize.node_scopes import reattach, record
from optimize.qdq_graph import ensure_node_names
from optimize.qdq_rules import FP16_QDQ_MIN_OPSET, QDQ_OPS, check_qdq_rules, fp16_scale_problem
from runtime.errors import EdgeattnError
from runtime.ort_backend import QDQ_REFERENCE_LEVEL
from zoo.io import read_json

log = logging.getLogger("edgeattn.optimize.qdq_fp16")
MIXED_NAME = "int8.qdq.fp16.onnx"  # the work file's name (build_int8 writes the winner as int8.qdq.onnx)


class QdqFp16Error(EdgeattnError, RuntimeError):
    """The mixed INT8/FP16 rewrite failed; the message names the graph and what was expected."""


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _upgrade_opset(model, target: int = FP16_QDQ_MIN_OPSET):
    """``model`` at default-domain opset >= ``target`` (onnx.version_converter), keeping the model's metadata and the
    nodes' PyTorch module scopes (optimize.node_scopes)."""
    import onnx
    from onnx import version_converter

    if _opset(model) >= target:
        return model
    table = record(model)
    try:
        up = version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors/ValueErrors per adapter
        raise QdqFp16Error(f"opset {_opset(model)} -> {target}: onnx.version_converter failed ({e}); expected a graph "
                           f"that converts to opset {target} for float16 Q/DQ") from e
    if not up.metadata_props and model.metadata_props:
        up.metadata_props.extend(model.metadata_props)
    reattach(up, table)
    onnx.checker.check_model(up)
    return up


def unfit_qdq_nodes(model) -> dict[str, str]:
    """{node name: why} of the Q/DQ nodes whose scale cannot be float16 (every Q/DQ sharing such a scale): they stay
    float32, the converter puts Casts around them."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    bad: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS and len(n.input) > 1 and n.input[1] in inits:
            why = fp16_scale_problem(numpy_helper.to_array(inits[n.input[1]]))
            if why:
                bad[n.input[1]] = why
    return {n.name: f"scale '{n.input[1]}': {bad[n.input[1]]}" for n in model.graph.node
            if n.op_type in QDQ_OPS and len(n.input) > 1 and n.input[1] in bad}


def to_fp16_qdq(src: str | os.PathLike, dst: str | os.PathLike, op_block_list=FP32_OPS) -> dict[str, Any]:
    """fp32 Q/DQ graph ``src`` -> mixed INT8/FP16 graph ``dst`` (atomic write; module docstring). Returns what was done:
    opsets, the Q/DQ kept float32 and why, the converter's counts, float16 / float32 Q/DQ scale counts, and the
    TensorRT Q/DQ rule violations of ``dst`` (empty when fine)."""
    import onnx

    model = onnx.load(str(src))
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        raise QdqFp16Error(f"{src}: no QuantizeLinear/DequantizeLinear node; expected the fp32 Q/DQ graph")
    ensure_node_names(model)  # the converter's node block list goes by name
    opset_before = _opset(model)
    model = _upgrade_opset(model)
    kept = unfit_qdq_nodes(model)
    with tempfile.TemporaryDirectory(prefix="edgeattn-qdqfp16-") as tmp:
        up = Path(tmp) / "opset.onnx"
        onnx.save(model, str(up))
        conv = convert_fp16(up, dst, op_block_list, True, sorted(kept))
    out = onnx.load(str(dst))
    scale_types = _scale_types(out)
    return {"opset": [opset_before, _opset(out)], "op_block_list": list(op_block_list),
            "fp32_ops_present": conv["fp32_ops_present"], "casts": conv["casts"], "nodes": conv["nodes"],
            "qdq_kept_fp32": kept, "scales": scale_types, "rule_violations": check_qdq_rules(out)}


def _scale_types(model) -> dict[str, int]:
    """{scale dtype: number of Q/DQ nodes}."""
    from onnx import TensorProto

    inits = {t.name: t.data_type for t in model.graph.initializer}
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QDQ_OPS and len(n.input) > 1:
            k = TensorProto.DataType.Name(inits.get(n.input[1], 0)).lower()
            out[k] = out.get(k, 0) + 1
    return out


def fp16_section(model_dir: Path) -> dict[str, Any]:
    """The FP16 stage's manifest section for this model ({} when there is none)."""
    return (read_json(model_dir / "manifest.json", {}) or {}).get("fp16") or {}


def fp16_block_list(sec: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """(ops kept float32, where that came from): the FP16 stage's tier for this model (its manifest section ``sec``),
    else optimize.fp16.FP32_OPS."""
    ops = sec.get("op_block_list")
    if ops:
        return tuple(ops), "the fp16 stage's block list for this model (manifest fp16.op_block_list)"
    return FP32_OPS, "optimize.fp16.FP32_OPS (no fp16 section in the manifest)"


def mix_fp16(qdq_fp32: Path, work: Path, model_dir: Path, es: EvalSet, ref: np.ndarray, budget: Budget,
             enabled: bool = True, threads: int = 2, warn: bool = True) -> tuple[Path, dict[str, Any]]:
    """(the Q/DQ graph to write as int8.qdq.onnx, the record for the manifest's int8.qdq.fp16_mix).

    The mixed INT8/FP16 graph when ``enabled`` and it passes the TensorRT Q/DQ rules and ``budget`` (judged exactly
    as the fp32 Q/DQ graph is: its float simulation against ``ref``, the fp32 model's outputs on ``es``); else
    ``qdq_fp32``, with the reason (logged as a warning unless ``warn`` is False: a caller that tries again)."""
    if not enabled:
        return qdq_fp32, {"used": False, "why": "off (QuantOptions.fp16_mix): unquantised layers stay float32"}
    t0 = time.perf_counter()
    mixed = work / MIXED_NAME
    f16 = fp16_section(model_dir)
    block, block_from = fp16_block_list(f16)
    rec: dict[str, Any] = {"used": False, "block_list_from": block_from}

    def fallback(why: str) -> tuple[Path, dict[str, Any]]:
        (log.warning if warn else log.debug)(
            "int8 %s: mixed INT8/FP16 graph not used (%s); int8.qdq.onnx keeps its float parts in float32",
            model_dir.name, why)
        rec.update(why=why, seconds=round(time.perf_counter() - t0, 2))
        return qdq_fp32, rec

    try:
        rec.update(to_fp16_qdq(qdq_fp32, mixed, block))
    except Exception as e:  # noqa: BLE001 - a rewrite that fails costs the mix, never the int8 artifact
        return fallback(f"rewrite failed: {e}")
    if rec["rule_violations"]:
        return fallback(f"{len(rec['rule_violations'])} TensorRT Q/DQ rule violation(s): {rec['rule_violations'][:3]}")
    level = f16.get("ort_opt_level")
    if level and level != "all":  # ONNX Runtime crashed on this model's fp16 graph above that level: same here
        stamp_ort_level(mixed, level)
        rec["ort_opt_level"] = level
    run = run_guarded(mixed, es, QDQ_REFERENCE_LEVEL, threads)
    if not run.ok:
        return fallback(f"ONNX Runtime failed on the mixed graph at level '{QDQ_REFERENCE_LEVEL}': {run.error}")
    cmp = figures(ref, run.logits, es.y, budget.neighbour_k)
    why = reasons(cmp, budget, es.y is not None)
    rec["val"] = brief_figures(cmp)
    rec["judged_by"] = ("judge.budget on its float simulation (ONNX Runtime, graph optimisations off), the verdict "
                        "the fp32 Q/DQ graph was chosen by")
    if why:
        return fallback("outside the budget: " + "; ".join(why))
    rec.update(used=True, seconds=round(time.perf_counter() - t0, 2))
    return mixed, rec
