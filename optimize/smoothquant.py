"""SmoothQuant-style per-channel migration (Xiao et al. 2023) for the TensorRT Q/DQ graph: symmetric per-tensor int8
activations cannot hold a few outlier channels (a transformer's LayerNorm outputs, its FFN activations) without
rounding every other channel to a handful of levels; scaling channel j of the activation down by ``s_j`` and row j of
the weight up by ``s_j`` leaves ``X @ W`` unchanged in exact arithmetic and moves the outliers into the weights, which
are quantised per output channel.

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)       (max|W_j|: over every output of every MatMul sharing X)

Groups: the MatMul/Gemm nodes with a constant 2-D weight that read the same activation share one ``s``. Where that
activation is a LayerNormalization's output read by nothing but the group, 1/s is folded into the LayerNorm's gamma
and beta (exact, no extra op: ``fold = <LayerNorm node>``); otherwise one ``Mul`` by 1/s is inserted in front of the
group (``fold = None``; a post-norm BERT's LayerNorm output also feeds the residual sum, so BERT gets Muls).

Alpha is chosen per group from ``ALPHAS`` and "none" (s = 1) by the error the group's nodes add at their own outputs
(:func:`node_errors`, optimize.layer_error's score, summed over the group's nodes), on
activations captured in one forward pass over calibration batches (:func:`capture_rows`): int8 per-channel weights,
per-tensor activations at the smoothed tensor's max. "none" wins where smoothing does not pay, so it never adds
error by this measure.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from optimize.int8_build import QuantizeError
from optimize.layer_error import capture_session, float_weight, per_channel_int8, per_tensor_int8
from optimize.qdq_graph import NodeInfo, drop_unused_initializers

log = logging.getLogger("edgeattn.optimize.smoothquant")

ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
S_BOUNDS = (1e-4, 1e4)  # s clipped so no channel is scaled to zero or overflow


@dataclass
class Group:
    """MatMul/Gemm nodes (constant 2-D weights) that read one activation ``tensor``; ``fold``: the LayerNorm node that
    absorbs 1/s exactly, None: a Mul is inserted. ``alpha`` None: not smoothed; ``s``: per input channel (K,)."""
    tensor: str
    nodes: list[str]
    fold: str | None = None
    alpha: float | None = None
    s: np.ndarray | None = None
    errors: dict[str, float] = field(default_factory=dict)  # candidate ("none" | alpha) -> summed node error

    @property
    def quantized_input(self) -> str:
        """The tensor the group's Q/DQ quantises in the smoothed graph."""
        return self.tensor if self.fold or self.alpha is None else smoothed_name(self.tensor)

    def record(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "nodes": list(self.nodes), "alpha": self.alpha,
                "how": None if self.alpha is None else ("layernorm_fold" if self.fold else "mul_inserted"),
                "layernorm": self.fold,
                "error_none": self.errors.get("none"),
                "error_chosen": self.errors.get("none" if self.alpha is None else f"{self.alpha:g}")}


def smoothed_name(tensor: str) -> str:
    return f"{tensor}__smoothed"


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def smoothing_groups(model, nodes: Sequence[NodeInfo]) -> list[Group]:
    """The groups of ``nodes`` (weight MatMul/Gemm with a 2-D initializer weight, Gemm with transA=0), in graph
    order, each with its LayerNorm to fold into where that is exact."""
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    groups: dict[str, Group] = {}
    for nd in nodes:
        n = by_name.get(nd.name)
        if (n is None or nd.kind != "weight" or n.op_type not in ("MatMul", "Gemm") or nd.weight not in inits
                or len(inits[nd.weight].dims) != 2 or (n.op_type == "Gemm" and _attr(n, "transA", 0))):
            continue
        groups.setdefault(n.input[0], Group(n.input[0], [])).nodes.append(nd.name)
    for g in groups.values():
        p = producer.get(g.tensor)
        readers = {c.name for c in consumers.get(g.tensor, [])}
        if (p is not None and p.op_type == "LayerNormalization" and p.output[0] == g.tensor and readers == set(g.nodes)
                and g.tensor not in outputs and p.input[1] in inits
                and (len(p.input) < 3 or not p.input[2] or p.input[2] in inits)):
            g.fold = p.name
    return list(groups.values())


