"""Per-layer sensitivity from ONE pass over cached activations: how much error each quantised weight node alone adds
at its own output, for the budget searches to rank nodes by (optimize.int8_budget.bisect_cut keeps the top ones
float).

One ONNX Runtime run of the float graph, with every ranked node's activation input added as a graph output, gives
per batch the activations X each node sees; for each node the error of its quantised form is then numpy's
``Qa(X) @ Wq - X @ W`` (``Wq``: the weight as the quantised graph holds it; ``Qa``: the activation quantisation the
kernel applies, identity for weight-only float compute), summed over the batches. The score is the relative squared
error at the node's output, ``sum |Qa(X) Wq - X W|^2 / sum |X W|^2``: the error the node alone adds, with every other
node float. n nodes cost one forward pass and n small matmuls per batch, instead of n full evaluations.

The activation quantisers: :func:`per_tensor_int8` (the TensorRT Q/DQ graph's calibrated activations) and
:func:`block_int8` (MatMulNBits' ``accuracy_level=4``: int8 per block of K, symmetric, per row; the same as ONNX
Runtime's kernels to float rounding where the CPU has them).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from optimize.int8_build import QuantizeError
from optimize.qdq_graph import NodeInfo

log = logging.getLogger("edgeattn.optimize.layer_error")

INT8_QMAX = 127.0
ActQuant = Callable[[np.ndarray], np.ndarray]


def float_weight(model, node: NodeInfo) -> np.ndarray:
    """The float weight of a MatMul/Gemm node as [K, N] (a Gemm's transB undone); a com.microsoft.Attention node's
    packed QKV weight [hidden, 3 * hidden] (optimize.cpu_fusion) is its input 1 as well."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    n = next((x for x in model.graph.node if x.name == node.name), None)
    if n is None or node.weight not in inits or n.op_type not in ("MatMul", "Gemm", "Attention"):
        raise QuantizeError(f"layer error: node '{node.name}' with weight '{node.weight}': not found as a MatMul/Gemm "
                            "with a constant weight; expected optimize.qdq_graph.quantizable_nodes of the same graph")
    w = numpy_helper.to_array(inits[node.weight]).astype(np.float32)
    trans_b = n.op_type == "Gemm" and any(a.name == "transB" and helper.get_attribute_value(a) for a in n.attribute)
    if w.ndim != 2:
        raise QuantizeError(f"layer error: weight '{node.weight}' of '{node.name}': got shape {w.shape}, expected 2-D")
    return np.ascontiguousarray(w.T) if trans_b else w


def per_channel_int8(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel of a [K, N] weight (the TensorRT Q/DQ graph's weights), dequantised."""
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / INT8_QMAX
    return (np.clip(np.rint(w / scale), -INT8_QMAX, INT8_QMAX) * scale).astype(np.float32)


def per_tensor_int8(amax: float) -> ActQuant:
    """Symmetric int8 with one calibrated scale (``amax / 127``), dequantised."""
    scale = amax / INT8_QMAX if amax > 0 else 1.0 / INT8_QMAX
    return lambda x: (np.clip(np.rint(x / scale), -INT8_QMAX, INT8_QMAX) * scale).astype(np.float32)


def block_int8(block: int) -> ActQuant:
    """Symmetric int8 per row and per ``block`` elements of K (MatMulNBits at accuracy_level 4), dequantised."""
    def q(x: np.ndarray) -> np.ndarray:
        k = x.shape[-1]
        pad = (-k) % block
        xb = np.pad(x, ((0, 0), (0, pad))).reshape(len(x), -1, block)
        s = np.abs(xb).max(axis=-1, keepdims=True) / INT8_QMAX
        s[s == 0] = 1.0
        return (np.clip(np.rint(xb / s), -INT8_QMAX, INT8_QMAX) * s).reshape(len(x), -1)[:, :k].astype(np.float32)
    return q


def capture_session(src: str | os.PathLike, tensors: Sequence[str], threads: int | None = None):
    """An ONNX Runtime session of ``src`` that also outputs ``tensors`` (graph optimisations on: requested outputs
    are kept)."""
    import onnx

    from runtime.ort_backend import cpu_session

    model = onnx.load(str(src))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
            have.add(t)
    return cpu_session(model.SerializeToString(), "all", threads)


def layer_errors(src: str | os.PathLike, nodes: Sequence[NodeInfo], quantized: Mapping[str, np.ndarray],
                 feeds: Iterable[dict[str, np.ndarray]], act: Mapping[str, ActQuant] | None = None,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """One row per node of ``nodes`` that has a weight in ``quantized`` (node name -> quantised weight [K, N]):
    ``output_rel_mse`` (module docstring) over every batch of ``feeds`` (one float forward pass each), most harmful
    first. ``act``: node name -> its activation quantiser (absent: float activations)."""
    import onnx

    model = onnx.load(str(src))
    by_name = {n.name: n for n in model.graph.node}
    todo = [nd for nd in nodes if nd.name in quantized]
    inputs = {nd.name: by_name[nd.name].input[0] for nd in todo}
    dw = {}
    for nd in todo:
        w = float_weight(model, nd)
        if quantized[nd.name].shape != w.shape:
            raise QuantizeError(f"layer error '{nd.name}': got a quantised weight of shape "
                                f"{quantized[nd.name].shape}, expected the float weight's {w.shape}")
        dw[nd.name] = (w, quantized[nd.name])
    del model
    sess = capture_session(src, sorted(set(inputs.values())), threads)
    names = sorted(set(inputs.values()))
    num = dict.fromkeys(inputs, 0.0)
    den = dict.fromkeys(inputs, 0.0)
    for feed in feeds:
        acts = dict(zip(names, sess.run(names, feed)))
        for name, t in inputs.items():
            x = acts[t].reshape(-1, acts[t].shape[-1]).astype(np.float32)  # (tokens, K)
            w, wq = dw[name]
            y = x @ w
            xq = act[name](x) if act and name in act else x
            num[name] += float(np.square(xq @ wq - y).sum())
            den[name] += float(np.square(y).sum())
    rows = [{"node": nd.name, "op_type": nd.op_type, "kind": nd.kind,
             "output_rel_mse": num[nd.name] / max(den[nd.name], 1e-30), "accuracy_delta": None,
             "top1_agreement": None} for nd in todo]
    rows.sort(key=lambda r: -r["output_rel_mse"])
    return rows
