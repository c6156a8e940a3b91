"""The fused fp32 graph the CPU int8 forms are built from (int8.cpu.onnx only; the TensorRT Q/DQ graph never sees it).

Two steps, then a parity check against the source graph:

1. :func:`fuse_attention`: each self-attention block of a BERT-style export (three projections MatMul + bias Add ->
   Reshape (B, S, heads, head) -> Transpose, Q K^T -> scale Mul/Div -> + additive mask -> Softmax -> @ V -> Transpose
   -> Reshape (B, S, hidden)) becomes one ONNX Runtime ``com.microsoft.Attention`` node (packed QKV weight and bias,
   the mask as its ``attention_bias`` input). ONNX Runtime's own attention fusion does not match the graphs
   ``torch.onnx.export(dynamo=True)`` writes for Hugging Face encoders (their mask is a Where over the ids), so this
   one does. ``quantize_dynamic`` then turns the Attention into ``QAttention`` (int8 QKV projection).
2. ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``, model_type ``bert``,
   graph-level Python fusions only): SkipLayerNormalization, BiasGelu / Gelu, and the rest it knows.

The result uses com.microsoft contrib operators: it runs on ONNX Runtime CPU (the thin runtime, verify and bench),
not on TensorRT or OpenVINO. A graph with no pattern either step knows comes back with nothing fused (``fused`` empty)
and the caller skips the fused forms.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import EdgeattnError

log = logging.getLogger("edgeattn.optimize.cpu_fusion")
MS_DOMAIN = "com.microsoft"
PARITY_RTOL = 1e-4  # fused vs source fp32 logits, relative to their scale (fusion reorders float sums only)


class FusionError(EdgeattnError, RuntimeError):
    """The fused graph does not compute what its source computes; the message says where and by how much."""


class _Graph:
    """Producer/consumer maps and constant values of one ONNX graph."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.model, self.graph = model, g
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        self.const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute:
                from onnx import helper

                v = helper.get_attribute_value(n.attribute[0])
                if hasattr(v, "dims"):
                    self.const[n.output[0]] = numpy_helper.to_array(v)

    def only_consumer(self, name: str, op: str):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def parent(self, node, i: int, op: str):
        if i >= len(node.input):
            return None
        p = self.producer.get(node.input[i])
        return p if p is not None and p.op_type == op else None

    def perm(self, node) -> list[int] | None:
        from onnx import helper

        for a in node.attribute:
            if a.name == "perm":
                return list(helper.get_attribute_value(a))
        return None


def _projection(g: _Graph, transpose, perm: list[int]):
    """Transpose(perm) <- Reshape <- [Add(bias) <-] MatMul(x, W): (x name, W, b, reshape node) or None (no bias Add:
    a zero bias, as exporters write a zero-initialised one)."""
    if transpose is None or g.perm(transpose) != perm:
        return None
    rs = g.parent(transpose, 0, "Reshape")
    if rs is None:
        return None
    add, mm, bias = g.parent(rs, 0, "Add"), g.parent(rs, 0, "MatMul"), None
    if add is not None:
        mm, bias = g.parent(add, 0, "MatMul"), add.input[1]
        if mm is None:
            mm, bias = g.parent(add, 1, "MatMul"), add.input[0]
    if mm is None or mm.input[1] not in g.const or (bias is not None and bias not in g.const):
        return None
    w = g.const[mm.input[1]]
    b = g.const[bias] if bias is not None else np.zeros(w.shape[-1], np.float32)
    if w.ndim != 2 or b.shape != (w.shape[1],):
        return None
    return mm.input[0], w, b, rs


