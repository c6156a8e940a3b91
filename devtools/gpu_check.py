"""``make gpu-check`` / ``python -m devtools.gpu_check [--artifacts DIR] [--device 0] [--json PATH]``.

The first thing to run on a Jetson or GPU box, and whenever a GPU is at hand. Why: the TensorRT runner's CUDA
plumbing (pinned buffers, async copies on a non-blocking stream, buffer growth, CUDA graphs, one context per thread,
clean-up) is unit-tested on a stand-in cudart only; this runs the same code on the real driver, in well under five
minutes, before any engine or benchmark is trusted. One verdict line per check (PASS / FAIL / SKIP, and what was
measured or why):

1. ``cuda-environment``: driver and cuda-bindings versions (``cudaDriverGetVersion``, ``cudaRuntimeGetVersion`` =
   the CUDA version the bindings were generated for), the bindings' path and version, GPU name / compute capability
   / memory (``cudaGetDeviceProperties``), NVML clocks and power where NVML exists. FAILs when the driver is older
   than the bindings need (cuda-bindings 13.x on a CUDA 12 driver, the classic JetPack 6 mistake).
2. ``cuda-calls``: every CUDA call the runner makes: 256-byte aligned ``cudaMalloc``, ``cudaMallocHost``,
   H2D / D2H / D2D ``cudaMemcpyAsync`` round trips on a non-blocking stream, bit-exact for fp32/fp16/int64/bool
   arbitrary bit patterns at 0, 1, 3 and 1023 elements, buffer growth 256 B -> 64 MiB, ``cudaStreamSynchronize``,
   events timing the copies, frees; then device memory (``cudaMemGetInfo``) back to its baseline.
3. ``runner-plumbing``: runtime.tensorrt_backend.TensorRTRunner itself, without TensorRT: a stand-in TensorRT module
   (verify/standin_tensorrt.py) whose engine copies inputs to outputs with a device-to-device ``cudaMemcpyAsync`` on
   the runner's stream, so outputs must equal inputs bit for bit; plain and with ``use_cuda_graph=True``, 4 threads x
   50 calls over mixed batch sizes, one context per thread, memory back to baseline after ``close()``; with event
   timing, ``compute_burst_ms`` (executions enqueued back to back) must give a finite time on the real driver.
4. ``manifest-refusals``: runtime.engine_manifest.check_engine with THIS GPU's name and compute capability accepts
   an engine built here and refuses one built for another GPU / compute capability / TensorRT version / flavour /
   RTX targets, or with modified bytes, naming the rebuild command.
5. ``tensorrt-vs-onnxruntime``: where ``tensorrt`` or ``tensorrt_rtx`` imports: a tiny MatMul+Add+Relu ONNX with a
   dynamic batch -> an engine per flavour (optimize.engines.build_engine) -> TensorRTRunner vs ONNX Runtime CPU
   within fp32 tolerance. SKIP with the reason otherwise.

Writes ``<artifacts>/gpu-check.json`` atomically: every check's name, status, detail, seconds and measured data,
plus environment facts. Exit 0 when nothing FAILed, 1 when a check FAILed, 2 when there is no usable GPU (nothing
checked; the JSON says ``"status": "no-gpu"`` and why).

Every check takes the cudart module as a parameter (check 3 also the stand-in factory), so tests/test_gpu_check.py
runs them against devtools.standin_tensorrt.FakeCudart. numpy and the project's runtime only at import; cuda-python,
TensorRT, onnx and onnxruntime are imported where used. No torch.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from runtime import engine_manifest as em
from runtime import gpu as gpu_probe
from runtime.errors import BackendError, EngineMismatchError
from runtime.files import atomic_write_json
from runtime.tensorrt_backend import TensorRTRunner, DeviceBuffer, CudaCalls, round_up  # the runner's own helpers
from devtools import standin_tensorrt as standin

FORMAT = "edgeattn-gpu-check/1"
REPORT_NAME = "gpu-check.json"
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2
TIME_BUDGET_S = 300.0
# The driver maps device memory in 2 MiB pages and streams / graphs keep a little of their own, so "back to baseline"
# allows this much; the buffers whose leak must show are bigger (GROWTH_BYTES; the runner check's tensors, 2 MiB
# each at batch 64, several per thread and runner). Another process using the GPU meanwhile can still disturb it.
MEMORY_SLACK = 16 << 20
# Jetson's integrated GPU shares system memory: cudaMemGetInfo there is the system's free memory, which other processes
# move by tens of MiB, so only a bigger leak (the 64 MiB growth buffer) can be told apart from them.
INTEGRATED_SLACK = 48 << 20
ROUND_TRIP_DTYPES = ("float32", "float16", "int64", "bool")
ROUND_TRIP_COUNTS = (0, 1, 3, 1023)  # empty (the runner's _host_view count 0), one, odd sizes not 256-byte multiples
GROWTH_STEPS = (256, 4099, 64 << 20)  # bytes: the runner's minimum, an odd size, then a growth the driver must map
RUNNER_WIDTH = 8191  # odd row length: (64, 8191) float32 = 2 MiB, not a multiple of 256 bytes
RUNNER_BATCHES = (1, 3, 64, 8, 17)
RUNNER_THREADS, RUNNER_CALLS, RUNS_PER_SHAPE = 4, 50, 5  # 5 calls per shape: 1 capture + 4 graph replays
THREAD_TIMEOUT_S = 120.0
STANDIN_VERSION = "10.3.0.26"
PARITY_BATCHES = (1, 3, 16)
PARITY_MAX_ABS = 5e-3  # fp32 engine (TF32 cleared by build_engine) vs ORT CPU; other summation orders, not TF32
REBUILD_TEXT = "rebuild it on this machine with `make engines"


# ---- results ------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """A check measured something wrong; the message says what was received and what was expected."""

    def __init__(self, detail: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.data = dict(data or {})


class CheckSkipped(Exception):
    """A check cannot run on this machine; the message says why."""


@dataclass
class CheckResult:
    name: str
    status: str  # PASS / FAIL / SKIP
    detail: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The console verdict: one line even when an error message has several (the JSON keeps them)."""
        return f"{self.status:<4}  {self.name:<24} {' '.join(self.detail.split())}  ({self.seconds:.1f} s)"


