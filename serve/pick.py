"""Which verified artifact goes into which Triton entry, from verify.json (and bench.json where it exists).

- ``cpu_choice``: the Python-backend model (our thin runtime on a CPU): among the artifacts whose gating verify row
  on ONNX Runtime's CPU provider passed, or, for ``int8.cpu.onnx`` chosen on OpenVINO (its recorded backend), on
  OpenVINO where openvino is installed here (``int8.cpu.onnx`` only when it was verified on a CPU of this machine's
  int8 class: it is built for one), the fastest verified at batch 1 in bench.json on that backend; without a
  bench.json, the first of ``CPU_ORDER``.
- ``gpu_onnx_choice``: the graph for ``onnxruntime_onnx`` with the TensorRT accelerator: the lowest precision whose
  gating row passed (the int8 Q/DQ graph is judged by its TensorRT reference row); a failed GPU row
  (``tensorrt-ep``/``cuda-ep``) rules an artifact out, whatever the CPU rows say.
- ``engine_choice``: the ``tensorrt_plan`` engine: a TensorRT 10/11 engine (Triton's TensorRT backend cannot load a
  TensorRT-RTX engine) of a precision whose graph passed, the ONNX choice's precision first; none, with the reason,
  when this machine built no such engine (engines are built on the target GPU).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from bench.results import verify_mode
from runtime.cpu import int8_isa
from runtime.files import read_json
from runtime.loader import ORT_GPU_MODES
from runtime.modelspec import precision_of
from pipeline.artifacts import ModelRef
from serve.errors import RepositoryError

log = logging.getLogger("edgeattn.serve.pick")

CPU_ORDER = ("int8.cpu.onnx", "fp32.sim.onnx", "fp32.onnx", "fp16.onnx")  # without bench.json: likely fastest first
GPU_ONNX = {"int8": "int8.qdq.onnx", "fp16": "fp16.onnx", "fp32": "fp32.sim.onnx"}  # the graphs a GPU is given
GPU_ORDER = ("int8", "fp16", "fp32")
TRITON_FLAVORS = ("trt10", "trt11")  # engines Triton's tensorrt_plan backend (TensorRT) can deserialise


@dataclass(frozen=True)
class Choice:
    """One artifact for one Triton entry and why it was picked."""

    artifact: str  # file name in the model's artifact folder
    backend: str  # onnxruntime | openvino (int8.cpu.onnx chosen there) | tensorrt
    mode: str  # ORT optimisation level (CPU), GPU mode, or the engine flavour
    precision: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_rows(artifacts: str | Path) -> list[dict[str, Any]]:
    """verify.json's rows; RepositoryError when there is none (nothing is verified yet)."""
    path = Path(artifacts) / "verify.json"
    rows = read_json(path, None)
    if not isinstance(rows, list):
        raise RepositoryError(f"{path}: got {'no file' if rows is None else type(rows).__name__}, expected verify's "
                              "list of rows; run `make verify` (or `make demo`) first: only verified artifacts are served")
    return rows


def bench_rows(artifacts: str | Path) -> list[dict[str, Any]]:
    doc = read_json(Path(artifacts) / "bench.json", {}) or {}
    return list(doc.get("rows") or []) if isinstance(doc, dict) else []


def _rows(rows: Iterable[dict], model: str, artifact: str) -> list[dict]:
    return [r for r in rows if r.get("model") == model and r.get("artifact") == artifact]


def cpu_backends(artifact: str) -> tuple[str, ...]:
    """The CPU backends a passed gating row of ``artifact`` may be on to serve it here: ONNX Runtime's CPU provider;
    for ``int8.cpu.onnx`` also OpenVINO, where openvino is installed (verify gates it on the backend it was chosen
    on, optimize.cpu_int8). The bundled server's Python environment (.venv/triton-env) gets openvino from
    serve/requirements-triton.txt; a container needs it installed (the repository's README says so)."""
    from runtime.openvino_backend import available

    return ("onnxruntime", "openvino") if artifact == "int8.cpu.onnx" and available() else ("onnxruntime",)


