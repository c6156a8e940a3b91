"""TensorRT / TensorRT-RTX runner: the Runner contract over a serialized engine.

    with TensorRTRunner("artifacts/vit/fp16.rtx.engine") as r:
        out = r.infer({"pixels": x})       # numpy in, numpy out, like every other Runner

Works with ``tensorrt`` 10.x/11.x and ``tensorrt_rtx`` (same runtime API), picked from the engine's manifest.
What happens, in order:

1. the manifest check (runtime/engine_manifest.check_engine): flavour, exact version, sha256 of the bytes, GPU /
   compute capability. It runs on the bytes read once from disk, before anything reaches the deserializer, and
   raises EngineMismatchError with the rebuild command;
2. no usable GPU -> BackendError("no NVIDIA GPU/CUDA driver: ...") (never a crash);
3. RTX only: ``runtime.get_engine_validity`` (no deserialisation) -> EngineMismatchError when INVALID;
4. ``trt.Runtime(logger).deserialize_cuda_engine`` (runtime and logger kept alive for the engine's lifetime);
5. I/O by tensor name; InputContract bounds from ``engine.get_tensor_profile_shape`` and dim names from the spec;
6. per thread (threading.local): one execution context, one non-blocking CUDA stream, device buffers
   (cudaMalloc) and pinned host buffers (cudaMallocHost), grown when a bigger shape arrives;
7. per call: profile selection (``set_optimization_profile_async`` when the engine has several), ``set_input_shape``,
   ``infer_shapes() == []``, ``set_tensor_address`` for every I/O tensor, H2D ``cudaMemcpyAsync``,
   ``execute_async_v3(stream)``, D2H, ``cudaStreamSynchronize``; every False/None/CUDA error, and the RuntimeError
   that ``set_optimization_profile_async`` / ``infer_shapes`` raise on failure, becomes BackendError;
8. optional CUDA graphs: tensorrt 10/11 -> after an uncaptured warm-up run at a new shape, capture
   ``execute_async_v3`` into a graph and replay it while the shape stays; recapture on shape change; a failed
   capture (False, an exception or a CUDA error) ends the capture, frees any graph, clears the thread's last CUDA
   error (``cudaGetLastError``, as trtexec does) and falls back to plain execution for that shape.
   tensorrt_rtx -> its own ``IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE`` (RTX JIT-specialises
   kernels, so it captures itself); whether it can is asked per shape with ``is_stream_capturable(stream)`` and
   counted in ``rtx_capture`` (``capturable`` / ``not_capturable``): the only evidence RTX gives;
9. optional RTX runtime cache (JIT-compiled kernels) loaded at start and saved by ``close()``; RTX's
   ``dynamic_shapes_kernel_specialization_strategy`` is left at its default (LAZY: generic kernels until the
   shape-specialised ones finish compiling in the background) unless ``rtx_specialization`` says "eager" (what
   timing wants: the specialised kernels are compiled before the first call returns) or "none";
   ``rtx_settings`` records what was set;
10. optional GPU-side timing (``timing=True``): the inputs are staged into pinned memory first, then four CUDA
   events per thread are recorded on its stream around the H2D copies, the execution (plain or graph launch) and
   the D2H copies; after the call's synchronise, ``last_timing`` holds ``h2d_ms`` (the transfers only),
   ``compute_ms`` and ``d2h_ms`` (``cudaEventElapsedTime``) of this thread's last call. ``compute_ms`` of one
   synchronised call INCLUDES the launch: the GPU idles while ``execute_async_v3`` enqueues. GPU compute alone, as
   trtexec's "GPU Compute Time", comes from :meth:`TensorRTRunner.compute_burst_ms` (several executions enqueued
   back to back, so each launch overlaps the previous execution).

Nothing here imports torch or onnx; tensorrt/tensorrt_rtx/cuda bindings are imported inside functions.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from runtime import engine_manifest as em
from runtime.base import DimBounds, InputContract, IOInfo, Runner
from runtime.errors import BackendError, EngineMismatchError, InputError, ModelLoadError
from runtime.modelspec import value_ranges_from_spec

log = logging.getLogger("edgeattn.runtime.tensorrt")
_ALIGN = 256
RTX_SPECIALIZATION = ("LAZY", "EAGER", "NONE")  # IRuntimeConfig.dynamic_shapes_kernel_specialization_strategy

# ---- one logger per TensorRT module (TensorRT warns when a process uses several) ---------------
_LOGGERS: dict[str, Any] = {}
_LOGGER_LOCK = threading.Lock()


def tensorrt_logger(trt):
    """A ``trt.ILogger`` that forwards to python logging and keeps recent errors/warnings for error messages."""
    key = trt.__name__
    with _LOGGER_LOCK:
        if key in _LOGGERS:
            return _LOGGERS[key]

        class _Capture(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []
                self.lock = threading.Lock()

            def log(self, severity, msg):  # noqa: A003 - TensorRT's method name
                sev, msg = int(severity), str(msg)
                if sev <= int(trt.ILogger.Severity.ERROR):
                    log.error("[%s] %s", key, msg)
                    with self.lock:
                        self.errors.append(msg)
                        del self.errors[:-50]
                elif sev == int(trt.ILogger.Severity.WARNING):
                    log.warning("[%s] %s", key, msg)
                    with self.lock:
                        if msg not in self.warnings:
                            self.warnings.append(msg)
                        del self.warnings[:-50]
                elif sev == int(trt.ILogger.Severity.INFO):
                    log.debug("[%s] %s", key, msg)

            def take_errors(self) -> list[str]:
                with self.lock:
                    out, self.errors = self.errors, []
                return out

            def take_warnings(self) -> list[str]:
                with self.lock:
                    out, self.warnings = self.warnings, []
                return out

        _LOGGERS[key] = _Capture()
        return _LOGGERS[key]


# ---- checked CUDA calls ---------------------------------------------------------------------------
class CudaCalls:
    """cuda-python calls return ``(err, *values)``; turn a non-success ``err`` into BackendError."""

    def __init__(self, cudart) -> None:
        self.rt = cudart
        self.success = cudart.cudaError_t.cudaSuccess

    def __call__(self, what: str, result):
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        if err != self.success:
            raise BackendError(f"CUDA {what} failed: {em.cuda_error_text(self.rt, err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def quiet(self, what: str, result) -> None:
        """For clean-up paths: log instead of raising."""
        try:
            self(what, result)
        except BackendError as e:
            log.warning("%s", e)


def _stream_handle(stream) -> int:
    """The integer handle TensorRT wants (cuda-python 13 prefers get_cuda_native_handle; 12.x: int(stream))."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle  # type: ignore[import-not-found]

        return int(get_cuda_native_handle(stream))
    except Exception:  # noqa: BLE001 - older cuda-python, or a stand-in stream object
        return int(stream)


