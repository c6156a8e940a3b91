"""Is there really an NVIDIA GPU on this machine?

Never trust ``onnxruntime.get_available_providers()``: onnxruntime-gpu lists the CUDA and TensorRT providers
on any machine it is installed on, GPU or not, and only logs an error when a session asks for them.
This module asks the driver instead: ``nvidia-smi -L``, else ``/dev/nvidia0`` plus ``libcuda``'s
``cuInit`` / ``cuDeviceGetCount`` through ctypes (Jetson boards have no nvidia-smi). numpy-free, stdlib only.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("edgeattn.runtime.gpu")

_LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")  # desktop, Jetson (old, new)


def _nvidia_smi_gpus() -> int | None:
    """Number of GPUs ``nvidia-smi -L`` lists; None when nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("nvidia-smi -L failed: %s", e)
        return None
    if out.returncode != 0:
        log.debug("nvidia-smi -L exited %d: %s", out.returncode, out.stderr.strip()[:200])
        return None
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _libcuda_gpus() -> int | None:
    """Device count from the CUDA driver API (cuInit + cuDeviceGetCount); None when libcuda cannot load."""
    for name in _LIBCUDA_NAMES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:  # CUDA_SUCCESS == 0; e.g. 100 = no device, 35 = driver too old
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:  # not the driver library after all
            continue
    return None


@functools.lru_cache(maxsize=1)
def nvidia_gpu_present() -> bool:
    """True only when the NVIDIA driver reports at least one GPU. Cached; ``nvidia_gpu_present.cache_clear()``
    re-probes. ``EDGEATTN_FORCE_CPU=1`` makes it False (to benchmark CPU paths on a GPU machine)."""
    if os.environ.get("EDGEATTN_FORCE_CPU", "") not in ("", "0"):
        log.info("EDGEATTN_FORCE_CPU is set: treating this machine as CPU-only")
        return False
    n = _nvidia_smi_gpus()
    if n is not None:
        log.debug("nvidia-smi lists %d GPU(s)", n)
        return n > 0
    if not any(Path(p).exists() for p in _DEVICE_NODES):
        log.debug("no nvidia-smi and no NVIDIA device node: no GPU")
        return False
    n = _libcuda_gpus()
    log.debug("libcuda reports %s GPU(s)", n)
    return bool(n)
