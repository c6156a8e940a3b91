"""Build TensorRT engines from the pipeline's ONNX files: ``python -m optimize engines --models a,b``.

One builder for three flavours (see runtime/engine_manifest.py for the naming and the manifest):

- ``trt10``: ``tensorrt`` 10.x (JetPack 6 has 10.3). Network created with the STRONGLY_TYPED flag
  (``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``), so precision comes from the ONNX graph. Fallback,
  10.x before 10.12 only (NVIDIA calls strong typing complete from 10.12): if the strongly typed build fails, the
  network is rebuilt weakly typed with BuilderFlag.FP16 for fp16/int8 sources (+ INT8 for Q/DQ graphs; an fp32
  source gets no precision flag) and the manifest says so.
- ``trt11``: ``tensorrt`` 11.x. Always strongly typed, ``create_network(0)``; no precision flags exist.
- ``rtx``: ``tensorrt_rtx``. ``create_network(0)`` (strongly typed). Builds without a GPU ("CPU-only AOT"); the
  engine runs on the compute capabilities it targets (default 8.0/8.6/8.9/12.0; ``--compute-capabilities 75`` for
  Turing, ``current`` = this machine's GPU, needs one).

Inputs (precision <- file): ``fp32.sim.onnx`` -> fp32, ``fp16.onnx`` -> fp16, ``int8.qdq.onnx`` -> int8.
TF32: TensorRT enables BuilderFlag.TF32 by default (10.x, 11.x and RTX alike), so an "fp32" engine would run its
FP32 GEMMs/convolutions in TF32; it is cleared for fp32 sources (``builder.tf32`` in the manifest, ``--noTF32``).
Layer precisions: a strongly typed engine computes each layer in the type the ONNX graph gives it, so the manifest's
``layers`` counts, from the parsed network, the GEMM/convolution layers per precision (``int8`` when both inputs come
from DequantizeLinear, i.e. TensorRT runs an INT8 kernel; otherwise the layer's type: float16, float32, with
``tf32`` saying whether FP32 ones may use TF32) and the other layers per output type. Nothing in the build forces a
precision on ``int8.qdq.onnx``: quantize writes it mixed INT8/FP16 (optimize.qdq_fp16: float16 outside the Q/DQ pairs,
float16 Q/DQ scales), so its unquantised GEMMs build in FP16; an INT8 engine whose Q/DQ graph kept float32 (the mix
off, or outside the budget: manifest ``int8.qdq.fp16_mix.why``) computes them in FP32/TF32 and can be slower than the
FP16 engine: the build warns and the manifest's ``warnings`` say so.
Outputs: ``<model dir>/<precision>.<flavor>.engine`` + ``<engine>.json`` manifest, written atomically.
Timing cache (trt10/trt11): one file per flavour/version/GPU under ``<artifacts>/timing/``, loaded before and saved
after every build. TensorRT-RTX made timing caches a no-op in 1.2: the path is recorded with ``applicable: false``.
"""
from __future__ import annotations

import logging
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from optimize.trt_ready import fix_hints, format_parser_error, parser_errors
from runtime import engine_manifest as em
from runtime.errors import BackendError, EdgeattnError, ModelLoadError
from runtime.modelspec import precision_of
from pipeline.args import (add_artifacts, add_flavor, add_force, add_models, choice_list, int_range, positive_int,
                           stage_parser)
from pipeline.artifacts import resolve_models
from pipeline.stage import cli
from runtime.tensorrt_backend import tensorrt_logger
from zoo.spec import load_spec
from zoo.tasks import task_of_dir

log = logging.getLogger("edgeattn.engines")

SOURCES = {"fp32": "fp32.sim.onnx", "fp16": "fp16.onnx", "int8": "int8.qdq.onnx"}
STRONG_TYPING_COMPLETE = (10, 12)  # TensorRT 10.x before this may need the FP16-flag fallback
RTX_CC = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121",
          "current": "CURRENT"}
# TensorRT warnings that say nothing about this engine (kept out of the manifest; still logged).
QUIET_WARNINGS = ("Make sure input", "Timing cache operations are no-ops")
HW_COMPAT = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


class EngineBuildError(EdgeattnError, RuntimeError):
    """Parsing or building failed; the message names the file, the failing nodes/ops or TensorRT's own errors."""


# ---- TensorRT module ---------------------------------------------------------------------------
def _logger(trt):
    """The process-wide capturing ILogger (shared with the runtime: TensorRT expects one logger per process)."""
    return tensorrt_logger(trt)


