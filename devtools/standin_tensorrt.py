"""Stand-ins for TensorRT and cudart (cuda-python's ``cuda.bindings.runtime``), used by the tests and by gpu-check.

Why they live outside tests/: ``make gpu-check`` (verify/gpu_check.py) drives the real TensorRTRunner with a stand-in
TensorRT module on the REAL cudart (a GPU box may have no TensorRT yet, and the runner's own plumbing is what is
checked), and the unit tests drive the same runner and the same checks with the same stand-in on FakeCudart. One copy
keeps what the tests prove and what gpu-check measures the same thing.

- ``FakeCudart``: the cudart calls the runner and gpu-check make, returning ``(err, *values)`` as the bindings do.
  Host memory stands in for device memory; device pointers are 256-byte aligned like cudaMalloc's; a copy must lie
  inside allocations of the kinds its ``cudaMemcpyKind`` names (so an overrun or a pageable host buffer is an
  error, not silent); copies and event records run at once unless the stream is capturing, then they go into the
  graph. ``cudaMemGetInfo`` counts live device bytes exactly, so a leak shows.
  Each stream keeps a device timeline, as a GPU does: work starts when the stream is free AND has been enqueued
  (``max(busy_until, host now)``), a copy costs ``bytes / COPY_BYTES_PER_S``, a kernel what its engine says; an
  event is stamped with the device time at which the stream reaches it, not the host time of the record call. So
  host work done between two records (staging into pinned memory, an enqueue that takes long) shows in the elapsed
  time exactly as it would on a GPU that idles meanwhile.
- ``fake_tensorrt_runtime``: a module with the TensorRT 10 runtime API (TensorRT-RTX's with ``rtx_validity``) whose
  engine maps each input to an output of the same shape. ``kernel="affine"``: y = 2x + 1 computed in FakeCudart's
  host memory (FakeCudart only). ``kernel="copy"``: a device-to-device ``cudaMemcpyAsync`` on the stream
  ``execute_async_v3`` is given, made through the cudart it was built with: real GPU work on the real cudart,
  captured into CUDA graphs like a kernel, and outputs equal to inputs bit for bit.
- ``write_fake_engine``: engine bytes the stand-in deserialises, with a manifest for them.
- ``standin_installed``: points runtime.engine_manifest's import/probe functions at a stand-in, restored on exit.

numpy + stdlib only (no TensorRT, no cuda-python): importing this never needs a GPU.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import hashlib
import threading
import time
import types
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from runtime import engine_manifest as em

GPU = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7", "device": 0, "cuda_runtime": "12.6",
       "cuda_driver": "12.6"}
ALIGN = 256  # cudaMalloc returns pointers aligned to at least 256 bytes (CUDA C programming guide)
# (input, output, dtype, width): every tensor is (batch, width); the output has its input's shape.
AFFINE_IO = (("x", "y", "float32", 4),)
BATCH = {"min": 1, "opt": 8, "max": 64}
ENGINE_MAGIC = b"FAKE-ENGINE"
RUNTIME_CACHE_MAGIC = b"FAKE-RTX-RUNTIME-CACHE"
COPY_BYTES_PER_S = 10e9  # the stand-in's PCIe / device copy rate (device timeline only)


# ---- cudart ---------------------------------------------------------------------------------------
class CudaError(enum.IntEnum):
    """The cudaError_t values the stand-ins use (same numbers as CUDA's)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureInvalidated = 901


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle, self.capturing, self.invalidated = handle, None, False
        self.busy_until = 0.0  # device time (perf_counter seconds) at which the work enqueued so far finishes

    def __int__(self) -> int:
        return self.handle


class FakeEvent:
    def __init__(self) -> None:
        self.time: float | None = None


class EventMark:
    """An event record on a stream: stamped with the device time at which the stream reaches it."""

    def __init__(self, event: FakeEvent) -> None:
        self.event = event


class FakeCudart:
    """cudart on host memory. ``gpu`` (and ``integrated``): what cudaGetDeviceProperties reports; ``driver`` /
    ``runtime``: what cudaDriverGetVersion / cudaRuntimeGetVersion answer (CUDA's 1000 * major + 10 * minor)."""

    cudaError_t = CudaError
    cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToHost": 0, "cudaMemcpyHostToDevice": 1,
                                                     "cudaMemcpyDeviceToHost": 2, "cudaMemcpyDeviceToDevice": 3})
    cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", {"cudaStreamCaptureModeGlobal": 0,
                                                                   "cudaStreamCaptureModeThreadLocal": 1,
                                                                   "cudaStreamCaptureModeRelaxed": 2})
    cudaStreamCaptureStatus = enum.IntEnum("cudaStreamCaptureStatus", {"cudaStreamCaptureStatusNone": 0,
                                                                       "cudaStreamCaptureStatusActive": 1,
                                                                       "cudaStreamCaptureStatusInvalidated": 2})
    cudaStreamNonBlocking = 1
    # cudaMemcpyKind -> (kind of dst, kind of src); host sides must be pinned, as the runner's are
    COPY_KINDS = {1: ("device", "pinned"), 2: ("pinned", "device"), 3: ("device", "device")}

    def __init__(self, gpu: Mapping[str, Any] = GPU, total_memory: int = 8 << 30, driver: int = 12060,
                 runtime: int = 12060, integrated: bool = False) -> None:
        self.gpu, self.total_memory, self.driver, self.runtime = dict(gpu), int(total_memory), driver, runtime
        self.integrated = integrated  # cudaDeviceProp.integrated: Jetson's GPU shares system memory
        self.mem: dict[int, tuple[str, ctypes.Array, int]] = {}  # aligned address -> (kind, backing buffer, size)
        self.streams: dict[int, FakeStream] = {}
        self.graphs: set[int] = set()
        self.events: set[int] = set()
        self.mallocs = 0
        self.copied: dict[int, int] = {}  # cudaMemcpyKind -> bytes copied (cudaMemcpyAsync, cudaMemcpy2D)
        self.lock = threading.Lock()
        self._next = 100
        self.last_error = CudaError.cudaSuccess  # what cudaGetLastError returns (and resets), as in CUDA

    def _ok(self, *values):
        return (CudaError.cudaSuccess, *values)

    def cudaGetLastError(self):
        err, self.last_error = self.last_error, CudaError.cudaSuccess
        return (err,)

    def cudaGetErrorName(self, e):
        return self._ok(CudaError(e).name.encode())

    def cudaGetErrorString(self, e):
        return self._ok(b"fake error")

    # ---- device, versions ----
    def cudaSetDevice(self, d):
        return self._ok() if d == 0 else (CudaError.cudaErrorInvalidDevice,)

    def cudaGetDeviceCount(self):
        return self._ok(1)

    def cudaDriverGetVersion(self):
        return self._ok(self.driver)

    def cudaRuntimeGetVersion(self):
        return self._ok(self.runtime)

    def cudaGetDeviceProperties(self, d):
        if d != 0:
            return (CudaError.cudaErrorInvalidDevice, None)
        major, _, minor = self.gpu["compute_capability"].partition(".")
        return self._ok(types.SimpleNamespace(name=self.gpu["name"].encode(), major=int(major), minor=int(minor),
                                              totalGlobalMem=self.total_memory, multiProcessorCount=16,
                                              integrated=int(self.integrated)))

    def cudaMemGetInfo(self):
        with self.lock:
            used = sum(size for kind, _, size in self.mem.values() if kind == "device")
        return self._ok(self.total_memory - used, self.total_memory)

    # ---- memory ----
    def _alloc(self, n, kind):
        n = int(n)
        buf = ctypes.create_string_buffer(n + ALIGN)
        addr = (ctypes.addressof(buf) + ALIGN - 1) // ALIGN * ALIGN
        with self.lock:
            self.mem[addr] = (kind, buf, n)
            self.mallocs += 1
        return self._ok(addr)

    def cudaMalloc(self, n):
        return self._alloc(n, "device")

    def cudaMallocHost(self, n):
        return self._alloc(n, "pinned")

    def _free(self, ptr, kind):
        with self.lock:
            if self.mem.get(ptr, ("?",))[0] != kind:
                return (CudaError.cudaErrorInvalidValue,)
            del self.mem[ptr]
        return self._ok()

    def cudaFree(self, ptr):
        return self._free(ptr, "device")

    def cudaFreeHost(self, ptr):
        return self._free(ptr, "pinned")

    def kind_of(self, ptr: int, n: int) -> str:
        """'device' / 'pinned' when [ptr, ptr + n) lies inside one allocation, else 'pageable'."""
        with self.lock:
            for base, (kind, _, size) in self.mem.items():
                if base <= ptr and ptr + n <= base + size:
                    return kind
        return "pageable"

    # ---- streams, copies, events ----
    def stream(self, s) -> FakeStream:
        return s if isinstance(s, FakeStream) else self.streams[int(s)]

    def enqueue(self, s, op, cost_s: float = 0.0) -> None:
        """Run ``op`` now on the stream's device timeline (taking ``cost_s`` of device time), or record it into the
        graph when the stream is capturing. ``op``: a callable, or an EventMark."""
        st = self.stream(s)
        if st.capturing is not None:
            st.capturing.append((op, float(cost_s)))
        else:
            self.run_on(st, op, float(cost_s))

    @staticmethod
    def run_on(st: FakeStream, op, cost_s: float) -> None:
        """The GPU reaches ``op`` once the stream is free and the op has been enqueued; it then takes ``cost_s``."""
        start = max(st.busy_until, time.perf_counter())
        if isinstance(op, EventMark):
            op.event.time = start
        else:
            op()
        st.busy_until = start + cost_s

    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        with self.lock:
            self._next += 1
            s = self.streams[self._next] = FakeStream(self._next)
        return self._ok(s)

    def cudaStreamDestroy(self, s):
        with self.lock:
            del self.streams[self.stream(s).handle]
        return self._ok()

    def cudaStreamSynchronize(self, s):
        """Blocks until the stream's device timeline has caught up, as the real call does."""
        wait = self.stream(s).busy_until - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return self._ok()

    def cudaStreamIsCapturing(self, s):
        status = self.cudaStreamCaptureStatus
        return self._ok(status.cudaStreamCaptureStatusNone if self.stream(s).capturing is None
                        else status.cudaStreamCaptureStatusActive)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        want = self.COPY_KINDS.get(int(kind))
        if want is None or (self.kind_of(dst, n), self.kind_of(src, n)) != want:
            return (CudaError.cudaErrorInvalidValue,)
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, n), n / COPY_BYTES_PER_S)
        with self.lock:
            self.copied[int(kind)] = self.copied.get(int(kind), 0) + int(n)
        return self._ok()

    def cudaMemcpy2D(self, dst, dpitch, src, spitch, width, height, kind):
        """Synchronous strided copy: ``height`` rows of ``width`` bytes, rows ``dpitch`` / ``spitch`` apart. A
        synchronous copy may use pageable host memory; the device side must lie inside a device allocation."""
        want = self.COPY_KINDS.get(int(kind))
        if want is None or width > min(dpitch, spitch) or height < 0:
            return (CudaError.cudaErrorInvalidValue,)
        span = lambda pitch: (height - 1) * pitch + width if height else 0  # noqa: E731
        got = (self.kind_of(dst, span(dpitch)), self.kind_of(src, span(spitch)))
        if height and any(w == "device" and g != "device" for w, g in zip(want, got)):
            return (CudaError.cudaErrorInvalidValue,)
        for r in range(height):
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)
        with self.lock:
            self.copied[int(kind)] = self.copied.get(int(kind), 0) + int(width * height)
        return self._ok()

    def cudaEventCreate(self):
        ev = FakeEvent()
        with self.lock:
            self.events.add(id(ev))
        return self._ok(ev)

    def cudaEventRecord(self, ev, stream):
        self.enqueue(stream, EventMark(ev))
        return self._ok()

    def cudaEventSynchronize(self, ev):
        return self._ok()

    def cudaEventElapsedTime(self, start, end):
        if start.time is None or end.time is None:  # CUDA: an event never recorded is an invalid handle here
            return (CudaError.cudaErrorInvalidResourceHandle, None)
        return self._ok(float((end.time - start.time) * 1e3))

    def cudaEventDestroy(self, ev):
        with self.lock:
            self.events.discard(id(ev))
        return self._ok()

    # ---- graphs ----
    def cudaStreamBeginCapture(self, s, mode):
        assert mode == self.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        st = self.stream(s)
        st.capturing, st.invalidated = [], False
        return self._ok()

    def cudaStreamEndCapture(self, s):
        st = self.stream(s)
        ops, st.capturing = st.capturing, None
        if st.invalidated:  # CUDA also records the failure as the thread's last error
            self.last_error = CudaError.cudaErrorStreamCaptureInvalidated
            return (CudaError.cudaErrorStreamCaptureInvalidated, None)
        g = types.SimpleNamespace(ops=ops)
        self.graphs.add(id(g))
        return self._ok(g)

    def cudaGraphInstantiate(self, g, flags):
        ge = types.SimpleNamespace(ops=list(g.ops))
        self.graphs.add(id(ge))
        return self._ok(ge)

    def cudaGraphLaunch(self, ge, s):
        st = self.stream(s)
        for op, cost in ge.ops:
            self.run_on(st, op, cost)
        return self._ok()

    def cudaGraphExecDestroy(self, ge):
        self.graphs.discard(id(ge))
        return self._ok()

    def cudaGraphDestroy(self, g):
        self.graphs.discard(id(g))
        return self._ok()


