"""Triton model configs (as dicts for ``serve.pbtxt``) from the model spec, one function per entry kind.

- dims leave the batch axis out when every input and output starts with the spec's ``batch`` dim; then
  ``max_batch_size`` is the spec's batch max and ``dynamic_batching`` prefers its opt and max sizes;
- ``onnx_config``: ``onnxruntime_onnx``, on a GPU with the TensorRT accelerator at the graph's precision and the spec's
  profile (``runtime.ort_backend.profile_shape_options``), its engine cache keyed by the model file's sha256; ``trt_config``: ``tensorrt_plan`` on profile 0 (the
  engines stage builds one profile from the spec);
- ``python_config``: our thin runtime in the Python backend: ``TEXT`` or ``IMAGE`` (BYTES) in, ``logits`` and
  ``label`` out; the artifact and its ONNX Runtime level are parameters that ``model.py`` reads;
- ``generation_config``: a decoder (``text_generation`` spec) in the Python backend, decoupled (one response per
  generated token, streamed over gRPC): ``PROMPT`` (BYTES) and an optional ``MAX_NEW_TOKENS`` in, ``TOKEN`` (the id)
  and ``TEXT`` (the new piece of text) out per response;
- ``model_warmup`` reads sample inputs from ``warmup/`` files that ``warmup_files`` returns.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from runtime.base import IOInfo
from runtime.modelspec import ModelSpec
from runtime.ort_backend import profile_shape_options
from serve.errors import RepositoryError
from serve.pbtxt import Enum, key_values, parameters

TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
         "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}
TRT_PRECISION = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
TEXT_INPUT, IMAGE_INPUT = "TEXT", "IMAGE"
LOGITS_OUTPUT, LABEL_OUTPUT = "logits", "label"
PROMPT_INPUT, MAX_NEW_INPUT = "PROMPT", "MAX_NEW_TOKENS"  # the streaming decoder entry
TOKEN_OUTPUT, PIECE_OUTPUT = "TOKEN", "TEXT"
DEFAULT_NEW_TOKENS = 32  # a streaming request without MAX_NEW_TOKENS
WARMUP_SENTENCE = "a warm-up sentence for the model"
BATCH = "batch"


@dataclass(frozen=True)
class Batching:
    """How requests are batched: dynamic batching with preferred sizes and a queue delay."""

    queue_delay_us: int = 2000
    instances: int = 1


def batched(spec: ModelSpec) -> bool:
    """True when every input and output has the spec's dynamic ``batch`` dim first (Triton then owns that axis)."""
    tensors = [*spec.inputs, *spec.outputs]
    return BATCH in spec.dynamic and all(t.shape and t.shape[0] == BATCH for t in tensors)


def max_batch_size(spec: ModelSpec) -> int:
    return spec.dynamic[BATCH].max if batched(spec) else 0


def data_type(dtype: str, name: str) -> Enum:
    if dtype not in TYPES:
        raise RepositoryError(f"tensor '{name}': got dtype {dtype}, expected one Triton has: {sorted(TYPES)}")
    return Enum(TYPES[dtype])


def dims(shape: Sequence[int | str], batch_axis: bool) -> list[int]:
    """Spec/runner shape -> Triton dims: the batch axis left out when Triton batches, other dynamic dims -1."""
    rest = list(shape[1:] if batch_axis else shape)
    return [d if isinstance(d, int) else -1 for d in rest]


def tensor(io: IOInfo, batch_axis: bool) -> dict[str, Any]:
    return {"name": io.name, "data_type": data_type(io.dtype, io.name), "dims": dims(io.shape, batch_axis)}


def dynamic_batching(spec: ModelSpec, b: Batching) -> dict[str, Any] | None:
    if not batched(spec):
        return None
    r = spec.dynamic[BATCH]
    preferred = sorted({s for s in (r.opt, r.max) if s > 1})
    return {"preferred_batch_size": preferred or None, "max_queue_delay_microseconds": int(b.queue_delay_us)}


def _base(name: str, spec: ModelSpec, inputs: Sequence[IOInfo], outputs: Sequence[IOInfo], b: Batching,
          kind: str) -> dict[str, Any]:
    axis = batched(spec)
    return {"name": name, "max_batch_size": max_batch_size(spec),
            "input": [tensor(i, axis) for i in inputs], "output": [tensor(o, axis) for o in outputs],
            "dynamic_batching": dynamic_batching(spec, b),
            "instance_group": [{"count": int(b.instances), "kind": Enum(kind)}]}