Outcome = tuple[str, dict[str, Any]]  # (detail, measured data) of a check that passed


class _Records(logging.Handler):
    def __init__(self, keep: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.keep, self.count, self.lines = keep, 0, []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.lines) < self.keep:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _captured_log() -> Iterator[_Records]:
    """The project's warnings during a check (e.g. the runner's 'CUDA graph capture failed') go into that check's
    JSON entry instead of between the verdict lines."""
    logger, records = logging.getLogger("edgeattn"), _Records()
    propagate = logger.propagate
    logger.addHandler(records)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.propagate = propagate


def run_check(name: str, fn: Callable[[], Outcome]) -> CheckResult:
    """Run one check; an unexpected exception is that check's FAIL (with a short traceback), not the run's end."""
    t0 = time.perf_counter()
    with _captured_log() as records:
        try:
            detail, data = fn()
            status = "PASS"
        except CheckSkipped as e:
            status, detail, data = "SKIP", str(e), {}
        except CheckFailed as e:
            status, detail, data = "FAIL", str(e), e.data
        except Exception as e:  # noqa: BLE001 - e.g. BackendError from a CUDA call: this check failed, go on
            status, detail = "FAIL", f"{type(e).__name__}: {e}"
            data = {"traceback": traceback.format_exc(limit=6)}
    if records.count:
        data = {**data, "log": records.lines, "log_records": records.count}
    return CheckResult(name, status, detail, round(time.perf_counter() - t0, 3), data)


def _fail_if(problems: Sequence[str], data: Mapping[str, Any]) -> None:
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckFailed("; ".join(problems[:4]) + more, {**data, "problems": list(problems)})


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ---- GPU discovery --------------------------------------------------------------------------------
def _version(v: int) -> str:
    """CUDA's 1000 * major + 10 * minor -> 'major.minor'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_properties(cudart, device: int) -> dict[str, Any]:
    """Name, compute capability, memory and SM count from ``cudaGetDeviceProperties`` (raises BackendError)."""
    prop = CudaCalls(cudart)(f"cudaGetDeviceProperties({device})", cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, (bytes, bytearray)) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "device": device, "total_memory": int(getattr(prop, "totalGlobalMem", 0)),
            "multiprocessors": getattr(prop, "multiProcessorCount", None),
            "integrated": bool(getattr(prop, "integrated", 0))}


def memory_slack(cudart, device: int) -> int:
    """How far free device memory may stay below its baseline after everything is freed (see MEMORY_SLACK)."""
    return INTEGRATED_SLACK if device_properties(cudart, device)["integrated"] else MEMORY_SLACK


def find_gpu(device: int, load_cudart: Callable[[], Any], gpu_present: Callable[[], bool]):
    """``(cudart, gpu, "")`` or ``(None, None, why)``: the driver must report a GPU, cuda-python must import and
    ``cudaGetDeviceCount`` must cover ``device``. Never raises."""
    if os.environ.get("EDGEATTN_FORCE_CPU", "") not in ("", "0"):
        return None, None, "EDGEATTN_FORCE_CPU is set, so any GPU is ignored"
    if not gpu_present():
        return None, None, "the NVIDIA driver reports none (runtime.gpu.nvidia_gpu_present() is False)"
    try:
        cudart = load_cudart()
    except BackendError as e:
        return None, None, str(e).removeprefix("no NVIDIA GPU/CUDA driver: ")
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess:
            problem = driver_problem(cudart)
            return None, None, f"cudaGetDeviceCount returned {em.cuda_error_text(cudart, err)}" + \
                (f"; {problem}" if problem else "")
        if count <= device:
            return None, None, f"cudaGetDeviceCount found {count} device(s), expected device {device} among them"
        return cudart, device_properties(cudart, device), ""
    except Exception as e:  # noqa: BLE001 - cuda-python 12.6 raises RuntimeError without a driver
        return None, None, f"cuda-python could not talk to the driver: {type(e).__name__}: {e}"


def _is_real(cudart) -> bool:
    """cuda-python's module, not a stand-in object."""
    return isinstance(cudart, types.ModuleType)


# ---- 1. versions, GPU, NVML -------------------------------------------------------------------------
def _pci_bus_id(cudart, device: int) -> str | None:
    try:
        err, bus = cudart.cudaDeviceGetPCIBusId(32, device)
    except Exception:  # noqa: BLE001 - informative only
        return None
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    text = bus.decode(errors="replace") if isinstance(bus, (bytes, bytearray)) else str(bus)
    return text.split("\x00")[0].strip() or None


def _nvml_api(binding: str) -> dict[str, Callable]:
    """The few NVML calls used, from cuda.bindings.nvml (cuda-bindings 13.x) or pynvml (nvidia-ml-py)."""
    if binding == "cuda.bindings.nvml":
        from cuda.bindings import nvml as n  # type: ignore[import-not-found]

        sm = n.ClockType.CLOCK_SM
        return {"init": n.init_v2, "shutdown": n.shutdown, "by_bus": n.device_get_handle_by_pci_bus_id_v2,
                "by_index": n.device_get_handle_by_index_v2, "sm_clock_mhz": lambda h: n.device_get_clock_info(h, sm),
                "max_sm_clock_mhz": lambda h: n.device_get_max_clock_info(h, sm),
                "power_w": lambda h: n.device_get_power_usage(h) / 1000,
                "power_limit_w": lambda h: n.device_get_power_management_limit(h) / 1000}
    import pynvml as n  # type: ignore[import-not-found]

    sm = n.NVML_CLOCK_SM
    return {"init": n.nvmlInit, "shutdown": n.nvmlShutdown, "by_bus": n.nvmlDeviceGetHandleByPciBusId,
            "by_index": n.nvmlDeviceGetHandleByIndex, "sm_clock_mhz": lambda h: n.nvmlDeviceGetClockInfo(h, sm),
            "max_sm_clock_mhz": lambda h: n.nvmlDeviceGetMaxClockInfo(h, sm),
            "power_w": lambda h: n.nvmlDeviceGetPowerUsage(h) / 1000,
            "power_limit_w": lambda h: n.nvmlDeviceGetPowerManagementLimit(h) / 1000}