# ---- TensorRT -------------------------------------------------------------------------------------
def _profiles(two_profiles: bool) -> list[tuple[int, int, int]]:
    """Batch (min, opt, max) per optimisation profile."""
    if two_profiles:
        return [(1, 16, 32), (33, 48, 64)]
    return [(BATCH["min"], BATCH["opt"], BATCH["max"])]


def _capturing(cudart, handle: int) -> bool:
    err, status = cudart.cudaStreamIsCapturing(handle)
    return err == cudart.cudaError_t.cudaSuccess and \
        status == cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive


def _affine(cudart, handle: int, x_ptr: int, y_ptr: int, count: int, dtype: np.dtype, cost_s: float = 0.0) -> bool:
    """y = 2x + 1 in host memory: FakeCudart only (its device memory is host memory); ``cost_s`` of device time."""
    def op():
        x = np.frombuffer((ctypes.c_ubyte * (count * dtype.itemsize)).from_address(x_ptr), dtype=dtype)
        y = np.frombuffer((ctypes.c_ubyte * (count * dtype.itemsize)).from_address(y_ptr), dtype=dtype)
        y[:] = 2 * x + 1

    cudart.enqueue(handle, op, cost_s)
    return True


def _copy(cudart, handle: int, x_ptr: int, y_ptr: int, count: int, dtype: np.dtype, cost_s: float = 0.0) -> bool:
    """y = x by a device-to-device copy on the given stream (any cudart: real GPU work on the real one)."""
    if count == 0:
        return True
    (err,) = cudart.cudaMemcpyAsync(y_ptr, x_ptr, count * dtype.itemsize,
                                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, handle)
    return err == cudart.cudaError_t.cudaSuccess


