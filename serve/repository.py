"""``edgeattn triton``: write a Triton model repository (default ``artifacts/triton/``) from the verified artifacts.

Per model (``<name>`` = its artifact folder name), the entries its task writes (zoo.tasks: ``triton_entries``; the
default is a classifier's):

- ``<name>/`` (``backend: "python"``): our thin runtime on the best verified artifact for this machine
  (``serve.pick.cpu_choice``), raw text or encoded images in, ``logits`` and ``label`` out; the version folder is
  self-contained (``model.py``, a copy of ``runtime/``, the artifact, ``spec.json``, the tokenizer JSON), so NVIDIA's
  container serves it with numpy + onnxruntime (+ tokenizers / Pillow) installed;
- for a decoder (``text_generation`` spec), ``<name>/`` is instead a streaming entry (``serve.triton_generate``,
  decoupled: one response per generated token over gRPC streaming) on the thin runtime's TextGenerator, and there are no
  ``_onnx`` / ``_trt`` entries (a KV-cache graph needs the generation loop around it);
- ``<name>_onnx/`` (``onnxruntime_onnx``, TensorRT accelerator at the graph's precision) and ``<name>_trt/``
  (``tensorrt_plan``, a TensorRT 10/11 engine) for NVIDIA's containers; ``_trt`` only where such an engine was built
  (engines are built on the target GPU), else the reason is in the manifest and the README.

Also ``README.md`` (how to serve it, perf_analyzer commands) and ``edgeattn-triton.json`` (what was picked and why,
with sha256s: the load test reads it). Triton reads only the sub-folders. The repository is written beside the final
folder and swapped in at the end, so a failed run leaves the previous one intact.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.child import ROOT
from runtime.files import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from runtime.loader import open_runner
from runtime.modelspec import SPEC_FILE, ModelSpec, read_spec
from runtime.ort_backend import OPT_LEVELS
from pipeline.args import add_artifacts, add_flavor, add_models, non_negative_int, positive_int, stage_parser
from pipeline.artifacts import ModelRef, artifact_name, resolve_models
from pipeline.stage import StageErrors
from serve import configs, pick
from serve.configs import Batching
from serve.errors import RepositoryError
from serve.pbtxt import to_pbtxt
from serve.readme import write_readme
from zoo.io import onnx_files
from zoo.tasks import task_named

log = logging.getLogger("edgeattn.serve.repository")

MANIFEST = "edgeattn-triton.json"
FORMAT = "edgeattn-triton/1"
MODEL_PY = Path(__file__).resolve().parent / "triton_model.py"
GENERATE_PY = Path(__file__).resolve().parent / "triton_generate.py"


@dataclass(frozen=True)
class Options:
    batching: Batching = Batching()
    threads: int = 0  # ONNX Runtime intra-op threads in the Python model (0: its default)
    gpu_precision: str = "auto"
    flavor: str = "auto"
    onnx_device: str = "gpu"  # gpu: KIND_GPU + TensorRT accelerator; cpu: KIND_CPU, no accelerator
    warmup: bool = True
    python_artifact: str | None = None  # the Python entry's artifact (default: serve.pick.cpu_choice's)


def model_spec(ref: ModelRef) -> ModelSpec:
    d = read_spec(ref.file(SPEC_FILE))
    if d is None:
        raise RepositoryError(f"model '{ref.name}': no {SPEC_FILE} in {ref.folder}; expected the spec export writes "
                              "(run `make export`)")
    return ModelSpec.from_dict(d)


def graph_io(path: Path):
    """(inputs, outputs) IOInfo of an ONNX graph, read with ONNX Runtime (no graph optimisation: just the I/O)."""
    with open_runner(path, "onnxruntime", providers=["CPUExecutionProvider"], opt_level="disable", threads=1) as r:
        return list(r.inputs), list(r.outputs)


def copy_file(src: Path, dst: Path) -> None:
    """A file, and for an ONNX graph the external-data files it points at (same names beside ``dst``)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    if src.suffix == ".onnx":
        for extra in onnx_files(src)[1:]:
            shutil.copy2(extra, dst.parent / extra.name)