def capture_rows(src: str | os.PathLike, groups: Sequence[Group], feeds: Iterable[dict[str, np.ndarray]],
                 max_rows: int = 4096, seed: int = 0, threads: int | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One forward pass over ``feeds``: per group tensor, the per-channel max |x| over every row seen (K,), and up to
    ``max_rows`` rows of it (seeded sample, spread over the batches) for the error measurements."""
    feeds = list(feeds)
    names = sorted({g.tensor for g in groups})
    sess = capture_session(src, names, threads)
    rng = np.random.default_rng(seed)
    per_batch = max(1, -(-max_rows // max(len(feeds), 1)))
    absmax: dict[str, np.ndarray] = {}
    rows: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for feed in feeds:
        for t, a in zip(names, sess.run(names, feed)):
            x = np.asarray(a, np.float32).reshape(-1, a.shape[-1])  # (tokens, K)
            m = np.abs(x).max(axis=0)
            absmax[t] = m if t not in absmax else np.maximum(absmax[t], m)
            take = rng.choice(len(x), size=min(per_batch, len(x)), replace=False)
            rows[t].append(x[np.sort(take)])
    return absmax, {t: np.concatenate(r)[:max_rows] for t, r in rows.items()}


def scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), 1 where a channel is all zero, clipped to S_BOUNDS."""
    ok = (x_absmax > 0) & (w_absmax > 0)
    s = np.ones_like(x_absmax, dtype=np.float64)
    s[ok] = x_absmax[ok].astype(np.float64) ** alpha / w_absmax[ok].astype(np.float64) ** (1.0 - alpha)
    return np.clip(s, *S_BOUNDS).astype(np.float32)


def node_errors(x: np.ndarray, ws: Sequence[np.ndarray], s: np.ndarray, amax: float,
                ys: Sequence[np.ndarray] | None = None) -> list[float]:
    """Per node of a group, its relative output error ``sum |Qa(X/s) Q(sW) - XW|^2 / sum |XW|^2`` with X/s quantised
    per tensor at ``amax`` and s*W per output channel (``x``: (rows, K); ``ws``: float weights [K, N]; ``ys``: the
    float outputs x @ w when already computed)."""
    xq = per_tensor_int8(amax)(x / s)
    out = []
    for i, w in enumerate(ws):
        y = x @ w if ys is None else ys[i]
        e = xq @ per_channel_int8(w * s[:, None]) - y
        out.append(float(np.square(e).sum()) / max(float(np.square(y).sum()), 1e-30))
    return out


def group_weights(model, g: Group) -> list[np.ndarray]:
    """The float weights [K, N] of a group's nodes, in order."""
    nodes = {n.name: n for n in model.graph.node}
    return [float_weight(model, NodeInfo(n, nodes[n].op_type, nodes[n].input[1], "weight")) for n in g.nodes]


def choose_alphas(model, groups: Sequence[Group], absmax: dict[str, np.ndarray], rows: dict[str, np.ndarray],
                  alphas: Sequence[float] = ALPHAS) -> list[Group]:
    """Sets each group's ``alpha``/``s`` to the candidate with the least summed :func:`node_errors` (ties: none)."""
    for g in groups:
        ws = group_weights(model, g)
        x, xm = rows[g.tensor], absmax[g.tensor]
        wm = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)  # (K,): over every output of the group
        ys = [x @ w for w in ws]
        best, best_err = None, sum(node_errors(x, ws, np.ones_like(xm), float(xm.max()), ys))
        g.errors["none"] = best_err
        for a in alphas:
            s = scales(xm, wm, a)
            e = sum(node_errors(x, ws, s, float((xm / s).max()), ys))
            g.errors[f"{a:g}"] = e
            if e < best_err:
                best, best_err = a, e
        g.alpha = best
        g.s = None if best is None else scales(xm, wm, best)
    return list(groups)


def apply_smoothing(model, groups: Sequence[Group]):
    """A copy of ``model`` with every smoothed group's 1/s folded into its LayerNorm or applied by an inserted Mul,
    and its weights scaled by s (new initializers; node names kept, so exclusions and rankings still apply)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    new_nodes: dict[str, Any] = {}  # tensor -> Mul node, inserted right after the tensor's producer
    for g in groups:
        if g.alpha is None:
            continue
        inv = (1.0 / g.s).astype(np.float32)
        for name in g.nodes:
            n = nodes[name]
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            trans_b = n.op_type == "Gemm" and _attr(n, "transB", 0)
            w = w * (g.s[None, :] if trans_b else g.s[:, None])
            wname = f"{n.input[1]}__smooth_{name}"
            m.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), wname))
            n.input[1] = wname
        if g.fold:
            ln = nodes[g.fold]
            for slot in (1, 2):
                if slot < len(ln.input) and ln.input[slot]:
                    v = numpy_helper.to_array(inits[ln.input[slot]]).astype(np.float32) * inv
                    vname = f"{ln.input[slot]}__smooth_{ln.name}"
                    m.graph.initializer.append(numpy_helper.from_array(v, vname))
                    ln.input[slot] = vname
        else:
            cname = f"{g.tensor}__smooth_inv"
            m.graph.initializer.append(numpy_helper.from_array(inv, cname))
            new_nodes[g.tensor] = helper.make_node("Mul", [g.tensor, cname], [smoothed_name(g.tensor)],
                                                   name=f"{g.tensor}__smooth_mul")
            for name in g.nodes:
                nodes[name].input[0] = smoothed_name(g.tensor)
    if new_nodes:
        _insert_after_producers(m, new_nodes)
    drop_unused_initializers(m)
    onnx.checker.check_model(m)
    return m


def _insert_after_producers(model, muls: dict[str, Any]) -> None:
    """Insert each Mul right after the node producing its input (graph inputs: first), keeping topological order."""
    out = [muls[t] for t in muls if t in {i.name for i in model.graph.input}]
    for n in model.graph.node:
        out.append(n)
        out.extend(muls[o] for o in n.output if o in muls)
    if len(out) != len(model.graph.node) + len(muls):
        raise QuantizeError(f"smoothing: {len(muls)} Mul nodes to insert, placed "
                            f"{len(out) - len(model.graph.node)}; expected every smoothed tensor to have a producer")
    del model.graph.node[:]
    model.graph.node.extend(out)
