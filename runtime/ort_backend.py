"""ONNX Runtime backend: ``OrtRunner(path)`` runs any of the pipeline's ONNX files (fp32, fp16, Q/DQ int8).

    with OrtRunner("artifacts/text_transformer/fp32.onnx", threads=2) as r:
        logits = r.infer({"input_ids": ids})["logits"]      # (B, T) int64 -> (B, classes) float32

The input contract comes from the session (names, dtypes, ranks) plus the model spec's dynamic-dim bounds
(batch range, sequence <= positional table), so a bad feed raises InputError before ORT sees it.

Providers: "auto" uses CPU unless ``runtime.gpu.nvidia_gpu_present()`` (never ORT's own provider list, which
names CUDA on machines without a GPU), then TensorRT EP -> CUDA EP -> CPU as far as installed.
The TensorRT EP gets options per precision (``trt_fp16_enable`` for fp16 graphs, ``trt_int8_enable`` for Q/DQ int8
graphs), an engine cache and one optimisation profile from the spec's min/opt/max
(``trt_profile_{min,opt,max}_shapes``; a decoder's past starts at the spec's ``past_min``, 0, so a prefill fits), so
the engine is built once, not per session or per new shape; options the caller passes as
``("TensorrtExecutionProvider", {...})`` win. The cache folder is ``<model dir>/ort_trt_cache/<sha256 of the ONNX
file>`` (``-tf32off`` appended under ``NVIDIA_TF32_OVERRIDE=0``): ORT's own cache key hashes the file name and the
input/initializer/node-output NAMES, not the weights, so a retrained or re-quantised model with the same names would
otherwise reuse the old engine. The hash is computed once per file version (cached by path, size and mtime).
TF32 is set explicitly: the CUDA EP gets ``use_tf32`` 0 for fp32 graphs (as our fp32 engines clear TF32) and 1
otherwise; the TensorRT EP has no TF32 option (TensorRT's default allows it; ``NVIDIA_TF32_OVERRIDE=0`` in the
process turns it off). ``OrtRunner.tf32`` says which applies. ONNX Runtime silently drops an EP that cannot start
(missing TensorRT/CUDA/cuDNN libraries, no GPU) and falls back to the next: when the first provider it really uses
is not the first one asked for, an explicit request raises BackendError ('auto' logs a warning), and the run-time
fallback is disabled so a session never changes provider after it was checked.

Some FP16 graphs segfault ORT CPU at ORT_ENABLE_ALL (ONNX Runtime 1.32, FP16 ViT-B/16); ``probe_in_subprocess``
runs one inference in a child process so a caller can detect the crash and use ``opt_level="extended"`` instead
(``safe_opt_level`` does both). ``try_levels`` is the one "crashed at this level: retry at the next safer one" loop
that verify, bench and the FP16 stage use.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from runtime import gpu
from runtime.base import InputContract, IOInfo, Runner
from runtime.child import run_child
from runtime.cpu import check_int8_isa
from runtime.errors import BackendError, ModelLoadError
from runtime.files import sha256_file
from runtime.modelspec import (SPEC_METADATA_KEY, bounds_from_spec, check_model_file, name_dims,
                               precision_of, read_spec, value_ranges_from_spec)
from runtime.onnx_guard import model_metadata

log = logging.getLogger("edgeattn.runtime.ort")

# ORT type string -> numpy dtype name
ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
OPT_LEVELS = ("all", "extended", "basic", "disable")  # fastest first, safest last
# The CPU-independent reference for a Q/DQ graph meant for TensorRT: with every graph optimisation off, ONNX Runtime
# runs QuantizeLinear / DequantizeLinear as the float ops the graph states (round, clip, rescale) and the layers in
# float, which is what TensorRT's int8 kernels compute up to rounding. At 'extended'/'all' ORT fuses Q/DQ into its
# own integer kernels instead, whose results depend on the CPU (int16 saturation without VNNI; runtime.cpu).
QDQ_REFERENCE_LEVEL = "disable"
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}
GPU_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
TRT_EP = "TensorrtExecutionProvider"
TRT_CACHE_DIR = "ort_trt_cache"  # beside the model; one sub-folder per ONNX file content (sha256)
CUDA_EP = "CUDAExecutionProvider"
TF32_ENV = "NVIDIA_TF32_OVERRIDE"  # "0": cuBLAS/cuDNN/TensorRT compute FP32 without TF32 in this process
_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def model_sha256(path: str | Path) -> str:
    """sha256 of a model file, hashed once per (resolved path, inode, size, mtime_ns): a session open does not
    re-read a large file it has already hashed, and a rewrite (in place or by atomic rename) changes the key."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        hit = _SHA_CACHE.get(key)
    if hit is None:
        hit = sha256_file(p)
        with _SHA_LOCK:
            _SHA_CACHE[key] = hit
    return hit


