"""Open any model file with the right backend: ``open_runner`` (by file and backend) and ``open_mode`` (the one
(backend, mode) mapping verify and bench share). The spec helpers live in runtime.modelspec.

    from runtime.loader import open_runner
    with open_runner("artifacts/vit/fp32.sim.onnx") as r:             # ONNX Runtime
        ...
    with open_runner("artifacts/vit/fp16.trt10.engine") as r:          # TensorRT (lazily imported)
        ...

"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.base import Runner
from runtime.errors import BackendError, ModelLoadError

log = logging.getLogger("edgeattn.runtime.loader")

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
_ONNX_SUFFIXES = (".onnx",)
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


# ---- opening --------------------------------------------------------------------------------------------
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
    - ``tensorrt``: an engine (``mode`` is informational: the flavour is in the engine's manifest); TensorRT-RTX
      with EAGER kernel specialisation, so no row is checked or timed on the generic kernels LAZY (RTX's default)
      runs until the shape-specialised ones finish compiling in the background."""
    if backend == "onnxruntime":
        if mode in ORT_GPU_MODES:
            return open_runner(path, "onnxruntime", providers=ORT_GPU_MODES[mode], threads=threads, opt_level="all")
        return open_runner(path, "onnxruntime", providers=["CPUExecutionProvider"], threads=threads,
                           opt_level=mode or "all")
    if backend == "openvino":
        return open_runner(path, "openvino", precision_hint=mode or "f32", threads=threads)
    if backend == "tensorrt":
        return open_runner(path, "tensorrt", rtx_specialization="eager")
    raise BackendError(f"backend '{backend}': unknown; expected onnxruntime, openvino or tensorrt")


_ORT_ONLY_KW = ("providers", "opt_level", "session_config", "precision")


def _recorded_cpu_backend(path: Path, kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What ``auto`` means for an ONNX file: the backend an int8 CPU artifact was chosen on (its metadata,
    runtime.cpu.recorded_backend) when that is OpenVINO, it is installed and no ONNX Runtime option was asked for;
    else ONNX Runtime. Returns (backend, the runner's keyword arguments)."""
    from runtime.cpu import recorded_backend
    from runtime.onnx_guard import model_metadata

    rec = recorded_backend(model_metadata(path))
    if rec is None or rec[0] != "openvino" or any(k in kw for k in _ORT_ONLY_KW):
        return "onnxruntime", kw
    from runtime.openvino_backend import available

    if not available():
        log.warning("'%s' was chosen and verified on OpenVINO (%s), which is not installed here: running it on ONNX "
                    "Runtime instead (slower, and not the kernels it was judged on; pip install openvino)", path, rec[1])
        return "onnxruntime", kw
    log.info("'%s': opened on OpenVINO (%s), the backend it was chosen and verified on", path, rec[1])
    return "openvino", {"precision_hint": rec[1], **kw}


def open_runner(path: str | Path, backend: str = "auto", **kw: Any) -> Runner:
    """Open ``path`` on ``backend``: .onnx -> ONNX Runtime or OpenVINO (auto: OpenVINO for an int8 CPU artifact chosen
    on it, else ONNX Runtime); .engine/.plan -> TensorRT.

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
        if backend == "auto":
            backend, kw = _recorded_cpu_backend(p, kw)
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
