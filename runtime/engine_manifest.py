"""Engine manifests: what an engine was built from, with what, for which GPU; and the check that refuses a
mismatched engine BEFORE its bytes reach TensorRT's deserializer.

An engine ``artifacts/<model>/<precision>.<flavor>.engine`` has a sidecar ``<engine>.json`` (same name plus
``.json``). Flavours and the Python module each one needs:

=========  ===================  ==================================================================
flavor     module               engine is tied to
=========  ===================  ==================================================================
``trt10``  ``tensorrt`` 10.x    exact TensorRT version + the GPU it was built on (JetPack 6: 10.3)
``trt11``  ``tensorrt`` 11.x    exact TensorRT version + the GPU it was built on
``rtx``    ``tensorrt_rtx``     exact TensorRT-RTX version + its compute-capability targets
=========  ===================  ==================================================================

Manifest fields (``format`` = ``edgeattn-engine/1``): engine file, ``engine_sha256``/``engine_bytes``,
``onnx`` {file, sha256}, ``model``/``artifact``/``precision``, ``flavor``, ``tensorrt`` {module, version,
onnx_parser (the parser API version, e.g. "0.2.0")}, ``cuda`` {driver, cuda_bindings, cuda_bindings_built_for} or
null, ``built_on`` (``"cpu-only"`` or {gpu, compute_capability}), ``targets`` (GPUs the engine may run on),
``profiles`` (per input: min/opt/max as TensorRT read them back), ``builder`` (workspace_mb, opt_level,
timing_cache, strongly_typed, network_flags, precision_flags, tf32, hardware_compatibility, compute_capabilities),
``build_seconds``, ``cli`` (trtexec / tensorrt_rtx equivalent), ``rebuild`` (make / python command), ``io``
(tensors as the parsed network saw them), ``spec`` (the model spec: input names, dtypes, dynamic-dim bounds),
``host`` (OS/arch), ``created``.

Imports numpy-free stdlib only; tensorrt/tensorrt_rtx/cuda bindings are imported inside functions.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shlex
from pathlib import Path
from typing import Any, Mapping

from runtime.errors import BackendError, EngineMismatchError, ModelLoadError
from runtime.files import atomic_write_bytes, sha256_file  # noqa: F401 - em.sha256_file is used by optimize.engines

MANIFEST_FORMAT = "edgeattn-engine/1"
FLAVORS = ("trt10", "trt11", "rtx")
FLAVOR_MODULE = {"trt10": "tensorrt", "trt11": "tensorrt", "rtx": "tensorrt_rtx"}
# TensorRT-RTX engines built with no explicit target run on these (docs: tensorrt-rtx cpu-engines.html).
RTX_DEFAULT_COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9", "12.0")
# hardware_compatibility_level AMPERE_PLUS engines run on any GPU of compute capability >= 8.0.
AMPERE_PLUS_MIN_CC = (8, 0)


# ---- small helpers ------------------------------------------------------------------------------
def manifest_path(engine_path: str | os.PathLike) -> Path:
    """``fp16.rtx.engine`` -> ``fp16.rtx.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(engine_path: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    return atomic_write_bytes(manifest_path(engine_path), text.encode("utf-8"))


def read_manifest(engine_path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest dict, or None when there is none. A corrupt manifest raises EngineMismatchError."""
    p = manifest_path(engine_path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EngineMismatchError(f"engine '{engine_path}': manifest {p.name} is unreadable ({e}); "
                                  f"{rebuild_hint(engine_path)}") from e
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise EngineMismatchError(f"engine '{engine_path}': manifest {p.name} has format {got!r}, expected "
                                  f"{MANIFEST_FORMAT!r}; {rebuild_hint(engine_path, data if isinstance(data, dict) else None)}")
    return data


def flavor_of(module_name: str, version: str) -> str:
    """('tensorrt', '10.3.0') -> 'trt10'; ('tensorrt', '11.1.0') -> 'trt11'; ('tensorrt_rtx', ..) -> 'rtx'."""
    if module_name == "tensorrt_rtx":
        return "rtx"
    major = str(version).split(".")[0]
    return f"trt{major}"


def engine_file_name(precision: str, flavor: str) -> str:
    """The naming scheme: ``<precision>.<flavor>.engine`` e.g. ``int8.trt10.engine``, ``fp16.rtx.engine``."""
    return f"{precision}.{flavor}.engine"


def rebuild_commands(model: str | None, artifacts: str | None, flavor: str | None,
                     precision: str | None) -> tuple[str, str]:
    """The make target and the equivalent python command that rebuild one engine."""
    model = model or "<model>"
    artifacts = artifacts or "artifacts"
    want = "rtx" if flavor == "rtx" else ("trt" if flavor and flavor.startswith("trt") else "auto")
    make = f"make engines MODELS={shlex.quote(model)} ARTIFACTS={shlex.quote(artifacts)} FLAVOR={want}"
    py = (f"python -m optimize engines --models {shlex.quote(model)} --artifacts {shlex.quote(artifacts)} "
          f"--flavor {want}" + (f" --precisions {precision}" if precision else "") + " --force")
    return make, py


def rebuild_hint(engine_path: str | os.PathLike, manifest: Mapping[str, Any] | None = None,
                 flavor: str | None = None) -> str:
    p = Path(engine_path)
    m = dict(manifest or {})
    model = m.get("model") or p.parent.name
    artifacts = m.get("artifacts_dir") or str(p.parent.parent)
    precision = m.get("precision") or p.name.split(".")[0]
    make, py = rebuild_commands(model, artifacts, flavor or m.get("flavor"), precision)
    return f"rebuild it on this machine with `{make}` (or `{py}`)"


# ---- what is installed here --------------------------------------------------------------------
def import_tensorrt(flavor: str = "auto", prefer: str | None = None):
    """Import the TensorRT module for ``flavor`` ('auto', 'trt', 'trt10', 'trt11', 'rtx').

    Returns ``(module, flavor_name, version)``. 'auto' tries ``prefer`` first ('trt...' or 'rtx'), then
    ``tensorrt``, then ``tensorrt_rtx``. Raises BackendError naming what to install.
    """
    if flavor not in ("auto", "trt", "rtx") + FLAVORS:
        raise BackendError(f"TensorRT flavour '{flavor}': unknown; expected auto, trt, trt10, trt11 or rtx")
    if flavor == "auto":
        order = ["tensorrt", "tensorrt_rtx"]
        if prefer == "rtx":
            order.reverse()
    elif flavor == "rtx":
        order = ["tensorrt_rtx"]
    else:
        order = ["tensorrt"]
    problems = []
    for name in order:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:  # also OSError-like load failures surface as ImportError
            problems.append(f"{name}: {e}")
            continue
        version = str(getattr(mod, "__version__", "unknown"))
        got = flavor_of(name, version)
        too_old = _too_old(name, version)
        if too_old:
            problems.append(too_old)
            if flavor == "auto":
                continue  # e.g. an old tensorrt next to tensorrt_rtx: try the next module
            raise BackendError(f"TensorRT flavour '{flavor}': {too_old}")
        if flavor in FLAVORS and got != flavor:
            raise BackendError(f"TensorRT flavour '{flavor}' requested but the installed {name} is {version} "
                               f"(flavour '{got}')")
        return mod, got, version
    hint = {"tensorrt": "pip install tensorrt (NVIDIA GPU machines; JetPack ships python3-libnvinfer)",
            "tensorrt_rtx": "pip install tensorrt-rtx"}
    raise BackendError(f"TensorRT flavour '{flavor}': not installed or unsupported ({'; '.join(problems)}); install "
                       "with " + " or ".join(hint[n] for n in order))


MIN_TENSORRT_MAJOR = 10


def _too_old(module_name: str, version: str) -> str | None:
    """Why ``tensorrt`` ``version`` cannot be used (None when it can): TensorRT 8/9 would import, then parse ONNX
    into an implicit-batch network (``create_network(0)``), lack STRONGLY_TYPED, and fail much later."""
    if module_name != "tensorrt":
        return None
    major = str(version).split(".")[0]
    if not major.isdigit() or int(major) >= MIN_TENSORRT_MAJOR:
        return None
    return (f"tensorrt {version} is installed, expected tensorrt 10.x or 11.x (TensorRT {major} builds implicit-batch "
            "networks from create_network(0) and has no STRONGLY_TYPED flag; engines from it are not supported)")


def import_cudart():
    """``cuda.bindings.runtime`` (cuda-python >= 12.6 / 13.x), else the old ``cuda.cudart`` (12.x)."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]

        return cudart
    except ImportError:
        pass
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from cuda import cudart  # type: ignore[import-not-found,attr-defined]
        return cudart
    except ImportError as e:
        raise BackendError("no NVIDIA GPU/CUDA driver: cuda-python is not installed (pip install 'cuda-python>=12,<13' "
                           f"for CUDA 12 / JetPack 6, cuda-python 13.x for CUDA 13): {e}") from e


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def probe_gpu(device: int = 0) -> tuple[dict[str, Any] | None, str]:
    """``(info, reason)``: info = {name, compute_capability, cuda_driver, cuda_bindings_built_for, device} or None
    with the reason there is no usable GPU. Never raises (cuda-python 12.6 raises RuntimeError without a driver).
    ``cuda_bindings_built_for`` is what cuda-python's ``cudaRuntimeGetVersion`` returns: the CUDA version the
    bindings were generated for (a constant, e.g. 13.5 for cuda-bindings 13.5.0 even with no driver), NOT the CUDA
    runtime TensorRT runs on (TensorRT links its cudart statically)."""
    try:
        cudart = import_cudart()
    except BackendError as e:
        return None, str(e).removeprefix("no NVIDIA GPU/CUDA driver: ")
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess:
            return None, f"cudaGetDeviceCount returned {cuda_error_text(cudart, err)}"
        if count <= device:
            return None, f"cudaGetDeviceCount found {count} device(s), device {device} requested"
        err, prop = cudart.cudaGetDeviceProperties(device)
        if err != cudart.cudaError_t.cudaSuccess:
            return None, f"cudaGetDeviceProperties({device}) returned {cuda_error_text(cudart, err)}"
        name = prop.name.decode(errors="replace") if isinstance(prop.name, (bytes, bytearray)) else str(prop.name)
        info: dict[str, Any] = {"name": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
                                "device": device}
        versions = _cudart_versions(cudart)
        info["cuda_driver"] = versions["driver"]
        info["cuda_bindings_built_for"] = versions["cuda_bindings_built_for"]
        return info, ""
    except Exception as e:  # noqa: BLE001 - any driver problem means "no usable GPU"
        return None, f"{type(e).__name__}: {e}"


def cuda_error_text(cudart, err) -> str:
    try:
        _, name = cudart.cudaGetErrorName(err)
        _, desc = cudart.cudaGetErrorString(err)
        return f"{name.decode()} ({desc.decode()})"
    except Exception:  # noqa: BLE001
        return str(err)


def _cudart_versions(cudart) -> dict[str, str | None]:
    """driver: ``cudaDriverGetVersion`` (None without a driver); cuda_bindings_built_for: ``cudaRuntimeGetVersion``,
    which cuda-python answers with the CUDA version it was generated for (``runtimeVersion[0] =
    CUDART_VERSION``), so it is recorded under that name and never as "the CUDA runtime"."""
    out: dict[str, str | None] = {"driver": None, "cuda_bindings_built_for": None}
    for key, call in (("driver", "cudaDriverGetVersion"), ("cuda_bindings_built_for", "cudaRuntimeGetVersion")):
        try:
            err, v = getattr(cudart, call)()
        except Exception:  # noqa: BLE001 - cuda-python 12.6 raises without a driver
            continue
        if err == cudart.cudaError_t.cudaSuccess and int(v) > 0:
            out[key] = _cuda_version(int(v))
    return out


def _cuda_bindings_version() -> str | None:
    """The cuda-bindings (or old cuda-python) package version, e.g. '13.5.0'."""
    try:
        import cuda.bindings as cb  # type: ignore[import-not-found]

        v = getattr(cb, "__version__", None)
        if v:
            return str(v)
    except ImportError:
        pass
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cuda_versions() -> dict[str, str | None] | None:
    """What cuda-python can truthfully say, or None when it is absent: ``driver`` (the installed driver's CUDA
    version, None without one), ``cuda_bindings`` (the package version) and ``cuda_bindings_built_for`` (see
    ``_cudart_versions``). No "runtime" key: the CUDA runtime TensorRT uses is linked into TensorRT itself."""
    try:
        cudart = import_cudart()
    except BackendError:
        return None
    return {**_cudart_versions(cudart), "cuda_bindings": _cuda_bindings_version(), "source": "cuda-python"}


def host_info() -> dict[str, str]:
    return {"os": platform.system(), "machine": platform.machine()}


# ---- the check ----------------------------------------------------------------------------------
def _cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def _gpu_problems(man: Mapping[str, Any], gpu: Mapping[str, Any]) -> list[str]:
    """What about ``gpu`` the engine was not built for (empty when it fits or when nothing is known)."""
    problems = []
    cc = gpu.get("compute_capability")
    targets = man.get("targets") or {}
    if man.get("flavor") == "rtx":
        explicit = targets.get("compute_capabilities") if not targets.get("default") else None
        if not explicit:
            # Default targets: the docs say 8.0/8.6/8.9/12.0 "and later" (cpu-engines.html), so an exact list would
            # refuse a newer GPU that runs it; only a GPU older than every target (Turing needs an explicit SM75
            # build) is certain to fail. Anything else is for runtime.get_engine_validity to judge at load.
            floor = min(RTX_DEFAULT_COMPUTE_CAPABILITIES, key=_cc_tuple)
            if cc and _cc_tuple(cc) < _cc_tuple(floor):
                problems.append(f"GPU compute capability: engine built for TensorRT-RTX's default targets "
                                f"({', '.join(RTX_DEFAULT_COMPUTE_CAPABILITIES)} and later), this GPU "
                                f"'{gpu.get('name')}' is {cc} (build with --compute-capabilities 75 for Turing)")
            return problems
        allowed = list(explicit)
        # Explicit targets: "the engine built can only be run on" them (cpu-engines.html).
        if cc and "current" not in allowed and cc not in allowed:
            problems.append(f"GPU compute capability: engine targets {', '.join(allowed)}, this GPU "
                            f"'{gpu.get('name')}' is {cc}")
        if "current" in allowed:  # built for the build machine's GPU only
            built = man.get("built_on") if isinstance(man.get("built_on"), dict) else {}
            if built.get("compute_capability") and cc and built["compute_capability"] != cc:
                problems.append(f"GPU compute capability: engine built for {built['compute_capability']} "
                                f"('{built.get('name')}'), this GPU '{gpu.get('name')}' is {cc}")
        return problems
    built = man.get("built_on")
    if not isinstance(built, dict):
        return problems  # nothing recorded to compare with
    level = (man.get("builder") or {}).get("hardware_compatibility")
    if level == "ampere_plus":
        if cc and _cc_tuple(cc) < AMPERE_PLUS_MIN_CC:
            problems.append(f"GPU compute capability: engine is hardware-compatible with Ampere+ (>= 8.0), this GPU "
                            f"'{gpu.get('name')}' is {cc}")
        return problems
    if built.get("compute_capability") and cc and built["compute_capability"] != cc:
        problems.append(f"GPU compute capability: engine built on {built['compute_capability']}, this GPU is {cc}")
    if level != "same_compute_capability" and built.get("name") and gpu.get("name") and built["name"] != gpu["name"]:
        problems.append(f"GPU: engine built on '{built['name']}', this GPU is '{gpu['name']}'")
    return problems


def check_engine(engine_path: str | os.PathLike, installed_flavor: str, installed_version: str,
                 gpu: Mapping[str, Any] | None = None, data: bytes | None = None) -> dict[str, Any]:
    """Refuse an engine that would not be the one its manifest describes on this machine.

    Raises EngineMismatchError (a ModelLoadError) naming every difference and the command that rebuilds it when:
    the manifest is missing or unreadable; the engine's sha256 differs from the manifest's (tampered, truncated or
    swapped); the flavour or the exact TensorRT version differs; the GPU name / compute capability differs (only
    checked when ``gpu`` is given). ``data``: the engine bytes already read (then the file is not re-read, so the
    bytes hashed here are the bytes you deserialize). Returns the manifest.
    """
    engine_path = Path(engine_path)
    if data is None:
        if not engine_path.is_file():
            raise ModelLoadError(f"engine '{engine_path}': file not found; {rebuild_hint(engine_path)}")
        data = engine_path.read_bytes()
    man = read_manifest(engine_path)
    if man is None:
        raise EngineMismatchError(
            f"engine '{engine_path}': manifest {manifest_path(engine_path).name} is missing, so its TensorRT "
            f"flavour/version, GPU and contents cannot be verified; refusing to load it; "
            f"{rebuild_hint(engine_path, flavor=installed_flavor)}")
    problems = []
    got_sha = sha256_bytes(data)
    if man.get("engine_sha256") != got_sha:
        problems.append(f"engine bytes: sha256 {got_sha[:16]}… ({len(data)} bytes), manifest expects "
                        f"{str(man.get('engine_sha256'))[:16]}… ({man.get('engine_bytes')} bytes): the file was "
                        "modified after it was built")
    if man.get("flavor") != installed_flavor:
        problems.append(f"TensorRT flavour: engine built with '{man.get('flavor')}' "
                        f"({(man.get('tensorrt') or {}).get('module')}), installed is '{installed_flavor}'")
    built_version = (man.get("tensorrt") or {}).get("version")
    if str(built_version) != str(installed_version):
        problems.append(f"TensorRT version: engine built with {built_version}, installed is {installed_version} "
                        "(engines need the exact version)")
    if gpu is not None:
        problems += _gpu_problems(man, gpu)
    if problems:
        raise EngineMismatchError(f"engine '{engine_path}' does not match this machine: " + "; ".join(problems)
                                  + f"; {rebuild_hint(engine_path, man, flavor=installed_flavor)}")
    return man


def is_up_to_date(engine_path: str | os.PathLike, onnx_sha256: str, options: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether ``engine_path`` was built from this ONNX with these options and is untouched: (ok, why not)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return False, "no engine"
    try:
        man = read_manifest(engine_path)
    except EngineMismatchError as e:
        return False, str(e)
    if man is None:
        return False, "no manifest"
    if (man.get("onnx") or {}).get("sha256") != onnx_sha256:
        return False, "ONNX changed"
    if man.get("options") != dict(options):
        return False, "options changed"
    if man.get("engine_sha256") != sha256_file(engine_path):
        return False, "engine bytes differ from manifest"
    return True, "up to date"


def spec_bounds(manifest: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Dynamic-dim name -> (min, max) from the manifest's spec (empty when it has none)."""
    dyn = ((manifest.get("spec") or {}).get("dynamic")) or {}
    return {k: (int(v["min"]), int(v["max"])) for k, v in dyn.items()}