def _nvml_read(binding: str, device: int, bus: str | None) -> dict[str, Any]:
    api = _nvml_api(binding)
    api["init"]()
    try:
        # NVML's index order need not be CUDA's (CUDA_VISIBLE_DEVICES, FASTEST_FIRST): match by PCI bus id
        handle, matched = None, "index"
        if bus:
            with contextlib.suppress(Exception):
                handle, matched = api["by_bus"](bus), "pci_bus_id"
        if handle is None:
            handle = api["by_index"](device)
        out: dict[str, Any] = {"source": binding, "matched_by": matched, "pci_bus_id": bus}
        for key in ("sm_clock_mhz", "max_sm_clock_mhz", "power_w", "power_limit_w"):
            try:
                out[key] = api[key](handle)
            except Exception:  # noqa: BLE001 - not every GPU reports every field
                out[key] = None
        return out
    finally:
        api["shutdown"]()


def nvml_info(cudart, device: int) -> dict[str, Any]:
    """SM clock (now / max) and power (draw / limit) from NVML. Informative only, never a failure: Jetson has no
    NVML, and cuda.bindings.nvml exists only from cuda-bindings 13."""
    if not _is_real(cudart):
        return {"available": False, "why": "stand-in cudart: NVML not queried"}
    bus, why = _pci_bus_id(cudart, device), []
    for binding in ("cuda.bindings.nvml", "pynvml"):
        try:
            return {"available": True, **_nvml_read(binding, device, bus)}
        except Exception as e:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, ...
            why.append(f"{binding}: {type(e).__name__}: {str(e)[:160]}")
    return {"available": False, "why": "; ".join(why)}


def _nvml_text(nv: Mapping[str, Any]) -> str:
    if not nv.get("available"):
        return "NVML: not available"
    fmt = lambda v, unit: "?" if v is None else f"{v:.0f}{unit}"  # noqa: E731
    return (f"NVML: SM {fmt(nv.get('sm_clock_mhz'), '')}/{fmt(nv.get('max_sm_clock_mhz'), ' MHz')}, "
            f"power {fmt(nv.get('power_w'), '')}/{fmt(nv.get('power_limit_w'), ' W')}")


def _bindings_origin(cudart) -> tuple[str | None, str]:
    """(package version, where the module lives)."""
    if not _is_real(cudart):
        return "stand-in", f"{type(cudart).__module__}.{type(cudart).__name__}"
    return em._cuda_bindings_version(), str(getattr(cudart, "__file__", cudart.__name__))


def _raw_versions(cudart) -> tuple[int, int]:
    """(cudaDriverGetVersion, cudaRuntimeGetVersion) as CUDA's integers; 0 for a call that fails."""
    out = []
    for call in ("cudaDriverGetVersion", "cudaRuntimeGetVersion"):
        try:
            err, v = getattr(cudart, call)()
        except Exception:  # noqa: BLE001 - cuda-python 12.6 raises without a driver
            err, v = None, 0
        out.append(int(v) if err == cudart.cudaError_t.cudaSuccess else 0)
    return out[0], out[1]


def driver_problem(cudart) -> str | None:
    """Why the driver cannot serve these bindings (none loaded; older major than the bindings were built for)."""
    driver, built_for = _raw_versions(cudart)
    if driver <= 0:
        return (f"cudaDriverGetVersion returned {driver}: no CUDA driver is loaded; expected the NVIDIA driver's CUDA "
                "version")
    if built_for and driver // 1000 < built_for // 1000:
        version = _bindings_origin(cudart)[0] or "?"
        return (f"cuda-bindings {version} is built for CUDA {_version(built_for)} but the driver supports CUDA "
                f"{_version(driver)}; expected a driver of at least CUDA {built_for // 1000}.x: install cuda-python "
                f"{driver // 1000}.x (JetPack 6: pip install 'cuda-python>=12,<13') or update the driver")
    return None


def check_cuda_environment(cudart, device: int = 0) -> Outcome:
    driver, built_for = _raw_versions(cudart)
    props = device_properties(cudart, device)
    version, path = _bindings_origin(cudart)
    nv = nvml_info(cudart, device)
    data = {"driver_cuda": _version(driver) if driver > 0 else None, "cuda_bindings_built_for": _version(built_for),
            "cuda_bindings": version, "cuda_bindings_path": path, "gpu": props, "nvml": nv}
    problem = driver_problem(cudart)
    _fail_if([problem] if problem else [], data)
    shared = " (integrated: shares system memory)" if props["integrated"] else ""
    gib = props["total_memory"] / (1 << 30)
    detail = (f"driver CUDA {_version(driver)}; cuda-bindings {version or '?'} (built for CUDA {_version(built_for)}) "
              f"from {path}; '{props['name']}' sm {props['compute_capability']}, {gib:.1f} GiB{shared}, "
              f"{props['multiprocessors']} SMs; {_nvml_text(nv)}")
    return detail, data