def _enum_name(value) -> str:
    """'EAGER' for ``DynamicShapesKernelSpecializationStrategy.EAGER`` (pybind11 and Python enums alike)."""
    return str(getattr(value, "name", value)).split(".")[-1]


def round_up(n: int) -> int:
    return max(_ALIGN, (int(n) + _ALIGN - 1) // _ALIGN * _ALIGN)


class DeviceBuffer:
    __slots__ = ("ptr", "capacity")

    def __init__(self, ptr: int, capacity: int) -> None:
        self.ptr, self.capacity = ptr, capacity


class _ThreadState:
    """Everything one thread owns: its execution context, stream, buffers and CUDA graph."""

    def __init__(self, context, stream, handle: int, thread: threading.Thread) -> None:
        self.context = context
        self.stream = stream
        self.handle = handle
        self.thread = thread  # the owner; its state is freed once it has exited
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, DeviceBuffer] = {}
        self.shapes: tuple | None = None  # input shapes the context is set to
        self.out_shapes: dict[str, tuple[int, ...]] = {}
        self.profile = 0
        self.graph = None
        self.graph_exec = None
        self.graph_failed: set[tuple] = set()
        self.events: list = []  # timing=True: 4 CUDA events (before H2D, after H2D, after execute, after D2H)
        self.last_timing: dict[str, float] | None = None