# ---- warm-up ----------------------------------------------------------------------------------------------
def _opt_sizes(spec: ModelSpec) -> dict[str, int]:
    return {k: r.opt for k, r in spec.dynamic.items()}


def warmup_arrays(spec: ModelSpec, inputs: Sequence[IOInfo]) -> dict[str, np.ndarray]:
    """One valid sample per input at the spec's opt sizes, without the batch axis (seeded: token ids in the
    vocabulary with [CLS] first, pixels ~ N(0, 1)), cast to the graph's input dtype."""
    sizes = {**_opt_sizes(spec), BATCH: 1}
    feed = spec.example_inputs(sizes, seed=0)
    out = {}
    for t in inputs:
        x = feed[t.name].astype(t.dtype)
        out[t.name] = x[0] if batched(spec) else x
    return out


def warmup(spec: ModelSpec, arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> list[dict[str, Any]]:
    """``model_warmup``: batch 1 and the spec's opt batch, inputs from ``warmup/<input name>`` files."""
    sizes = [1] + ([spec.dynamic[BATCH].opt] if batched(spec) and spec.dynamic[BATCH].opt > 1 else [])
    return [{"name": f"warmup_batch_{n}", "batch_size": n if batched(spec) else 0,
             "inputs": [{"key": name, "value": {"data_type": data_type(dtypes[name], name), "dims": list(a.shape),
                                                "input_data_file": name}} for name, a in arrays.items()]}
            for n in sizes]


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    """Triton's BYTES wire format (what a warm-up file for a TYPE_STRING input holds): 4-byte little-endian length,
    then the bytes, per element."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def warmup_image(spec: ModelSpec) -> bytes:
    """A PNG of the model's input size (a bright square on dark): the Python model's image warm-up."""
    from PIL import Image

    pp = spec.preprocess
    h, w = pp["size"]
    mode = "L" if int(pp.get("channels", 1)) == 1 else "RGB"
    img = np.zeros((h, w) if mode == "L" else (h, w, 3), np.uint8)
    img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 200
    buf = io.BytesIO()
    Image.fromarray(img, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


# ---- the three entries --------------------------------------------------------------------------------------
def trt_cache_path(name: str, model_sha256: str) -> str:
    """The TensorRT accelerator's engine cache on the Triton host, one folder per entry AND per model content: ORT's
    cache key hashes names, not weights, so a re-exported model.onnx must never meet the old entry's engine."""
    if len(model_sha256) != 64 or any(c not in "0123456789abcdef" for c in model_sha256):
        raise RepositoryError(f"entry '{name}': model sha256 {model_sha256!r}: expected 64 lowercase hex digits")
    return f"/tmp/edgeattn_trt_cache/{name}/{model_sha256}"


def onnx_config(name: str, spec: ModelSpec, inputs: Sequence[IOInfo], outputs: Sequence[IOInfo], precision: str,
                b: Batching, device: str = "gpu", *, model_sha256: str) -> dict[str, Any]:
    """``onnxruntime_onnx``; on a GPU with the TensorRT accelerator at ``precision`` (the graph's: fp16 casts and
    int8 Q/DQ are in the graph, the accelerator must be allowed to run them), the spec's profile and an engine cache
    keyed by ``model_sha256`` (the entry's model.onnx)."""
    cfg = {**_base(name, spec, inputs, outputs, b, "KIND_GPU" if device == "gpu" else "KIND_CPU"),
           "platform": "onnxruntime_onnx", "default_model_filename": "model.onnx"}
    if device == "gpu":
        trt = {"precision_mode": TRT_PRECISION[precision], "max_workspace_size_bytes": str(1 << 30),
               "trt_engine_cache_enable": "1", "trt_engine_cache_path": trt_cache_path(name, model_sha256),
               **profile_shape_options(spec.to_dict())}
        cfg["optimization"] = {"execution_accelerators": {
            "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": key_values(trt)}]}}
    return cfg


def trt_config(name: str, spec: ModelSpec, inputs: Sequence[IOInfo], outputs: Sequence[IOInfo],
               b: Batching) -> dict[str, Any]:
    """``tensorrt_plan``: the engine's one optimisation profile (spec min/opt/max) serves every instance."""
    cfg = {**_base(name, spec, inputs, outputs, b, "KIND_GPU"), "platform": "tensorrt_plan",
           "default_model_filename": "model.plan"}
    cfg["instance_group"][0]["profile"] = ["0"]
    return cfg


