"""The CPU at hand: model, cores and the instruction sets that decide how INT8 runs (stdlib only).

    from runtime.cpu import cpu_info, int8_isa
    int8_isa()        # "amx" | "avx512_vnni" | "avx_vnni" | "avx512" | "avx2" | "arm64" | "other"

Why it matters: ONNX Runtime's x86 u8s8 int8 kernels on a CPU without VNNI (AVX2 or AVX-512 without VNNI) add
pairs of u8*s8 products in int16 (``vpmaddubsw``) and saturate, so a graph that is accurate on a VNNI machine can
lose accuracy on an AVX2 one. A 7-bit weight range (``reduce_range``) keeps every pair sum inside int16
(255 * 63 * 2 = 32130 < 32767). ``int8.cpu.onnx`` records the ISA it was chosen and verified on; the runtime
warns when it is opened on a CPU whose class differs (``check_int8_isa``).
"""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger("edgeattn.runtime.cpu")

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16")
ISA_METADATA_KEY = "edgeattn.cpu_isa"  # int8.cpu.onnx metadata: the int8_isa() it was chosen and verified on
# int8.cpu.onnx metadata: "<backend>:<mode>" the form was chosen, judged and timed on ("onnxruntime:all",
# "openvino:f32"); runtime.loader's "auto" opens the file there
CPU_BACKEND_METADATA_KEY = "edgeattn.cpu_backend"
# Classes whose int8 dot products do not saturate (VNNI / AMX add u8*s8 products in int32), and ARM (sdot/udot or
# widening multiplies, no int16 pair sums).
NON_SATURATING = ("amx", "avx512_vnni", "avx_vnni", "arm64")


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# numpy's own CPUID-based detection: what this process can execute, the same source of truth ONNX Runtime's MLAS
# uses (CPUID). /proc/cpuinfo describes the host, which differs under an emulator (qemu-x86_64 -cpu Haswell).
_NUMPY_FEATURES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16",
                   "avx512_fp16": "AVX512FP16"}


def _numpy_features() -> dict[str, bool] | None:
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as feats
        except ImportError:  # numpy < 2
            from numpy.core._multiarray_umath import __cpu_features__ as feats
    except ImportError:
        return None
    return {ours: bool(feats.get(theirs)) for ours, theirs in _NUMPY_FEATURES.items() if theirs in feats}


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """Model name, logical/usable CPUs, physical cores, ISA flags and the int8 ISA class. Flags come from
    /proc/cpuinfo (or the given text); on the live machine, the flags numpy's CPUID detection knows override it."""
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    model, flags = None, set()
    cores = set()
    phys = None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k in ("model name", "Model") and v and model is None:
            model = v
        elif k in ("flags", "Features") and not flags:
            flags = set(v.split())
        elif k == "physical id":
            phys = v
        elif k == "core id":
            cores.add((phys, v))
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    isa = {f: f in flags for f in ISA_FLAGS}
    source = "/proc/cpuinfo" if cpuinfo_text is None else "text"
    live = _numpy_features() if cpuinfo_text is None and platform.machine().lower() in ("x86_64", "amd64") else None
    if live:
        isa.update(live)
        source = "CPUID (numpy) + /proc/cpuinfo"
    return {"model": model or platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "usable_cpus": usable, "physical_cores": len(cores) or None, "machine": platform.machine(),
            "isa": isa, "isa_source": source, "int8_isa": isa_class(isa, platform.machine())}


def isa_class(isa: dict[str, bool], machine: str | None = None) -> str:
    """The int8-relevant class of a CPU from its ISA flags (see module doc)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if isa.get("amx_int8"):
        return "amx"
    if isa.get("avx512_vnni"):
        return "avx512_vnni"
    if isa.get("avx_vnni"):
        return "avx_vnni"
    if isa.get("avx512f"):
        return "avx512"
    if isa.get("avx2"):
        return "avx2"
    return "other"


def int8_isa(cpuinfo_text: str | None = None) -> str:
    """This CPU's int8 class: amx, avx512_vnni, avx_vnni, avx512, avx2, arm64 or other."""
    return cpu_info(cpuinfo_text)["int8_isa"]


def int8_saturates(isa: str) -> bool:
    """True for x86 classes where ORT's u8s8 kernels add products in int16 (no VNNI/AMX)."""
    return isa not in NON_SATURATING


def isa_mismatch(recorded: str | None, here: str) -> str | None:
    """A one-line warning when an int8 CPU artifact chosen on ``recorded`` runs on ``here`` and the two differ in
    what the int8 kernels compute (saturating vs not) or in speed class; None when they match or nothing is
    recorded."""
    if not recorded or recorded == here:
        return None
    if int8_saturates(here) and not int8_saturates(recorded):
        risk = "its int8 kernels may saturate here (no VNNI): accuracy can drop; rebuild it with 'make quantize'"
    else:
        risk = "its speed-up was measured on the other CPU; rebuild it with 'make quantize' to choose for this one"
    return f"int8 CPU artifact chosen and verified on a '{recorded}' CPU, running on a '{here}' CPU: {risk}"


def recorded_backend(metadata: dict[str, str] | None) -> tuple[str, str] | None:
    """(backend, mode) an int8 CPU artifact was chosen on (:data:`CPU_BACKEND_METADATA_KEY`), or None when the file
    records none or a malformed value."""
    value = (metadata or {}).get(CPU_BACKEND_METADATA_KEY) or ""
    backend, sep, mode = value.partition(":")
    return (backend, mode) if sep and backend and mode else None


def check_int8_isa(path: str | Path, metadata: dict[str, str] | None) -> str | None:
    """Log (once per call) and return the mismatch warning for a model whose metadata names a CPU ISA."""
    recorded = (metadata or {}).get(ISA_METADATA_KEY)
    if not recorded:  # most models: nothing to compare, so no CPU probe on every runner start
        return None
    msg = isa_mismatch(recorded, int8_isa())
    if msg:
        log.warning("'%s': %s", path, msg)
    return msg
