"""OpenVINO backend (CPU): ``OpenVINORunner(path)`` runs the pipeline's ONNX files, Q/DQ int8 included.

    with OpenVINORunner("artifacts/vit/int8.qdq.onnx", precision_hint="bf16", threads=2) as r:
        logits = r.infer({"pixels": x})["logits"]           # (B, C, H, W) float32 -> (B, classes)

OpenVINO reads ONNX directly (its ONNX frontend ships in the wheel, no onnx package needed) and keeps the
graph's metadata in ``rt_info['framework']``, where the spec is found. Dynamic dims stay dynamic: the CPU
plugin compiles one model for every shape; when the spec gives bounds they are set on the model first
(``model.reshape`` to ``Dimension(min, max)``) so the plugin can plan for them. On a CPU with AMX/AVX-512
BF16, ``precision_hint="bf16"`` runs matmuls in bfloat16 (about 3x faster here, cosine >= 0.99 vs fp32).

A Q/DQ graph (QuantizeLinear / DequantizeLinear around MatMul) runs on OpenVINO's int8 kernels: the CPU plugin's
low-precision transformations turn each Q/DQ pair into a FakeQuantize and the MatMul into an int8 FullyConnected.
``int8.cpu.onnx`` chosen on OpenVINO says so in its metadata (runtime.cpu.CPU_BACKEND_METADATA_KEY): the runner warns
when it is opened on another CPU class than it was chosen on, as ONNX Runtime's does.

:func:`openvino_session` is the bare form for stages that run whole evaluation sets (ONNX Runtime's session call
shape, ``run(None, feed) -> [outputs]``; no spec, no input checks).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.base import InputContract, IOInfo, Runner
from runtime.cpu import check_int8_isa
from runtime.errors import BackendError, ModelLoadError
from runtime.modelspec import (SPEC_METADATA_KEY, bounds_from_spec, check_model_file, name_dims,
                               parse_spec, read_spec, value_ranges_from_spec)

log = logging.getLogger("edgeattn.runtime.openvino")

PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def available() -> bool:
    """The openvino package can be imported here (found, not imported: the check costs nothing)."""
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise BackendError("backend 'openvino': the openvino package is not installed (pip install openvino)") from e
    return openvino


def _first_line(e: Exception) -> str:
    """OpenVINO messages are multi-line C++ traces; keep the informative lines, joined."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from src")]
    return " | ".join(lines)[:500] or type(e).__name__


def _spec_from_rt_info(model, path: Path) -> dict[str, Any] | None:
    """The spec the ONNX metadata carried (``rt_info['framework']['edgeattn.spec']``), or None."""
    key = ["framework", SPEC_METADATA_KEY]
    try:
        if not model.has_rt_info(key):
            return None
        return parse_spec(model.get_rt_info(key).astype(str), f"'{path}' metadata '{SPEC_METADATA_KEY}'")
    except (RuntimeError, AttributeError, TypeError):
        return None


