"""Weight-only 8-bit and 4-bit decoder graphs for ONNX Runtime's CPU: ``MatMulNBits`` (com.microsoft), block-wise
along K, symmetric (zero points and a per-block clipping search are options; a node may hold another width, e.g. the
LM head at 8 bits in a 4-bit graph), Gemm rewritten as MatMul first.

``accuracy_level=4`` is written into every MatMulNBits node: ONNX Runtime then quantises the activations to int8 per
block and runs integer dot products where the CPU has the kernels (AVX2 / AVX512-VNNI / AMX on x86, dot-product on
Arm); where it lacks them ONNX Runtime falls back to float compute on its own, the graph is the same. Unset (0), the
8-bit form computes in float and was six times SLOWER than fp32 on a 12-layer GPT-2 (FACTS.md): level 4 is what
makes weight-only fast at batch-1 decode, where reading the weights is the cost.

- :func:`matmul_nbits`: the graph (``exclude``: nodes kept float, by name; ``node_bits``: other widths).
- :func:`quantize_blocks`: numpy's block quantisation, equal to ONNX Runtime's round-to-nearest bit for bit, with
  the clipping search; :func:`pack` / :func:`pack_zero_points`: MatMulNBits' layouts.
- :func:`share_tied_weights`: a float tied LM head reads the embedding table again instead of a stored copy.
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
from optimize.qdq_graph import NodeInfo, drop_unused_initializers, ensure_node_names, gemm_to_matmul
from zoo.io import save_onnx

log = logging.getLogger("edgeattn.optimize.nbits")

OP = "MatMulNBits"
INTEGER_LEVEL = 4  # MatMulNBits accuracy_level: int8 activations, integer dot products where the CPU has them
BITS = (8, 4)


def matmul_nbits(src: str | os.PathLike, dst: str | os.PathLike, bits: int, block_size: int = 32,
                 exclude: Sequence[str] = (), accuracy_level: int = INTEGER_LEVEL, symmetric: bool = True,
                 clip: bool = False, importance: dict[str, np.ndarray] | None = None,
                 node_bits: dict[str, int] | None = None) -> dict[str, Any]:
    """``src`` with every constant-weight MatMul (Gemm rewritten first) as a ``bits``-bit MatMulNBits of
    ``block_size`` along K, except the nodes named in ``exclude``; written to ``dst``. ``symmetric`` False: a zero
    point per block (min/max range). ``clip``: each block's range chosen by :func:`quantize_blocks`' search (the least
    weight error; ``importance``: node name -> per input channel weight of that error, e.g. mean x^2), else ONNX
    Runtime's round-to-nearest values as its quantiser writes them. ``node_bits``: nodes held at another width
    (e.g. the LM head at 8 bits in a 4-bit graph; an excluded node stays float). A float tied weight reads its
    table again (:func:`share_tied_weights`). Returns :func:`nbits_summary` with the options and that count."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if bits not in BITS:
        raise QuantizeError(f"MatMulNBits: got bits={bits}, expected one of {BITS}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizeError(f"MatMulNBits: got block_size={block_size}, expected a power of two >= 16")
    model = onnx.load(str(src))
    ensure_node_names(model)
    gemm_to_matmul(model)
    floats = _matmul_weights(model) if clip else {}
    other = {k: int(v) for k, v in (node_bits or {}).items() if k not in set(exclude) and int(v) != int(bits)}
    if any(b not in BITS for b in other.values()):
        raise QuantizeError(f"MatMulNBits: got node_bits {other}, expected widths in {BITS}")
    out = model
    for width in [int(bits), *sorted(set(other.values()))]:
        q = MatMulNBitsQuantizer(out, bits=width, block_size=int(block_size), is_symmetric=bool(symmetric),
                                 accuracy_level=int(accuracy_level) or None,
                                 nodes_to_exclude=[*exclude, *(k for k, b in other.items() if b != width)],
                                 op_types_to_quantize=("MatMul",))  # earlier passes' nodes are MatMulNBits now
        q.process()
        out = q.model.model
        _restore_names(out, width)
    if clip:
        _requantize(out, floats, int(block_size), bool(symmetric), importance or {})
    tied = share_tied_weights(out)
    onnx.checker.check_model(out)
    save_onnx(out, dst)
    return {**nbits_summary(out), "symmetric": bool(symmetric), "clip": bool(clip),
            "importance": bool(clip and importance), "tied_weights_shared": tied}


def share_tied_weights(model) -> int:
    """A float MatMul whose constant weight is exactly the transpose of a Gather's table (a tied LM head kept float:
    optimize.decoder_quant.prepare folded its Transpose so the quantisers see a constant) reads the table again
    through a Transpose node, so the file stores the table once (ONNX Runtime folds the Transpose when it loads).
    Returns how many weights were shared."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits}
    shapes = {t: tuple(inits[t].dims) for t in tables if len(inits[t].dims) == 2}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    added = []
    for n in model.graph.node:
        w = n.input[1] if n.op_type == "MatMul" and len(n.input) > 1 else None
        if w not in inits or w in tables or len(inits[w].dims) != 2:
            continue
        dims = tuple(inits[w].dims)
        match = next((t for t, sh in shapes.items() if sh == dims[::-1]), None)
        if match is None:
            continue
        arr = numpy_helper.to_array(inits[w])
        if not np.array_equal(arr, numpy_helper.to_array(inits[match]).T):
            continue
        name = f"{match}__transposed"
        if name not in {a.output[0] for a in added}:
            added.append(helper.make_node("Transpose", [match], [name], name=f"{match}__tied_transpose", perm=[1, 0]))
        n.input[1] = name
    if added:
        nodes = added + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        drop_unused_initializers(model)
    return len(added)


def _matmul_weights(model) -> dict[str, np.ndarray]:
    """Node name -> the float [K, N] weight of each MatMul with a 2-D initializer weight."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2}


def _requantize(model, floats: dict[str, np.ndarray], block: int, symmetric: bool,
                importance: dict[str, np.ndarray]) -> None:
    """Replace each MatMulNBits node's packed weight, scales (and zero points) by :func:`quantize_blocks`' with the
    clipping search, from its MatMul's float weight (``floats``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type != OP or n.name not in floats:
            continue
        bits = int(_attrs(n)["bits"])
        q, scale, zp = quantize_blocks(floats[n.name], bits, block, symmetric, clip=True,
                                       importance=importance.get(n.name))
        arrays = {1: pack(q, bits), 2: scale.astype(numpy_helper.to_array(inits[n.input[2]]).dtype)}
        if not symmetric:
            arrays[3] = pack_zero_points(zp, bits)
        for slot, arr in arrays.items():
            old = numpy_helper.to_array(inits[n.input[slot]])
            if old.size != arr.size:
                raise QuantizeError(f"MatMulNBits '{n.name}' input {slot}: got {arr.size} values from the clipping "
                                    f"search, expected the quantiser's {old.size}")
            inits[n.input[slot]].CopyFrom(numpy_helper.from_array(arr.reshape(old.shape), n.input[slot]))


# ---- block quantisation in numpy (the clipping search; the same layout ONNX Runtime's quantiser writes) --------------
CLIP_GRID = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))  # block range shrunk to 100 % .. 50 %


def quantize_blocks(w: np.ndarray, bits: int, block: int, symmetric: bool = True, clip: bool = False,
                    importance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A float weight [K, N] as MatMulNBits holds it: codes uint8 [N, blocks, block] (K zero-padded), scales
    [N, blocks] and zero points uint8 [N, blocks]. Symmetric: ONNX Runtime's rule, the block's value of largest
    magnitude maps to code 0 (-2^(b-1) steps of a signed scale), zero point 2^(b-1); asymmetric: min..max (0 included)
    over 2^b - 1 steps, zero point rounded. ``clip``: the range shrunk by each factor of :data:`CLIP_GRID` and, per
    block, the one with the least squared weight error kept (``importance`` (K,): that error weighted per input
    channel, e.g. by the mean square of the activation it multiplies)."""
    k, n = w.shape
    blocks = -(-k // block)
    wb = np.pad(w.astype(np.float32), ((0, blocks * block - k), (0, 0))).T.reshape(n, blocks, block)
    imp = None if importance is None else np.pad(np.asarray(importance, np.float32), (0, blocks * block - k)
                                                 ).reshape(1, blocks, block)
    best = None
    for r in (CLIP_GRID if clip else (1.0,)):
        q, scale, zp = _rtn(wb, bits, symmetric, r)
        err = np.square((q.astype(np.float32) - zp[..., None]) * scale[..., None] - wb)
        err = (err if imp is None else err * imp).sum(axis=-1)  # (N, blocks)
        if best is None:
            best = [q, scale, zp, err]
            continue
        better = err < best[3]
        best[0] = np.where(better[..., None], q, best[0])
        best[1], best[2], best[3] = (np.where(better, scale, best[1]), np.where(better, zp, best[2]),
                                     np.minimum(err, best[3]))
    return best[0], best[1].astype(np.float32), best[2].astype(np.uint8)


def _rtn(wb: np.ndarray, bits: int, symmetric: bool, shrink: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round to nearest of blocks wb (N, blocks, block) with the range scaled by ``shrink``: (codes, scales, zps)."""
    top = float(2 ** bits - 1)
    if symmetric:
        mid = float(2 ** (bits - 1))
        hi, lo = wb.max(axis=-1), wb.min(axis=-1)
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo) * shrink
        scale = extreme / -mid
        zp = np.full(scale.shape, mid, np.float32)
    else:
        lo, hi = np.minimum(wb.min(axis=-1), 0.0) * shrink, np.maximum(wb.max(axis=-1), 0.0) * shrink
        scale = (hi - lo) / top
        zp = np.clip(np.rint(-lo / np.where(scale == 0, 1.0, scale)), 0, top)
    safe = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.rint(wb / safe[..., None]) + zp[..., None], 0, top)
    q = np.where((scale == 0)[..., None], zp[..., None], q)
    return q.astype(np.uint8), scale.astype(np.float32), zp.astype(np.float32)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Codes uint8 [N, blocks, block] -> MatMulNBits' B: 8-bit as is, 4-bit two per byte, low nibble first."""
    if bits == 8:
        return q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """Zero points uint8 [N, blocks] -> MatMulNBits' zero_points: 8-bit [N * blocks]; 4-bit per row N, two per byte
    (low nibble first, an odd count padded), [N * ceil(blocks / 2)]."""
    if bits == 8:
        return zp.astype(np.uint8).reshape(-1)
    z = np.pad(zp, ((0, 0), (0, zp.shape[1] % 2)))
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


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
    inits |= {n.output[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in inits}  # tied
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


def unpack(packed: np.ndarray, scales: np.ndarray, bits: int, k: int, n: int, block: int,
           zero_points: np.ndarray | None = None) -> np.ndarray:
    """MatMulNBits' B (uint8 [N, blocks, block * bits / 8], 4-bit: low nibble first), scales ([N * blocks]) and
    zero points (:func:`pack_zero_points`' layout; None: symmetric, 2^(bits-1)) as the float weight [K, N]."""
    blocks = -(-k // block)
    if zero_points is None:
        zp = np.full((n, blocks), float(2 ** (bits - 1)), np.float32)
    elif bits == 4:
        z = zero_points.reshape(n, -1)
        zp = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zp = zero_points.reshape(n, blocks).astype(np.float32)
    b = packed.reshape(n, blocks, -1)
    if bits == 4:
        q = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, blocks, block)
    elif bits == 8:
        q = b.reshape(n, blocks, block)
    else:
        raise QuantizeError(f"MatMulNBits unpack: got bits={bits}, expected one of {BITS}")
    w = (q.astype(np.float32) - zp[..., None]) * scales.reshape(n, blocks, 1).astype(np.float32)
    return np.ascontiguousarray(w.reshape(n, blocks * block)[:, :k].T)  # (K, N)


def dequantized_weights(model) -> dict[str, np.ndarray]:
    """Node name -> the float weight [K, N] each MatMulNBits node of ``model`` (path or ModelProto) computes with."""
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
        zp = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
        out[node.name] = unpack(numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(
            inits[node.input[2]]), int(a["bits"]), int(a["K"]), int(a["N"]), int(a["block_size"]), zp)
    return out


def lm_head(model, nodes: Sequence[NodeInfo], output: str = "logits") -> str | None:
    """Name of the weight node whose output is the graph output ``output`` (the LM head), else the last weight node
    in graph order; None without nodes."""
    by_out = {n.output[0]: n.name for n in model.graph.node}
    names = {n.name for n in nodes}
    if by_out.get(output) in names:
        return by_out[output]
    return nodes[-1].name if nodes else None