def _head_size(g: _Graph, reshape, hidden: int) -> int | None:
    """The head size from a (B, S, heads, head) Reshape's shape: a constant, or a Concat of pieces (dims 2 and 3)."""
    shape = reshape.input[1]
    if shape in g.const:
        dims = [int(v) for v in np.asarray(g.const[shape]).reshape(-1)]
    else:
        cat = g.producer.get(shape)
        if cat is None or cat.op_type != "Concat":
            return None
        dims = []
        for i in cat.input:
            v = g.const.get(i)
            dims += [None] if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
    if len(dims) != 4:
        return None
    heads, head = dims[2], dims[3]
    if head and head > 0 and hidden % head == 0:
        return head
    if heads and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def _match(g: _Graph, softmax) -> dict[str, Any] | None:
    """One attention block around ``softmax``, or None."""
    add = g.parent(softmax, 0, "Add")
    scaled, mask = (None, None)
    if add is not None:
        for i in (0, 1):
            p = g.producer.get(add.input[i])
            if p is not None and p.op_type in ("Mul", "Div"):
                scaled, mask = p, add.input[1 - i]
                break
    if scaled is None or scaled.input[1] not in g.const:
        return None
    s = float(np.asarray(g.const[scaled.input[1]]).reshape(-1)[0])
    scale = s if scaled.op_type == "Mul" else 1.0 / s
    qk = g.parent(scaled, 0, "MatMul")
    pv = g.only_consumer(softmax.output[0], "MatMul")
    if qk is None or pv is None or pv.input[0] != softmax.output[0]:
        return None
    q = _projection(g, g.producer.get(qk.input[0]), [0, 2, 1, 3])
    k = _projection(g, g.producer.get(qk.input[1]), [0, 2, 3, 1])
    v = _projection(g, g.producer.get(pv.input[1]), [0, 2, 1, 3])
    out_t = g.only_consumer(pv.output[0], "Transpose")
    out_r = out_t is not None and g.perm(out_t) == [0, 2, 1, 3] and g.only_consumer(out_t.output[0], "Reshape")
    if not (q and k and v and out_r) or not q[0] == k[0] == v[0]:
        return None
    hidden = q[1].shape[1]
    if not (k[1].shape == v[1].shape == q[1].shape):
        return None
    head = _head_size(g, q[3], hidden)
    if head is None:
        return None
    return {"x": q[0], "w": np.concatenate([q[1], k[1], v[1]], 1), "b": np.concatenate([q[2], k[2], v[2]]),
            "mask": mask, "scale": scale, "heads": hidden // head, "out": out_r.output[0], "name": softmax.name}


def fuse_attention(model) -> int:
    """Replace every matched self-attention block of ``model`` (in place) by a com.microsoft.Attention node; returns
    how many. Nodes left without consumers are removed."""
    from onnx import helper, numpy_helper

    g = _Graph(model)
    found = [m for m in (_match(g, n) for n in g.graph.node if n.op_type == "Softmax") if m is not None]
    if not found:
        return 0
    new_nodes, new_inits = [], []
    for i, m in enumerate(found):
        wn, bn = f"cpu_fusion.attention_{i}.qkv_weight", f"cpu_fusion.attention_{i}.qkv_bias"
        new_inits += [numpy_helper.from_array(m["w"].astype(np.float32), wn),
                      numpy_helper.from_array(m["b"].astype(np.float32), bn)]
        new_nodes.append(helper.make_node("Attention", [m["x"], wn, bn, "", "", m["mask"]], [m["out"]],
                                          name=f"Attention_{i}", domain=MS_DOMAIN, num_heads=int(m["heads"]),
                                          scale=float(m["scale"])))
    outs = {m["out"] for m in found}
    # the new node takes the place of the block's output Reshape: topological order holds (its inputs come earlier)
    pos = {m["out"]: next(i for i, n in enumerate(g.graph.node) if m["out"] in n.output) for m in found}
    order = sorted([(i, n) for i, n in enumerate(g.graph.node) if not (set(n.output) & outs)] +
                   [(pos[n.output[0]], n) for n in new_nodes], key=lambda t: t[0])
    del g.graph.node[:]
    g.graph.node.extend(n for _, n in order)
    g.graph.initializer.extend(new_inits)
    _prune(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(found)


def _prune(model) -> None:
    """Remove nodes whose outputs nobody reads and initializers no node reads (graph outputs kept)."""
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not (set(n.output) & used)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def ort_optimize(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (bert, graph fusions only, no session) from ``src`` to ``dst``; returns the
    fused operator counts it reports (non-zero ones)."""
    from onnxruntime.transformers import optimizer

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a producer-name hint
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                       use_gpu=False)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(dst))
    return stats


def fuse_for_cpu(src: str | os.PathLike, dst: str | os.PathLike, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """:func:`fuse_attention` then :func:`ort_optimize`, from ``src`` to ``dst``, checked on ``feeds`` (fp32 logits of
    both graphs at ORT 'all' within PARITY_RTOL of their scale, else FusionError). Returns {"fused": operator counts
    (empty: nothing fused), "ops": op-type counts of ``dst``, "parity_rel": the worst difference}."""
    import onnx

    model = onnx.load(str(src))
    n_att = fuse_attention(model)
    with tempfile.TemporaryDirectory(prefix="edgeattn-fuse-") as tmp:
        mid = Path(tmp) / "attention.onnx"
        onnx.save(model, str(mid))
        del model
        stats = ort_optimize(mid, dst)
    fused = {**({"Attention": n_att} if n_att else {}), **{k: v for k, v in stats.items() if k != "Attention"}}
    worst = fused_parity(src, dst, feeds)
    ops = Counter(n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node)
    return {"fused": fused, "ops": dict(sorted(ops.items())), "parity_rel": worst}


def fused_parity(src: str | os.PathLike, dst: str | os.PathLike, feeds: list[dict[str, np.ndarray]]) -> float:
    """Worst |fused - source| over the first output, relative to the source's max |value|; FusionError above
    PARITY_RTOL."""
    from runtime.ort_backend import cpu_session

    a, b = cpu_session(str(src), "all", 1), cpu_session(str(dst), "all", 1)
    worst = 0.0
    for i, feed in enumerate(feeds):
        x, y = a.run(None, feed)[0], b.run(None, feed)[0]
        if x.shape != y.shape:
            raise FusionError(f"fused graph {Path(dst).name}: output shape {y.shape} at feed {i}, expected {x.shape}")
        worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) / max(1.0, float(np.abs(x).max())))
    if worst > PARITY_RTOL:
        raise FusionError(f"fused graph {Path(dst).name} differs from {Path(src).name} by {worst:.3g} (relative), "
                          f"expected <= {PARITY_RTOL}")
    return worst