KERNELS = {"affine": _affine, "copy": _copy}


def fake_tensorrt_runtime(cudart, version: str = "10.3.0.26", capture_fails: bool = False,
                          execute_fails: bool = False, capture_raises: bool = False, two_profiles: bool = False,
                          profile_switch_fails: bool = False, infer_shapes_fails: bool = False,
                          rtx_validity: str | None = None, kernel: str = "affine",
                          io: Sequence[tuple[str, str, str, int]] = AFFINE_IO, module_name: str | None = None,
                          kernel_s: float = 0.0, launch_s: float = 0.0, stream_capturable: bool = True):
    """A TensorRT module whose engine computes, for each (input, output, dtype, width) of ``io``, output = f(input)
    on (batch 1..64, width) tensors: f is y = 2x + 1 (``kernel="affine"``) or a device-to-device copy ("copy").

    Modelled on the real bindings (TRT release/10.3 and 11.1 python/src/infer/pyCore.cpp):
    set_optimization_profile_async and infer_shapes RAISE RuntimeError on failure; all_binding_shapes_specified
    (allInputDimensionsSpecified) "does not work with name-based interfaces" (NvInferRuntime.h), so here it is
    always False; execute_async_v3 returns False while the thread's last CUDA error is set, as a TensorRT launch
    that checks cudaGetLastError would. ``two_profiles``: profile 0 covers batch 1..32, profile 1 batch 33..64.
    ``rtx_validity`` ('VALID' / 'INVALID'): a ``tensorrt_rtx`` module whose Runtime.get_engine_validity answers that
    (INVALID with UNSUPPORTED_CC), with create_runtime_config as in tensorrt_rtx 1.7. ``capture_fails`` (FakeCudart
    only): execute_async_v3 invalidates the capture and returns False. ``module_name``: the module's ``__name__``
    (default tensorrt / tensorrt_rtx; gpu-check uses its own so it never shares the real module's logger).

    Stricter where the real API is: ``set_tensor_address`` returns False for a pointer that is not 256-byte aligned
    (TensorRT 10 NvInferRuntime.h: "The pointer must have at least 256-byte alignment"). Timing: each output's
    kernel takes ``kernel_s`` of device time (``kernel="affine"``) and ``execute_async_v3`` spends ``launch_s`` of
    host time before it enqueues (the CPU cost of a launch), so a measurement that mixes the two can be caught.
    RTX (tensorrt_rtx 1.7 IRuntimeConfig): ``dynamic_shapes_kernel_specialization_strategy`` (LAZY by default),
    ``cuda_graph_strategy`` (DISABLED by default), ``create_runtime_cache`` / ``set_runtime_cache`` /
    ``get_runtime_cache``, an IRuntimeCache whose ``deserialize`` answers False for bytes it did not ``serialize``,
    and ``IExecutionContext.is_stream_capturable(stream)`` (``stream_capturable``).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel '{kernel}': expected one of {sorted(KERNELS)}")
    run = KERNELS[kernel]
    mod = types.ModuleType(module_name or ("tensorrt_rtx" if rtx_validity else "tensorrt"))
    mod.__version__ = version
    mod.ILogger = type("ILogger", (), {"Severity": types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3,
                                                                           VERBOSE=4), "__init__": lambda self: None})
    mod.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    mod.nptype = lambda dt: dt
    mod.runtimes, mod.contexts = [], []
    profiles = _profiles(two_profiles)
    width = {n: w for i, o, _, w in io for n in (i, o)}
    dtype = {n: np.dtype(dt) for i, o, dt, _ in io for n in (i, o)}
    source = {o: i for i, o, _, _ in io}
    inputs, outputs = [i for i, _, _, _ in io], [o for _, o, _, _ in io]
    success = cudart.cudaError_t.cudaSuccess

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, int]] = {}
            self.addr, self.threads, self.executions = {}, set(), 0
            self.active_optimization_profile = 0
            self.switches: list[int] = []

        def set_optimization_profile_async(self, k, handle):
            assert isinstance(handle, int) and handle != 0
            if profile_switch_fails:
                raise RuntimeError("Error in set optimization profile async.")
            self.active_optimization_profile = k
            self.switches.append(k)
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = profiles[self.active_optimization_profile]
            if name not in inputs or len(shape) != 2 or shape[1] != width[name] or not lo <= shape[0] <= hi:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def infer_shapes(self):
            if infer_shapes_fails:
                raise RuntimeError("infer_shapes error code: -1")
            return [n for n in inputs if n not in self.shapes]

        all_binding_shapes_specified = property(lambda self: False)

        def get_tensor_shape(self, name):
            return self.shapes.get(source.get(name, name), (-1, width[name]))

        def set_tensor_address(self, name, ptr):
            if name not in width or int(ptr) % ALIGN:  # the real runtime logs an error and returns False
                return False
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, handle):
            assert isinstance(handle, int) and handle != 0  # a real, non-default stream handle
            self.threads.add(threading.get_ident())
            if launch_s:
                time.sleep(launch_s)  # the host side of a launch: the GPU idles meanwhile unless work is queued
            if execute_fails or getattr(cudart, "last_error", success) != success:
                return False
            capturing = _capturing(cudart, handle)
            if capturing and capture_raises:
                raise RuntimeError("enqueue raised during capture")
            if capturing and capture_fails:
                cudart.stream(handle).invalidated = True
                return False
            if not capturing:
                self.executions += 1
            return all(run(cudart, handle, self.addr[source[o]], self.addr[o],
                           int(np.prod(self.shapes[source[o]])), dtype[o], kernel_s) for o in outputs)

        def is_stream_capturable(self, handle):
            assert isinstance(handle, int) and handle != 0
            return bool(stream_capturable)

    class Engine:
        num_io_tensors, num_optimization_profiles = len(inputs) + len(outputs), len(profiles)

        def get_tensor_name(self, i):
            return (inputs + outputs)[i]

        def get_tensor_mode(self, n):
            return mod.TensorIOMode.INPUT if n in inputs else mod.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, n):
            return dtype[n]

        def get_tensor_shape(self, n):
            return (-1, width[n])

        def get_tensor_profile_shape(self, n, k):
            assert n in inputs and 0 <= k < len(profiles)
            return [(b, width[n]) for b in profiles[k]]

        def is_shape_inference_io(self, n):
            return False

        def create_execution_context(self, runtime_config=None):
            assert (runtime_config is not None) == bool(rtx_validity)  # RTX: always with its runtime config
            ctx = Context()
            mod.contexts.append(ctx)
            return ctx

        def create_runtime_config(self):
            return RuntimeConfig()

    class RuntimeCache:
        def __init__(self) -> None:
            self.entries = 0

        def deserialize(self, blob):
            data = bytes(blob)
            if not data.startswith(RUNTIME_CACHE_MAGIC):
                return False  # another RTX version / GPU / OS / driver, or not a runtime cache at all
            self.entries = int(data[len(RUNTIME_CACHE_MAGIC):] or 0)
            return True

        def serialize(self):
            return RUNTIME_CACHE_MAGIC + str(self.entries).encode()

        def reset(self):
            self.entries = 0

    class RuntimeConfig:
        def __init__(self) -> None:
            self.cuda_graph_strategy = mod.CudaGraphStrategy.DISABLED
            self.dynamic_shapes_kernel_specialization_strategy = \
                mod.DynamicShapesKernelSpecializationStrategy.LAZY
            self.cache = None

        def create_runtime_cache(self):
            return RuntimeCache()

        def set_runtime_cache(self, cache):
            if not isinstance(cache, RuntimeCache):
                return False
            self.cache = cache
            return True

        def get_runtime_cache(self):
            return self.cache

    class Runtime:
        def __init__(self, logger) -> None:
            mod.runtimes.append(self)
            self.deserialized = 0

        def deserialize_cuda_engine(self, data):
            self.deserialized += 1
            return Engine() if bytes(data).startswith(ENGINE_MAGIC) else None

        def get_engine_validity(self, data):
            v = mod.EngineValidity.VALID if rtx_validity == "VALID" else mod.EngineValidity.INVALID
            return v, 0 if rtx_validity == "VALID" else int(mod.EngineInvalidityDiagnostics.UNSUPPORTED_CC)

    if rtx_validity:
        mod.EngineValidity = enum.Enum("EngineValidity", "VALID SUBOPTIMAL INVALID")
        mod.EngineInvalidityDiagnostics = enum.IntFlag("EngineInvalidityDiagnostics",
                                                       "VERSION_MISMATCH UNSUPPORTED_CC OLD_CUDA_DRIVER")
        mod.CudaGraphStrategy = enum.Enum("CudaGraphStrategy", "DISABLED WHOLE_GRAPH_CAPTURE")
        mod.DynamicShapesKernelSpecializationStrategy = enum.Enum("DynamicShapesKernelSpecializationStrategy",
                                                                  "LAZY EAGER NONE")
    else:
        del Runtime.get_engine_validity  # tensorrt 10/11 have no such method
        del Engine.create_runtime_config, Context.is_stream_capturable  # RTX only
    mod.Runtime = Runtime
    return mod


def write_fake_engine(path: Path, version: str = "10.3.0.26", gpu: Mapping[str, Any] = GPU,
                      io: Sequence[tuple[str, str, str, int]] = AFFINE_IO,
                      data: bytes = ENGINE_MAGIC + b" y=2x+1") -> Path:
    """Engine bytes the stand-in deserialises, and a manifest saying they were built by tensorrt ``version`` on
    ``gpu`` (name, compute capability), with a spec naming dim 0 'batch' (1/8/64)."""
    path.write_bytes(data)
    tensors = lambda k: [{"name": t[k], "dtype": t[2], "shape": ["batch", t[3]]} for t in io]  # noqa: E731
    em.write_manifest(path, {
        "format": em.MANIFEST_FORMAT, "engine": path.name, "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data), "model": "fake", "precision": "fp32", "flavor": em.flavor_of("tensorrt", version),
        "tensorrt": {"module": "tensorrt", "version": version},
        "built_on": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "targets": {"gpu": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "builder": {"hardware_compatibility": None},
        "spec": {"inputs": tensors(0), "outputs": tensors(1), "dynamic": {"batch": dict(BATCH)}},
    })
    return path


@contextlib.contextmanager
def standin_installed(trt_module, cudart, gpu: Mapping[str, Any]) -> Iterator[None]:
    """While inside: runtime.engine_manifest imports ``trt_module`` as the installed TensorRT, ``cudart`` as
    cuda-python and probes ``gpu``, so TensorRTRunner runs on them unchanged. Everything is restored on exit, and
    the runner's cached logger for ``trt_module`` is dropped (TensorRT loggers are cached per module name)."""
    import runtime.tensorrt_backend as tb

    flavor = "rtx" if hasattr(trt_module, "EngineValidity") else em.flavor_of("tensorrt", trt_module.__version__)
    saved = (em.import_tensorrt, em.import_cudart, em.probe_gpu)

    def import_tensorrt(flavor_wanted: str = "auto", prefer: str | None = None):
        return trt_module, flavor, str(trt_module.__version__)

    em.import_tensorrt = import_tensorrt
    em.import_cudart = lambda: cudart
    em.probe_gpu = lambda device=0: (dict(gpu), "")
    try:
        yield
    finally:
        em.import_tensorrt, em.import_cudart, em.probe_gpu = saved
        with tb._LOGGER_LOCK:
            tb._LOGGERS.pop(trt_module.__name__, None)
