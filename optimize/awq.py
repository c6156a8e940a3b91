"""Activation-aware scaling for weight-only MatMulNBits (AWQ, Lin et al. 2024): the input channels that carry large
activations matter most to a MatMul's output, so before the weights are rounded to 4 bits, channel j of the weight is
scaled UP by ``s_j`` and the activation DOWN by ``s_j`` (``X W = (X / s)(s W)`` in exact arithmetic): the salient
rows get more of their block's levels.

    s_j = mean|X_j| ** alpha, normalised by sqrt(max s * min s)       (alpha 0: no scaling)

Alpha is chosen per group of MatMuls that read one activation (optimize.smoothquant's groups) from ``ALPHAS`` by the
error the group's nodes add at their own outputs with the weights as MatMulNBits holds them (optimize.nbits.
quantize_blocks, the same options as the graph) and, at accuracy level 4, the activations int8 per block
(optimize.layer_error.block_int8), on rows captured in ONE forward pass over calibration (training) windows. The
scaling is folded by optimize.smoothquant.apply_smoothing: 1/s into the group's LayerNorm where that is exact
(no extra op at decode), else an inserted Mul (only with ``with_mul``: an elementwise op per token in front of the
group). Alpha 0 wins where scaling does not pay, so by this measure it never adds error.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from optimize.layer_error import block_int8
from optimize.nbits import INTEGER_LEVEL, quantize_blocks
from optimize.qdq_graph import NodeInfo
from optimize.smoothquant import S_BOUNDS, Group, apply_smoothing, capture_rows, group_weights, smoothing_groups

log = logging.getLogger("edgeattn.optimize.awq")

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0 (none) .. 1
MAX_ROWS = 2048  # activation rows per group for the error measurements


def dequantized(w: np.ndarray, bits: int, block: int, symmetric: bool, clip: bool,
                importance: np.ndarray | None = None) -> np.ndarray:
    """``w`` [K, N] as MatMulNBits computes with it after optimize.nbits.quantize_blocks (same options)."""
    k = w.shape[0]
    q, scale, zp = quantize_blocks(w, bits, block, symmetric, clip, importance)
    deq = (q.astype(np.float32) - zp[..., None].astype(np.float32)) * scale[..., None]  # (N, blocks, block)
    return np.ascontiguousarray(deq.reshape(len(deq), -1)[:, :k].T)


def awq_scale(x_mean: np.ndarray, alpha: float) -> np.ndarray:
    """s = mean|X|^alpha over the geometric middle of its range, clipped to smoothquant's bounds; 1 for dead
    channels."""
    s = np.ones_like(x_mean, dtype=np.float64)
    ok = x_mean > 0
    if alpha == 0 or not ok.any():
        return s.astype(np.float32)
    s[ok] = x_mean[ok].astype(np.float64) ** alpha
    s[ok] /= np.sqrt(s[ok].max() * s[ok].min())
    return np.clip(s, *S_BOUNDS).astype(np.float32)


def group_error(x: np.ndarray, ws: Sequence[np.ndarray], ys: Sequence[np.ndarray], s: np.ndarray, bits: int,
                block: int, symmetric: bool, clip: bool, level: int) -> float:
    """Summed relative output error of a group's nodes with X/s (int8 per block at level 4) and s W quantised."""
    xs = x / s
    if level == INTEGER_LEVEL:
        xs = block_int8(block)(xs)
    imp = np.mean(np.square(x / s), axis=0) if clip else None
    err = 0.0
    for w, y in zip(ws, ys):
        e = xs @ dequantized(w * s[:, None], bits, block, symmetric, clip, imp) - y
        err += float(np.square(e).sum()) / max(float(np.square(y).sum()), 1e-30)
    return err


def choose_scales(model, groups: Sequence[Group], rows: dict[str, np.ndarray], bits: int, block: int,
                  symmetric: bool, clip: bool, level: int, alphas: Sequence[float] = ALPHAS) -> list[Group]:
    """Sets each group's ``alpha``/``s`` to the candidate of ``alphas`` with the least :func:`group_error` (0 or a
    tie with it: not scaled, ``alpha`` None)."""
    for g in groups:
        ws = group_weights(model, g)
        x = rows[g.tensor]
        xm = np.abs(x).mean(axis=0)
        ys = [x @ w for w in ws]
        best, best_err = None, None
        for a in alphas:
            e = group_error(x, ws, ys, awq_scale(xm, a), bits, block, symmetric, clip, level)
            g.errors[f"{a:g}"] = e
            if best_err is None or e < best_err:
                best, best_err = a, e
        g.errors["none"] = g.errors.get("0")  # alpha 0 is no scaling (smoothquant.Group.record reads "none")
        g.alpha = None if not best else float(best)
        g.s = None if not best else awq_scale(xm, best)
    return list(groups)