class TensorRTRunner(Runner):
    """Runs a TensorRT (10/11) or TensorRT-RTX engine. See the module docstring for the exact sequence.

    ``flavor``: 'auto' (the manifest's flavour, else tensorrt, else tensorrt_rtx), 'trt', 'trt10', 'trt11', 'rtx'.
    ``use_cuda_graph``: replay a captured CUDA graph while input shapes stay the same.
    ``check_manifest``: refuse engines whose manifest is missing or does not match (on by default; turning it off
    lets a foreign engine through, at your own risk). ``runtime_cache``: RTX JIT cache file (optional).
    One runner may be shared by threads: each thread gets its own execution context, stream and buffers (freed
    when a new thread arrives after the owner exited, or by ``close()``). Call ``close()`` (or use ``with``) after
    every thread is done.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, flavor: str = "auto", use_cuda_graph: bool = False,
                 check_manifest: bool = True, runtime_cache: str | Path | None = None, device: int = 0,
                 timing: bool = False, rtx_specialization: str | None = None) -> None:
        super().__init__()
        self.path = Path(engine_path)
        self.use_cuda_graph = bool(use_cuda_graph)
        self.timing = bool(timing)
        if rtx_specialization is not None and rtx_specialization.upper() not in RTX_SPECIALIZATION:
            raise BackendError(f"rtx_specialization '{rtx_specialization}': expected one of "
                               f"{[v.lower() for v in RTX_SPECIALIZATION]} or None (TensorRT-RTX's default)")
        self.rtx_specialization = rtx_specialization
        self.rtx_settings: dict[str, str] | None = None  # RTX: the runtime-config settings in force
        self.device = int(device)
        self.runtime_cache_path = Path(runtime_cache) if runtime_cache else None
        self.graph_stats = {"captures": 0, "launches": 0, "fallbacks": 0}
        # RTX with CUDA graphs: per shape set, what is_stream_capturable answered (RTX's only evidence of capture)
        self.rtx_capture = {"capturable": 0, "not_capturable": 0}
        self.manifest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._closed = False
        self._engine = self._runtime = self._runtime_config = self._runtime_cache = None
        self._logger = self._cuda = None
        self._outputs: list[IOInfo] = []

        if not self.path.is_file():
            raise ModelLoadError(f"engine '{self.path}': file not found")
        pre = em.read_manifest(self.path)  # corrupt manifest -> EngineMismatchError
        trt, self.flavor, self.version = em.import_tensorrt(flavor, prefer=(pre or {}).get("flavor"))
        self._trt = trt
        gpu, why = em.probe_gpu(self.device)
        data = self.path.read_bytes()  # read ONCE: the bytes checked are the bytes deserialised
        if check_manifest:
            self.manifest = em.check_engine(self.path, self.flavor, self.version, gpu=gpu, data=data)
        else:
            self.manifest = pre
        if gpu is None:
            raise BackendError(f"no NVIDIA GPU/CUDA driver: {why}; engine '{self.path}' needs one to run "
                               f"({trt.__name__} {self.version})")
        self.gpu = gpu
        self._cuda = CudaCalls(em.import_cudart())
        self._cuda("cudaSetDevice", self._cuda.rt.cudaSetDevice(self.device))
        self._logger = tensorrt_logger(trt)
        self._logger.take_errors()
        self._runtime = trt.Runtime(self._logger)
        if not self._runtime:
            raise BackendError(f"trt.Runtime failed: {self._tensorrt_errors()}")
        self._check_validity(data)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelLoadError(f"engine '{self.path}': deserialize_cuda_engine returned None ({trt.__name__} "
                                 f"{self.version}): {self._tensorrt_errors()}")
        self._engine = engine
        del data
        self._setup_io()
        if self.flavor == "rtx":
            self._setup_rtx_runtime_config()

    # ---- loading ------------------------------------------------------------------------------
    def _tensorrt_errors(self) -> str:
        errs = self._logger.take_errors() if self._logger is not None else []
        return "; ".join(errs[-5:]) or "TensorRT logged no error"

    def _check_validity(self, data: bytes) -> None:
        """TensorRT-RTX can say whether an engine fits this GPU/driver without deserialising it."""
        get = getattr(self._runtime, "get_engine_validity", None)
        if get is None:
            return
        try:
            validity, diagnostics = get(data)
        except Exception as e:  # noqa: BLE001 - informative only
            log.debug("get_engine_validity failed: %s", e)
            return
        trt = self._trt
        if validity == trt.EngineValidity.INVALID:
            bits = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
            raise EngineMismatchError(f"engine '{self.path}': {trt.__name__} {self.version} reports it INVALID on "
                                      f"'{self.gpu['name']}' (sm {self.gpu['compute_capability']}): "
                                      f"{', '.join(bits) or int(diagnostics)}; {em.rebuild_hint(self.path, self.manifest)}")
        if validity == trt.EngineValidity.SUBOPTIMAL:
            log.warning("engine %s is SUBOPTIMAL on this GPU (diagnostics %s)", self.path, int(diagnostics))

    def _setup_io(self) -> None:
        trt, engine = self._trt, self._engine
        spec = (self.manifest or {}).get("spec") or {}
        spec_shapes = {t["name"]: t["shape"] for t in spec.get("inputs", []) + spec.get("outputs", [])}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        self._dtypes: dict[str, np.dtype] = {}
        for n in names:
            if engine.is_shape_inference_io(n):
                raise BackendError(f"engine '{self.path}': tensor '{n}' is a shape tensor; not supported by this runner")
            try:
                self._dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            except Exception as e:  # noqa: BLE001 - e.g. fp8/int4 I/O
                raise BackendError(f"engine '{self.path}': tensor '{n}' has dtype {engine.get_tensor_dtype(n)} "
                                   f"with no numpy equivalent ({e})") from e
        n_prof = max(1, engine.num_optimization_profiles)
        # profile k -> input -> (min, opt, max)
        self._profiles = [{n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, k))
                           for n in self._input_names} for k in range(n_prof)]
        infos, bounds = [], {}
        for n in self._input_names:
            shape = tuple(int(d) for d in engine.get_tensor_shape(n))
            named = self._named_shape(n, shape, spec_shapes.get(n))
            infos.append(IOInfo(n, self._dtypes[n].name, named))
            for axis, d in enumerate(named):
                if isinstance(d, str):
                    lo = min(p[n][0][axis] for p in self._profiles)
                    hi = max(p[n][2][axis] for p in self._profiles)
                    b = bounds.get(d)
                    bounds[d] = DimBounds(lo, hi) if b is None else DimBounds(max(b.min, lo), min(b.max, hi))
        self._contract = InputContract(infos, bounds, value_ranges_from_spec(spec))
        self._outputs = [IOInfo(n, self._dtypes[n].name,
                                self._named_shape(n, tuple(int(d) for d in engine.get_tensor_shape(n)),
                                                  spec_shapes.get(n)))
                         for n in self._output_names]

    @staticmethod
    def _named_shape(name: str, shape: tuple[int, ...], spec_shape) -> tuple[int | str, ...]:
        out: list[int | str] = []
        for axis, d in enumerate(shape):
            if d >= 0:
                out.append(d)
            elif spec_shape is not None and axis < len(spec_shape) and isinstance(spec_shape[axis], str):
                out.append(spec_shape[axis])
            else:
                out.append(f"{name}_dim{axis}")
        return tuple(out)

    def _setup_rtx_runtime_config(self) -> None:
        trt = self._trt
        rc = self._engine.create_runtime_config()
        if rc is None:
            raise BackendError(f"create_runtime_config failed: {self._tensorrt_errors()}")
        if self.use_cuda_graph:
            rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if self.rtx_specialization is not None:
            rc.dynamic_shapes_kernel_specialization_strategy = getattr(
                trt.DynamicShapesKernelSpecializationStrategy, self.rtx_specialization.upper())
        self.rtx_settings = {
            "cuda_graph_strategy": _enum_name(rc.cuda_graph_strategy),
            "kernel_specialization": _enum_name(rc.dynamic_shapes_kernel_specialization_strategy)}
        if self.runtime_cache_path is not None:
            cache = rc.create_runtime_cache()
            if cache is None:
                raise BackendError(f"create_runtime_cache failed: {self._tensorrt_errors()}")
            if self.runtime_cache_path.is_file():
                blob = self.runtime_cache_path.read_bytes()
                if not cache.deserialize(blob):  # False on RTX version / GPU / OS / driver mismatch
                    log.warning("runtime cache %s does not match this TensorRT-RTX/GPU/driver; starting empty",
                                self.runtime_cache_path)
            if not rc.set_runtime_cache(cache):
                raise BackendError(f"set_runtime_cache failed: {self._tensorrt_errors()}")
            self._runtime_cache = cache
        self._runtime_config = rc

    # ---- Runner contract ------------------------------------------------------------------------
    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    def _thread_state(self) -> _ThreadState:
        st = getattr(self._local, "state", None)
        if st is not None and st.context is not None:
            return st
        with self._lock:
            if self._closed:
                raise BackendError(f"runner for '{self.path}' is closed")
        cuda = self._cuda
        cuda("cudaSetDevice", cuda.rt.cudaSetDevice(self.device))  # the current device is per thread
        if self._runtime_config is not None:
            ctx = self._engine.create_execution_context(self._runtime_config)  # RTX JIT-compiles here
        else:
            ctx = self._engine.create_execution_context()
        if ctx is None:
            raise BackendError(f"create_execution_context returned None: {self._tensorrt_errors()}")
        stream = cuda("cudaStreamCreateWithFlags", cuda.rt.cudaStreamCreateWithFlags(cuda.rt.cudaStreamNonBlocking))
        st = _ThreadState(ctx, stream, _stream_handle(stream), threading.current_thread())
        if self.timing:  # default flags: timing enabled (cudaEventDisableTiming would make elapsed time an error)
            st.events = [cuda("cudaEventCreate", cuda.rt.cudaEventCreate()) for _ in range(4)]
        with self._lock:
            dead = [s for s in self._states if not s.thread.is_alive()]
            self._states = [s for s in self._states if s.thread.is_alive()] + [st]
        for s in dead:  # threads that used this runner and exited: their context and buffers are not needed
            self._free_state(s)
        self._local.state = st
        return st

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise BackendError(f"runner for '{self.path}' is closed")
        st = self._thread_state()
        cuda, rt = self._cuda, self._cuda.rt
        shapes = tuple(tuple(int(d) for d in feed[n].shape) for n in self._input_names)
        if shapes != st.shapes:
            self._set_shapes(st, shapes)
        ev = st.events
        self._stage(st, feed)  # host-side copies into pinned memory: before the first event, so h2d_ms excludes them
        if ev:
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[0], st.stream))
        self._upload(st, feed)
        if ev:
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[1], st.stream))
        self._execute(st, shapes)
        if ev:
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[2], st.stream))
        for n in self._output_names:
            nbytes = int(np.prod(st.out_shapes[n], dtype=np.int64)) * self._dtypes[n].itemsize
            cuda(f"cudaMemcpyAsync D2H '{n}'", rt.cudaMemcpyAsync(st.host[n].ptr, st.device[n].ptr, nbytes,
                                                                  rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, st.stream))
        if ev:
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[3], st.stream))
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(st.stream))
        if ev:
            st.last_timing = {k: float(cuda("cudaEventElapsedTime", rt.cudaEventElapsedTime(ev[i], ev[i + 1])))
                              for i, k in enumerate(("h2d_ms", "compute_ms", "d2h_ms"))}
        return {n: self._host_view(st.host[n], st.out_shapes[n], self._dtypes[n]).copy() for n in self._output_names}

    def _stage(self, st: _ThreadState, feed: dict[str, np.ndarray]) -> None:
        for n in self._input_names:
            arr = feed[n]
            np.copyto(self._host_view(st.host[n], arr.shape, self._dtypes[n]), arr, casting="no")

    def _upload(self, st: _ThreadState, feed: dict[str, np.ndarray]) -> None:
        rt = self._cuda.rt
        for n in self._input_names:
            self._cuda(f"cudaMemcpyAsync H2D '{n}'", rt.cudaMemcpyAsync(
                st.device[n].ptr, st.host[n].ptr, feed[n].nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                st.stream))

    def compute_burst_ms(self, feed: dict[str, np.ndarray], executions: int = 10) -> float:
        """GPU compute per execution with ``executions`` executions (or graph launches) enqueued back to back after
        one that is not counted, all on this thread's stream: each launch overlaps the execution before it, so
        unlike ``last_timing['compute_ms']`` the figure leaves out the launch whenever the GPU work takes longer than
        enqueueing it (what trtexec reports as GPU Compute Time). Needs ``timing=True``; inputs are checked."""
        if not self.timing:
            raise BackendError(f"compute_burst_ms: runner for '{self.path}' was opened with timing=False; expected "
                               "timing=True (CUDA events)")
        if int(executions) < 1:
            raise BackendError(f"compute_burst_ms: got executions={executions}, expected >= 1")
        feed = self.contract.check(feed)
        st = self._thread_state()
        cuda, rt = self._cuda, self._cuda.rt
        shapes = tuple(tuple(int(d) for d in feed[n].shape) for n in self._input_names)
        if shapes != st.shapes:
            self._set_shapes(st, shapes)
        self._stage(st, feed)
        self._upload(st, feed)
        self._execute(st, shapes)  # the first one: its launch is not overlapped, so it precedes the start event
        start, end = st.events[1], st.events[2]
        cuda("cudaEventRecord", rt.cudaEventRecord(start, st.stream))
        for _ in range(int(executions)):
            self._execute(st, shapes)
        cuda("cudaEventRecord", rt.cudaEventRecord(end, st.stream))
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(st.stream))
        return float(cuda("cudaEventElapsedTime", rt.cudaEventElapsedTime(start, end))) / int(executions)

    @property
    def last_timing(self) -> dict[str, float] | None:
        """GPU-side times of this thread's last call (``timing=True``): h2d_ms, compute_ms, d2h_ms; else None."""
        st = getattr(self._local, "state", None)
        return None if st is None else st.last_timing

    # ---- per-shape setup ------------------------------------------------------------------------
    def _pick_profile(self, shapes: tuple) -> int:
        for k, prof in enumerate(self._profiles):
            if all(all(lo <= s <= hi for s, lo, hi in zip(shape, prof[n][0], prof[n][2]))
                   for n, shape in zip(self._input_names, shapes)):
                return k
        desc = ", ".join(f"{n} {shape}" for n, shape in zip(self._input_names, shapes))
        ranges = "; ".join(", ".join(f"{n} {p[n][0]}..{p[n][2]}" for n in self._input_names) for p in self._profiles)
        raise InputError(f"input shapes {desc}: outside every optimisation profile of the engine ({ranges})")

    def _set_shapes(self, st: _ThreadState, shapes: tuple) -> None:
        ctx, cuda = st.context, self._cuda
        self._drop_graph(st)
        st.shapes = None
        k = self._pick_profile(shapes)
        if len(self._profiles) > 1 and k != ctx.active_optimization_profile:
            try:  # pyCore.cpp raises RuntimeError on failure (PY_ASSERT_RUNTIME_ERROR); RTX documents a bool
                ok = ctx.set_optimization_profile_async(k, st.handle)
            except RuntimeError as e:
                raise BackendError(f"set_optimization_profile_async({k}) failed for input shapes {shapes}: {e} "
                                   f"({self._tensorrt_errors()}); expected profile {k} of "
                                   f"{len(self._profiles)} to be selectable on this context") from e
            if not ok:
                raise BackendError(f"set_optimization_profile_async({k}) returned False: {self._tensorrt_errors()}")
            cuda("cudaStreamSynchronize", cuda.rt.cudaStreamSynchronize(st.stream))
        st.profile = k
        for n, shape in zip(self._input_names, shapes):
            if not ctx.set_input_shape(n, shape):
                lo, _, hi = self._profiles[k][n]
                raise InputError(f"input '{n}': shape {shape} rejected by the engine (profile {k}: {lo}..{hi}): "
                                 f"{self._tensorrt_errors()}")
        try:  # a list of under-specified tensors; RuntimeError ("infer_shapes error code") on any other failure
            missing = ctx.infer_shapes()
        except RuntimeError as e:
            raise BackendError(f"TensorRT shape inference failed for input shapes {shapes}: {e} "
                               f"({self._tensorrt_errors()})") from e
        if missing:  # (all_binding_shapes_specified does not work with the name-based API: infer_shapes covers it)
            raise BackendError(f"TensorRT could not infer shapes; tensors without a shape: {list(missing)}")
        out_shapes = {}
        for n in self._output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise BackendError(f"output '{n}' has a data-dependent shape {shape}; this runner needs shapes "
                                   "known before execution (IOutputAllocator not implemented)")
            out_shapes[n] = shape
        for n, shape in list(zip(self._input_names, shapes)) + list(out_shapes.items()):
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[n].itemsize
            self._ensure(st.device, n, nbytes, pinned=False)
            self._ensure(st.host, n, nbytes, pinned=True)
        for n in self._input_names + self._output_names:  # every I/O tensor needs an address
            if not ctx.set_tensor_address(n, st.device[n].ptr):
                raise BackendError(f"set_tensor_address('{n}') returned False: {self._tensorrt_errors()}")
        if self.use_cuda_graph and self.flavor == "rtx":  # RTX captures inside; the context says whether it can
            key = "capturable" if ctx.is_stream_capturable(st.handle) else "not_capturable"
            with self._lock:
                self.rtx_capture[key] += 1
        st.out_shapes = out_shapes
        st.shapes = shapes

    def _ensure(self, pool: dict[str, DeviceBuffer], name: str, nbytes: int, pinned: bool) -> None:
        """Keep one buffer per tensor; reallocate only when a shape needs more bytes than it has."""
        buf = pool.get(name)
        if buf is not None and buf.capacity >= nbytes:
            return
        cuda, rt = self._cuda, self._cuda.rt
        if buf is not None:
            del pool[name]
            if pinned:
                cuda("cudaFreeHost", rt.cudaFreeHost(buf.ptr))
            else:
                cuda("cudaFree", rt.cudaFree(buf.ptr))
        cap = round_up(nbytes)
        ptr = cuda("cudaMallocHost" if pinned else "cudaMalloc",
                   rt.cudaMallocHost(cap) if pinned else rt.cudaMalloc(cap))
        pool[name] = DeviceBuffer(int(ptr), cap)

    @staticmethod
    def _host_view(buf: DeviceBuffer, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        raw = (ctypes.c_ubyte * (count * dtype.itemsize)).from_address(buf.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    # ---- execution, CUDA graphs ----------------------------------------------------------------
    def _count(self, what: str) -> None:
        with self._lock:  # threads share one runner: no lost updates
            self.graph_stats[what] += 1

    @property
    def _manual_graphs(self) -> bool:
        return self.use_cuda_graph and self.flavor != "rtx"  # RTX captures via its runtime config

    def _execute(self, st: _ThreadState, shapes: tuple) -> None:
        cuda = self._cuda
        if self._manual_graphs and st.graph_exec is not None:
            cuda("cudaGraphLaunch", cuda.rt.cudaGraphLaunch(st.graph_exec, st.stream))
            self._count("launches")
            return
        if not st.context.execute_async_v3(st.handle):
            raise BackendError(f"execute_async_v3 returned False: {self._tensorrt_errors()}")
        if self._manual_graphs and shapes not in st.graph_failed:
            self._capture(st, shapes)  # the run above was the warm-up; its outputs are this call's result

    def _capture(self, st: _ThreadState, shapes: tuple) -> None:
        cuda, rt = self._cuda, self._cuda.rt
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(st.stream))  # warm-up finished before capture
        (err,) = rt.cudaStreamBeginCapture(st.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        if err != cuda.success:
            return self._capture_failed(st, shapes, f"cudaStreamBeginCapture: {em.cuda_error_text(rt, err)}")
        ok, raised = False, None
        try:
            ok = bool(st.context.execute_async_v3(st.handle))
        except Exception as e:  # noqa: BLE001 - the capture must be ended and its graph freed whatever happened
            raised = e
        finally:
            err, graph = rt.cudaStreamEndCapture(st.stream)  # always: a stream left capturing is unusable
        if raised is not None or not ok or err != cuda.success:
            if err == cuda.success and graph is not None:  # TensorRT failed but CUDA made a graph: never used
                cuda.quiet("cudaGraphDestroy", rt.cudaGraphDestroy(graph))
            if raised is not None:
                why = f"execute_async_v3 raised {type(raised).__name__}: {raised}"
            else:
                why = "execute_async_v3 returned False during capture" if not ok else em.cuda_error_text(rt, err)
            return self._capture_failed(st, shapes, f"{why} ({self._tensorrt_errors()})")
        err, graph_exec = rt.cudaGraphInstantiate(graph, 0)
        if err != cuda.success:
            cuda.quiet("cudaGraphDestroy", rt.cudaGraphDestroy(graph))
            return self._capture_failed(st, shapes, f"cudaGraphInstantiate: {em.cuda_error_text(rt, err)}")
        st.graph, st.graph_exec = graph, graph_exec
        self._count("captures")

    def _capture_failed(self, st: _ThreadState, shapes: tuple, why: str) -> None:
        # A failed capture leaves its error as the thread's last CUDA error; clear it as trtexec does
        # (sampleInference.cpp: endCaptureOnError + cudaGetLastError) so no later check reports it as its own.
        self._cuda.rt.cudaGetLastError()
        log.warning("CUDA graph capture failed for shapes %s (%s); running without a graph for these shapes",
                    shapes, why)
        st.graph_failed.add(shapes)
        self._count("fallbacks")

    def _drop_graph(self, st: _ThreadState) -> None:
        rt = self._cuda.rt
        if st.graph_exec is not None:
            self._cuda.quiet("cudaGraphExecDestroy", rt.cudaGraphExecDestroy(st.graph_exec))
        if st.graph is not None:
            self._cuda.quiet("cudaGraphDestroy", rt.cudaGraphDestroy(st.graph))
        st.graph = st.graph_exec = None

    # ---- clean-up -------------------------------------------------------------------------------
    def _free_state(self, st: _ThreadState) -> None:
        cuda, rt = self._cuda, self._cuda.rt
        if st.stream is not None:
            cuda.quiet("cudaStreamSynchronize", rt.cudaStreamSynchronize(st.stream))
        self._drop_graph(st)
        for buf in st.device.values():
            cuda.quiet("cudaFree", rt.cudaFree(buf.ptr))
        for buf in st.host.values():
            cuda.quiet("cudaFreeHost", rt.cudaFreeHost(buf.ptr))
        st.device.clear()
        st.host.clear()
        for e in st.events:
            cuda.quiet("cudaEventDestroy", rt.cudaEventDestroy(e))
        st.events = []
        st.context = None  # destroys the execution context before its stream
        if st.stream is not None:
            cuda.quiet("cudaStreamDestroy", rt.cudaStreamDestroy(st.stream))
            st.stream = None

    def close(self) -> None:
        """Free every thread's context, stream, device and pinned buffers; save the RTX runtime cache."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            states, self._states = self._states, []
        if self._cuda is not None:
            for st in states:
                self._free_state(st)
        if self._runtime_cache is not None and self.runtime_cache_path is not None:
            try:
                em.atomic_write_bytes(self.runtime_cache_path, bytes(memoryview(self._runtime_cache.serialize())))
            except Exception as e:  # noqa: BLE001 - a cache that cannot be saved is not fatal
                log.warning("could not save runtime cache %s: %s", self.runtime_cache_path, e)
        self._runtime_config = self._runtime_cache = None
        self._engine = None
        self._runtime = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
