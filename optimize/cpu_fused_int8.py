"""The CPU's own int8 form (``fused_dynamic``): built for ONNX Runtime CPU, not borrowed from the TensorRT search.

1. :func:`build_fused`: the fp32 graph fused for the CPU (optimize.cpu_fusion: com.microsoft Attention,
   SkipLayerNormalization, BiasGelu; Gemm rewritten as MatMul), parity-checked against the source.
2. :func:`quantize_fused_dynamic`: ``quantize_dynamic`` on it: s8 weights per output channel (symmetric), uint8
   activations quantised per call (DynamicQuantizeMatMul, QAttention); 7 bits (``reduce_range``) where the CPU's int8
   kernels saturate (runtime.cpu.int8_saturates).
3. :func:`fused_search`, only when the full form misses the budget: every quantised node ranked in ONE float pass over
   cached activations (optimize.layer_error: the error each node alone adds at its output, dynamic uint8 activations
   and per-channel s8 weights simulated in numpy), then the fewest of the most harmful kept float, found by bisection
   (optimize.int8_budget.bisect_cut: at most 2 + ceil(log2 n) builds), each judged on this CPU's integer kernels by
   the caller's verdict (judge.budget.passes, as verify judges int8.cpu.onnx).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from calibration.evalset import EvalSet
from optimize.cpu_fusion import fuse_for_cpu
from optimize.int8_budget import QuantOptions, bisect_cut
from optimize.layer_error import INT8_QMAX, float_weight, layer_errors
from optimize.qdq_graph import NodeInfo, ensure_node_names, gemm_to_matmul

log = logging.getLogger("edgeattn.optimize.cpu_fused_int8")
FUSED_FP32 = "fused.fp32.onnx"  # beside the candidates in the work folder; its fusion report: FUSED_FP32 + ".json"
FUSED_OPS = ("MatMul", "Attention")  # what quantize_dynamic turns into DynamicQuantizeMatMul / QAttention
RANK_BATCH = 32


def build_fused(src: str | os.PathLike, work: Path, feeds: Sequence[dict[str, np.ndarray]] | None = None) -> Path:
    """``work``/FUSED_FP32 from ``src`` (cpu_fusion.fuse_for_cpu, then Gemm -> MatMul and stable node names), checked on
    ``feeds`` (None: the spec's min/opt/max sizes, optimize.graph_parity); the fusion report goes to FUSED_FP32.json."""
    import onnx

    if feeds is None:
        from optimize.graph_parity import parity_feeds
        from zoo.spec import load_spec

        feeds = [f for _, f in parity_feeds(load_spec(src))]
    dst = work / FUSED_FP32
    with tempfile.TemporaryDirectory(prefix="edgeattn-fused-") as tmp:
        mid = Path(tmp) / "fused.onnx"
        report = fuse_for_cpu(src, mid, list(feeds))
        model = onnx.load(str(mid))
    ensure_node_names(model)
    report["gemm_to_matmul"] = gemm_to_matmul(model)
    onnx.save(model, str(dst))
    (work / (FUSED_FP32 + ".json")).write_text(json.dumps(report))
    log.info("%s: fused for the CPU: %s", Path(src).parent.name, report["fused"])
    return dst


def fusion_report(work: Path) -> dict[str, Any] | None:
    p = work / (FUSED_FP32 + ".json")
    return json.loads(p.read_text()) if p.is_file() else None


def quantize_fused_dynamic(fused: str | os.PathLike, dst: str | os.PathLike, exclude: Sequence[str] = (),
                           reduce_range: bool = False) -> None:
    """Dynamic int8 of the fused graph's MatMul / Attention nodes with a constant weight, except ``exclude``:
    s8 per-channel weights, u8 activations per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fused), str(dst), op_types_to_quantize=list(FUSED_OPS), per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), reduce_range=reduce_range,
                     extra_options={"MatMulConstBOnly": True})


def fused_nodes(model) -> list[NodeInfo]:
    """The fused graph's nodes quantize_dynamic quantises: MatMul with a constant 2-D weight, and Attention."""
    inits = {t.name: len(t.dims) for t in model.graph.initializer}
    return [NodeInfo(n.name, n.op_type, n.input[1], "weight") for n in model.graph.node
            if n.op_type in FUSED_OPS and len(n.input) > 1 and inits.get(n.input[1]) == 2]


def dynamic_uint8(x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's DynamicQuantizeLinear on one tensor, dequantised: uint8, asymmetric, range including 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    return ((np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


def per_channel_s8(w: np.ndarray, reduce_range: bool = False) -> np.ndarray:
    """Symmetric s8 per output channel of a [K, N] weight (7 bits with ``reduce_range``), dequantised."""
    qmax = 63.0 if reduce_range else INT8_QMAX
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / qmax
    return (np.clip(np.rint(w / scale), -qmax - 1, qmax) * scale).astype(np.float32)


def rank_fused(fused: str | os.PathLike, es: EvalSet, reduce_range: bool = False, threads: int | None = None,
               ) -> list[dict[str, Any]]:
    """Every quantisable node of the fused graph, most harmful first (optimize.layer_error.layer_errors: one float
    pass over ``es``)."""
    import onnx

    model = onnx.load(str(fused))
    nodes = fused_nodes(model)
    quantized = {nd.name: per_channel_s8(float_weight(model, nd), reduce_range) for nd in nodes}
    del model
    act = {nd.name: dynamic_uint8 for nd in nodes}
    return layer_errors(fused, nodes, quantized, es.batches(RANK_BATCH), act, threads)


def fused_search(fused: Path, dst: Path, es: EvalSet, judge: Callable[[Path], dict[str, Any]], opts: QuantOptions,
                 reduce_range: bool = False, first: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fewest of the ranked nodes kept float that bring the fused dynamic form within the budget; ``judge(path)``
    is the caller's verdict row ({"ran", "passed", ...}); ``first``: its row for ``dst`` as it is (the full form), when
    already judged. Writes the chosen form to ``dst`` (the most accurate tried
    when none passes) and returns {"row": its verdict row, "search": {"kept_float", "steps", "ranking", ...}}."""
    t_es = es.subset(opts.sweep_samples, opts.seed + 1)
    ranking = rank_fused(fused, t_es, reduce_range, opts.threads)
    order = [r["node"] for r in ranking]
    limit = coverage_limit(fused, order, opts.min_int8_coverage)
    if opts.max_excluded is not None:
        limit = min(limit, opts.max_excluded)
    rows: dict[int, dict[str, Any]] = {} if first is None else {0: first}
    work = dst.parent

    def path_at(k: int) -> Path:
        return dst if k == 0 else work / f"{dst.stem}.keep{k}.onnx"

    def within_at(k: int) -> bool:
        if k not in rows:
            if k:
                quantize_fused_dynamic(fused, path_at(k), exclude=order[:k], reduce_range=reduce_range)
            rows[k] = judge(path_at(k))
            log.info("int8 CPU %s: %d most harmful kept float -> %s", dst.stem, k, rows[k].get("val"))
        return bool(rows[k].get("passed"))

    cut, seen = bisect_cut(limit, within_at)
    k = cut if cut is not None else max(rows, key=lambda j: _accuracy_key(rows[j]) if j <= limit else ())
    if k:
        os.replace(path_at(k), dst)
    for j in rows:
        if j and j != k and path_at(j).exists():
            path_at(j).unlink()
    steps = [{"kept_float": j, "passed": rows[j].get("passed"), **(rows[j].get("val") or {})} for j in seen]
    search = {"kept_float": order[:k], "n_nodes": len(order), "passed": cut is not None, "steps": steps,
              "ranking": [{"node": r["node"], "op_type": r["op_type"], "output_rel_mse": r["output_rel_mse"]}
                          for r in ranking],
              "ranked_on": f"{len(t_es)} evaluation rows, one float pass (optimize.layer_error)",
              "builds": len(rows)}
    return {"row": rows[k], "search": search}


def coverage_limit(fused: str | os.PathLike, order: Sequence[str], min_coverage: float) -> int:
    """The most of ``order``'s first nodes that can be kept float while the others still hold ``min_coverage`` of the
    quantisable weight elements in int8 (QuantOptions.min_int8_coverage: a form below it is not an int8 form)."""
    import onnx

    model = onnx.load(str(fused))
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    elems = {nd.name: sizes[nd.weight] for nd in fused_nodes(model)}
    total = float(sum(elems.values())) or 1.0
    left, k = total, 0
    for name in order:
        left -= elems.get(name, 0)
        if left / total < min_coverage:
            break
        k += 1
    return min(k, len(order) - 1)


def _accuracy_key(row: dict[str, Any]) -> tuple:
    v = row.get("val") or {}
    return (bool(row.get("ran")), v.get("accuracy_delta") or 0.0, v.get("top1_agreement") or 0.0,
            v.get("cosine_mean") or 0.0)
