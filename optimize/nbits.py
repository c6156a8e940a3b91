"""Weight-only 8-bit and 4-bit decoder graphs for ONNX Runtime's CPU: ``MatMulNBits`` (com.microsoft), block-wise
along K, symmetric, Gemm rewritten as MatMul first.

``accuracy_level=4`` is written into every MatMulNBits node: ONNX Runtime then quantises the activations to int8 per
block and runs integer dot products where the CPU has the kernels (AVX2 / AVX512-VNNI / AMX on x86, dot-product on
Arm); where it lacks them ONNX Runtime falls back to float compute on its own, the graph is the same. Unset (0), the
8-bit form computes in float and was six times SLOWER than fp32 on a 12-layer GPT-2 (FACTS.md): level 4 is what
makes weight-only fast at batch-1 decode, where reading the weights is the cost.

- :func:`matmul_nbits`: the graph (``exclude``: nodes kept float, by name).
- :func:`dequantized_weights`: each MatMulNBits node's weight as float [K, N], read back from the packed graph (the
  weights the kernels use, for optimize.layer_error's one-pass sensitivity).
- :func:`nbits_summary`, :func:`weight_coverage`: what a written graph holds (node counts, bits, levels; the share
  of the source's weight elements stored as 8 or fewer bits).
- :func:`lm_head`: the node that writes the logits.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from optimize.int8_build import QuantizeError
from optimize.qdq_graph import NodeInfo, ensure_node_names, gemm_to_matmul
from zoo.io import save_onnx

log = logging.getLogger("edgeattn.optimize.nbits")

OP = "MatMulNBits"
INTEGER_LEVEL = 4  # MatMulNBits accuracy_level: int8 activations, integer dot products where the CPU has them
BITS = (8, 4)


def matmul_nbits(src: str | os.PathLike, dst: str | os.PathLike, bits: int, block_size: int = 32,
                 exclude: Sequence[str] = (), accuracy_level: int = INTEGER_LEVEL) -> dict[str, Any]:
    """``src`` with every constant-weight MatMul (Gemm rewritten first) as a symmetric ``bits``-bit MatMulNBits of
    ``block_size`` along K, except the nodes named in ``exclude``; written to ``dst``. Returns :func:`nbits_summary`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if bits not in BITS:
        raise QuantizeError(f"MatMulNBits: got bits={bits}, expected one of {BITS}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizeError(f"MatMulNBits: got block_size={block_size}, expected a power of two >= 16")
    model = onnx.load(str(src))
    ensure_node_names(model)
    gemm_to_matmul(model)
    q = MatMulNBitsQuantizer(model, bits=int(bits), block_size=int(block_size), is_symmetric=True,
                             accuracy_level=int(accuracy_level) or None, nodes_to_exclude=list(exclude),
                             op_types_to_quantize=("MatMul",))
    q.process()
    out = q.model.model
    _restore_names(out, int(bits))
    onnx.checker.check_model(out)
    save_onnx(out, dst)
    return nbits_summary(out)


def _restore_names(model, bits: int) -> None:
    """ONNX Runtime names a quantised node ``<name>_Q<bits>``: give it back its MatMul's name (exclusions, sensitivity
    rows and the manifest speak of one name)."""
    used = {n.name for n in model.graph.node}
    for n in model.graph.node:
        base = n.name[: -len(f"_Q{bits}")]
        if n.op_type == OP and n.name.endswith(f"_Q{bits}") and base not in used:
            n.name = base


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def nbits_summary(model) -> dict[str, Any]:
    """MatMulNBits nodes of ``model`` (a ModelProto or a path): how many, their bits, block sizes and accuracy levels
    (None: the attribute is unset, float compute), and the float MatMuls left."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    nb = [_attrs(n) for n in model.graph.node if n.op_type == OP]
    return {"nodes": len(nb), "bits": sorted({int(a["bits"]) for a in nb}),
            "block_sizes": sorted({int(a["block_size"]) for a in nb}),
            "accuracy_levels": sorted({a.get("accuracy_level") for a in nb}, key=lambda v: -1 if v is None else v),
            "weight_elements": int(sum(int(a["K"]) * int(a["N"]) for a in nb)),
            "float_matmuls": sum(n.op_type in ("MatMul", "Gemm") and n.input[1] in inits for n in model.graph.node)}


def weight_coverage(path: str | os.PathLike, quantizable: int) -> float:
    """Share of the source's Conv/Gemm/MatMul weight elements held in 8 or fewer bits by ``path``: a MatMulNBits node
    counts K x N (its packed bytes are fewer for 4-bit), any other 2-D+ int8/uint8 initializer its elements
    (optimize.qdq_graph.int8_weight_coverage's count, which is what a graph without MatMulNBits gets here)."""
    import onnx

    m = onnx.load(str(path))
    packed = {n.input[1] for n in m.graph.node if n.op_type == OP}
    n_bits = sum(int(a["K"]) * int(a["N"]) for a in (_attrs(n) for n in m.graph.node if n.op_type == OP))
    q8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    n8 = sum(int(np.prod(t.dims)) for t in m.graph.initializer
             if len(t.dims) >= 2 and t.data_type in q8 and t.name not in packed)
    return round(min(1.0, (n_bits + n8) / max(quantizable, 1)), 4)


def unpack(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, n: int, block: int) -> np.ndarray:
    """MatMulNBits' B (uint8 [N, blocks, block * bits / 8], 4-bit: low nibble first) and scales ([N * blocks]),
    symmetric (zero point 2^(bits-1)), as the float weight [K, N]."""
    blocks = -(-k // block)
    b = packed.reshape(n, blocks, -1)
    if bits == 4:
        q = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, blocks, block)
    elif bits == 8:
        q = b.reshape(n, blocks, block)
    else:
        raise QuantizeError(f"MatMulNBits unpack: got bits={bits}, expected one of {BITS}")
    w = (q.astype(np.float32) - float(2 ** (bits - 1))) * scales.reshape(n, blocks, 1).astype(np.float32)
    return np.ascontiguousarray(w.reshape(n, blocks * block)[:, :k].T)  # (K, N)


def dequantized_weights(model) -> dict[str, np.ndarray]:
    """Node name -> the float weight [K, N] each symmetric MatMulNBits node of ``model`` (path or ModelProto) computes
    with."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != OP:
            continue
        a = _attrs(node)
        if len(node.input) > 3 and node.input[3]:
            raise QuantizeError(f"MatMulNBits node '{node.name}': got a zero-point input, expected a symmetric node")
        out[node.name] = unpack(numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(
            inits[node.input[2]]), int(a["bits"]), int(a["K"]), int(a["N"]), int(a["block_size"]))
    return out


def lm_head(model, nodes: Sequence[NodeInfo], output: str = "logits") -> str | None:
    """Name of the weight node whose output is the graph output ``output`` (the LM head), else the last weight node
    in graph order; None without nodes."""
    by_out = {n.output[0]: n.name for n in model.graph.node}
    names = {n.name for n in nodes}
    if by_out.get(output) in names:
        return by_out[output]
    return nodes[-1].name if nodes else None