# ---- 2. the CUDA calls the runner makes ------------------------------------------------------------
class _Allocations:
    """Device and pinned buffers a check makes, each free checked; ``release`` frees what is left, also after a
    failure, so a failing check does not leak into the next."""

    def __init__(self, cuda: CudaCalls) -> None:
        self.cuda, self.live = cuda, []  # [(buffer, pinned)]

    def new(self, nbytes: int, pinned: bool) -> DeviceBuffer:
        rt, cap = self.cuda.rt, round_up(nbytes)  # the runner's rounding: >= 256 bytes, multiple of 256
        ptr = self.cuda("cudaMallocHost" if pinned else "cudaMalloc", rt.cudaMallocHost(cap) if pinned
                        else rt.cudaMalloc(cap))
        buf = DeviceBuffer(int(ptr), cap)
        self.live.append((buf, pinned))
        return buf

    def free(self, buf: DeviceBuffer) -> None:
        pinned = next(p for b, p in self.live if b is buf)
        self.live = [(b, p) for b, p in self.live if b is not buf]
        rt = self.cuda.rt
        if pinned:
            self.cuda("cudaFreeHost", rt.cudaFreeHost(buf.ptr))
        else:
            self.cuda("cudaFree", rt.cudaFree(buf.ptr))

    def release(self) -> None:
        for buf, _ in list(self.live):
            self.free(buf)


@contextlib.contextmanager
def _stream(cuda: CudaCalls, device: int) -> Iterator[Any]:
    rt = cuda.rt
    cuda("cudaSetDevice", rt.cudaSetDevice(device))
    stream = cuda("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    try:
        yield stream
    finally:
        cuda("cudaStreamDestroy", rt.cudaStreamDestroy(stream))


def _free_memory(cuda: CudaCalls, readings: int = 3) -> int:
    """Free device memory (cudaMemGetInfo), the highest of a few readings 20 ms apart, so another process's passing
    allocation does not look like a leak of ours."""
    best = 0
    for i in range(readings):
        if i:
            time.sleep(0.02)
        free, _total = cuda("cudaMemGetInfo", cuda.rt.cudaMemGetInfo())
        best = max(best, int(free))
    return best


def _pattern(dtype: str, count: int, seed: int) -> np.ndarray:
    """Arbitrary bit patterns (NaN payloads, denormals, -0.0 included): a copy that converts anything shows."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, count).astype(bool)
    return np.frombuffer(rng.bytes(count * dt.itemsize), dtype=dt).copy()


def _view(buf: DeviceBuffer, arr: np.ndarray) -> np.ndarray:
    return TensorRTRunner._host_view(buf, arr.shape, arr.dtype)


def _copy(cuda: CudaCalls, stream, dst: DeviceBuffer, src: DeviceBuffer, nbytes: int, kind: str) -> None:
    rt = cuda.rt
    cuda(f"cudaMemcpyAsync {kind}", rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes,
                                                       getattr(rt.cudaMemcpyKind, f"cudaMemcpy{kind}"), stream))


def _differs(what: str, got: np.ndarray, want: np.ndarray) -> list[str]:
    a, b = np.frombuffer(got.tobytes(), np.uint8), np.frombuffer(want.tobytes(), np.uint8)
    if a.shape == b.shape and np.array_equal(a, b):
        return []
    if a.shape != b.shape:
        return [f"{what}: got {a.size} bytes, expected {b.size}"]
    bad = np.flatnonzero(a != b)
    first = int(bad[0])
    return [f"{what}: not bit-exact, {bad.size} of {b.size} bytes differ (first at byte {first}: got {a[first]:#04x}, "
            f"sent {b[first]:#04x})"]


def _round_trip(cuda: CudaCalls, alloc: _Allocations, stream, data: np.ndarray, what: str) -> list[str]:
    """pinned -H2D-> device -D2H-> pinned (the runner's path), then device -D2D-> device -D2H-> pinned (the
    stand-in engine's path); every destination poisoned first so a copy that did nothing cannot pass."""
    nbytes = data.nbytes
    dev, dev2 = alloc.new(nbytes, pinned=False), alloc.new(nbytes, pinned=False)
    src, dst = alloc.new(nbytes, pinned=True), alloc.new(nbytes, pinned=True)
    problems = [f"{what}: cudaMalloc returned {b.ptr:#x}, expected a 256-byte aligned address"
                for b in (dev, dev2) if b.ptr % 256]
    np.copyto(_view(src, data), data, casting="no")
    for path, steps in (("H2D->D2H", [(dev, src, "HostToDevice"), (dst, dev, "DeviceToHost")]),
                        ("D2D->D2H", [(dev2, dev, "DeviceToDevice"), (dst, dev2, "DeviceToHost")])):
        ctypes.memset(dst.ptr, 0xA5, dst.capacity)
        for to, frm, kind in steps:
            _copy(cuda, stream, to, frm, nbytes, kind)
        cuda("cudaStreamSynchronize", cuda.rt.cudaStreamSynchronize(stream))
        problems += _differs(f"{what} {path}", _view(dst, data), data)
    for b in (dev, dev2, src, dst):
        alloc.free(b)
    return problems


@contextlib.contextmanager
def _events(cuda: CudaCalls, n: int) -> Iterator[list]:
    rt = cuda.rt
    events = [cuda("cudaEventCreate", rt.cudaEventCreate()) for _ in range(n)]
    try:
        yield events
    finally:
        for e in events:
            cuda("cudaEventDestroy", rt.cudaEventDestroy(e))


def _growth(cuda: CudaCalls, alloc: _Allocations, stream) -> tuple[list[str], dict[str, float]]:
    """Grow one device + pinned pair as the runner's ``_ensure`` does (free, allocate bigger), checking the data at
    each size; the biggest copies are timed with events (what the runner's ``timing=True`` uses)."""
    problems, rates, rt = [], {}, cuda.rt
    for step, nbytes in enumerate(GROWTH_STEPS):
        data = _pattern("uint8", nbytes, seed=100 + step)
        dev, src, dst = alloc.new(nbytes, False), alloc.new(nbytes, True), alloc.new(nbytes, True)
        np.copyto(_view(src, data), data)
        ctypes.memset(dst.ptr, 0xA5, dst.capacity)
        with _events(cuda, 3) as ev:
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[0], stream))
            _copy(cuda, stream, dev, src, nbytes, "HostToDevice")
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[1], stream))
            _copy(cuda, stream, dst, dev, nbytes, "DeviceToHost")
            cuda("cudaEventRecord", rt.cudaEventRecord(ev[2], stream))
            cuda("cudaEventSynchronize", rt.cudaEventSynchronize(ev[2]))
            ms = [float(cuda("cudaEventElapsedTime", rt.cudaEventElapsedTime(ev[i], ev[i + 1]))) for i in (0, 1)]
        cuda("cudaStreamSynchronize", rt.cudaStreamSynchronize(stream))
        problems += _differs(f"growth to {nbytes} bytes", _view(dst, data), data)
        problems += [f"cudaEventElapsedTime returned {m} ms, expected a finite time >= 0" for m in ms
                     if not np.isfinite(m) or m < 0]
        rates = {"h2d_gb_s": nbytes / max(ms[0], 1e-6) / 1e6, "d2h_gb_s": nbytes / max(ms[1], 1e-6) / 1e6}
        for b in (dev, src, dst):  # the next step allocates anew, as _ensure does after freeing
            alloc.free(b)
    return problems, rates