def write_config(folder: Path, cfg: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.pbtxt", to_pbtxt(cfg))


# ---- the three entries ------------------------------------------------------------------------------------
def _version_folder(version: Path, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, model_py: Path) -> None:
    """A self-contained Python-backend version folder: model.py, a copy of runtime/, the artifact, spec, tokenizer."""
    shutil.copytree(ROOT / "runtime", version / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(model_py, version / "model.py")
    copy_file(ref.file(choice.artifact), version / choice.artifact)
    atomic_write_text(version / SPEC_FILE, spec.to_json() + "\n")
    tok = spec.preprocess.get("tokenizer")
    if tok:
        if not ref.file(tok).is_file():
            raise RepositoryError(f"model '{ref.name}': its spec names tokenizer '{tok}', not found in {ref.folder}")
        shutil.copy2(ref.file(tok), version / tok)


def python_entry(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, o: Options) -> dict:
    folder = out / name
    version = folder / "1"
    _version_folder(version, ref, spec, choice, MODEL_PY)
    write_config(folder, configs.python_config(name, spec, choice.artifact, choice.mode, o.batching, o.threads,
                                               warm=o.warmup, runtime_backend=choice.backend))
    if o.warmup:
        fname, data = configs.python_warmup_bytes(spec)
        atomic_write_bytes(folder / "warmup" / fname, data)
    inputs, outputs = configs.python_inputs(spec)
    return {"entry": name, "triton": "python", **choice.to_dict(), "sha256": sha256_file(version / choice.artifact),
            "inputs": [i.name for i in inputs], "outputs": [x.name for x in outputs], "kind": _kind(spec),
            "labels": list(spec.labels), "max_batch_size": configs.max_batch_size(spec)}


def generation_entry(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, o: Options) -> dict:
    """A decoder's streaming entry: ``triton_generate.py`` as model.py, ``triton_model.py`` beside it (the shared
    helpers), ``runtime/``, the decoder graph, spec and tokenizer (see the module docstring)."""
    version = out / name / "1"
    _version_folder(version, ref, spec, choice, GENERATE_PY)
    shutil.copy2(MODEL_PY, version / MODEL_PY.name)
    level = choice.mode if choice.mode in OPT_LEVELS else ""
    write_config(out / name, configs.generation_config(name, spec, choice.artifact, level, o.batching, o.threads,
                                                       warm=o.warmup))
    return {"entry": name, "triton": "python", "decoupled": True, "task": spec.task, **choice.to_dict(),
            "sha256": sha256_file(version / choice.artifact), "inputs": [configs.PROMPT_INPUT, configs.MAX_NEW_INPUT],
            "outputs": [configs.TOKEN_OUTPUT, configs.PIECE_OUTPUT], "kind": spec.task,
            "max_batch_size": configs.generation_batch(spec)}


def _kind(spec: ModelSpec) -> str:
    return configs.python_inputs(spec)[0][0].name.lower()


def _warmup(folder: Path, spec: ModelSpec, inputs) -> list[dict[str, Any]]:
    """``model_warmup`` of a tensor entry, its sample inputs written raw (row-major) to ``warmup/<input>``."""
    arrays = configs.warmup_arrays(spec, inputs)
    for n, a in arrays.items():
        atomic_write_bytes(folder / "warmup" / n, np.ascontiguousarray(a).tobytes())
    return configs.warmup(spec, arrays, {n: a.dtype.name for n, a in arrays.items()})


def onnx_entry(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, o: Options) -> dict:
    folder = out / f"{name}_onnx"
    copy_file(ref.file(choice.artifact), folder / "1" / "model.onnx")
    inputs, outputs = graph_io(folder / "1" / "model.onnx")
    sha = sha256_file(folder / "1" / "model.onnx")
    cfg = configs.onnx_config(folder.name, spec, inputs, outputs, choice.precision, o.batching, o.onnx_device,
                              model_sha256=sha)
    if o.warmup:
        cfg["model_warmup"] = _warmup(folder, spec, inputs)
    write_config(folder, cfg)
    return {"entry": folder.name, "triton": "onnxruntime_onnx", **choice.to_dict(),
            "sha256": sha, "device": o.onnx_device,
            "inputs": [i.name for i in inputs], "outputs": [x.name for x in outputs]}


def trt_entry(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, o: Options) -> dict:
    folder = out / f"{name}_trt"
    copy_file(ref.file(choice.artifact), folder / "1" / "model.plan")
    manifest = ref.file(choice.artifact + ".json")
    if manifest.is_file():  # flavour, TensorRT version, GPU: where this plan deserialises
        shutil.copy2(manifest, folder / "1" / "model.plan.json")
    inputs, outputs = graph_io(ref.file(pick.GPU_ONNX[choice.precision]))  # the graph the engine was built from
    cfg = configs.trt_config(folder.name, spec, inputs, outputs, o.batching)
    if o.warmup:
        cfg["model_warmup"] = _warmup(folder, spec, inputs)
    write_config(folder, cfg)
    return {"entry": folder.name, "triton": "tensorrt_plan", **choice.to_dict(),
            "sha256": sha256_file(folder / "1" / "model.plan"), "inputs": [i.name for i in inputs],
            "outputs": [x.name for x in outputs]}


def build_model(out: Path, ref: ModelRef, rows: list[dict], bench: list[dict], o: Options) -> dict[str, Any]:
    """Every entry of one model into ``out`` (which entries: its task's ``triton_entries``); the model's manifest
    record."""
    spec = model_spec(ref)
    name = artifact_name(ref.name)
    rec: dict[str, Any] = {"model": ref.name, "name": name, "spec": spec.to_dict()}
    choice = pick.cpu_choice(ref, rows, bench, only=o.python_artifact)
    rec.update(task_named(spec.task).run("triton_entries", out, name, ref, spec, choice, rows, o))
    return rec


def generation_entries(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, rows: list[dict],
                       o: Options) -> dict[str, Any]:
    """A decoder's entries (zoo.tasks.text_generation): the streaming Python entry only."""
    why = ("a decoder: its KV-cache graph needs the generation loop around it (the streaming entry has it); a "
           "TensorRT decoder runner is not written yet")
    return {"python": generation_entry(out, name, ref, spec, choice, o),
            "onnx": {"entry": f"{name}_onnx", "skipped": why}, "trt": {"entry": f"{name}_trt", "skipped": why}}


def classifier_entries(out: Path, name: str, ref: ModelRef, spec: ModelSpec, choice: pick.Choice, rows: list[dict],
                       o: Options) -> dict[str, Any]:
    """A model judged by its outputs (the tasks' default): the Python entry (raw input in, logits and label out), and
    the ``_onnx`` / ``_trt`` tensor entries where a graph / an engine was verified."""
    rec: dict[str, Any] = {"python": python_entry(out, name, ref, spec, choice, o)}
    try:
        onnx = pick.gpu_onnx_choice(ref, rows, o.gpu_precision)
    except RepositoryError as e:  # the Python entry still serves; say why there is no _onnx entry
        if o.gpu_precision != "auto":
            raise
        log.warning("triton %s: no %s_onnx entry: %s", ref.name, name, e)
        rec["onnx"] = {"entry": f"{name}_onnx", "skipped": str(e)}
        onnx = None
    else:
        rec["onnx"] = onnx_entry(out, name, ref, spec, onnx, o)
    engine, why = pick.engine_choice(ref, rows, onnx.precision if onnx else "fp32", o.flavor)
    if engine is None:
        log.warning("triton %s: no %s_trt entry: %s", ref.name, name, why)
        rec["trt"] = {"entry": f"{name}_trt", "skipped": why, "build": trtexec_command(name, spec)}
    else:
        rec["trt"] = trt_entry(out, name, ref, spec, engine, o)
    return rec


def trtexec_command(name: str, spec: ModelSpec) -> str:
    """How to build ``<name>_trt/1/model.plan`` on the target GPU from the ONNX entry's graph (precision is in the
    graph: --stronglyTyped), with the spec's profile."""
    from runtime.ort_backend import profile_shape_options

    shapes = profile_shape_options(spec.to_dict())
    args = [f"trtexec --onnx={name}_onnx/1/model.onnx --saveEngine={name}_trt/1/model.plan --stronglyTyped"]
    args += [f"--{k}Shapes={shapes[f'trt_profile_{k}_shapes']}" for k in ("min", "opt", "max")
             if f"trt_profile_{k}_shapes" in shapes]
    return " ".join(args)


# ---- the repository ---------------------------------------------------------------------------------------
def build(refs: Sequence[ModelRef], out: Path, o: Options, errors: StageErrors | None = None) -> dict[str, Any]:
    """Write the repository for ``refs`` into ``out`` (staged beside it, then swapped in); its manifest."""
    if not refs:
        raise RepositoryError("--models: got no model names, expected at least one")
    artifacts = refs[0].artifacts
    rows = pick.verify_rows(artifacts)
    bench = pick.bench_rows(artifacts)
    errors = errors or StageErrors("triton")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    models: list[dict[str, Any]] = []
    try:
        for ref in refs:
            with errors.model(ref.name):
                t0 = time.perf_counter()
                rec = build_model(stage, ref, rows, bench, o)
                models.append(rec)
                said = [f"{e['entry']} ({e['artifact']})" if "skipped" not in e else f"no {e['entry']}"
                        for e in (rec["onnx"], rec["trt"])]
                on = "OpenVINO CPU" if rec["python"].get("backend") == "openvino" else "ONNX Runtime CPU"
                print(f"triton {ref.name}: {rec['python']['entry']} ({rec['python']['artifact']} on {on}, "
                      f"{rec['python']['mode']}), {', '.join(said)} in {time.perf_counter() - t0:.1f} s", flush=True)
        if not models:
            raise RepositoryError(f"no model could be served ({len(refs)} tried; see the errors above); "
                                  f"{out} left as it was")
        manifest = {"format": FORMAT, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "artifacts": str(artifacts),
                    "batching": {"queue_delay_us": o.batching.queue_delay_us, "instances": o.batching.instances},
                    "threads": o.threads, "models": models}
        atomic_write_json(stage / MANIFEST, manifest)
        write_readme(stage / "README.md", manifest)
        swap_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return manifest


def swap_in(stage: Path, out: Path) -> None:
    """Replace ``out`` by ``stage`` (renames in one folder; the old tree is removed after)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{time.time_ns()}"
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(repo: str | Path) -> dict[str, Any]:
    """The repository's manifest; RepositoryError when ``repo`` is not one ``edgeattn triton`` wrote."""
    from runtime.files import read_json

    p = Path(repo) / MANIFEST
    m = read_json(p, None)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise RepositoryError(f"{p}: got {'no file' if m is None else 'another format'}, expected the manifest "
                              f"{FORMAT} that `edgeattn triton` writes (run `make triton` first)")
    return m


def main(argv: Sequence[str] | None = None) -> int:
    ap = stage_parser("triton", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    ap.add_argument("--out", default=None, help="repository folder (default: <artifacts>/triton)")
    ap.add_argument("--queue-delay-us", type=non_negative_int, default=2000,
                    help="dynamic batching: longest wait for a batch")
    ap.add_argument("--instances", type=positive_int, default=1, help="instances of each model (instance_group count)")
    ap.add_argument("--threads", type=non_negative_int, default=0,
                    help="ONNX Runtime threads in the Python model (0: default)")
    ap.add_argument("--gpu-precision", default="auto", choices=["auto", "int8", "fp16", "fp32"],
                    help="graph of the _onnx/_trt entries: auto, int8, fp16, fp32")
    add_flavor(ap, ("auto", "trt10", "trt11"), help="engine flavour of the _trt entry")
    ap.add_argument("--onnx-device", default="gpu", choices=["gpu", "cpu"], help="instance kind of the _onnx entry")
    ap.add_argument("--no-warmup", action="store_true", help="write no model_warmup")
    ap.add_argument("--python-artifact", default=None,
                    help="artifact of the Python-backend entry, e.g. fp32.sim.onnx (default: the fastest verified)")
    a = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    refs = resolve_models(a.models, a.artifacts)
    out = Path(a.out) if a.out else Path(a.artifacts) / "triton"
    o = Options(Batching(a.queue_delay_us, a.instances), a.threads, a.gpu_precision, a.flavor, a.onnx_device,
                not a.no_warmup, a.python_artifact)
    errors = StageErrors("triton")
    m = build(refs, out, o, errors)
    print(f"triton: {len(m['models'])} model(s) -> {out} (README.md there: serving it with NVIDIA's container or "
          "`make serve`)")
    return errors.finish()
