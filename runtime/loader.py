"""Open any model file with the right backend, and read the model spec that travels with it.

    from runtime.loader import open_runner
    with open_runner("artifacts/vit/fp32.sim.onnx") as r:             # ONNX Runtime
        ...
    with open_runner("artifacts/vit/fp16.trt10.engine") as r:          # TensorRT (lazily imported)
        ...

The spec (``zoo.spec.ModelSpec.to_dict()`` as JSON) is read here as a plain dict, without zoo: from the
ONNX metadata key ``edgeattn.spec`` (the backend hands its metadata over) or from ``spec.json`` beside the file.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from runtime.base import DimBounds, Runner
from runtime.errors import BackendError, ModelLoadError

log = logging.getLogger("edgeattn.runtime.loader")

SPEC_METADATA_KEY = "edgeattn.spec"
SPEC_FILE = "spec.json"
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
_ONNX_SUFFIXES = (".onnx",)
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def precision_of(path: str | Path, default: str | None = "fp32") -> str | None:
    """The precision the pipeline's file naming states: fp32(.sim).onnx, fp16.onnx, int8.qdq.onnx, int8.cpu.onnx,
    ``<precision>.<flavour>.engine``; another name with 'qdq' in it is int8; anything else is ``default``. The one
    place verify, bench, engines and the ONNX Runtime EP options read it from."""
    import re

    name = Path(path).name.lower()
    m = re.match(r"(fp32|fp16|bf16|int8|fp8)\b", name)
    if m:
        return m.group(1)
    return "int8" if "qdq" in name else default


# ---- spec ---------------------------------------------------------------------------------------------
def parse_spec(text: str, source: str) -> dict[str, Any]:
    """JSON text -> spec dict; ModelLoadError naming ``source`` when it is not a spec."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"spec in {source}: not valid JSON ({e}); expected ModelSpec.to_json() output") from e
    if not isinstance(spec, dict) or not {"inputs", "outputs", "dynamic"} <= set(spec):
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise ModelLoadError(f"spec in {source}: got keys {got}, expected at least inputs, outputs, dynamic")
    return spec


