"""The KV cache's storage type of a decoder graph (export.decoder_export's past_*/present_* I/O) on ONNX Runtime CPU.

- :func:`narrow_cache`: the graph's cache inputs and outputs in float16, with a Cast inside at each end (past ->
  float32 before its first use, present float32 -> float16 at the output): the model computes in its own precision,
  the cache a caller holds between steps is half the bytes. The runtime feeds the past in the type the graph
  declares (runtime.generate reads it from the session's inputs). What it costs in accuracy is seen only where a
  step reads a cache a previous step wrote: calibration.windows.ort_teacher_forced_cached judges it.
- :func:`cache_type`: the storage type a graph's cache has ('float32' / 'float16').

An INT8 cache is not offered for these graphs yet. ONNX Runtime 1.32's one quantised KV cache is inside its fused
``GroupQueryAttention`` contrib op (``k_quant_type`` / ``v_quant_type`` 'PER_TENSOR' or 'PER_CHANNEL',
``kv_cache_bit_width`` 8, ``k_scale`` / ``v_scale`` inputs; a one-node graph of it ran on the CPU provider here with
int8 past/present), and the exported GPT-2 attention is MatMul / Softmax / MatMul over a concatenated past, not that
op: an int8 cache needs the attention rewritten into GroupQueryAttention (which takes per-row lengths, seqlens_k,
instead of the runtime's left-padded attention mask) and calibrated k/v scales. Q/DQ at the graph's cache I/O
instead would dequantise the whole past to float32 at every step (more memory traffic per step than the float32
cache) and a fixed scale clips keys of unseen text.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from optimize.int8_build import QuantizeError

CACHE_TYPES = ("float32", "float16")
FP32_SUFFIX = "_fp32"  # the float32 tensor inside the graph behind a float16 cache input / output


def _elem(vi) -> int:
    return vi.type.tensor_type.elem_type


def cache_type(path: str | os.PathLike, past_inputs: Sequence[str]) -> str:
    """'float32' or 'float16': the declared type of the graph's first cache input (all agree in graphs written here)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    types = {i.name: _elem(i) for i in m.graph.input}
    missing = [p for p in past_inputs if p not in types]
    if missing:
        raise QuantizeError(f"{path}: cache inputs {missing} not found, expected graph inputs {sorted(types)}")
    t = types[past_inputs[0]]
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}.get(t, str(t))


def narrow_cache(src: str | os.PathLike, dst: str | os.PathLike, past_inputs: Sequence[str],
                 present_outputs: Sequence[str]) -> dict[str, Any]:
    """``src`` with its float32 cache inputs ``past_inputs`` and outputs ``present_outputs`` declared float16 and a
    Cast at each, written to ``dst``. Returns what changed."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    g = model.graph
    ins, outs = {i.name: i for i in g.input}, {o.name: o for o in g.output}
    for names, table, what in ((past_inputs, ins, "input"), (present_outputs, outs, "output")):
        bad = {n: (_elem(table[n]) if n in table else None) for n in names
               if n not in table or _elem(table[n]) != TensorProto.FLOAT}
        if bad or not names:
            raise QuantizeError(f"{src}: cache {what}s {dict(bad) or list(names)} are missing or not float32 "
                                f"(elem types shown), expected float32 graph {what}s named in the spec")
    rename = {n: n + FP32_SUFFIX for n in (*past_inputs, *present_outputs)}
    taken = {t for n in g.node for t in (*n.input, *n.output)} | set(ins) | set(outs)
    clash = sorted(v for v in rename.values() if v in taken)
    if clash:
        raise QuantizeError(f"{src}: tensor names {clash} already exist, expected them free for the cache casts")
    for n in g.node:
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [rename.get(t, t) if t in present_outputs else t for t in n.output]
    for vi in g.value_info:
        if vi.name in rename:
            vi.name = rename[vi.name]
    cast_in = [helper.make_node("Cast", [p], [rename[p]], name=f"{p}_cast_to_float32", to=TensorProto.FLOAT)
               for p in past_inputs]
    cast_out = [helper.make_node("Cast", [rename[p]], [p], name=f"{p}_cast_to_float16", to=TensorProto.FLOAT16)
                for p in present_outputs]
    nodes = cast_in + list(g.node) + cast_out
    del g.node[:]
    g.node.extend(nodes)
    for table, names in ((ins, past_inputs), (outs, present_outputs)):
        for n in names:
            table[n].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return {"cache_type": "float16", "casts": len(cast_in) + len(cast_out), "inputs": list(past_inputs),
            "outputs": list(present_outputs)}
