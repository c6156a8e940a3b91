"""Localise a failing ONNX artifact: name the first PyTorch module whose output diverges.

How: every ONNX node carries its PyTorch module scope (the dynamo exporter writes
``pkg.torch.onnx.name_scopes`` into node metadata; the TorchScript exporter writes node names like
``/encoder/layers.0/norm1/LayerNormalization``). For each module we take the last tensor its nodes produce
that has the module output's size, expose those tensors as extra graph outputs, run the graph on ONNX
Runtime with optimisations off (so no tensor is fused away), capture PyTorch's module outputs with forward
hooks, and walk the modules in the order PyTorch finished them. The first one whose ONNX tensor differs
beyond ``rtol`` is reported, with the ONNX node that produced it.
"""
from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.ort_backend import cpu_session


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_scope(node) -> str | None:
    """PyTorch module path of an ONNX node ('' = the root module), or None when unknown."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 else ""
    name = node.name or ""
    if name.startswith("/"):
        parts = name.strip("/").split("/")
        return ".".join(parts[:-1])
    return None


def _elem_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def candidate_tensors(model) -> dict[str, tuple[str, str, str]]:
    """module path -> (tensor, node name, op) for the last tensor produced inside that module's scope
    (sub-scopes included), in topological order. Value-wise the module's output."""
    out: dict[str, tuple[str, str, str]] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        scope = node_scope(node)
        if scope is None or not node.output:
            continue
        parts = scope.split(".") if scope else []
        # a node inside "blocks.0.mlp.0" is also the latest node of "blocks.0.mlp", "blocks.0", "blocks"
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        for s in prefixes:
            out[s] = (node.output[0], node.name, node.op_type)
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


def localize(built, onnx_path: str | Path, feed: dict[str, np.ndarray], rtol: float = 1e-3) -> Divergence | None:
    """The first diverging module for ``feed`` (one or a few samples), or None if nothing diverges."""
    import onnx

    model = onnx.load(str(onnx_path))
    cands = candidate_tensors(model)
    if not cands:
        raise ValueError(f"{onnx_path}: no node carries a PyTorch module scope (export with edgeattn's exporter)")
    types = _elem_types(model)
    existing = {o.name for o in model.graph.output}
    wanted = []
    for tensor, _, _ in cands.values():
        if tensor not in existing and tensor in types and tensor not in wanted:
            wanted.append(tensor)
            model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, types[tensor], None))
    sess = cpu_session(model.SerializeToString(), "disable")
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feed)))
    checked = 0
    for mod_name, mod_type, ref in _torch_activations(built, feed):
        if mod_name not in cands:
            continue
        tensor, node_name, op = cands[mod_name]
        got = values.get(tensor)
        if got is None or tuple(got.shape) != tuple(ref.shape):  # a different layout is not comparable
            continue
        got = got.astype(np.float32)
        checked += 1
        max_abs = float(np.abs(got - ref).max()) if np.isfinite(got).all() else float("inf")
        rel = max_abs / max(float(np.abs(ref).max()), 1e-6)
        if rel > rtol:
            return Divergence(mod_name, mod_type, tensor, node_name, op, rel, max_abs, checked)
    return None