def _cpu_row(rows: Iterable[dict], model: str, artifact: str, isa: str) -> dict | None:
    """The passed gating row of ``artifact`` on a CPU backend it can be served on here (:func:`cpu_backends`; None:
    not verified on a CPU here)."""
    for r in _rows(rows, model, artifact):
        if r.get("backend") not in cpu_backends(artifact) or verify_mode(r.get("mode")) in ORT_GPU_MODES:
            continue
        if not r.get("passed") or not r.get("gating", True) or r.get("role") not in (None, "artifact"):
            continue
        if r.get("execution_provider") not in (None, "CPUExecutionProvider", "CPU"):  # "CPU": OpenVINO's CPU plugin
            continue
        if artifact == "int8.cpu.onnx" and r.get("cpu_isa") not in (None, isa):
            log.info("%s %s: verified on a %s CPU, this one is %s: not served here", model, artifact,
                     r.get("cpu_isa"), isa)
            continue
        return r
    return None


def cpu_choice(ref: ModelRef, rows: list[dict], bench: list[dict] | None = None, isa: str | None = None,
               only: str | None = None) -> Choice:
    """The artifact the Python-backend model serves on this machine (see the module docstring); ``only``: that
    artifact, which must have passed too."""
    isa = isa or int8_isa()
    names = [only] if only else [*CPU_ORDER, "int8.qdq.onnx"]
    found = {a: r for a in dict.fromkeys(names) if ref.file(a).is_file() and (r := _cpu_row(rows, ref.name, a, isa))}
    if only and not found:
        raise RepositoryError(f"model '{ref.name}': --python-artifact {only} is missing from {ref.folder} or has no "
                              f"passed gating verify row on ONNX Runtime's CPU provider here; expected a verified one")
    if not found:
        have = sorted({f"{r.get('artifact')} on {r.get('backend')}: {'passed' if r.get('passed') else 'failed'}"
                       for r in rows if r.get("model") == ref.name})
        raise RepositoryError(f"model '{ref.name}': no artifact in {ref.folder} passed verify on ONNX Runtime's CPU "
                              f"provider (or int8.cpu.onnx on OpenVINO, where installed) (verify.json has {have or 'no rows for it'}); expected at least one passed "
                              "gating row: run `make verify`")
    timed = [b for b in (bench or []) if b.get("model") == ref.name and b.get("batch") == 1 and b.get("verified")
             and b.get("device", "cpu") == "cpu" and b.get("p50_ms") and b.get("artifact") in found
             and b.get("backend") == found[b["artifact"]].get("backend")
             and b.get("mode") == verify_mode(found[b["artifact"]].get("mode"))]
    if timed:
        best = min(timed, key=lambda b: b["p50_ms"])
        art = best["artifact"]
        why = f"fastest verified on a CPU at batch 1 in bench.json ({best['p50_ms']:.3g} ms p50 on {best['backend']})"
    else:
        art = next(a for a in names if a in found)
        why = "asked for (--python-artifact)" if only else f"first verified of {list(CPU_ORDER)} (no bench.json timing)"
    row = found[art]
    backend = row.get("backend") or "onnxruntime"
    return Choice(art, backend, verify_mode(row.get("mode")) or ("all" if backend == "onnxruntime" else "f32"),
                  row.get("precision") or precision_of(art) or "fp32", why)


def _passed_for_gpu(rows: list[dict], model: str, artifact: str) -> dict | None:
    """The row that makes ``artifact`` fit for a GPU: a passed gating GPU row, else a passed gating CPU row (the
    reference row for int8.qdq.onnx); None when a GPU row failed or nothing passed."""
    mine = [r for r in _rows(rows, model, artifact) if r.get("backend") == "onnxruntime" and r.get("gating", True)]
    gpu = [r for r in mine if verify_mode(r.get("mode")) in ORT_GPU_MODES]
    if any(not r.get("passed") for r in gpu):
        return None
    if gpu:
        return gpu[0]
    return next((r for r in mine if r.get("passed")), None)