def tf32_overridden_off() -> bool:
    return os.environ.get(TF32_ENV, "").strip() == "0"


def trt_cache_dir(model_path: str | Path) -> Path:
    """The TensorRT EP engine cache of this exact file: ``<model dir>/ort_trt_cache/<sha256>[-tf32off]``."""
    p = Path(model_path).resolve()
    return p.parent / TRT_CACHE_DIR / (model_sha256(p) + ("-tf32off" if tf32_overridden_off() else ""))


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError("backend 'onnxruntime': the onnxruntime package is not installed "
                           "(pip install onnxruntime, or onnxruntime-gpu on a CUDA machine)") from e
    return onnxruntime


def resolve_providers(providers: None | str | Sequence[str], available: Sequence[str]) -> list[str]:
    """None/"auto" -> GPU chain only on a real GPU, else CPU; a name or list -> checked against ``available``."""
    if providers is None or providers == "auto":
        if gpu.nvidia_gpu_present():
            chosen = [p for p in GPU_ORDER if p in available]
        else:
            chosen = ["CPUExecutionProvider"]
        return chosen or ["CPUExecutionProvider"]
    wanted = [providers] if isinstance(providers, str) else list(providers)
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) if isinstance(p, str) else p for p in wanted]
    missing = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) not in available]
    if missing:
        raise BackendError(f"onnxruntime providers {missing}: not available; this onnxruntime offers {list(available)}")
    return wanted


def _provider_name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