def python_inputs(spec: ModelSpec) -> tuple[list[IOInfo], list[IOInfo]]:
    """The Python model's I/O: raw text or an encoded image (one BYTES element per item), logits and label."""
    kind = spec.preprocess.get("kind", "text" if spec.task == "text_classification" else "image")
    if kind not in ("text", "image"):
        raise RepositoryError(f"model '{spec.name}': preprocess kind '{kind}', expected text or image")
    first = BATCH if batched(spec) else 1
    logits = next((o for o in spec.outputs if o.name == LOGITS_OUTPUT), spec.outputs[0])
    return ([IOInfo(TEXT_INPUT if kind == "text" else IMAGE_INPUT, "bytes", (first, 1))],
            [IOInfo(LOGITS_OUTPUT, "float32", (first, *logits.shape[1:])), IOInfo(LABEL_OUTPUT, "bytes", (first, 1))])


def python_config(name: str, spec: ModelSpec, artifact: str, ort_level: str, b: Batching, threads: int = 0,
                  warm: bool = True, runtime_backend: str = "onnxruntime") -> dict[str, Any]:
    """The Python entry's config; ``runtime_backend`` and ``ort_level`` (for OpenVINO: its precision hint) are the
    (backend, mode) the model opens its artifact on (runtime.loader.open_mode), as verify judged it."""
    inputs, outputs = python_inputs(spec)
    cfg = {**_base(name, spec, inputs, outputs, b, "KIND_CPU"), "backend": "python",
           "parameters": parameters({"artifact": artifact, "runtime_backend": runtime_backend, "mode": ort_level,
                                     "ort_opt_level": ort_level if runtime_backend == "onnxruntime" else "",
                                     "threads": int(threads)})}
    if warm:
        n = inputs[0].name
        cfg["model_warmup"] = [{"name": "warmup_one_item", "batch_size": 1 if batched(spec) else 0, "inputs": [
            {"key": n, "value": {"data_type": Enum("TYPE_STRING"), "dims": [1], "input_data_file": n}}]}]
    return cfg


def python_warmup_bytes(spec: ModelSpec) -> tuple[str, bytes]:
    """(file name, content) of the Python model's warm-up input: one sentence or one PNG, serialised as BYTES."""
    inputs, _ = python_inputs(spec)
    item = WARMUP_SENTENCE.encode() if inputs[0].name == TEXT_INPUT else warmup_image(spec)
    return inputs[0].name, serialize_bytes([item])


# ---- the streaming decoder entry ------------------------------------------------------------------------------
def generation_batch(spec: ModelSpec) -> int:
    """Requests one execute may take together (left-padded into one batch): the decoder's batch max (its spec)."""
    r = spec.dynamic.get(BATCH)
    return int(r.max) if r is not None and r.max else 1


def generation_config(name: str, spec: ModelSpec, artifact: str, ort_level: str, b: Batching, threads: int = 0,
                      default_new_tokens: int = DEFAULT_NEW_TOKENS, warm: bool = True) -> dict[str, Any]:
    """A decoder on the thin runtime's TextGenerator in the Python backend, decoupled (``model_transaction_policy``):
    one response per token. Requests that wait together are generated as one left-padded batch (dynamic batching up
    to the spec's batch max), each row streamed to its own client and ended on its own (stop token or its limit).
    Warm-up (``warm``) is one short generation in ``initialize``: Triton's ``model_warmup`` sends no stream."""
    bmax = generation_batch(spec)
    cfg = {"name": name, "backend": "python", "max_batch_size": bmax,
           "model_transaction_policy": {"decoupled": True},
           "input": [{"name": PROMPT_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]},
                     {"name": MAX_NEW_INPUT, "data_type": Enum("TYPE_INT32"), "dims": [1], "optional": True}],
           "output": [{"name": TOKEN_OUTPUT, "data_type": Enum("TYPE_INT64"), "dims": [1]},
                      {"name": PIECE_OUTPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
           "dynamic_batching": {"max_queue_delay_microseconds": int(b.queue_delay_us)} if bmax > 1 else None,
           "instance_group": [{"count": int(b.instances), "kind": Enum("KIND_CPU")}],
           "parameters": parameters({"artifact": artifact, "ort_opt_level": ort_level, "threads": int(threads),
                                     "default_new_tokens": int(default_new_tokens), "warmup": int(warm)})}
    return cfg
