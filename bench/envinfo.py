"""The machine a bench ran on, read-only: CPU model, cores, ISA flags, library versions, GPU (NVML) and Jetson
power mode. Nothing here changes clocks or power modes.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime.cpu import cpu_info  # one reader of /proc/cpuinfo
from runtime import gpu

log = logging.getLogger("edgeattn.bench.env")
LIBS = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy", "onnx", "tensorrt", "tensorrt_rtx")


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    exe = shutil.which(cmd[0])
    if not exe:
        return None
    try:
        p = subprocess.run([exe] + cmd[1:], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def lib_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return {k: v for k, v in out.items() if v is not None or k in ("torch", "onnxruntime", "openvino", "numpy")}


def gpu_info() -> dict[str, Any] | None:
    """NVIDIA GPUs via NVML (pynvml / nvidia-ml-py if importable), else nvidia-smi; None without a GPU."""
    try:
        if not gpu.nvidia_gpu_present():
            return None
    except Exception as e:  # noqa: BLE001
        return {"error": f"GPU detection failed: {e}"}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                g = {"index": i, "name": name.decode() if isinstance(name, bytes) else name}
                for key, fn in (("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                                ("mem_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
                                ("max_sm_clock_mhz", lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
                                ("power_limit_w", lambda: pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                                ("temperature_c", lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))):
                    try:
                        g[key] = fn()
                    except Exception:  # noqa: BLE001 - not every GPU reports every field
                        g[key] = None
                gpus.append(g)
            drv = pynvml.nvmlSystemGetDriverVersion()
            return {"source": "nvml", "driver": drv.decode() if isinstance(drv, bytes) else drv, "gpus": gpus}
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001
        log.info("NVML query failed: %s", e)
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit",
                "--format=csv,noheader"])
    if out is None:
        return {"source": "none", "note": "GPU present but neither pynvml nor nvidia-smi answered (Jetson?)"}
    keys = ("name", "driver", "sm_clock", "mem_clock", "max_sm_clock", "power_limit")
    return {"source": "nvidia-smi", "gpus": [dict(zip(keys, (c.strip() for c in line.split(","))))
                                             for line in out.splitlines()]}


def jetson_info() -> dict[str, Any] | None:
    """Jetson power mode and clocks: jtop (jetson-stats) if installed, else ``nvpmodel -q``; None elsewhere."""
    release = Path("/etc/nv_tegra_release")
    if not release.is_file() and not Path("/etc/nvpmodel.conf").is_file():
        return None
    info: dict[str, Any] = {"l4t": release.read_text(errors="replace").splitlines()[0] if release.is_file() else None}
    try:
        from jtop import jtop

        with jtop() as j:
            info["nvpmodel"] = str(j.nvpmodel)
            info["jetson_clocks"] = str(j.jetson_clocks)
            info["source"] = "jtop"
    except ImportError:
        info["nvpmodel"] = _run(["nvpmodel", "-q"])
        info["source"] = "nvpmodel -q"
    except Exception as e:  # noqa: BLE001
        info["error"] = f"jtop: {e}"
    info["nvpmodel_conf_present"] = Path("/etc/nvpmodel.conf").is_file()
    return info


def collect(threads: int | None) -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu_info(),
            "threads": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "libs": lib_versions(),
            "gpu": gpu_info(), "jetson": jetson_info(), "loadavg_start": list(load) if load else None}