def awq_graph(src: str | os.PathLike, nodes: Sequence[NodeInfo], feeds: Iterable[dict[str, np.ndarray]], bits: int,
              block: int, symmetric: bool = True, clip: bool = False, level: int = INTEGER_LEVEL,
              with_mul: bool = False, threads: int | None = None):
    """(the float graph of ``src`` with the chosen scales folded in, one record per group). ``nodes``: the weight
    nodes MatMulNBits will take (optimize.qdq_graph.quantizable_nodes); ``feeds``: calibration prefill feeds."""
    import onnx

    model = onnx.load(str(src))
    groups = smoothing_groups(model, nodes)
    fold_through_reshapes(model, groups)
    groups = [g for g in groups if g.fold or with_mul]
    if not groups:
        return model, []
    _, rows = capture_rows(src, groups, feeds, MAX_ROWS, threads=threads)
    choose_scales(model, groups, rows, bits, block, symmetric, clip, level)
    out = apply_smoothing(model, groups)
    records = [g.record() for g in groups]
    log.info("AWQ %d-bit: %d of %d groups scaled", bits, sum(g.alpha is not None for g in groups), len(groups))
    return out, records


def _const_values(model, name: str) -> np.ndarray | None:
    """The values of an initializer or Constant output ``name``; None when it is computed."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
    return None


def _last_dim(model, shape: str) -> int | None:
    """The last entry of a Reshape's target shape when it is a constant (or a Concat ending in one)."""
    v = _const_values(model, shape)
    if v is None:
        p = next((n for n in model.graph.node if shape in n.output), None)
        if p is None or p.op_type != "Concat":
            return None
        v = _const_values(model, p.input[-1])
    return None if v is None or not v.size else int(np.asarray(v).reshape(-1)[-1])


def fold_through_reshapes(model, groups: Sequence[Group]) -> int:
    """Groups whose activation is a Reshape keeping the last axis (a GPT-2 Conv1D's [B, T, D] -> [-1, D]) of a
    LayerNormalization's output, both read by nothing else, fold into that LayerNorm too (a per-channel 1/s commutes
    with such a Reshape): ``fold`` set as optimize.smoothquant.smoothing_groups sets it for a direct LayerNorm.
    Returns how many were set."""
    from onnx import numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, set] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name)
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    done = 0
    for g in groups:
        r = producer.get(g.tensor)
        if g.fold or r is None or r.op_type != "Reshape" or readers.get(g.tensor) != set(g.nodes):
            continue
        ln = producer.get(r.input[0])
        k = next((numpy_helper.to_array(t).shape for t in model.graph.initializer if t.name == ln.input[1]), None) \
            if ln is not None and ln.op_type == "LayerNormalization" else None
        if (k is None or len(k) != 1 or _last_dim(model, r.input[1]) != k[0] or readers.get(r.input[0]) != {r.name}
                or r.input[0] in outputs or g.tensor in outputs
                or (len(ln.input) > 2 and ln.input[2] and ln.input[2] not in inits)):
            continue
        g.fold = ln.name
        done += 1
    return done


def input_importance(src: str | os.PathLike, nodes: Sequence[NodeInfo], feeds: Iterable[dict[str, np.ndarray]],
                     threads: int | None = None) -> dict[str, np.ndarray]:
    """Node name -> mean x^2 per input channel (K,) of the activation it reads, from one forward pass over ``feeds``
    (optimize.nbits.matmul_nbits' ``importance``: the clipping search's weight error weighted by it)."""
    import onnx

    groups = smoothing_groups(onnx.load(str(src), load_external_data=False), nodes)
    _, rows = capture_rows(src, groups, feeds, MAX_ROWS, threads=threads)
    return {n: np.mean(np.square(rows[g.tensor]), axis=0) for g in groups for n in g.nodes}