def read_spec(model_path: str | Path, metadata: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The model's spec: ``metadata[edgeattn.spec]`` first, else ``spec.json`` beside the file, else None."""
    model_path = Path(model_path)
    if metadata and SPEC_METADATA_KEY in metadata:
        return parse_spec(metadata[SPEC_METADATA_KEY], f"'{model_path}' metadata '{SPEC_METADATA_KEY}'")
    beside = model_path.parent / SPEC_FILE
    if beside.is_file():
        return parse_spec(beside.read_text(encoding="utf-8"), f"'{beside}'")
    log.info("model '%s': no spec in its metadata nor a %s beside it; dynamic dims are unbounded",
             model_path, SPEC_FILE)
    return None


def bounds_from_spec(spec: dict[str, Any] | None) -> dict[str, DimBounds]:
    """``spec['dynamic']`` ({dim: {min, opt, max}}) -> {dim: DimBounds(min, max)}."""
    if not spec:
        return {}
    return {name: DimBounds(int(r["min"]), int(r["max"])) for name, r in spec.get("dynamic", {}).items()}


def spec_dim_names(spec: dict[str, Any] | None, tensor: str, which: str = "inputs") -> tuple[int | str, ...] | None:
    """Shape of ``tensor`` as the spec declares it (str entries are dynamic dim names), or None."""
    for t in (spec or {}).get(which, []):
        if t.get("name") == tensor:
            return tuple(t["shape"])
    return None


def name_dims(tensor: str, graph_shape: list, spec: dict[str, Any] | None, which: str = "inputs") -> tuple[int | str, ...]:
    """A graph shape (ints, dim-name strings, None/-1 for unnamed dynamic) -> IOInfo shape.

    Unnamed or differently named dynamic dims take the spec's name for that axis, so the spec's bounds apply;
    dims neither the graph nor the spec names become ``<tensor>_dim<axis>`` (unbounded)."""
    declared = spec_dim_names(spec, tensor, which)
    if declared is not None and len(declared) != len(graph_shape):
        declared = None  # the graph and the spec disagree on rank: trust the graph
    out: list[int | str] = []
    for axis, d in enumerate(graph_shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif declared is not None and isinstance(declared[axis], str):
            out.append(declared[axis])
        elif isinstance(d, str) and d:
            out.append(d)
        else:
            out.append(f"{tensor}_dim{axis}")
    return tuple(out)


# ---- opening --------------------------------------------------------------------------------------------
def check_model_file(path: str | Path, what: str = "an ONNX model") -> Path:
    """Path -> Path, or ModelLoadError when it does not exist / is empty."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model '{p}': no such file; expected {what}")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model '{p}': file is empty (0 bytes); expected {what}")
    return p


def _open_engine(path: Path, **kw: Any) -> Runner:
    try:
        from runtime.tensorrt_backend import TensorRTRunner
    except ImportError as e:
        raise BackendError(f"model '{path}': TensorRT engines need runtime.tensorrt_backend and the tensorrt package "
                           f"(import failed: {e}); run the .onnx with backend='onnxruntime' instead") from e
    return TensorRTRunner(path, **kw)


# ONNX Runtime GPU modes: the execution providers each asks for, first = the one that must run it
ORT_GPU_MODES = {"cuda-ep": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "tensorrt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def open_mode(path: str | Path, backend: str, mode: str, threads: int | None = None) -> Runner:
    """The one (backend, mode) -> Runner mapping that verify and bench share, so their rows mean the same thing.

    - ``onnxruntime``: ``mode`` is a CPU optimisation level (``all``, ``extended``, ``basic``, ``disable``) on the
      CPU provider, on every machine; or a GPU mode (``cuda-ep``, ``tensorrt-ep``: that provider first, at ``all``).
    - ``openvino``: ``mode`` is the precision hint (``f32``, ``bf16``, ``f16``) on its CPU plugin.
    - ``tensorrt``: an engine (``mode`` is informational: the flavour is in the engine's manifest)."""
    if backend == "onnxruntime":
        if mode in ORT_GPU_MODES:
            return open_runner(path, "onnxruntime", providers=ORT_GPU_MODES[mode], threads=threads, opt_level="all")
        return open_runner(path, "onnxruntime", providers=["CPUExecutionProvider"], threads=threads,
                           opt_level=mode or "all")
    if backend == "openvino":
        return open_runner(path, "openvino", precision_hint=mode or "f32", threads=threads)
    if backend == "tensorrt":
        return open_runner(path, "tensorrt")
    raise BackendError(f"backend '{backend}': unknown; expected onnxruntime, openvino or tensorrt")


def open_runner(path: str | Path, backend: str = "auto", **kw: Any) -> Runner:
    """Open ``path`` on ``backend``: .onnx -> ONNX Runtime (auto) or OpenVINO; .engine/.plan -> TensorRT.

    ``kw`` goes to the runner's constructor (e.g. ``providers``, ``threads``, ``precision_hint``)."""
    p = Path(path)
    if backend not in BACKENDS:
        raise BackendError(f"backend '{backend}': unknown; expected one of {list(BACKENDS)}")
    suffix = p.suffix.lower()
    if suffix in _ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise BackendError(f"model '{p}': a TensorRT engine runs only on backend 'tensorrt', got '{backend}'")
        return _open_engine(p, **kw)
    if suffix in _ONNX_SUFFIXES:
        if backend == "tensorrt":
            raise BackendError(f"model '{p}': backend 'tensorrt' needs a built .engine file, got an .onnx "
                               "(build one with optimize, or use backend 'onnxruntime')")
        if backend == "openvino":
            from runtime.openvino_backend import OpenVINORunner

            return OpenVINORunner(p, **kw)
        from runtime.ort_backend import OrtRunner

        return OrtRunner(p, **kw)
    raise ModelLoadError(f"model '{p}': unknown extension '{p.suffix}'; expected one of "
                         f"{list(_ONNX_SUFFIXES + _ENGINE_SUFFIXES)}")
