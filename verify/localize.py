"""Localise a failing ONNX artifact: name the first PyTorch module whose output diverges.

How: every ONNX node carries its PyTorch module scope (the dynamo exporter writes
``pkg.torch.onnx.name_scopes`` into node metadata; the TorchScript exporter writes node names like
``/encoder/layers.0/norm1/LayerNormalization``; simplify, fp16 and the int8 builders carry the scopes onto the
nodes they rewrite or insert, optimize.node_scopes). For each module we take the last float tensor its nodes
produce (in an int8 graph the DequantizeLinear that restores a quantised node's output, in an fp16 graph the
float16 tensor or its Cast), expose those tensors as extra graph outputs, run the graph on ONNX Runtime with
optimisations off (so no tensor is fused away; Q/DQ run as float simulation), capture PyTorch's module outputs
with forward hooks, and walk the modules in the order PyTorch finished them. The first one whose ONNX tensor
differs beyond ``rtol`` is reported, with the ONNX node that produced it. ``rtol`` defaults to the graph's
precision (``DEFAULT_RTOL``): an fp16 or int8 graph differs from PyTorch everywhere by its rounding, a failure
is a module that differs well beyond it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.node_scopes import module_scope as node_scope  # re-exported: the one scope reader
from runtime.ort_backend import cpu_session

# max |onnx - torch| / max |torch| of one module's output beyond which it diverges, by the graph's precision.
# fp16 rounds each op to ~5e-4 relative and int8 each quantised tensor to 1/254 of its range (so ~1e-2 a layer,
# accumulating): the defaults sit above what a clean graph shows and far below a broken module (a weight off by
# a factor, a wrong scale: relative errors of order 1).
DEFAULT_RTOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.15}
_INT8_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
             "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


@dataclass
class Divergence:
    module: str  # qualified PyTorch module name, e.g. "blocks.1.mlp.0"
    module_type: str
    onnx_tensor: str
    onnx_node: str
    onnx_op: str
    rel_error: float
    max_abs: float
    modules_checked: int
    precision: str = "fp32"  # of the graph (graph_precision), which set the default rtol
    rtol: float = DEFAULT_RTOL["fp32"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def graph_precision(model) -> str:
    """'int8' (any quantise / integer op), 'fp16' (float16 initializers or tensors), else 'fp32'."""
    import onnx

    if any(n.op_type in _INT8_OPS for n in model.graph.node):
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == f16 for t in model.graph.initializer) or any(
            a.name == "to" and a.i == f16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute):
        return "fp16"
    return "fp32"


def _elem_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


_FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def candidate_tensors(model, types: dict[str, int] | None = None) -> dict[str, tuple[str, str, str]]:
    """module path -> (tensor, node name, op) for the last tensor produced inside that module's scope
    (sub-scopes included), in topological order. Value-wise the module's output. With ``types`` (tensor ->
    ONNX element type) only float tensors count: a QuantizeLinear's int8 output is not a module output."""
    out: dict[str, tuple[str, str, str]] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        scope = node_scope(node)
        tensor = next((o for o in node.output if o and (types is None or types.get(o) in _FLOAT_TYPES)), None)
        if scope is None or tensor is None:
            continue
        parts = scope.split(".") if scope else []
        # a node inside "blocks.0.mlp.0" is also the latest node of "blocks.0.mlp", "blocks.0", "blocks"
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        for s in prefixes:
            out[s] = (tensor, node.name, node.op_type)
    return out


def _torch_activations(built, feed: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """(module name, type, output) in the order modules finished their forward."""
    import torch

    from export.onnx_export import attention_fastpath_disabled

    acts: list[tuple[str, str, np.ndarray]] = []
    hooks = []

    def make(name):
        def hook(mod, inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor):
                acts.append((name, type(mod).__name__, t.detach().float().numpy().copy()))
        return hook

    for name, mod in built.module.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(make(name)))
    try:
        with torch.no_grad(), attention_fastpath_disabled():
            built.module.eval()
            built.module(*[torch.from_numpy(feed[t.name]) for t in built.spec.inputs])
    finally:
        for h in hooks:
            h.remove()
    return acts


def module_errors(built, onnx_path: str | Path, feed: dict[str, np.ndarray]) -> tuple[str, list[dict[str, Any]]]:
    """(graph precision, one row per comparable module in the order PyTorch finished them: module, module_type,
    onnx_tensor, onnx_node, onnx_op, rel_error, max_abs)."""
    import onnx

    model = onnx.load(str(onnx_path))
    if all(node_scope(n) is None for n in model.graph.node):
        raise ValueError(f"{onnx_path}: no node carries a PyTorch module scope (export with edgeattn's exporter; "
                         "simplified, fp16 and int8 graphs written before optimize.node_scopes: rebuild them)")
    types = _elem_types(model)
    cands = candidate_tensors(model, types)
    existing = {o.name for o in model.graph.output}
    wanted = []
    for tensor, _, _ in cands.values():
        if tensor not in existing and tensor not in wanted:
            wanted.append(tensor)
            model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, types[tensor], None))
    sess = cpu_session(model.SerializeToString(), "disable")
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feed)))
    rows = []
    for mod_name, mod_type, ref in _torch_activations(built, feed):
        if mod_name not in cands:
            continue
        tensor, node_name, op = cands[mod_name]
        got = values.get(tensor)
        if got is None or tuple(got.shape) != tuple(ref.shape):  # a different layout is not comparable
            continue
        got = got.astype(np.float32)
        max_abs = float(np.abs(got - ref).max()) if np.isfinite(got).all() else float("inf")
        rel = max_abs / max(float(np.abs(ref).max()), 1e-6)
        rows.append({"module": mod_name, "module_type": mod_type, "onnx_tensor": tensor, "onnx_node": node_name,
                     "onnx_op": op, "rel_error": rel, "max_abs": max_abs})
    return graph_precision(model), rows


def localize(built, onnx_path: str | Path, feed: dict[str, np.ndarray], rtol: float | None = None) -> Divergence | None:
    """The first diverging module for ``feed`` (one or a few samples), or None if nothing diverges. ``rtol``
    None: the graph precision's (``DEFAULT_RTOL``)."""
    precision, rows = module_errors(built, onnx_path, feed)
    rtol = DEFAULT_RTOL[precision] if rtol is None else rtol
    for checked, r in enumerate(rows, 1):
        if r["rel_error"] > rtol:
            return Divergence(**r, modules_checked=checked, precision=precision, rtol=rtol)
    return None