def profile_shape_options(spec: dict[str, Any] | None) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` ("ids:1x1,mask:1x1", trtexec's syntax) for every input with a dynamic
    dim, from the spec's ``dynamic`` bounds; {} when there is no spec or a dynamic dim has no bounds (ORT requires
    all dynamic inputs or none)."""
    if not spec:
        return {}
    dyn = dict(spec.get("dynamic") or {})
    past_min = (spec.get("preprocess") or {}).get("past_min")
    if past_min is not None and "past" in dyn:  # DimRange cannot say 0; a decoder's prefill binds an empty past
        dyn["past"] = {**dyn["past"], "min": int(past_min)}
    rows: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for t in spec.get("inputs", []):
        shape = list(t.get("shape", []))
        if not any(isinstance(d, str) for d in shape):
            continue
        unbounded = [d for d in shape if isinstance(d, str) and d not in dyn]
        if unbounded:
            log.warning("input '%s': dynamic dims %s have no min/opt/max in the spec; no TensorRT EP profile is set "
                        "(its engine is rebuilt per new shape range)", t.get("name"), unbounded)
            return {}
        for which, row in rows.items():
            row.append(f"{t['name']}:" + "x".join(str(int(dyn[d][which])) if isinstance(d, str) else str(int(d))
                                                  for d in shape))
    if not rows["min"]:
        return {}
    return {f"trt_profile_{which}_shapes": ",".join(row) for which, row in rows.items()}


def tensorrt_ep_options(precision: str | None, spec: dict[str, Any] | None, cache_dir: str | Path) -> dict[str, str]:
    """TensorRT EP options for a graph of ``precision``: fp16 -> trt_fp16_enable; int8 (Q/DQ) -> trt_int8_enable
    (explicit quantisation: no calibration table; the float parts stay as the graph states them, as in a strongly
    typed engine); fp32 -> neither. Plus the engine cache and the spec's profile."""
    opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir)}
    if precision == "fp16":
        opts["trt_fp16_enable"] = "True"
    elif precision == "int8":
        opts["trt_int8_enable"] = "True"
    opts.update(profile_shape_options(spec))
    return opts


def cuda_ep_options(precision: str | None) -> dict[str, str]:
    """CUDA EP options: TF32 set explicitly, off for fp32 graphs (like-for-like with our fp32 engines)."""
    return {"use_tf32": "0" if precision == "fp32" else "1"}


def tf32_mode(provider: str, options: dict[str, str]) -> str | None:
    """What TF32 does on the provider a session runs on first (None on CPU, where there is no TF32)."""
    if provider == CUDA_EP:
        return "off (CUDA EP use_tf32=0)" if options.get("use_tf32") == "0" else "allowed (CUDA EP use_tf32=1)"
    if provider == TRT_EP:
        if tf32_overridden_off():
            return f"off ({TF32_ENV}=0)"
        return "allowed (TensorRT's default; the TensorRT EP has no TF32 option)"
    return None


def with_provider_options(providers: Sequence, model_path: str | Path, precision: str | None,
                          spec: dict[str, Any] | None) -> list:
    """``providers`` with the TensorRT EP and the CUDA EP as ``(name, options)``; options the caller gave win."""
    out: list = []
    for p in providers:
        name = _provider_name(p)
        given = {str(k): str(v) for k, v in (p[1] if isinstance(p, tuple) else {}).items()}
        if name == CUDA_EP:
            out.append((CUDA_EP, {**cuda_ep_options(precision), **given}))
            continue
        if name != TRT_EP:
            out.append(p)
            continue
        opts = {**tensorrt_ep_options(precision, spec, trt_cache_dir(model_path)), **given}
        if opts.get("trt_engine_cache_enable", "").lower() in ("1", "true"):
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        out.append((TRT_EP, opts))
    return out


def check_first_provider(requested: Sequence, got: Sequence[str], explicit: bool, model_path: str | Path) -> None:
    """ONNX Runtime falls back silently when an EP cannot start: compare the first provider it really uses with
    the first one asked for. BackendError when ``explicit``; a warning for 'auto'."""
    want = _provider_name(requested[0]) if requested else None
    if want is None or (got and got[0] == want):
        return
    msg = (f"model '{model_path}': onnxruntime was asked for {want} first but runs on {list(got)} (it drops an "
           "execution provider that cannot start, e.g. missing TensorRT/CUDA/cuDNN libraries or no usable GPU, and "
           f"falls back without an error); expected {want} as the first provider")
    if explicit:
        raise BackendError(msg)
    log.warning("%s; continuing because providers='auto'", msg)


def level_index(name: str) -> int:
    """Position of an ORT level in OPT_LEVELS (0 = 'all'); BackendError naming the known ones otherwise."""
    if name not in OPT_LEVELS:
        raise BackendError(f"opt_level '{name}': unknown; expected one of {list(OPT_LEVELS)}")
    return OPT_LEVELS.index(name)


def ort_level(name: str):
    """Our level name ('all', 'extended', 'basic', 'disable') -> onnxruntime.GraphOptimizationLevel."""
    level_index(name)  # BackendError on an unknown name
    ort = _ort()
    return {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[name]


def _session_options(threads: int | None, opt_level: str, config: dict[str, str] | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort_level(opt_level)
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; run failures come back to the caller as BackendError
    for key, value in (config or {}).items():  # e.g. session.intra_op.allow_spinning (runtime.generate)
        so.add_session_config_entry(key, str(value))
    return so


ORT_LEVEL_KEY = "edgeattn.ort_opt_level"  # metadata: the most aggressive level ONNX Runtime survived on this graph


def safest_default_level(path: str | Path) -> str:
    """'all', unless the pipeline found ONNX Runtime crashing on this graph at a more aggressive level than the one it
    recorded in the file's ``edgeattn.ort_opt_level`` metadata (the FP16 NchwcTransformer segfault): then that level.
    The metadata is read from the file itself (runtime.onnx_guard), since building the session is what crashes."""
    level = model_metadata(path).get(ORT_LEVEL_KEY)
    if level in OPT_LEVELS and level != "all":
        log.info("onnxruntime: '%s': opt_level '%s' (recorded in the model: ONNX Runtime crashed on it at a higher "
                 "level)", path, level)
        return level
    return "all"


def cpu_session(model: str | Path | bytes, opt_level: str = "all", threads: int | None = None,
                optimized_model_path: str | Path | None = None):
    """A bare ONNX Runtime CPU session (a file or serialized bytes) with the project's session options: for the
    stages that run in-memory graphs or read raw outputs (simplify's parity, the FP16/INT8 budget loops, the
    localiser). Everything else opens an OrtRunner (input contract, spec, providers) via runtime.loader."""
    ort = _ort()
    so = _session_options(threads, opt_level)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    """A model file on ONNX Runtime. ``spec`` (dict) overrides the spec found in the file / beside it."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: None | str | Sequence[str] = None, threads: int | None = None,
                 opt_level: str | None = None, spec: dict[str, Any] | None = None, precision: str | None = None,
                 session_config: dict[str, str] | None = None):
        super().__init__()
        self.path = check_model_file(path, "an ONNX model (.onnx)")
        self.opt_level = opt_level = opt_level or safest_default_level(self.path)
        ort = _ort()
        chosen = resolve_providers(providers, ort.get_available_providers())
        so = _session_options(threads, opt_level, session_config)
        # GPU execution providers: options from the precision (``precision`` or the file name) and the spec
        self.precision = precision or precision_of(self.path, default=None)
        wants_trt = any(_provider_name(p) == TRT_EP for p in chosen)
        pre_spec = (spec if spec is not None else read_spec(self.path, None)) if wants_trt else None
        requested = with_provider_options(chosen, self.path, self.precision, pre_spec)
        self._session = self._load(ort, so, requested)
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.spec: dict[str, Any] | None = spec if spec is not None else read_spec(self.path, meta)
        if wants_trt:
            final = with_provider_options(chosen, self.path, self.precision, self.spec)
            if final != requested:  # the spec was only in the model's metadata: rebuild with its profile
                log.info("onnxruntime: '%s': TensorRT EP options from the model's metadata spec; reloading", self.path)
                self._session, requested = self._load(ort, so, final), final
        gpu_first = _provider_name(requested[0]) != "CPUExecutionProvider"
        if gpu_first and hasattr(self._session, "disable_fallback"):
            self._session.disable_fallback()  # an EP failure at run time raises instead of switching to CPU
        self.providers: list[str] = list(self._session.get_providers())
        check_first_provider(requested, self.providers, providers not in (None, "auto"), self.path)
        chosen_opts = {_provider_name(p): p[1] for p in requested if isinstance(p, tuple)}
        self.tf32 = tf32_mode(self.providers[0], chosen_opts.get(self.providers[0], {}))

        self.isa_warning = check_int8_isa(self.path, meta) if "CPUExecutionProvider" == self.providers[0] else None
        self._contract = InputContract(inputs=[self._io(a, "inputs") for a in self._session.get_inputs()],
                                       bounds=bounds_from_spec(self.spec),
                                       value_ranges=value_ranges_from_spec(self.spec))
        self._outputs = [self._io(a, "outputs") for a in self._session.get_outputs()]
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # failures are raised as BackendError, not logged twice
        log.info("onnxruntime: loaded '%s' on %s (opt_level=%s)", self.path, self.providers, opt_level)

    def _load(self, ort, so, providers: list):
        try:
            return ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises InvalidProtobuf, Fail, NoSuchFile, InvalidGraph, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(
                f"model '{self.path}' ({self.path.stat().st_size} bytes): onnxruntime cannot load it "
                f"({type(e).__name__}: {first[:300]}); expected a complete, valid ONNX model: the file may be "
                "truncated or corrupt, re-export it") from None

    def _io(self, arg, which: str) -> IOInfo:
        dtype = ORT_TYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(f"model '{self.path}': {which[:-1]} '{arg.name}' has type {arg.type}, expected one of "
                                 f"{sorted(ORT_TYPES)}")
        return IOInfo(arg.name, dtype, name_dims(arg.name, list(arg.shape), self.spec, which))

    @property
    def outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise BackendError(f"onnxruntime runner for '{self.path}' is closed; open a new one")
        names = [o.name for o in self._outputs]
        try:
            values = self._session.run(names, feed, self._run_options)
        except Exception as e:  # noqa: BLE001
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            msg = str(e).replace("\n", " ")
            raise BackendError(f"onnxruntime failed on '{self.path.name}' with feed shapes {shapes}: "
                               f"{type(e).__name__}: {msg[:600]}") from None
        return dict(zip(names, values))

    def close(self) -> None:
        self._session = None


# ---- crash probe ------------------------------------------------------------------------------------------
def dummy_feed(runner: Runner, spec: dict[str, Any] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid feed for ``runner``: dynamic dims at the spec's opt size (else 1), small random values,
    token ids ``cls_id`` then ids in [first_real_id, vocab_size)."""
    spec = spec or {}
    rng = np.random.default_rng(seed)
    opt = {k: int(v["opt"]) for k, v in spec.get("dynamic", {}).items()}
    pre = spec.get("preprocess", {})
    feed = {}
    for info in runner.inputs:
        shape = tuple(opt.get(d, runner.contract.bounds[d].min if d in runner.contract.bounds else 1)
                      if isinstance(d, str) else d for d in info.shape)
        if np.dtype(info.dtype).kind in "iu":
            lo, hi = int(pre.get("first_real_id", 1)), int(pre.get("vocab_size", 2))
            x = rng.integers(lo, max(hi, lo + 1), size=shape).astype(info.dtype)
            if "cls_id" in pre and x.ndim == 2 and x.shape[1] > 0:
                x[:, 0] = int(pre["cls_id"])
        elif np.dtype(info.dtype).kind == "b":
            x = np.ones(shape, dtype=bool)
        else:
            x = rng.standard_normal(shape).astype(info.dtype)
        feed[info.name] = x
    return feed


def _probe_child(path: str, opt_level: str) -> None:
    """Run in the child: load ``path`` on ORT CPU at ``opt_level`` and run one dummy inference."""
    with OrtRunner(path, providers=["CPUExecutionProvider"], threads=1, opt_level=opt_level) as r:
        r.infer(dummy_feed(r, r.spec))


def probe_in_subprocess(path: str | Path, opt_level: str = "all", timeout: float = 300.0) -> bool:
    """True when one ORT CPU inference of ``path`` at ``opt_level`` completes in a child process; False when the
    child crashed (e.g. SIGSEGV), timed out or raised. The caller's process is never at risk."""
    code = "import sys; from runtime.ort_backend import _probe_child; _probe_child(sys.argv[1], sys.argv[2])"
    res = run_child([sys.executable, "-c", code, str(path), opt_level], timeout)
    if res.ok:
        return True
    log.warning("probe of '%s' at opt_level=%s failed: %s", path, opt_level, res.describe(tail_lines=1)[:400])
    return False


def levels_from(first: str, last: str = "disable") -> tuple[str, ...]:
    """The ORT levels to try after a crash, in order: ``levels_from("all", "extended")`` -> ('all', 'extended').
    ``first`` alone when ``last`` is not safer than it."""
    i, j = level_index(first), level_index(last)
    return OPT_LEVELS[i:j + 1] if j > i else (first,)


T = TypeVar("T")


def try_levels(run: Callable[[str], tuple[T, str | None]], levels: Sequence[str],
               what: str = "onnxruntime") -> tuple[str, T, list[tuple[str, str]]]:
    """Call ``run(level)`` -> (result, error or None) for each level in order until one returns no error.

    Returns (level of the last attempt, its result, [(level, error)] of the attempts that failed). ``run`` is
    expected to isolate crashes (a child process), so a segfault at one level is an error string, not the end."""
    failures: list[tuple[str, str]] = []
    for i, level in enumerate(levels):
        result, err = run(level)
        if err is None:
            return level, result, failures
        failures.append((level, err))
        if i + 1 < len(levels):
            log.warning("%s at ORT level '%s' failed: %s; retrying at '%s'", what, level, err[:300], levels[i + 1])
    return level, result, failures


def safe_opt_level(path: str | Path, preferred: str = "all", fallback: str = "extended") -> str:
    """``preferred`` if one inference survives it in a child process, else ``fallback`` (the FP16 segfault case)."""
    level, _, _ = try_levels(lambda lv: (None, None if probe_in_subprocess(path, lv) else "crashed"),
                             levels_from(preferred, fallback), f"model '{path}'")
    return level


__all__ = ["OrtRunner", "cpu_session", "probe_in_subprocess", "safe_opt_level", "try_levels", "levels_from", "resolve_providers", "dummy_feed",
           "ORT_TYPES", "OPT_LEVELS", "QDQ_REFERENCE_LEVEL", "SPEC_METADATA_KEY", "tensorrt_ep_options",
           "profile_shape_options", "check_first_provider", "model_sha256", "trt_cache_dir", "cuda_ep_options",
           "tf32_mode"]