def verified_gpu_precisions(ref: ModelRef, rows: list[dict]) -> dict[str, dict]:
    """{precision: its passed row} for the graphs a GPU is given (GPU_ONNX) that exist and passed."""
    out = {}
    for prec in GPU_ORDER:
        art = GPU_ONNX[prec]
        if ref.file(art).is_file() and (r := _passed_for_gpu(rows, ref.name, art)):
            out[prec] = r
    return out


def gpu_onnx_choice(ref: ModelRef, rows: list[dict], precision: str = "auto") -> Choice:
    """The ONNX graph for ``onnxruntime_onnx`` on a GPU (TensorRT accelerator at its precision)."""
    ok = verified_gpu_precisions(ref, rows)
    if precision != "auto":
        if precision not in GPU_ONNX:
            raise RepositoryError(f"--gpu-precision: got '{precision}', expected auto, {', '.join(GPU_ORDER)}")
        if precision not in ok:
            raise RepositoryError(f"model '{ref.name}': {GPU_ONNX[precision]} is missing or did not pass verify; "
                                  f"verified for a GPU: {sorted(ok) or 'none'}")
        prec = precision
    elif ok:
        prec = next(p for p in GPU_ORDER if p in ok)
    else:
        raise RepositoryError(f"model '{ref.name}': none of {list(GPU_ONNX.values())} in {ref.folder} passed verify; "
                              "expected at least fp32.sim.onnx verified: run `make verify`")
    r = ok[prec]
    how = f"{r.get('backend')} {r.get('mode')} ({r.get('role') or 'artifact'})"
    return Choice(GPU_ONNX[prec], "onnxruntime", "tensorrt-ep", prec,
                  f"lowest precision verified for a GPU ({how})" if precision == "auto" else f"asked for {prec}")


def engine_choice(ref: ModelRef, rows: list[dict], precision: str, flavor: str = "auto") -> tuple[Choice | None, str]:
    """(the engine for ``tensorrt_plan``, why) or (None, why not). ``precision``: the ONNX entry's, tried first."""
    flavors = TRITON_FLAVORS if flavor in ("auto", "trt") else (flavor,)
    if any(f not in TRITON_FLAVORS for f in flavors):
        raise RepositoryError(f"--flavor: got '{flavor}', expected auto, trt, {', '.join(TRITON_FLAVORS)} (Triton's "
                              "TensorRT backend cannot load TensorRT-RTX engines)")
    ok = verified_gpu_precisions(ref, rows)
    order = [precision] + [p for p in GPU_ORDER if p != precision]
    for prec in (p for p in order if p in ok):
        for fl in flavors:
            name = f"{prec}.{fl}.engine"
            if not ref.file(name).is_file():
                continue
            failed = [r for r in _rows(rows, ref.name, name) if r.get("backend") == "tensorrt" and not r.get("passed")]
            if failed:
                log.warning("%s %s: its verify row failed; not served", ref.name, name)
                continue
            ran = [r for r in _rows(rows, ref.name, name) if r.get("backend") == "tensorrt"]
            why = ("verified on a GPU" if ran else
                   f"built from {GPU_ONNX[prec]}, whose graph passed verify (the engine itself runs only on a GPU)")
            return Choice(name, "tensorrt", fl, prec, why), why
    built = sorted(p.name for p in ref.folder.glob("*.engine"))
    return None, (f"no TensorRT {'/'.join(flavors)} engine of a verified precision ({sorted(ok) or 'none'}) in "
                  f"{ref.folder} (found {built or 'none'}; TensorRT-RTX engines do not load in Triton): build one on "
                  f"the target GPU with `make engines FLAVOR=trt MODELS={ref.name}`, then `make triton` again")
