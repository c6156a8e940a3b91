"""``python -m verify --models a,b --artifacts DIR [--strict]``: every ONNX artifact of every model, on every
backend this machine can run, against PyTorch on the FULL held-out test split.

Writes ``<artifacts>/verify.json`` (a list of rows) and ``<artifacts>/verify.md``. Each artifact/backend runs
in a worker process, so a backend crash is recorded as a failed row instead of ending the run. A failing
artifact is localised: the first PyTorch module whose output diverges is named in the row.
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.child import python_module, run_child
from runtime.cpu import int8_isa
from runtime.errors import EdgeattnError, ModelLoadError
from pipeline.args import (ArgumentsError, add_artifacts, add_force, add_models, add_threads, positive_int,
                           stage_parser)
from pipeline.artifacts import ModelRef, resolve_models
from runtime.ort_backend import levels_from, try_levels
from runtime.preprocess import feed_batches
from pipeline.stage import StageErrors, cli, one_line
from judge.figures import compare_outputs
from judge.budget import delta_statement
from judge.rows import VerifyRow
from verify.plan import (PRECISION_NAMES, ROLE_CPU_KERNELS, ROLE_TEXT, artifact_files, backend_plan, exit_code,
                         test_inputs, tolerance_for)
from zoo.io import atomic_write_json, atomic_write_text, read_json
from zoo.registry import load_reference as source_reference
from zoo.tasks import task_of, task_of_rows

log = logging.getLogger("edgeattn.verify")
WORKER_TIMEOUT_S = 1800


# ---- the PyTorch reference ----------------------------------------------------------------------------
def load_reference(ref: ModelRef, limit: int | None = None):
    """(built model, inputs: name -> (N, ...) array, labels or None, dataset description). The model is its
    source's reference (zoo.registry.load_reference): PyTorch, or an ONNX file's own fp32 graph on ONNX Runtime."""
    built = source_reference(ref)
    built.module.eval()
    inputs, labels, desc = test_inputs(built.spec, ref, limit)
    return built, inputs, labels, desc


def torch_outputs(built, inputs: dict[str, np.ndarray], batch: int, pad_id: int | None) -> dict[str, np.ndarray]:
    """PyTorch's outputs (name -> (N, ...), the spec's output names in order, float32) over ``inputs``, batched and
    trimmed exactly as the workers feed the artifacts."""
    import torch

    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in built.spec.outputs}
    with torch.inference_mode():
        for feed in feed_batches(inputs, batch, pad_id):
            res = built.module(*[torch.from_numpy(feed[t.name]) for t in built.spec.inputs])
            res = res if isinstance(res, (tuple, list)) else (res,)
            for name, r in zip(outs, res):
                outs[name].append(r.float().numpy())
    return {k: np.concatenate(v) for k, v in outs.items() if v}


# ---- running one artifact -----------------------------------------------------------------------
def run_worker(artifact: Path, backend: str, mode: str, inputs: Path, batch: int, pad_id: int | None,
               threads: int | None) -> tuple[dict[str, np.ndarray] | None, str | None, float, dict]:
    """(outputs by name or None, error or None, seconds, what the worker reported: {"precision_ran": ...})."""
    out = inputs.parent / f"out-{artifact.stem}-{backend}-{mode}.npz"
    cmd = python_module("verify.worker", "--artifact", artifact, "--backend", backend, "--mode", mode, "--inputs",
                        inputs, "--out", out, "--batch", batch, "--pad-id", -1 if pad_id is None else pad_id,
                        *(["--threads", threads] if threads else []))
    res = run_child(cmd, WORKER_TIMEOUT_S)
    secs = res.seconds
    if not res.ok:
        return None, f"worker {res.describe(tail_lines=1)[:500]}", secs, {}
    try:
        info = json.loads((res.stdout.strip().splitlines() or ["{}"])[-1])
    except json.JSONDecodeError:
        info = {}
    with np.load(out) as z:
        return {k: z[k] for k in z.files}, None, secs, info


def verify_model(ref: ModelRef, limit: int | None, threads: int | None,
                 localize_failures: bool = True, key: str | None = None) -> list[dict[str, Any]]:
    name, model_dir = ref.name, ref.folder
    files = artifact_files(model_dir)
    if not files:
        raise ModelLoadError(f"no ONNX file in {model_dir}: got nothing to verify, expected fp32.onnx at least (run "
                             f"'edgeattn export --models {name}' first)")
    built, x, labels, data_desc = load_reference(ref, limit)
    spec = built.spec
    pad_id = spec.trim_pad_id()
    batch = min(64, spec.dynamic["batch"].max)
    n = len(next(iter(x.values())))
    t0 = time.perf_counter()
    ref = torch_outputs(built, x, batch, pad_id)
    torch_s = time.perf_counter() - t0
    rows = []
    cpu_isa = int8_isa()
    with tempfile.TemporaryDirectory(prefix="edgeattn-verify-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **x)
        for art in files:
            for backend, mode, prec, role in backend_plan(model_dir, art):
                def run(level: str, art=art, backend=backend):
                    got, err, secs, info = run_worker(model_dir / art, backend, level, inputs, batch, pad_id, threads)
                    return (got, err, secs, info), err

                # a crash at ORT's full optimisation is retried at 'extended' (the FP16 segfault case)
                levels = levels_from(mode, "extended") if backend == "onnxruntime" and mode == "all" else (mode,)
                ran_at, (got, err, secs, info), failed = try_levels(run, levels, f"verify {name} {art} on {backend}")
                row = VerifyRow(name, art, prec, backend, mode, role=role, gating=role != ROLE_CPU_KERNELS,
                                judged_as=ROLE_TEXT[role], dataset=data_desc["name"], seconds=round(secs, 2),
                                cpu_isa=cpu_isa, execution_provider=info.get("execution_provider"), verify_key=key)
                if failed and got is not None:
                    row.mode, row.mode_asked, row.fallback_reason = ran_at, failed[0][0], failed[0][1][:120]
                ran = info.get("precision_ran")
                if ran and backend == "openvino" and mode == "bf16" and PRECISION_NAMES.get(ran, ran) != prec:
                    # the bf16 hint on fp32.sim.onnx ran in another precision (f32 on a CPU without bf16): the row is
                    # judged as what ran. (fp16.onnx on OpenVINO reports f32 too: fp16 weights, f32 arithmetic; it
                    # stays an fp16 row, its error comes from the fp16 weights.)
                    row.precision, row.precision_asked = PRECISION_NAMES.get(ran, ran), prec
                if ran:
                    row.precision_ran = PRECISION_NAMES.get(ran, ran)
                if got is None:
                    row.n_samples, row.passed, row.error, row.reasons = n, False, err, [err]
                else:
                    tol = tolerance_for(spec, row.precision, model_dir)
                    c = compare_outputs(ref, got, labels, tol).to_dict()
                    row.budget_points, row.n_samples = tol.max_drop_points, c.pop("n_samples")
                    row.passed, row.reasons = c.pop("passed"), c.pop("reasons")
                    row.figures = c
                    if not row.passed and localize_failures and row.precision in ("fp32", "fp16", "int8") \
                            and backend == "onnxruntime" and role != ROLE_CPU_KERNELS:
                        row.first_divergence = _localize(built, model_dir / art, x, labels, ref, got)
                row = row.to_dict()
                rows.append(row)
                _print_row(row)
    what = "PyTorch reference" if built.graph is None else f"reference ({built.graph.name} on ONNX Runtime)"
    print(f"verify {name}: {what} on {n} samples took {torch_s:.1f} s")
    return rows


def _localize(built, path: Path, x: dict[str, np.ndarray], labels, ref: dict[str, np.ndarray],
              got: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Pick the worst sample of the first output and name the first PyTorch module whose output diverges on it."""
    try:
        from verify.localize import localize

        first = built.spec.outputs[0].name
        r, g = ref[first], got[first]
        worst = int(np.abs(r - g).reshape(len(r), -1).max(1).argmax())
        feed = next(feed_batches({k: v[worst:worst + 1] for k, v in x.items()}, 1, built.spec.trim_pad_id()))
        rep = localize(built, path, feed)
        return rep.to_dict() if rep else None
    except Exception as e:  # noqa: BLE001 - localisation is best effort; never hides the failure itself
        log.warning("localisation of %s failed: %s", path, e)
        return {"error": f"{type(e).__name__}: {e}"}


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def _print_row(r: dict[str, Any]) -> None:
    status = "PASS" if r.get("passed") else ("FAIL" if r.get("gating", True) else "MISS (advisory: CPU kernels)")
    print(f"  {r['model']:<18} {r['artifact']:<15} {r['backend']:<12} {r['precision']:<5} acc {_fmt(r.get('accuracy'))} "
          f"d {delta_statement(r)} agree {_fmt(r.get('top1_agreement'))} "
          f"maxabs {_fmt(r.get('max_abs_diff'), '.2e')} "
          + (f"cos {_fmt(r.get('cosine_mean'), '.5f')} nn@{r['neighbour_k']} {_fmt(r.get('neighbour_overlap'))} "
             if r.get("neighbour_k") else "")
          + status + ("" if r.get("passed") else f"  {r.get('reasons')}"))


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = ["# Verification against PyTorch", "",
             "Every artifact on every backend, full held-out test split (seeded random images for models without "
             "a dataset: parity only). Accuracy in %, delta in points. int8.qdq.onnx (the TensorRT graph) is judged "
             "by its float simulation (ONNX Runtime with graph optimisations off: Q/DQ as float ops, the same on every "
             "CPU); its runs on CPU integer kernels are advisory rows for this machine only.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        lines += task_of_rows(mine).run("verify_markdown", model, mine)
    atomic_write_text(path, "\n".join(lines) + "\n")


def outputs_markdown(model: str, rows: list[dict[str, Any]]) -> list[str]:
    """verify.md's section for a model judged by its outputs: one table row per artifact and backend, then what
    failed and where it first diverged."""
    lines = [f"## {model}", "", "| artifact | backend | mode | judged as | precision | n | accuracy % | torch % | "
              "delta pts (95 % CI) | top-1 agree | max abs diff | cosine mean | cosine min | passed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        ci = r.get("accuracy_delta_ci95")
        delta = "-" if r.get("accuracy_delta") is None else f"{r['accuracy_delta']:+.2f}" + (
            f" ({ci[0]:+.2f}..{ci[1]:+.2f})" if ci else "")
        prec = r["precision"] + (f" ({r['precision_asked']} asked)" if r.get("precision_asked") else "")
        verdict = "yes" if r.get("passed") else ("NO" if r.get("gating", True) else "no (advisory)")
        lines.append(f"| {r['artifact']} | {r['backend']} | {str(r.get('mode', ''))[:24]} | "
                     f"{ROLE_TEXT.get(r.get('role'), '-')} | {prec} | "
                     f"{r.get('n_samples', '-')} | {pct(r.get('accuracy'))} | {pct(r.get('reference_accuracy'))} | "
                     f"{delta} | {_fmt(r.get('top1_agreement'))} | {_fmt(r.get('max_abs_diff'), '.2e')} | "
                     f"{_fmt(r.get('cosine_mean'), '.6f')} | {_fmt(r.get('cosine_min'), '.6f')} | {verdict} |")
    for r in (r for r in rows if r["model"] == model and not r.get("passed")):
        what = "failed" if r.get("gating", True) else (f"missed on this CPU's integer kernels ({r.get('cpu_isa')}; "
                                                       "advisory, the TensorRT reference row decides)")
        lines.append(f"\n- **{r['artifact']} on {r['backend']} {what}**: {'; '.join(r.get('reasons') or [])}")
        fd = r.get("first_divergence")
        if fd and fd.get("module"):
            lines.append(f"  first diverging module: `{fd['module']}` ({fd.get('module_type')}), ONNX tensor "
                         f"`{fd.get('onnx_tensor')}` from node `{fd.get('onnx_node')}`, rel. error "
                         f"{fd.get('rel_error', 0):.3g}")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("verify", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    ap.add_argument("--limit", type=positive_int, default=None,
                    help="first N test samples only (default: the full split)")
    add_threads(ap)
    ap.add_argument("--strict", action="store_true", help="exit 1 when any gating row failed")
    add_force(ap, help="re-verify even when nothing verify depends on changed")
    args = ap.parse_args(argv)
    refs = resolve_models(args.models, args.artifacts)
    require_something(refs)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    names = [ref.name for ref in refs]
    rows: list[dict[str, Any]] = []
    old = read_json(args.artifacts / "verify.json", []) or []
    errors = StageErrors("verify")
    for ref in refs:
        name = ref.name
        with errors.model(name), _failed_row(rows, name):
            task = task_of(ref)  # zoo.tasks: outputs vs the reference's, or a decoder's greedy tokens (verify.decoder)
            key = task.run("verify_key", ref, args.limit)
            prev = [r for r in old if r.get("model") == name]
            if not args.force and prev and all(r.get("verify_key") == key for r in prev):
                print(f"verify {name}: up to date ({len(prev)} rows reused: artifacts, checkpoint, CPU and backends "
                      "unchanged; --force to rerun)")
                rows += prev
                continue
            rows += task.run("verify", ref, args.limit, args.threads, key=key)
    out = args.artifacts / "verify.json"
    kept = [r for r in old if r.get("model") not in names]  # rows of models not re-verified this time
    all_rows = kept + rows
    atomic_write_json(out, all_rows)
    write_markdown(all_rows, args.artifacts / "verify.md")
    gating = [r for r in rows if r.get("gating", True)]
    n_fail = sum(not r.get("passed") for r in gating)
    n_adv = sum(not r.get("passed") for r in rows if not r.get("gating", True))
    print(f"verify: {len(gating) - n_fail}/{len(gating)} gating rows passed"
          + (f"; {n_adv} advisory CPU-integer-kernel row(s) missed on this CPU" if n_adv else "")
          + f" -> {out}, {args.artifacts / 'verify.md'}")
    return errors.finish() or exit_code(rows, args.strict)


def require_something(refs: list[ModelRef]) -> None:
    """Verifying nothing is a failure: when no model of ``--models`` has an ONNX file, refuse before writing."""
    if not any(ref.folder.is_dir() and artifact_files(ref.folder, gpu_present=False) for ref in refs):
        names = ", ".join(ref.name for ref in refs)
        raise ArgumentsError(f"nothing to verify: got no ONNX file for {names} under {refs[0].artifacts}, expected "
                             f"<model>/fp32.onnx at least (run 'edgeattn export --models {refs[0].name}' first)")


@contextlib.contextmanager
def _failed_row(rows: list[dict[str, Any]], name: str):
    """A model that cannot be verified at all still gets a failed row in verify.json. A typed error (missing
    checkpoint, bad module) goes on to StageErrors (one error line, exit 2); anything else is a bug: its traceback
    is logged and the other models are still verified."""
    try:
        yield
    except Exception as e:
        rows.append(VerifyRow(name, passed=False, error=f"{type(e).__name__}: {one_line(e)}",
                              reasons=[one_line(e)]).to_dict())
        if isinstance(e, EdgeattnError):
            raise
        log.exception("verify %s: unexpected %s (a bug; the other models go on)", name, type(e).__name__)


if __name__ == "__main__":
    raise SystemExit(cli("verify", main))
