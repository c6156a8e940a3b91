"""What verify checks and how it judges, as a library (bench, the report and tests use it too):

- ``artifact_files`` and ``backend_plan``: which (artifact, backend, mode, precision, role) rows a model gets;
  ``ROLE_*``: gating rows vs advisory ones (a TensorRT Q/DQ graph on a CPU's integer kernels);
- ``test_inputs``: the samples every stage judges on (full test split, or seeded images for parity-only models);
- ``tolerance_for``: the judge's budget (judge.budget) from the spec's tolerance, int8 with the overrides the
  artifact was built under;
- ``verify_key``: what a model's rows depend on, so unchanged rows are reused; ``exit_code``: `--strict`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from calibration.evalset import PARITY_SAMPLES, load_eval_set
from calibration.user_data import data_digest, data_path, load_user_data
from judge.budget import Budget, budget_for
from optimize.cpu_int8 import artifact_backend
from runtime import gpu
from runtime.cpu import cpu_info
from runtime.loader import ORT_GPU_MODES
from runtime.modelspec import precision_of
from runtime.openvino_backend import available as openvino_available  # verify's callers import it from here
from pipeline.artifacts import ModelRef
from runtime.ort_backend import QDQ_REFERENCE_LEVEL
from runtime.preprocess import TextEncoder, normalize_images
from zoo.data import load_dataset
from zoo.io import read_json, sha256_file

KNOWN_ORDER = ["fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx", "int8.cpu.onnx"]


PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element type names -> ours


ENGINE_SUFFIXES = (".engine", ".plan")


def artifact_files(model_dir: Path, gpu_present: bool | None = None) -> list[str]:
    """The model's ONNX files in pipeline order, then its TensorRT engines where a GPU can run them (``gpu_present``:
    None asks ``runtime.gpu``): on a CPU machine an engine is an artifact to ship, not one to check here."""
    names = [p.name for p in model_dir.glob("*.onnx")]
    onnx = [n for n in KNOWN_ORDER if n in names] + sorted(n for n in names if n not in KNOWN_ORDER)
    if not (gpu.nvidia_gpu_present() if gpu_present is None else gpu_present):
        return onnx
    return onnx + sorted(p.name for p in model_dir.iterdir() if p.suffix in ENGINE_SUFFIXES)


def ort_gpu_modes() -> list[str]:
    """The ONNX Runtime GPU modes (runtime.loader.ORT_GPU_MODES) this machine can run: a GPU and the EP installed."""
    if not gpu.nvidia_gpu_present():
        return []
    try:
        import onnxruntime as ort

        avail = set(ort.get_available_providers())
    except ImportError:
        return []
    return [m for m, providers in ORT_GPU_MODES.items() if providers[0] in avail]


# How a row is judged. Only gating rows decide `make verify`'s exit code: a verdict there must not depend on the CPU.
ROLE_ARTIFACT = "artifact"  # an artifact on a backend it is built for (int8.cpu.onnx: built for this CPU): gating
ROLE_REFERENCE = "tensorrt-reference"  # int8.qdq.onnx with Q/DQ as float ops: predicts TensorRT, same on every CPU
ROLE_CPU_KERNELS = "cpu-int8-kernels"  # int8.qdq.onnx on a CPU backend's integer kernels: per machine, advisory
ROLE_TEXT = {ROLE_ARTIFACT: "artifact on its backend",
             ROLE_REFERENCE: "TensorRT reference: Q/DQ simulated in float (CPU-independent)",
             ROLE_CPU_KERNELS: "CPU integer kernels, this machine only (advisory)"}


def backend_plan(model_dir: Path, artifact: str) -> list[tuple[str, str, str, str]]:
    """(backend, mode, precision, role) combinations to verify for one artifact; bench times the same ones except
    the reference (an accuracy reference, not a way to deploy)."""
    prec = precision_of(artifact)
    if Path(artifact).suffix in ENGINE_SUFFIXES:  # listed by artifact_files only where a GPU can run it
        return [("tensorrt", "engine", prec, ROLE_ARTIFACT)]
    man = read_json(model_dir / "manifest.json", {}) or {}
    ort_mode = "all"
    if artifact == "fp16.onnx":
        ort_mode = (man.get("fp16") or {}).get("ort_opt_level", "all")
    qdq = artifact == "int8.qdq.onnx"
    if artifact == "int8.cpu.onnx":  # gating on the backend it was chosen on; elsewhere the CPU kernels, advisory
        backend, mode = artifact_backend((man.get("int8") or {}).get("cpu"))
        plan = [(backend, mode, prec, ROLE_ARTIFACT)]
        if (backend, mode) != ("onnxruntime", "all"):
            plan.append(("onnxruntime", "all", prec, ROLE_CPU_KERNELS))
        return plan
    plan = [("onnxruntime", QDQ_REFERENCE_LEVEL, prec, ROLE_REFERENCE)] if qdq else []
    plan.append(("onnxruntime", ort_mode, prec, ROLE_CPU_KERNELS if qdq else ROLE_ARTIFACT))
    # OpenVINO runs what a user deploys, not the raw export fp32.onnx
    if openvino_available() and artifact not in ("int8.cpu.onnx", "fp32.onnx"):
        plan.append(("openvino", "f32", prec, ROLE_CPU_KERNELS if qdq else ROLE_ARTIFACT))
        if artifact == "fp32.sim.onnx":
            plan.append(("openvino", "bf16", "bf16", ROLE_ARTIFACT))
    if artifact in ("fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"):  # the graphs a GPU EP is given
        plan += [("onnxruntime", m, prec, ROLE_ARTIFACT) for m in ort_gpu_modes()]
    return plan


# ---- inputs and the PyTorch reference ---------------------------------------------------------
def test_inputs(spec, ref: ModelRef, limit: int | None = None, parity_n: int = PARITY_SAMPLES,
                parity_seed: int = 1234):
    """(inputs: name -> (N, ...) array for every model input, labels or None, dataset description) for a model: its
    full test split (first ``limit``), the user's own data (its evaluation half), or seeded synthetic inputs for a
    model without a dataset: natural-ish images for an image model (zoo.synthetic, the kind quantize calibrates and
    judges on, with a seed of verify's own so they are held out), else the spec's example inputs for every input at
    its opt sizes. Shared with bench, so both judge the same samples."""
    udp = data_path(ref.manifest(), ref.name) if spec.dataset is None else None
    if udp:  # the user's own data: its evaluation half (quantize calibrated on the other half)
        ev = load_user_data(udp, spec, ref.folder).half("evaluation")
        inputs = {t.name: ev.inputs[t.name][:limit] if limit else ev.inputs[t.name] for t in spec.inputs}
        n = len(next(iter(inputs.values())))
        y = None if ev.labels is None else ev.labels[:n]
        return inputs, y, {"name": ev.source, "sha256": data_digest(udp)[:64], "split": "user evaluation half",
                           "n": int(n), "n_split": int(len(ev))}
    if spec.dataset is None:
        es = load_eval_set(spec, ref.folder, synthetic_n=limit or parity_n, synthetic_seed=parity_seed)
        name = "synthetic natural-ish images" if es.description.startswith("synthetic images") else "seeded-random"
        return es.inputs, None, {"name": name, "seed": parity_seed, "n": len(es)}

    ds = load_dataset(spec.dataset)
    test = ds.test.subset(limit) if limit else ds.test
    pp = spec.preprocess
    if pp["kind"] == "image":
        x = normalize_images(np.asarray(test.x), pp["mean"], pp["std"])
    else:
        x = TextEncoder(ref.file(pp["tokenizer"])).encode(test.x, pad_to=pp["max_len"])
    y = np.asarray(test.y) if spec.scored_on_labels() else None  # a feature extractor: its sentences only
    return {spec.inputs[0].name: x}, y, {"name": ds.name, "sha256": ds.sha256, "split": "test",
                                                          "n": int(len(x)), "n_split": int(len(ds.test))}


CODE_VERSION = "verify/7"  # 4: degenerate references fail; 5: natural-ish parity images; 6: max_abs per sample;
# 7: every input and every output


def verify_key(ref: ModelRef, limit: int | None) -> str:
    """Digest of everything a model's verify rows depend on: every artifact's bytes, the checkpoint, spec and
    tokenizer, the backend plan, the sample limit, the CPU class and the backends' versions. Equal key: the rows in
    verify.json are still true and are reused."""
    model_dir = ref.folder
    files = artifact_files(model_dir)
    extra = [f for f in ("model.pt", "spec.json", "tokenizer.json") if (model_dir / f).is_file()]
    versions = {}
    for lib in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    cpu = cpu_info()
    blob = {"code": CODE_VERSION, "name": ref.name, "limit": limit,
            "files": {f: sha256_file(model_dir / f) for f in files + extra},
            "plan": {f: backend_plan(model_dir, f) for f in files}, "versions": versions,
            "cpu": [cpu["model"], cpu["int8_isa"]],
            "weights_env": os.environ.get(ref.weights_env)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tolerance_for(spec, precision: str, model_dir: Path) -> Budget:
    """The judge's budget for ``precision`` from the spec's tolerances; for int8 and fp16, with the overrides the
    artifact was built under (manifest ``<precision>.budget``, `edgeattn quantize --max-drop ...`), so quantize and
    verify judge against one budget."""
    built = ((read_json(model_dir / "manifest.json", {}) or {}).get(precision) or {}).get("budget") or {} \
        if precision in ("int8", "fp16") else {}
    keys = ("max_drop_points", "min_top1_agreement", "min_cosine")
    return budget_for(spec.tolerances, precision, **{k: float(built[k]) for k in keys if built.get(k) is not None})


def exit_code(rows: list[dict[str, Any]], strict: bool) -> int:
    """1 when ``strict`` and a gating row failed; advisory rows (a TensorRT graph on this CPU's integer kernels)
    never decide it, so the verdict does not depend on the CPU."""
    return 1 if strict and any(not r.get("passed") for r in rows if r.get("gating", True)) else 0