def load_tensorrt(flavor: str = "auto"):
    """``(trt_module, flavor, version, gpu)`` for ``flavor`` in auto|trt|trt10|trt11|rtx.

    'auto' prefers ``tensorrt`` when it imports AND a GPU is present (it cannot build without one), else
    ``tensorrt_rtx`` (builds CPU-only). Raises EngineBuildError saying what is missing.
    """
    gpu, why = em.probe_gpu()
    if flavor == "auto":
        if gpu is not None:
            try:
                trt, name, version = em.import_tensorrt("trt")
                return trt, name, version, gpu
            except BackendError as e:
                log.info("auto flavour: %s; trying tensorrt_rtx", e)
        try:
            trt, name, version = em.import_tensorrt("rtx")
        except BackendError as e:
            raise EngineBuildError(f"no TensorRT to build with: {e}" + ("" if gpu else f"; no GPU either ({why}), "
                                   "so only tensorrt-rtx (pip install tensorrt-rtx) can build here")) from e
        return trt, name, version, gpu
    try:
        trt, name, version = em.import_tensorrt(flavor)
    except BackendError as e:
        raise EngineBuildError(str(e)) from e
    if name != "rtx" and gpu is None:
        raise EngineBuildError(f"flavour '{name}' (tensorrt {version}) needs an NVIDIA GPU to build engines and none is "
                               f"usable ({why}); build CPU-only with --flavor rtx (TensorRT-RTX), or build on the target")
    return trt, name, version, gpu


# ---- pieces of a build ------------------------------------------------------------------------
def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _parse(trt, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))  # path form: external weights next to the file are found
    if ok:
        return parser
    entries = parser_errors(parser)  # each rejected node: name, op, index, the parser's message
    errors = [format_parser_error(e) for e in entries]
    if not errors:
        errors = logger.take_errors() or ["parser returned False without an error record"]
    raise EngineBuildError(f"ONNX parser rejected '{onnx_path}' ({len(errors)} error(s)): " + "; ".join(errors)
                           + fix_hints(entries))


def _dtype_name(trt, dt) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dt)).name
    except Exception:  # noqa: BLE001 - types numpy has no name for (fp8, int4, ...)
        return str(dt).split(".")[-1].lower()