def check_cuda_calls(cudart, device: int = 0, slack: int | None = None) -> Outcome:
    cuda = CudaCalls(cudart)
    slack = memory_slack(cudart, device) if slack is None else slack
    with _stream(cuda, device) as stream:
        alloc = _Allocations(cuda)
        try:
            alloc.free(alloc.new(1, pinned=False))  # warm-up: the context's own lazy allocations are not a leak
            baseline = _free_memory(cuda)
            problems = []
            for i, dtype in enumerate(ROUND_TRIP_DTYPES):
                for count in ROUND_TRIP_COUNTS:
                    data = _pattern(dtype, count, seed=10 * i + count)
                    problems += _round_trip(cuda, alloc, stream, data, f"{dtype} x {count}")
            grow_problems, rates = _growth(cuda, alloc, stream)
            problems += grow_problems
        finally:
            alloc.release()
        lost = baseline - _free_memory(cuda)
    data = {"round_trips": len(ROUND_TRIP_DTYPES) * len(ROUND_TRIP_COUNTS) * 2, "growth_bytes": list(GROWTH_STEPS),
            **{k: round(v, 2) for k, v in rates.items()}, "memory_lost_bytes": int(lost), "slack_bytes": slack}
    if lost > slack:
        problems.append(f"device memory not back to baseline after freeing: {_mib(lost)} still in use "
                        f"(cudaMemGetInfo), expected at most {_mib(slack)}")
    _fail_if(problems, data)
    return (f"{data['round_trips']} round trips bit-exact ({'/'.join(ROUND_TRIP_DTYPES)} x "
            f"{'/'.join(map(str, ROUND_TRIP_COUNTS))} elements, H2D->D2H and D2D->D2H), device pointers 256-byte "
            f"aligned, growth {GROWTH_STEPS[0]} B -> {_mib(GROWTH_STEPS[-1])} correct, 64 MiB H2D "
            f"{rates['h2d_gb_s']:.1f} GB/s, D2H {rates['d2h_gb_s']:.1f} GB/s (events), device memory back to "
            f"baseline ({_mib(max(lost, 0))} of {_mib(slack)} slack)"), data


# ---- 3. TensorRTRunner's plumbing on a stand-in engine -------------------------------------------
def copy_io(width: int = RUNNER_WIDTH) -> tuple[tuple[str, str, str, int], ...]:
    """The stand-in copy engine's tensors: an odd-width float32 pair and an int64 pair, both (batch, width)."""
    return (("x", "y", "float32", width), ("ids", "ids_out", "int64", 7))


