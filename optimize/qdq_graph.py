"""ONNX graph surgery for int8: the Conv/Gemm/MatMul nodes that can be quantised (after giving every node a stable
name), Gemm rewritten as MatMul for ORT's dynamic quantisation, and how much of a model's weights a quantised graph
really holds in int8."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def _constants(graph) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return names


def ensure_node_names(model) -> int:
    """Give unnamed nodes a stable unique name (``<op>_<index>``); returns how many were named."""
    used = {n.name for n in model.graph.node if n.name}
    k = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
            k += 1
    return k


@dataclass
class NodeInfo:
    name: str
    op_type: str
    weight: str | None  # initializer name of the weight input (None for attention BMMs)
    kind: str  # "weight" | "attention"


def quantizable_nodes(model, quantize_attention: bool = False) -> list[NodeInfo]:
    """Conv/Gemm/MatMul nodes with a constant weight (projections, FFNs, convs), in graph order; with
    ``quantize_attention`` also MatMuls of two activations (attention score/context BMMs)."""
    consts = _constants(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        if n.input[1] in consts:
            out.append(NodeInfo(n.name, n.op_type, n.input[1], "weight"))
        elif n.op_type == "MatMul" and n.input[0] not in consts and quantize_attention:
            out.append(NodeInfo(n.name, n.op_type, None, "attention"))
    return out


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, B[, C]) (alpha=beta=1, transA=0, constant B) as MatMul(A, B') [+ Add(C)] in place,
    keeping the Gemm's node name on the MatMul so exclusions still apply. ORT's dynamic quantisation only
    handles MatMul. Returns the number of Gemms rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, done, transposed = [], 0, {}
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        ok = (n.op_type == "Gemm" and n.input[1] in inits and attrs.get("transA", 0) == 0
              and float(attrs.get("alpha", 1.0)) == 1.0 and float(attrs.get("beta", 1.0)) == 1.0)
        if not ok:
            new_nodes.append(n)
            continue
        b = n.input[1]
        if attrs.get("transB", 0):
            if b not in transposed:
                arr = numpy_helper.to_array(inits[b]).T.copy()
                tname = f"{b}_T"
                model.graph.initializer.append(numpy_helper.from_array(arr, tname))
                transposed[b] = tname
            b = transposed[b]
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = f"{n.output[0]}_matmul" if has_bias else n.output[0]
        new_nodes.append(helper.make_node("MatMul", [n.input[0], b], [mm_out], name=n.name))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return done


def drop_unused_initializers(model) -> int:
    """Remove the initializers no node reads (after a rewrite replaced or re-pointed their readers); returns how
    many were removed."""
    used = {i for nd in model.graph.node for i in nd.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return dropped

def quantizable_weight_elements(model) -> int:
    """Elements of the constant weights of Conv/Gemm/MatMul nodes (what int8 can cover; embeddings are not)."""
    inits = {t.name: t for t in model.graph.initializer}
    names = {n.weight for n in quantizable_nodes(model) if n.weight in inits}
    return int(sum(int(np.prod(inits[w].dims)) for w in names))


def int8_weight_coverage(path: str | os.PathLike, quantizable: int) -> float:
    """Share of the source's Conv/Gemm/MatMul weight elements stored as 8-bit integers in ``path``: how much of
    the model really runs in int8 (a candidate that quantises only the classifier head is nearly fp32)."""
    import onnx

    m = onnx.load(str(path))
    q8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    n8 = sum(int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) >= 2 and t.data_type in q8)
    return round(min(1.0, n8 / max(quantizable, 1)), 4)