def _network_io(trt, network) -> list[dict[str, Any]]:
    """Tensors as the parsed network sees them (-1 = dynamic)."""
    io = []
    for mode, n, get in (("input", network.num_inputs, network.get_input),
                         ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            io.append({"name": t.name, "mode": mode, "dtype": _dtype_name(trt, t.dtype), "shape": list(t.shape)})
    return io


def profile_rows(spec) -> list[tuple[str, dict[str, dict[str, tuple[int, ...]]]]]:
    """(name, {min|opt|max: input shapes}) per optimisation profile: one from the spec's dynamic min/opt/max, or, for
    a spec whose ``preprocess['profiles']`` names several (a decoder: prefill with past 0, decode with sequence 1;
    zoo.gpt2.decoder_spec), one each, with ``total`` = past + sequence."""
    named = (spec.preprocess or {}).get("profiles")
    if not named:
        return [("default", {w: spec.profile(w) for w in ("min", "opt", "max")})]
    out = []
    for pname, dims in named.items():
        rows = {}
        for i, w in enumerate(("min", "opt", "max")):
            sizes = {d: int(r[i]) for d, r in dims.items()}
            if "past" in sizes and "sequence" in sizes:
                sizes.setdefault("total", sizes["past"] + sizes["sequence"])
            rows[w] = {t.name: spec.concrete_shape(t, sizes) for t in spec.inputs}
        out.append((pname, rows))
    return out


def _profiles(builder, network, spec) -> list[tuple[str, Any, dict[str, dict[str, list[int]]]]]:
    """(name, profile, shapes TensorRT read back) per row of :func:`profile_rows`."""
    return [(name, *_profile(builder, network, spec, rows)) for name, rows in profile_rows(spec)]


def _profile(builder, network, spec, rows: dict | None = None) -> tuple[Any, dict[str, dict[str, list[int]]]]:
    """One optimisation profile from ``rows`` (default: the spec's min/opt/max); returns it and the shapes TensorRT
    read back."""
    rows = rows or {w: spec.profile(w) for w in ("min", "opt", "max")}
    net_inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if set(net_inputs) != set(rows["min"]):
        raise EngineBuildError(f"spec '{spec.name}' inputs {sorted(rows['min'])} do not match the ONNX graph's inputs "
                               f"{sorted(net_inputs)}")
    prof = builder.create_optimization_profile()
    for name, net_shape in net_inputs.items():
        mn, op, mx = rows["min"][name], rows["opt"][name], rows["max"][name]
        if len(net_shape) != len(mn) or any(d >= 0 and d != m for d, m in zip(net_shape, mn)):
            raise EngineBuildError(f"input '{name}': ONNX shape {net_shape} does not fit the spec's shape {mn}..{mx}")
        try:  # pyCore.cpp: PY_ASSERT_RUNTIME_ERROR on an inconsistent shape (RuntimeError; ValueError per its doc)
            prof.set_shape(name, mn, op, mx)
        except (RuntimeError, ValueError) as e:
            raise EngineBuildError(f"input '{name}': TensorRT rejected the optimisation profile min {tuple(mn)}, opt "
                                   f"{tuple(op)}, max {tuple(mx)} ({e}); expected min <= opt <= max of rank "
                                   f"{len(net_shape)}, equal to the ONNX shape {net_shape} on its fixed dims") from e
    read_back = {}
    for name in net_inputs:
        got = prof.get_shape(name)  # [min, opt, max] as TensorRT stored them
        read_back[name] = {k: [int(d) for d in s] for k, s in zip(("min", "opt", "max"), got)}
    return prof, read_back


def _cli(flavor: str, onnx_path: Path, engine_path: Path, profiles: Sequence[Mapping[str, Mapping[str, list[int]]]],
         builder_opts: Mapping[str, Any]) -> str:
    """The equivalent trtexec (TensorRT 10/11) or tensorrt_rtx command line, the same build as flags a user can rerun;
    one --minShapes/--optShapes/--maxShapes group per optimisation profile (trtexec adds a profile per group)."""
    args = ["tensorrt_rtx" if flavor == "rtx" else "trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    for prof in profiles:
        if prof:
            shapes = {k: ",".join(f"{n}:{_dims(p[k])}" for n, p in prof.items()) for k in ("min", "opt", "max")}
            args += [f"--minShapes={shapes['min']}", f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}"]
    if flavor == "rtx":
        ccs = builder_opts.get("compute_capabilities")
        if ccs:
            args.append("--computeCapabilities=" + ",".join("current" if c == "current" else c.replace(".", "")
                                                            for c in ccs))
            if "current" in ccs:
                args[-1] = "--useGpu"
    else:
        args.append(f"--memPoolSize=workspace:{int(builder_opts['workspace_mb'])}")
        args.append(f"--builderOptimizationLevel={int(builder_opts['opt_level'])}")
        cache = (builder_opts.get("timing_cache") or {}).get("path")
        if cache:
            args.append(f"--timingCacheFile={cache}")
        if flavor == "trt10":
            if builder_opts.get("strongly_typed"):
                args.append("--stronglyTyped")
            for f in builder_opts.get("precision_flags") or []:
                args.append(f"--{f.lower()}")
        if builder_opts.get("tf32") is False:
            args.append("--noTF32")  # trtexec 10.3 and 11.1 (sampleOptions.cpp); the RTX CLI's flag is unverified
        hw = builder_opts.get("hardware_compatibility")
        if hw:
            args.append("--hardwareCompatibilityLevel=" + {"ampere_plus": "ampere+",
                                                           "same_compute_capability": "sameComputeCapability"}[hw])
    args.append("--skipInference")
    return " ".join(shlex.quote(a) for a in args)


GEMM_CONV = ("MATRIX_MULTIPLY", "CONVOLUTION", "DECONVOLUTION")
NOT_COMPUTE = ("CONSTANT", "QUANTIZE", "DEQUANTIZE")


def _layer_type(layer) -> str:
    return str(layer.type).split(".")[-1]


def layer_precisions(trt, network) -> dict[str, dict[str, int]]:
    """{gemm_conv: {precision: n}, other: {output dtype: n}} of a parsed network (see the module docstring)."""
    producer: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer

    def dequantized(tensor) -> bool:  # DQ -> (a Shuffle, e.g. the transpose of a Gemm weight) -> this input
        src = producer.get(tensor.name) if tensor is not None else None
        if src is not None and _layer_type(src) == "SHUFFLE" and src.num_inputs:
            src = producer.get(src.get_input(0).name) if src.get_input(0) is not None else None
        return src is not None and _layer_type(src) == "DEQUANTIZE"

    gemm: dict[str, int] = {}
    other: dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = _layer_type(layer)
        if kind in NOT_COMPUTE or not layer.num_outputs:
            continue
        out = _dtype_name(trt, layer.get_output(0).dtype)
        if kind in GEMM_CONV:
            ins = [layer.get_input(j) for j in range(min(2, layer.num_inputs))]
            key = "int8" if ins and all(dequantized(t) for t in ins) else out
            gemm[key] = gemm.get(key, 0) + 1
        else:
            other[out] = other.get(out, 0) + 1
    return {"gemm_conv": gemm, "other": other}


def precision_warning(precision: str | None, layers: Mapping[str, Any]) -> str | None:
    """The warning an INT8 engine with unquantised FP32 GEMMs/convolutions deserves (None otherwise)."""
    gemm = layers.get("gemm_conv") or {}
    fp32 = gemm.get("float32", 0)
    if precision != "int8" or not fp32:
        return None
    total = sum(gemm.values())
    how = "FP32/TF32" if layers.get("tf32") else "FP32"
    return (f"INT8 engine: {fp32} of {total} GEMM/convolution layers are not quantised and compute in {how} (the Q/DQ "
            "graph keeps the float parts of its source in float32); such an engine can be slower than the FP16 one. "
            "Expected unquantised layers in FP16: quantize writes int8.qdq.onnx mixed INT8/FP16 (optimize.qdq_fp16) "
            "unless QuantOptions.fp16_mix is off or the mixed graph missed the budget (manifest int8.qdq.fp16_mix.why)")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


def _has_qdq(network) -> bool:
    for i in range(network.num_layers):
        if "QUANTIZE" in str(network.get_layer(i).type).upper():
            return True
    return False


# ---- the build --------------------------------------------------------------------------------
def build_engine(onnx_path: str | Path, engine_path: str | Path, spec, flavor: str = "auto", workspace_mb: int = 1024,
                 opt_level: int = 3, timing_cache: str | Path | None = None,
                 compute_capabilities: Sequence[str] | None = None, hardware_compatibility: str | None = None,
                 precision: str | None = None) -> dict[str, Any]:
    """Parse ``onnx_path``, build with the optimisation profiles of ``spec`` (a zoo.spec.ModelSpec: one from its
    min/opt/max, or a decoder's prefill and decode profiles, :func:`profile_rows`), write
    ``engine_path`` and ``<engine_path>.json`` atomically; return the manifest.

    ``workspace_mb``: WORKSPACE memory-pool limit. ``opt_level``: builder_optimization_level 0..5 (3 = TensorRT's
    default). ``timing_cache``: file loaded before and saved after the build (trt10/trt11; recorded but not
    applicable on rtx). ``compute_capabilities`` (rtx only): e.g. ["8.6", "8.9"], ["7.5"], ["current"]; None =
    TensorRT-RTX's default set. ``hardware_compatibility`` (trt10/trt11 only): None, "ampere_plus" or
    "same_compute_capability". Raises EngineBuildError.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX '{onnx_path}': file not found")
    if not 0 <= int(opt_level) <= 5:
        raise EngineBuildError(f"opt_level {opt_level}: expected 0..5")
    if int(workspace_mb) <= 0:
        raise EngineBuildError(f"workspace_mb {workspace_mb}: expected > 0")
    trt, flavor_name, version, gpu = load_tensorrt(flavor)
    ccs = _normalise_ccs(compute_capabilities, flavor_name, gpu)
    if hardware_compatibility and (flavor_name == "rtx" or hardware_compatibility not in HW_COMPAT):
        raise EngineBuildError(f"hardware_compatibility '{hardware_compatibility}': expected one of {list(HW_COMPAT)} "
                               "and a tensorrt (not tensorrt_rtx) flavour")
    hw_level = _hardware_level(trt, version, hardware_compatibility)
    precision = precision or precision_of(onnx_path, default="unknown")
    onnx_sha = em.sha256_file(onnx_path)
    logger = _logger(trt)
    logger.take_errors()
    logger.take_warnings()

    t0 = time.perf_counter()
    strongly_typed = True
    attempt = _build_once(trt, logger, flavor_name, onnx_path, spec, workspace_mb, opt_level, timing_cache, ccs,
                          hw_level, strongly_typed=True, precision=precision)
    if attempt["data"] is None and flavor_name == "trt10" and _version_tuple(version) < STRONG_TYPING_COMPLETE:
        log.warning("tensorrt %s: strongly typed build failed (%s); retrying weakly typed with precision flags",
                    version, "; ".join(attempt["errors"]) or "no message")
        strongly_typed = False
        attempt = _build_once(trt, logger, flavor_name, onnx_path, spec, workspace_mb, opt_level, timing_cache, ccs,
                              hw_level, strongly_typed=False, precision=precision)
    data = attempt["data"]
    if data is None:
        raise EngineBuildError(f"build_serialized_network returned None for '{onnx_path}' ({flavor_name} {version}): "
                               + ("; ".join(attempt["errors"]) or "TensorRT logged no error"))
    seconds = time.perf_counter() - t0
    warnings = [w for w in logger.take_warnings() if not any(q in w for q in QUIET_WARNINGS)]
    for w in warnings:
        if "not self-consistent" in w:
            log.warning("engine %s: TensorRT says the graph cannot run at every shape of its profile "
                        "(a shape baked into the ONNX at export?): %s", engine_path.name, w)
    why = precision_warning(precision, attempt["layers"])
    if why:
        log.warning("engine %s: %s", engine_path.name, why)
        warnings.append(why)
    em.atomic_write_bytes(engine_path, data)
    builder_opts = {
        "workspace_mb": int(workspace_mb), "opt_level": int(opt_level), "timing_cache": attempt["timing_cache"],
        "strongly_typed": strongly_typed, "network_flags": attempt["network_flags"],
        "precision_flags": attempt["precision_flags"], "tf32": attempt["tf32"],
        "hardware_compatibility": hardware_compatibility,
        "compute_capabilities": ccs if flavor_name == "rtx" else None,
    }
    manifest = {
        "format": em.MANIFEST_FORMAT,
        "engine": engine_path.name,
        "engine_sha256": em.sha256_bytes(data),
        "engine_bytes": len(data),
        "onnx": {"file": onnx_path.name, "path": str(onnx_path), "sha256": onnx_sha},
        "model": spec.name,
        "artifact": engine_path.parent.name,
        "artifacts_dir": str(engine_path.parent.parent),
        "precision": precision,
        "flavor": flavor_name,
        "tensorrt": {"module": trt.__name__, "version": version, "onnx_parser": _parser_version(trt)},
        "cuda": em.cuda_versions(),  # as cuda-python reports them; None when it is not installed
        "built_on": "cpu-only" if gpu is None else {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "targets": _targets(flavor_name, ccs, gpu, hardware_compatibility),
        "profiles": attempt["profiles"],
        **({"profile_names": attempt["profile_names"]} if attempt["profile_names"] != ["default"] else {}),
        "builder": builder_opts,
        "options": build_options(flavor_name, version, gpu, workspace_mb, opt_level, compute_capabilities,
                                 hardware_compatibility, precision),
        "build_seconds": round(seconds, 3),
        "cli": _cli(flavor_name, onnx_path, engine_path, attempt["profiles"], builder_opts),
        "rebuild": dict(zip(("make", "python"), em.rebuild_commands(spec.name, str(engine_path.parent.parent),
                                                                     flavor_name, precision))),
        "io": attempt["io"],
        "layers": attempt["layers"],
        "warnings": warnings,
        "spec": spec.to_dict(),
        "host": em.host_info(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    em.write_manifest(engine_path, manifest)
    log.info("engine %s: %s %s, %d bytes, %.2f s", engine_path, flavor_name, version, len(data), seconds)
    return manifest


def build_options(flavor: str, version: str, gpu: Mapping[str, Any] | None, workspace_mb: int, opt_level: int,
                  compute_capabilities: Sequence[str] | None, hardware_compatibility: str | None,
                  precision: str | None = None) -> dict[str, Any]:
    """What decides an engine's bytes besides the ONNX: compared to decide whether an engine is up to date."""
    return {
        "flavor": flavor, "version": version, "workspace_mb": int(workspace_mb), "opt_level": int(opt_level),
        "tf32": tf32_allowed(precision),
        "compute_capabilities": list(compute_capabilities) if compute_capabilities else None,
        "hardware_compatibility": hardware_compatibility,
        # trt10/11 engines are tuned for the build GPU; CPU-only RTX builds do not depend on the machine's GPU
        "gpu": None if (flavor == "rtx" and not (compute_capabilities and "current" in compute_capabilities)) or gpu is None
        else f"{gpu['name']} ({gpu['compute_capability']})",
    }


def _normalise_ccs(ccs: Sequence[str] | None, flavor: str, gpu) -> list[str] | None:
    if not ccs:
        return None
    if flavor != "rtx":
        raise EngineBuildError(f"compute_capabilities {list(ccs)}: only TensorRT-RTX builds for chosen compute "
                               f"capabilities; '{flavor}' builds for the GPU it runs on")
    out = []
    for c in ccs:
        c = str(c).strip().lower()
        if re.fullmatch(r"\d{2,3}", c):  # "86" -> "8.6", "120" -> "12.0"
            c = f"{c[:-1]}.{c[-1]}"
        if c not in RTX_CC:
            raise EngineBuildError(f"compute capability '{c}': expected some of {sorted(RTX_CC)} (TensorRT-RTX has no "
                                   "Orin 8.7 or Hopper 9.0 targets)")
        out.append(c)
    if "current" in out and (len(out) != 1 or gpu is None):
        raise EngineBuildError("compute capability 'current': must be the only target and needs a GPU at build time "
                               "(none usable here); pick explicit targets such as 8.6,8.9 for a CPU-only build")
    return out


def _targets(flavor: str, ccs, gpu, hw) -> dict[str, Any]:
    if flavor == "rtx":
        if ccs == ["current"]:
            return {"compute_capabilities": ["current"], "gpu": gpu["name"] if gpu else None}
        return {"compute_capabilities": ccs or list(em.RTX_DEFAULT_COMPUTE_CAPABILITIES), "default": not ccs}
    if hw == "ampere_plus":
        return {"compute_capabilities": ">=8.0", "hardware_compatibility": hw}
    return {"gpu": gpu["name"] if gpu else None, "compute_capability": gpu["compute_capability"] if gpu else None,
            "hardware_compatibility": hw}


def _parser_version(trt) -> str | None:
    """``getNvOnnxParserVersion()`` is NV_ONNX_PARSER_MAJOR * 10000 + MINOR * 100 + PATCH (NvOnnxParser.h): the
    parser API version, 100 = "0.1.0" in TensorRT 10/11, 200 = "0.2.0" in TensorRT-RTX 1.7; not the library version."""
    try:
        v = int(trt.get_nv_onnx_parser_version())
    except Exception:  # noqa: BLE001
        return None
    return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"


def _build_once(trt, logger, flavor: str, onnx_path: Path, spec, workspace_mb: int, opt_level: int, timing_cache,
                ccs, hw, strongly_typed: bool, precision: str | None = None) -> dict[str, Any]:
    builder = trt.Builder(logger)
    if not builder:
        raise EngineBuildError(f"trt.Builder failed ({'; '.join(logger.take_errors())})")
    if flavor == "trt10":
        flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strongly_typed else 0
    else:
        flags = 0  # trt11 and rtx: always strongly typed; no flag needed (11.x bit values moved)
    network = builder.create_network(flags)
    parser = _parse(trt, network, logger, onnx_path)
    layers = layer_precisions(trt, network)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.builder_optimization_level = int(opt_level)
    precision_flags: list[str] = []
    if not strongly_typed:  # TensorRT 10.x < 10.12 fallback only; an fp32 source stays FP32 (no FP16 flag)
        if precision in ("fp16", "int8"):
            precision_flags.append("FP16")
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8" or _has_qdq(network):
            precision_flags.append("INT8")
            config.set_flag(trt.BuilderFlag.INT8)
    tf32 = _set_tf32(trt, config, precision)
    if ccs:
        config.num_compute_capabilities = len(ccs)
        for i, c in enumerate(ccs):
            if not config.set_compute_capability(getattr(trt.ComputeCapability, RTX_CC[c]), i):
                why = "; ".join(logger.take_errors()) or "TensorRT logged no error"
                raise EngineBuildError(f"set_compute_capability({RTX_CC[c]}, {i}) for compute capability '{c}' "
                                       f"returned False ({why}); expected {trt.__name__} to accept the targets {ccs}")
    if hw is not None:
        config.hardware_compatibility_level = hw
    read_back, names = [], []
    for pname, profile, shapes in _profiles(builder, network, spec):
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"add_optimization_profile failed for profile '{pname}' "
                                   f"({'; '.join(logger.take_errors())})")
        read_back.append(shapes)
        names.append(pname)
    cache_info, cache_obj = _attach_timing_cache(trt, config, flavor, timing_cache)
    ser = builder.build_serialized_network(network, config)
    errors = logger.take_errors()
    data = None
    if ser is not None:
        data = bytes(memoryview(ser))
        if cache_obj is not None:
            cache_info = _save_timing_cache(config, cache_info, Path(timing_cache))
    del parser, cache_obj
    layers.update(tf32=tf32, strongly_typed=strongly_typed)  # weakly typed: TensorRT picks per layer (flags)
    return {"data": data, "errors": errors, "profiles": read_back, "profile_names": names, "io": _network_io(trt, network),
            "network_flags": flags, "precision_flags": precision_flags, "tf32": tf32, "timing_cache": cache_info,
            "layers": layers}


def tf32_allowed(precision: str | None) -> bool:
    """TF32 (on by default in TensorRT) stays on except for fp32 sources, whose engines must compute in FP32."""
    return precision != "fp32"


def _set_tf32(trt, config, precision: str | None) -> bool | None:
    """Clear BuilderFlag.TF32 for fp32 sources; returns whether TF32 stays allowed (None: no such flag here)."""
    flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if flag is None:  # nothing to clear in this TensorRT: record "unknown", not a claim
        return None
    if tf32_allowed(precision):
        return True
    config.clear_flag(flag)
    return False


def _hardware_level(trt, version: str, hw: str | None):
    """The HardwareCompatibilityLevel member for ``hw`` (None for none), checked against this module's bindings:
    tensorrt 10.3 has only NONE and AMPERE_PLUS (SAME_COMPUTE_CAPABILITY arrived in 10.9)."""
    if not hw:
        return None
    levels = getattr(trt, "HardwareCompatibilityLevel", None)
    member = getattr(levels, HW_COMPAT[hw], None)
    if member is None:
        have = [k for k, v in HW_COMPAT.items() if hasattr(levels, v)]
        raise EngineBuildError(f"hardware_compatibility '{hw}': {trt.__name__} {version} has no "
                               f"HardwareCompatibilityLevel.{HW_COMPAT[hw]} (SAME_COMPUTE_CAPABILITY needs TensorRT "
                               f"10.9 or later); expected one this TensorRT offers: {have or 'none'}")
    return member


def _attach_timing_cache(trt, config, flavor: str, path) -> tuple[dict[str, Any], Any]:
    if path is None:
        return {"path": None, "applicable": flavor != "rtx"}, None
    path = Path(path)
    if flavor == "rtx":
        return {"path": str(path), "applicable": False,
                "note": "TensorRT-RTX >= 1.2: timing-cache calls are no-ops (kernels are chosen by the JIT at "
                        "context creation; use a runtime cache there); no file read or written"}, None
    old = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(old)
    if not cache or not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        old = b""
        cache = config.create_timing_cache(b"")
        if not cache or not config.set_timing_cache(cache, False):
            raise EngineBuildError(f"timing cache: could not attach a new cache ({path})")
    return {"path": str(path), "applicable": True, "loaded_bytes": len(old), "reused": bool(old)}, cache


def _save_timing_cache(config, info: dict[str, Any], path: Path) -> dict[str, Any]:
    cache = config.get_timing_cache()
    if cache is None:
        return {**info, "saved_bytes": 0}
    blob = bytes(memoryview(cache.serialize()))
    em.atomic_write_bytes(path, blob)
    return {**info, "saved_bytes": len(blob)}


# ---- spec lookup, CLI --------------------------------------------------------------------------
def default_timing_cache(artifacts: Path, flavor: str, version: str, gpu: Mapping[str, Any] | None) -> Path:
    """Timing caches are only valid for one TensorRT version and GPU: key the file by both."""
    gpu_key = re.sub(r"[^A-Za-z0-9]+", "-", f"{gpu['name']}-sm{gpu['compute_capability']}") if gpu else "cpu-only"
    return artifacts / "timing" / f"{flavor}-{version}-{gpu_key}.timing_cache"


def _fmt_size(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("engines", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    add_flavor(ap)
    ap.add_argument("--precisions", type=choice_list(tuple(SOURCES)), default="fp32,fp16,int8",
                    help=f"subset of {','.join(SOURCES)}")
    ap.add_argument("--workspace-mb", type=positive_int, default=1024)
    ap.add_argument("--opt-level", type=int_range(0, 5), default=3, help="builder_optimization_level 0..5")
    ap.add_argument("--timing-cache", type=Path, default=None,
                    help="timing cache file (default <artifacts>/timing/<flavor>-<version>-<gpu>.timing_cache)")
    ap.add_argument("--compute-capabilities", default=None,
                    help="TensorRT-RTX targets, e.g. 8.6,8.9 or 75 or current (default: RTX's own set)")
    ap.add_argument("--hardware-compatibility", default=None, choices=sorted(HW_COMPAT))
    add_force(ap, help="rebuild even when up to date")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    precisions = list(args.precisions)
    ccs = [c for c in (args.compute_capabilities or "").split(",") if c.strip()] or None
    try:
        trt, flavor, version, gpu = load_tensorrt(args.flavor)
    except EngineBuildError as e:
        print(f"engines: {e}", file=sys.stderr)
        return 1
    where = "cpu-only" if gpu is None else f"{gpu['name']} (sm {gpu['compute_capability']})"
    print(f"engines: {trt.__name__} {version} (flavour {flavor}) on {where}")
    cache = args.timing_cache or default_timing_cache(args.artifacts, flavor, version, gpu)

    jobs = [(ref, p) for ref in resolve_models(args.models, args.artifacts) for p in precisions]
    rows: list[dict[str, Any]] = []
    for i, (ref, prec) in enumerate(jobs, 1):
        model, folder = ref.name, ref.folder
        src = folder / SOURCES[prec]
        if prec == "fp32" and not src.is_file():  # the task's other fp32 graphs (a decoder: the export's fp32.onnx)
            src = next((folder / f for f in task_of_dir(folder).fp32_sources if (folder / f).is_file()), src)
        engine = folder / em.engine_file_name(prec, flavor)
        row = {"model": model, "precision": prec, "flavor": flavor, "status": "", "seconds": None, "bytes": None,
               "engine": str(engine)}
        rows.append(row)
        prefix = f"[{i}/{len(jobs)}] {model} {prec}"
        if not src.is_file():
            row["status"] = f"skipped: no {src.name}"
            print(f"{prefix}: skipped, source {src} is missing (run the export/optimize/quantize stages first)")
            continue
        opts = build_options(flavor, version, gpu, args.workspace_mb, args.opt_level, ccs, args.hardware_compatibility,
                             prec)
        ok, why = em.is_up_to_date(engine, em.sha256_file(src), opts)
        if ok and not args.force:
            man = em.read_manifest(engine) or {}
            row.update(status="up to date", seconds=man.get("build_seconds"), bytes=man.get("engine_bytes"))
            print(f"{prefix}: up to date ({engine.name})")
            continue
        print(f"{prefix}: building {engine.name} from {src.name} ({why}) ...", flush=True)
        try:
            try:
                spec = load_spec(src)
            except ModelLoadError as e:
                raise EngineBuildError(f"no model spec: {e}") from e
            man = build_engine(src, engine, spec, flavor=flavor, workspace_mb=args.workspace_mb,
                               opt_level=args.opt_level, timing_cache=cache, compute_capabilities=ccs,
                               hardware_compatibility=args.hardware_compatibility, precision=prec)
        except EngineBuildError as e:
            row["status"] = "FAILED"
            print(f"{prefix}: FAILED: {e}")
            continue
        row.update(status="built", seconds=man["build_seconds"], bytes=man["engine_bytes"])
        print(f"{prefix}: built in {man['build_seconds']:.2f} s, {_fmt_size(man['engine_bytes'])}")
        for w in man["warnings"]:
            if "not self-consistent" in w:
                print(f"{prefix}: WARNING: TensorRT cannot run this graph at every profile shape: {w[:300]}")

    _print_table(rows)
    failed = [r for r in rows if r["status"] == "FAILED"]
    usable = [r for r in rows if r["status"] in ("built", "up to date")]
    if failed:
        return 1
    if not usable:
        print("engines: nothing to build: no source ONNX found for any requested model/precision", file=sys.stderr)
        return 1
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = ["model", "precision", "flavor", "status", "build s", "size", "engine"]
    body = [[r["model"], r["precision"], r["flavor"], r["status"],
             "-" if r["seconds"] is None else f"{r['seconds']:.2f}", _fmt_size(r["bytes"]), r["engine"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print()
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))


if __name__ == "__main__":
    raise SystemExit(cli("engines", main))