def _feeds(io, k: int, calls: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Thread ``k``'s calls: batch sizes in runs of RUNS_PER_SHAPE (so graphs are captured, then replayed), every
    call's data stamped with its own number (so a stale output from an earlier call cannot pass)."""
    pools = {i: _pattern(dt, 64 * w, seed=1000 * k + j).reshape(64, w) for j, (i, _, dt, w) in enumerate(io)}
    for call in range(calls):
        batch = RUNNER_BATCHES[(call // RUNS_PER_SHAPE + k) % len(RUNNER_BATCHES)]
        feed = {}
        for name, pool in pools.items():
            arr = pool[:batch].copy()
            arr.view(np.uint8)[:, :4] = np.frombuffer(np.uint32(k * calls + call).tobytes(), np.uint8)
            feed[name] = arr
        yield batch, feed


def _drive(runner: TensorRTRunner, io, threads: int, calls: int) -> list[str]:
    """``threads`` threads x ``calls`` calls on one runner; every output must equal its input bit for bit (NaN
    payloads included, so the runner's finite-input check is off here)."""
    runner.contract.finite_only = False
    errors: list[str] = []
    start = threading.Barrier(threads)
    timing = getattr(runner, "timing", False)

    def work(k: int) -> None:
        try:
            start.wait(timeout=THREAD_TIMEOUT_S)
            for call, (batch, feed) in enumerate(_feeds(io, k, calls)):
                out = runner.infer(feed)
                for src, dst, _, _ in io:
                    bad = _differs(f"thread {k} call {call} batch {batch}: '{dst}' vs '{src}'", out[dst], feed[src])
                    if bad:
                        errors.extend(bad)
                        return
                t = runner.last_timing if timing else None
                if timing and (not t or not all(np.isfinite(v) and v >= 0 for v in t.values())):
                    errors.append(f"thread {k} call {call}: last_timing {t}, expected finite times >= 0")
                    return
        except BaseException as e:  # noqa: BLE001 - reported as this check's failure
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    workers = [threading.Thread(target=work, args=(k,), name=f"gpu-check-{k}", daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(THREAD_TIMEOUT_S)
    errors += [f"{w.name} still running after {THREAD_TIMEOUT_S:.0f} s" for w in workers if w.is_alive()]
    return errors


def _context_problems(mod, label: str) -> list[str]:
    shared = [sorted(c.threads) for c in mod.contexts if len(c.threads) > 1]
    return [f"{label}: an execution context was used by {len(t)} threads, expected one context per thread"
            for t in shared]


def _runner_kwargs(graphs: bool) -> dict[str, Any]:
    """The runner also times every call with CUDA events when this version of it offers ``timing``."""
    kw: dict[str, Any] = {"use_cuda_graph": graphs}
    if "timing" in inspect.signature(TensorRTRunner).parameters:
        kw["timing"] = True
    return kw


def _burst(runner: TensorRTRunner, io, label: str, problems: list[str]) -> float | None:
    """GPU time per execution with 10 executions enqueued back to back (the runner's compute_burst_ms, what
    bench.engine_timing puts beside trtexec's GPU Compute Time): finite and >= 0 on the real driver."""
    if not hasattr(runner, "compute_burst_ms"):
        return None
    _, feed = next(_feeds(io, 0, 1))
    try:
        ms = float(runner.compute_burst_ms(feed, 10))
    except Exception as e:  # noqa: BLE001 - reported as this check's failure
        problems.append(f"{label}: compute_burst_ms raised {type(e).__name__}: {e}")
        return None
    if not (np.isfinite(ms) and ms >= 0):
        problems.append(f"{label}: compute_burst_ms {ms}, expected a finite time >= 0")
    return ms


def check_runner_plumbing(cudart, gpu: Mapping[str, Any], device: int = 0,
                          make_standin: Callable[..., Any] = standin.fake_tensorrt_runtime,
                          threads: int = RUNNER_THREADS, calls: int = RUNNER_CALLS, width: int = RUNNER_WIDTH,
                          slack: int | None = None) -> Outcome:
    io = copy_io(width)
    cuda = CudaCalls(cudart)
    slack = memory_slack(cudart, device) if slack is None else slack
    cuda("cudaSetDevice", cudart.cudaSetDevice(device))
    problems: list[str] = []
    data: dict[str, Any] = {"threads": threads, "calls_per_thread": calls, "batches": list(RUNNER_BATCHES),
                            "io": [list(t) for t in io]}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        engine = standin.write_fake_engine(Path(tmp) / "fp32.trt10.engine", version=STANDIN_VERSION, gpu=gpu, io=io,
                                           data=standin.ENGINE_MAGIC + b" copy")
        baseline = _free_memory(cuda)
        for graphs in (False, True):
            label = "cuda graphs" if graphs else "plain"
            mod = make_standin(cudart, version=STANDIN_VERSION, kernel="copy", io=io, module_name="tensorrt_standin")
            kw = _runner_kwargs(graphs)
            with standin.standin_installed(mod, cudart, gpu), TensorRTRunner(engine, device=device, **kw) as r:
                problems += [f"{label}: {e}" for e in _drive(r, io, threads, calls)]
                burst = _burst(r, io, label, problems) if kw.get("timing") else None
                stats = dict(r.graph_stats)
            problems += _context_problems(mod, label)
            data[label.replace(" ", "_")] = {"graph_stats": stats, "contexts": len(mod.contexts),
                                             "timing": bool(kw.get("timing")), "compute_burst_ms": burst}
            if graphs and (stats["fallbacks"] or not stats["captures"] or not stats["launches"]):
                problems.append(f"cuda graphs: graph_stats {stats}, expected captures and replays and no fallback "
                                "(a device-to-device copy is capturable)")
        lost = baseline - _free_memory(cuda)
    data.update(memory_lost_bytes=int(lost), slack_bytes=slack)
    if lost > slack:
        problems.append(f"device memory not back to baseline after close(): {_mib(lost)} still in use, expected at "
                        f"most {_mib(slack)}")
    _fail_if(problems, data)
    g = data["cuda_graphs"]["graph_stats"]
    timed = ", event timing on" if data["plain"]["timing"] else ""
    return (f"TensorRTRunner on a stand-in copy engine (x float32 (batch, {width}), ids int64 (batch, 7)): {threads} "
            f"threads x {calls} calls, batches {'/'.join(map(str, RUNNER_BATCHES))}{timed}: outputs bit-exact plain "
            f"and with CUDA graphs ({g['captures']} captures, "
            f"{g['launches']} replays, 0 fallbacks); one context per thread; memory back to baseline after close() "
            f"({_mib(max(lost, 0))})"), data


# ---- 4. manifest refusals with this GPU's data -----------------------------------------------------
def _refusal_cases(gpu: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], str, str | None]]:
    """case -> (manifest changes, installed flavour, fragment the refusal must contain; None = must be accepted)."""
    name, cc = gpu["name"], gpu["compute_capability"]
    other_cc = "8.7" if cc != "8.7" else "9.0"
    return {
        "built here": ({}, "trt10", None),
        "other GPU": ({"built_on": {"name": "NVIDIA Other GPU", "compute_capability": cc}}, "trt10",
                      f"engine built on 'NVIDIA Other GPU', this GPU is '{name}'"),
        "other compute capability": ({"built_on": {"name": name, "compute_capability": other_cc}}, "trt10",
                                     f"engine built on {other_cc}, this GPU is {cc}"),
        "other TensorRT version": ({"tensorrt": {"module": "tensorrt", "version": "10.3.0.1"}}, "trt10",
                                   f"engine built with 10.3.0.1, installed is {STANDIN_VERSION}"),
        "other flavour": ({"flavor": "trt11"}, "trt10", "engine built with 'trt11'"),
        "RTX targets without this GPU": ({"flavor": "rtx", "built_on": "cpu-only",
                                          "targets": {"compute_capabilities": [other_cc], "default": False}}, "rtx",
                                         f"engine targets {other_cc}, this GPU '{name}' is {cc}"),
        "modified bytes": ({"engine_sha256": "0" * 64}, "trt10", "the file was modified after it was built"),
    }


def _refusal_problem(case: str, engine: Path, flavor: str, expect: str | None, gpu: Mapping[str, Any]) -> str | None:
    try:
        em.check_engine(engine, flavor, STANDIN_VERSION, gpu=gpu)
    except EngineMismatchError as e:
        msg = str(e)
        if expect is None:
            return f"{case}: refused ({msg[:200]}), expected it accepted"
        missing = [f for f in (expect, REBUILD_TEXT) if f not in msg]
        return f"{case}: refusal lacks {missing}; got: {msg[:300]}" if missing else None
    return None if expect is None else f"{case}: accepted, expected EngineMismatchError saying '{expect}'"


def check_manifest_refusals(gpu: Mapping[str, Any]) -> Outcome:
    problems, cases = [], _refusal_cases(gpu)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, (case, (changes, flavor, expect)) in enumerate(cases.items()):
            folder = Path(tmp) / f"case{i}"
            folder.mkdir()
            engine = standin.write_fake_engine(folder / "fp32.trt10.engine", version=STANDIN_VERSION, gpu=gpu)
            man = json.loads(em.manifest_path(engine).read_text(encoding="utf-8"))
            em.write_manifest(engine, {**man, **changes})
            problem = _refusal_problem(case, engine, flavor, expect, gpu)
            if problem:
                problems.append(problem)
    data = {"gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]}, "cases": list(cases)}
    _fail_if(problems, data)
    refused = ", ".join(c for c, v in cases.items() if v[2])
    return (f"check_engine with '{gpu['name']}' sm {gpu['compute_capability']}: accepts the engine built here, refuses "
            f"{refused} with EngineMismatchError naming `make engines ...`"), data


# ---- 5. real TensorRT vs ONNX Runtime --------------------------------------------------------------
def write_tiny_onnx(path: Path, k: int = 24, n: int = 10, seed: int = 0):
    """y = relu(x @ W + b), x (batch 1..16, k) float32: the smallest graph through TensorRT's MatMul/bias/activation
    path, with its ModelSpec in the ONNX metadata as every pipeline file has. Returns the spec."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtime.modelspec import SPEC_METADATA_KEY, DimRange, ModelSpec, TensorSpec

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = (0.1 * rng.standard_normal(n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
             helper.make_node("Add", ["h", "B"], ["z"], name="bias"),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "gpu_check_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = ModelSpec("gpu_check_mlp", "custom", [TensorSpec("x", "float32", ("batch", k))],
                     [TensorSpec("y", "float32", ("batch", n))], {"batch": DimRange(1, 4, 16)}, [], opset=17)
    helper.set_model_props(model, {SPEC_METADATA_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return spec


def tensorrt_flavours() -> tuple[list[tuple[str, str]], list[str]]:
    """([(flavour, version)] importable here, [why not] for the others)."""
    found, why = [], []
    for want in ("trt", "rtx"):
        try:
            _, flavor, version = em.import_tensorrt(want)
            found.append((flavor, version))
        except BackendError as e:
            why.append(str(e))
    return found, why


def _parity(engine: Path, onnx_path: Path, spec, flavor: str, device: int) -> dict[str, Any]:
    """Max |TensorRT - ORT CPU| over PARITY_BATCHES, plain and (tensorrt 10/11) with CUDA graphs."""
    from runtime.ort_backend import OrtRunner

    out: dict[str, Any] = {}
    modes = (False, True) if flavor != "rtx" else (False,)
    with OrtRunner(onnx_path, providers="cpu") as ref:
        for graphs in modes:
            worst = 0.0
            with TensorRTRunner(engine, flavor=flavor, use_cuda_graph=graphs, device=device) as r:
                for i, batch in enumerate(PARITY_BATCHES + PARITY_BATCHES[-1:]):  # last size twice: a graph replay
                    feed = spec.example_inputs({"batch": batch}, seed=i)
                    got, want = r.infer(feed)["y"], ref.infer(feed)["y"]
                    if got.shape != want.shape or not np.isfinite(got).all():
                        raise CheckFailed(f"{flavor}: batch {batch}: TensorRT output shape {got.shape} (finite: "
                                          f"{bool(np.isfinite(got).all())}), expected {want.shape} and finite")
                    worst = max(worst, float(np.abs(got - want).max()))
            out["cuda_graph" if graphs else "plain"] = worst
    return out


def check_tensorrt_parity(gpu: Mapping[str, Any], device: int = 0, real_gpu: bool = True) -> Outcome:
    if not real_gpu:
        raise CheckSkipped("needs cuda-python's real cudart and an NVIDIA GPU; this run uses a stand-in cudart")
    flavours, why = tensorrt_flavours()
    if not flavours:
        raise CheckSkipped("neither tensorrt nor tensorrt_rtx imports: " + "; ".join(why))
    from optimize.engines import RTX_CC, build_engine

    data: dict[str, Any] = {"max_abs": PARITY_MAX_ABS, "batches": list(PARITY_BATCHES), "flavours": {}}
    problems, done, cc = [], [], gpu["compute_capability"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        onnx_path = Path(tmp) / "gpu_check_mlp" / "fp32.sim.onnx"
        spec = write_tiny_onnx(onnx_path)
        for flavor, version in flavours:
            if flavor == "rtx" and cc not in RTX_CC:
                data["flavours"][flavor] = {"version": version, "skipped": f"TensorRT-RTX has no target for sm {cc}"}
                continue
            engine = onnx_path.parent / em.engine_file_name("fp32", flavor)
            man = build_engine(onnx_path, engine, spec, flavor=flavor, workspace_mb=256, precision="fp32",
                               compute_capabilities=[cc] if flavor == "rtx" else None)
            diffs = _parity(engine, onnx_path, spec, flavor, device)
            data["flavours"][flavor] = {"version": version, "build_seconds": man["build_seconds"], "max_abs": diffs}
            problems += [f"{flavor} {version} ({mode}): max |TensorRT - ONNX Runtime| = {d:.2e}, expected <= "
                         f"{PARITY_MAX_ABS:g}" for mode, d in diffs.items() if d > PARITY_MAX_ABS]
            done.append(f"{flavor} {version} max |diff| {max(diffs.values()):.1e} "
                        f"(built in {man['build_seconds']:.1f} s)")
    skipped = [f"{f} skipped: {v['skipped']}" for f, v in data["flavours"].items() if "skipped" in v]
    if not done and not problems:
        raise CheckSkipped("; ".join(skipped))
    _fail_if(problems, data)
    return (f"MatMul+Add+Relu, batch {'/'.join(map(str, PARITY_BATCHES))}: {'; '.join(done)} vs ONNX Runtime CPU "
            f"(<= {PARITY_MAX_ABS:g})" + "".join(f"; {s}" for s in skipped)), data


# ---- the run --------------------------------------------------------------------------------------
def run_checks(cudart, gpu: Mapping[str, Any], device: int = 0, real_gpu: bool | None = None,
               make_standin: Callable[..., Any] = standin.fake_tensorrt_runtime,
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    real = _is_real(cudart) if real_gpu is None else real_gpu
    checks: list[tuple[str, Callable[[], Outcome]]] = [
        ("cuda-environment", lambda: check_cuda_environment(cudart, device)),
        ("cuda-calls", lambda: check_cuda_calls(cudart, device)),
        ("runner-plumbing", lambda: check_runner_plumbing(cudart, gpu, device, make_standin=make_standin)),
        ("manifest-refusals", lambda: check_manifest_refusals(gpu)),
        ("tensorrt-vs-onnxruntime", lambda: check_tensorrt_parity(gpu, device, real_gpu=real)),
    ]
    results = []
    for name, fn in checks:
        results.append(run_check(name, fn))
        if on_result is not None:
            on_result(results[-1])
    return results


def environment() -> dict[str, Any]:
    """Facts for the report: interpreter, platform, relevant package versions (metadata only: nothing imported)."""
    packages = {}
    for dist in ("numpy", "cuda-bindings", "cuda-python", "tensorrt", "tensorrt-rtx", "onnx", "onnxruntime",
                 "onnxruntime-gpu", "nvidia-ml-py"):
        try:
            packages[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    tegra = Path("/etc/nv_tegra_release")
    l4t = tegra.read_text(errors="replace").splitlines()[0] if tegra.is_file() else None
    return {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "machine": platform.machine(), "host": platform.node(), "packages": packages, "jetson_l4t": l4t,
            "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "EDGEATTN_FORCE_CPU") if k in os.environ}}


def _report(status: str, device: int, seconds: float, gpu, results: Sequence[CheckResult], reason: str | None = None):
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    return {"format": FORMAT, "status": status, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3), "device": device, "gpu": gpu, "reason": reason, "counts": counts,
            "environment": environment(), "checks": [asdict(r) for r in results]}


def _no_gpu_message(why: str, device: int, json_path: Path) -> str:
    return (f"gpu-check: no usable NVIDIA GPU: {why}.\n"
            f"  Looked for: a GPU the NVIDIA driver reports (`nvidia-smi -L`, else /dev/nvidia0 or a Jetson GPU node + "
            f"libcuda's cuDeviceGetCount), cuda-python (cuda.bindings.runtime) and cudaGetDeviceCount() covering "
            f"device {device}.\n"
            f"  Nothing was checked; wrote {json_path} (status \"no-gpu\"). Run this on the GPU box or Jetson.")


def main(argv: list[str] | None = None, load_cudart: Callable[[], Any] | None = None,
         gpu_present: Callable[[], bool] | None = None,
         make_standin: Callable[..., Any] = standin.fake_tensorrt_runtime) -> int:
    """CLI. ``load_cudart`` / ``gpu_present`` / ``make_standin``: the tests' hooks (default: the real ones)."""
    ap = argparse.ArgumentParser(prog="python -m devtools.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where gpu-check.json goes")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    ap.add_argument("--json", type=Path, default=None, help="report path (default <artifacts>/gpu-check.json)")
    args = ap.parse_args(argv)
    json_path = args.json or args.artifacts / REPORT_NAME
    t0 = time.perf_counter()
    cudart, gpu, why = find_gpu(args.device, load_cudart or em.import_cudart,
                                gpu_present or gpu_probe.nvidia_gpu_present)
    if cudart is None:
        atomic_write_json(json_path, _report("no-gpu", args.device, time.perf_counter() - t0, None, [], reason=why))
        print(_no_gpu_message(why, args.device, json_path), file=sys.stderr)
        return EXIT_NO_GPU
    print(f"gpu-check: device {args.device} '{gpu['name']}' (sm {gpu['compute_capability']})", flush=True)
    results = run_checks(cudart, gpu, args.device, make_standin=make_standin,
                         on_result=lambda r: print(r.line(), flush=True))
    seconds = time.perf_counter() - t0
    status = "fail" if any(r.status == "FAIL" for r in results) else "pass"
    report = _report(status, args.device, seconds, gpu, results)
    atomic_write_json(json_path, report)
    counts = report["counts"]
    slow = f" (over the {TIME_BUDGET_S:.0f} s budget)" if seconds > TIME_BUDGET_S else ""
    print(f"gpu-check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {seconds:.1f} s{slow}; "
          f"wrote {json_path}")
    return EXIT_FAILED if status == "fail" else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