def _metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata_props (runtime.onnx_guard), {} for an OpenVINO IR."""
    if path.suffix.lower() != ".onnx":
        return {}
    from runtime.onnx_guard import model_metadata

    return model_metadata(path)


def _read(core, path: Path):
    try:
        return core.read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with a C++ trace
        raise ModelLoadError(
            f"model '{path}' ({path.stat().st_size} bytes): openvino cannot read it ({_first_line(e)}); "
            "expected a complete, valid ONNX model: the file may be truncated or corrupt, re-export it") from None


def _compile(core, model, path: Path, device: str, precision: str, threads: int | None):
    """The compiled model: ``precision`` (OpenVINO's name: f32, bf16, f16) as the inference hint, latency mode."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(model, device, config)
    except Exception as e:  # noqa: BLE001
        raise BackendError(f"openvino cannot compile '{path}' for {device} with {config}: {_first_line(e)}") from None


def _infer(request, path: Path, feed: dict[str, np.ndarray]):
    try:
        return request.infer(feed)
    except Exception as e:  # noqa: BLE001
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise BackendError(f"openvino failed on '{path.name}' with feed shapes {shapes}: {_first_line(e)}") from None


def _partial_dims(pshape) -> list[int | None]:
    """OpenVINO PartialShape -> [int for static dims, None for dynamic]."""
    return [d.get_length() if d.is_static else None for d in pshape]


class OpenVINORunner(Runner):
    """A model file on OpenVINO's CPU plugin. ``spec`` (dict) overrides the one in the file / beside it."""

    backend = "openvino"

    def __init__(self, path: str | Path, precision_hint: str = "f32", threads: int | None = None,
                 spec: dict[str, Any] | None = None, device: str = "CPU"):
        super().__init__()
        self.path = check_model_file(path, "an ONNX model (.onnx) or OpenVINO IR (.xml)")
        if precision_hint not in PRECISION_HINTS:
            raise BackendError(f"precision_hint '{precision_hint}': unknown; expected one of {sorted(PRECISION_HINTS)}")
        self.precision_hint = PRECISION_HINTS[precision_hint]
        self.device = device
        ov = _ov()
        self._core = ov.Core()
        model = self._read(self._core)
        self.spec: dict[str, Any] | None = spec if spec is not None else (
            _spec_from_rt_info(model, self.path) or read_spec(self.path))
        bounds = bounds_from_spec(self.spec)
        inputs = [self._io(p, "inputs") for p in model.inputs]
        self._apply_bounds(ov, model, inputs, bounds)
        self._compiled = self._compile(model, threads)
        self.isa_warning = check_int8_isa(self.path, _metadata(self.path))
        self.execution_precision = self._precision_ran()
        if self.execution_precision and self.execution_precision != self.precision_hint:
            log.warning("openvino: '%s' asked for %s, the %s plugin runs %s (this CPU has no %s support)", self.path,
                        self.precision_hint, device, self.execution_precision, self.precision_hint)
        self._request = self._compiled.create_infer_request()
        self._contract = InputContract(inputs=inputs, bounds=bounds, value_ranges=value_ranges_from_spec(self.spec))
        self._outputs = [self._io(p, "outputs") for p in model.outputs]
        self._out_ports = list(self._compiled.outputs)
        log.info("openvino %s: loaded '%s' on %s (precision hint %s)", ov.__version__, self.path, device,
                 self.precision_hint)

    # -- loading -----------------------------------------------------------------------------------------
    def _read(self, core):
        return _read(core, self.path)

    def _io(self, port, which: str) -> IOInfo:
        name = port.get_any_name()
        try:
            dtype = np.dtype(port.get_element_type().to_dtype()).name
        except (RuntimeError, TypeError) as e:
            raise ModelLoadError(f"model '{self.path}': {which[:-1]} '{name}' has element type "
                                 f"{port.get_element_type()}, which numpy cannot hold ({e})") from None
        return IOInfo(name, dtype, name_dims(name, _partial_dims(port.get_partial_shape()), self.spec, which))

    def _apply_bounds(self, ov, model, inputs: list[IOInfo], bounds) -> None:
        """Give dynamic dims the spec's [min, max] range; leave the model as it is if OpenVINO refuses."""
        new = {}
        for info in inputs:
            if not any(isinstance(d, str) and d in bounds for d in info.shape):
                continue
            dims = []
            for d in info.shape:
                if isinstance(d, int):
                    dims.append(ov.Dimension(d))
                elif d in bounds and bounds[d].max is not None:
                    dims.append(ov.Dimension(bounds[d].min, bounds[d].max))
                else:
                    dims.append(ov.Dimension())
            new[info.name] = ov.PartialShape(dims)
        if not new:
            return
        try:
            model.reshape(new)
        except Exception as e:  # noqa: BLE001
            log.warning("openvino: could not bound dynamic dims of '%s' to %s (%s); keeping them unbounded",
                        self.path, {k: str(v) for k, v in new.items()}, _first_line(e))

    def _compile(self, model, threads: int | None):
        return _compile(self._core, model, self.path, self.device, self.precision_hint, threads)

    def _precision_ran(self) -> str | None:
        """The inference precision the compiled model reports ('f32', 'bf16', 'f16'): what really runs, which is
        not the hint on a CPU without bf16 (there the plugin silently runs f32)."""
        try:
            t = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # noqa: BLE001 - older plugins / other devices may not report it
            return None
        name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
        return PRECISION_HINTS.get(name, name)

    # -- running -----------------------------------------------------------------------------------------
    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise BackendError(f"openvino runner for '{self.path}' is closed; open a new one")
        result = _infer(self._request, self.path, feed)
        # copy: the request reuses its output buffers on the next call
        return {info.name: np.array(result[port]) for info, port in zip(self._outputs, self._out_ports)}

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVINOSession:
    """A model compiled for OpenVINO's CPU plugin, called like an ONNX Runtime session: ``run(None, feed)`` returns
    the outputs in graph order (numpy copies). Dynamic dims stay unbounded; no spec, no input checks."""

    def __init__(self, path: str | Path, precision_hint: str = "f32", threads: int | None = None):
        if precision_hint not in PRECISION_HINTS:
            raise BackendError(f"precision_hint '{precision_hint}': unknown; expected one of {sorted(PRECISION_HINTS)}")
        self.path = check_model_file(path, "an ONNX model (.onnx) or OpenVINO IR (.xml)")
        core = _ov().Core()
        self._compiled = _compile(core, _read(core, self.path), self.path, "CPU", PRECISION_HINTS[precision_hint],
                                  threads)
        self._request = self._compiled.create_infer_request()
        self._ports = list(self._compiled.outputs)

    def run(self, output_names: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if output_names is not None:
            raise BackendError(f"OpenVINOSession.run: got output names {output_names!r}, expected None (all outputs)")
        result = _infer(self._request, self.path, feed)
        return [np.array(result[p]) for p in self._ports]


def openvino_session(path: str | Path, precision_hint: str = "f32", threads: int | None = None) -> OpenVINOSession:
    """:class:`OpenVINOSession` of ``path`` (the bare counterpart of runtime.ort_backend.cpu_session)."""
    return OpenVINOSession(path, precision_hint, threads)
