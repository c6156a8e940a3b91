"""CPU INT8 against what a CPU user would try first, on the same fp32 export, the same evaluation rows and the same
timing loop: ``python -m bench.int8_peers --models M --artifacts DIR [--eval-samples N] [--batches 1,8] [--seq-len 128]``.

| row | how it is built |
|---|---|
| ``fp32`` | ``fp32.sim.onnx`` on ONNX Runtime CPU (ORT_ENABLE_ALL): the reference of every figure and speed-up |
| ``fp32_openvino`` | ``fp32.sim.onnx`` on OpenVINO's CPU plugin (f32), where openvino is installed: the same-backend baseline of the OpenVINO rows |
| ``int8.cpu.onnx`` | ours (optimize.quantize; optimize.cpu_int8 says which form won), on the backend it was chosen on (manifest ``int8.cpu.backend``) |
| ``ort_dynamic_default`` | ``onnxruntime.quantization.quantize_dynamic(fp32.onnx, out)`` out of the box: no fusion, no pre-processing, its default options (per-tensor s8 weights) |
| ``nncf_openvino`` | ``nncf.quantize`` (NNCF 3.4) of ``fp32.onnx`` read by OpenVINO, ``model_type=TRANSFORMER`` for text models (NNCF's documented setting for transformers: SmoothQuant and its transformer ignored scope) and the default otherwise, calibrated on the same training rows as ours, run on OpenVINO's CPU plugin |

Accuracy: judge.figures of each row's outputs against fp32's on the evaluation rows (the test split's first
``--eval-samples``), so the delta, agreement and cosine mean the same for every row; every row is also judged by the
int8 budget (judge.budget.passes on the spec's tolerances). Latency: every row in ONE crash-guarded child, interleaved
round robin per batch (seeded token ids without padding at ``--seq-len``), through the thin runtime's runners. Peers
are rebuilt only when ``fp32.onnx`` changed (``<model>/peers/``). A peer that cannot be built is a row with the
reason (e.g. NNCF not installed). Writes ``<model>/int8_peers.json`` and prints the table.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.args import add_artifacts, add_batches, add_force, add_models, add_threads, positive_int, stage_parser
from pipeline.artifacts import resolve_models
from pipeline.stage import StageErrors, cli
from runtime.child import python_module, run_child
from runtime.errors import EdgeattnError
from zoo.io import atomic_write_json, read_json, sha256_file

log = logging.getLogger("edgeattn.bench.int8_peers")
PEERS = ("ort_dynamic_default", "nncf_openvino")
PEER_FILES = {"ort_dynamic_default": "ort_dynamic_default.onnx", "nncf_openvino": "nncf_int8.xml"}
CODE_VERSION = "int8_peers/1"  # the peers' build recipe (rows and timing are redone on every run)


class PeerError(EdgeattnError, RuntimeError):
    """The int8 peers cannot be compared for this model; the message says why and what is expected."""


# ---- building the peers ------------------------------------------------------------------------------------
def build_ort_dynamic_default(fp32: Path, dst: Path) -> dict[str, Any]:
    """ONNX Runtime's quantize_dynamic with every option at its default."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(dst))
    return {"how": "onnxruntime.quantization.quantize_dynamic(fp32.onnx, out), default options"}


def build_nncf_openvino(fp32: Path, dst: Path, calib: list[dict[str, np.ndarray]], transformer: bool) -> dict[str, Any]:
    """NNCF post-training INT8 of the OpenVINO model read from ``fp32``, saved as OpenVINO IR (``dst`` .xml)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), **kw)
    ov.save_model(q, str(dst))
    return {"how": f"nncf {nncf.__version__} nncf.quantize(openvino model of fp32.onnx, {len(calib)} calibration "
                   f"rows{', model_type=TRANSFORMER' if transformer else ', defaults'}), OpenVINO {ov.__version__} CPU"}


def build_peers(model_dir: Path, calib: list[dict[str, np.ndarray]], transformer: bool,
                force: bool = False) -> dict[str, dict[str, Any]]:
    """Each peer's file under ``model_dir/peers/`` (reused while fp32.onnx is unchanged): name -> {"path" | "error",
    "how", "seconds"}."""
    fp32 = model_dir / "fp32.onnx"
    folder = model_dir / "peers"
    folder.mkdir(exist_ok=True)
    key = {"fp32_sha256": sha256_file(fp32), "code": CODE_VERSION, "n_calib": len(calib)}
    stamp = read_json(folder / "peers.json", {}) or {}
    out: dict[str, dict[str, Any]] = {}
    for name in PEERS:
        dst = folder / PEER_FILES[name]
        old = stamp.get(name) or {}
        if not force and old.get("key") == key and dst.is_file() and "path" in old:
            out[name] = old
            continue
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="edgeattn-peer-", dir=folder) as tmp:
                tmp_dst = Path(tmp) / dst.name
                info = (build_ort_dynamic_default(fp32, tmp_dst) if name == "ort_dynamic_default"
                        else build_nncf_openvino(fp32, tmp_dst, calib, transformer))
                for f in Path(tmp).iterdir():  # .onnx, or .xml + .bin
                    f.replace(folder / f.name)
            out[name] = {"path": str(dst), **info}
        except ImportError as e:
            out[name] = {"error": f"not installed: {e}"}
        except Exception as e:  # noqa: BLE001 - a peer that fails to build is a row with its reason
            out[name] = {"error": f"build failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        out[name].update(key=key, seconds=round(time.perf_counter() - t0, 1))
    atomic_write_json(folder / "peers.json", out)
    return out


# ---- running: accuracy outputs and latency in one child ----------------------------------------------------
def _child(argv: Sequence[str]) -> int:
    """``--child JOB OUT``: JOB lists rows (path, backend, mode), the evaluation feeds and the timing feeds."""
    job = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1])
    with np.load(job["eval"]) as z:
        ev = [{k.split(":", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}:")} for i in range(job["n_eval"])]
    runners = {r["name"]: _open(r, job["threads"]) for r in job["rows"]}
    for name, rn in runners.items():
        out_name = rn.outputs[0].name
        np.save(out_dir / f"{name}.npy", np.concatenate([rn.infer(f)[out_name] for f in ev]).astype(np.float32))
    lat: dict[str, dict[str, Any]] = {}
    with np.load(job["timing"]) as z:
        for b in job["batches"]:
            feed = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith(f"{b}:")}
            lat[str(b)] = interleaved(runners, feed, job["runs"], job["warmup"])
    (out_dir / "latency.json").write_text(json.dumps(lat))
    return 0


def _open(row: dict[str, Any], threads: int):
    """The thin runtime's runner of one row; an OpenVINO IR (.xml, which runtime.loader does not route) is opened by
    the OpenVINO runner itself with the model's spec.json."""
    from runtime.loader import open_mode

    if row["backend"] == "openvino" and row["path"].endswith(".xml"):
        from runtime.openvino_backend import OpenVINORunner

        spec = json.loads(Path(row["spec"]).read_text()) if row.get("spec") else None
        return OpenVINORunner(row["path"], row["mode"], threads, spec=spec)
    return open_mode(row["path"], row["backend"], row["mode"], threads)


def interleaved(runners: dict[str, Any], feed: dict[str, np.ndarray], runs: int, warmup: int) -> dict[str, Any]:
    """Round-robin timing of every runner on ``feed``: median / p10 / p90 ms each."""
    for rn in runners.values():
        for _ in range(warmup):
            rn.infer(feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):
        for k, rn in runners.items():
            t0 = time.perf_counter()
            rn.infer(feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": round(float(np.median(v)), 3), "p10_ms": round(float(np.percentile(v, 10)), 3),
                "p90_ms": round(float(np.percentile(v, 90)), 3), "runs": len(v)} for k, v in times.items()}


def run_rows(rows: list[dict[str, str]], ev: list[dict[str, np.ndarray]], timing: dict[int, dict[str, np.ndarray]],
             threads: int, runs: int, warmup: int = 3, timeout_s: float = 3600.0) -> tuple[dict, dict, str | None]:
    """(outputs per row name, latency {batch: {row: stats}}, error or None) from one crash-guarded child."""
    with tempfile.TemporaryDirectory(prefix="edgeattn-int8peers-") as tmp:
        t = Path(tmp)
        np.savez(t / "eval.npz", **{f"{i}:{k}": v for i, f in enumerate(ev) for k, v in f.items()})
        np.savez(t / "timing.npz", **{f"{b}:{k}": v for b, f in timing.items() for k, v in f.items()})
        job = {"rows": rows, "eval": str(t / "eval.npz"), "n_eval": len(ev), "timing": str(t / "timing.npz"),
               "batches": sorted(timing), "threads": threads, "runs": runs, "warmup": warmup}
        (t / "job.json").write_text(json.dumps(job))
        res = run_child(python_module("bench.int8_peers", "--child", t / "job.json", t), timeout_s)
        if not res.ok or not (t / "latency.json").is_file():
            return {}, {}, f"peer child {res.describe()}"
        outs = {r["name"]: np.load(t / f"{r['name']}.npy") for r in rows}
        return outs, json.loads((t / "latency.json").read_text()), None


# ---- one model ---------------------------------------------------------------------------------------------
def model_rows(model_dir: Path, n_eval: int, batches: Sequence[int], seq_len: int, threads: int, runs: int,
               calib_size: int = 128, force: bool = False) -> dict[str, Any]:
    """Build the peers, run fp32 / ours / peers on the same rows, judge each against fp32; the section written to
    ``int8_peers.json``."""
    from calibration import CalibrationData
    from calibration.evalset import load_eval_set
    from judge.budget import budget_for, passes, reasons
    from judge.figures import figures
    from zoo.data import load_dataset
    from zoo.spec import load_spec

    src = model_dir / "fp32.sim.onnx"
    spec = load_spec(src)
    if spec.dataset is None:
        raise PeerError(f"{model_dir.name}: int8 peers need a labelled dataset (spec 'dataset'); got none")
    dataset = load_dataset(spec.dataset)
    es = load_eval_set(spec, model_dir, "test", n_eval, 0, dataset=dataset)
    calib = list(CalibrationData.from_dataset(spec, dataset, model_dir, calib_size, 1, 0))
    text = (spec.preprocess or {}).get("kind") == "text"
    peers = build_peers(model_dir, calib, transformer=text, force=force)
    from optimize.cpu_int8 import artifact_backend
    from runtime.openvino_backend import available

    rows = [{"name": "fp32", "path": str(src), "backend": "onnxruntime", "mode": "all"}]
    if available():
        rows.append({"name": "fp32_openvino", "path": str(src), "backend": "openvino", "mode": "f32"})
    ours = model_dir / "int8.cpu.onnx"
    if ours.is_file():
        backend, mode = artifact_backend(((read_json(model_dir / "manifest.json", {}) or {}).get("int8") or {}).get("cpu"))
        rows.append({"name": "int8.cpu.onnx", "path": str(ours), "backend": backend, "mode": mode})
    for name, p in peers.items():
        if "path" in p:
            ov = name == "nncf_openvino"
            rows.append({"name": name, "path": p["path"], "mode": "f32" if ov else "all",
                         "backend": "openvino" if ov else "onnxruntime",
                         **({"spec": str(model_dir / "spec.json")} if ov else {})})
    sizes = {"sequence": seq_len} if "sequence" in spec.dynamic else {}
    timing = {b: spec.example_inputs({"batch": b, **sizes}, seed=0) for b in batches}
    t0 = time.perf_counter()
    outs, lat, err = run_rows(rows, list(es.batches(32)), timing, threads, runs)
    budget = budget_for(spec.tolerances, "int8")
    table: dict[str, dict[str, Any]] = {}
    for r in rows + [{"name": k, **v} for k, v in peers.items() if "path" not in v]:
        name = r["name"]
        row: dict[str, Any] = {"backend": r.get("backend"), "file": Path(r["path"]).name if "path" in r else None,
                               **({"how": peers[name].get("how")} if name in peers else {})}
        if name in outs and "fp32" in outs:
            f = figures(outs["fp32"], outs[name], es.y)
            row.update(accuracy=f["accuracy"], accuracy_delta=f["accuracy_delta"],
                       accuracy_delta_ci95=f["accuracy_delta_ci95"], top1_agreement=f["top1_agreement"],
                       cosine_mean=f["cosine_mean"], within_int8_budget=passes(f, budget, True),
                       budget_misses=reasons(f, budget, True))
        row["error"] = r.get("error") or (err if name not in outs else None)
        same = "fp32_openvino" if r.get("backend") == "openvino" else "fp32"  # the same-backend baseline
        for b in batches:
            at = lat.get(str(b)) or {}
            ms, fp, fs = (at.get(k, {}).get("median_ms") for k in (name, "fp32", same))
            row[f"b{b}_ms"] = ms
            row[f"b{b}_speedup"] = round(fp / ms, 3) if ms and fp else None
            row[f"b{b}_speedup_same_backend"] = round(fs / ms, 3) if ms and fs else None
        table[name] = row
    return {"eval": es.description, "n": len(es), "budget": budget.to_dict(), "batches": list(batches),
            "seq_len": seq_len if sizes else None, "threads": threads, "runs": runs,
            "seconds": round(time.perf_counter() - t0, 1), "rows": table,
            "timing": "one child, interleaved round robin per batch, thin-runtime runners (shared cores: compare "
                      "ratios within one run)"}


def format_table(name: str, sec: dict[str, Any]) -> str:
    bs = sec["batches"]
    head = (f"{name}: {sec['eval']} (n={sec['n']}), latency at seq {sec['seq_len']}, {sec['threads']} threads\n"
            f"  {'row':<22}{'backend':>12}{'acc delta':>10}{'agree':>8}{'cosine':>9}{'budget':>8}"
            + "".join(f"{'b' + str(b) + ' ms':>11}{'x fp32':>8}{'x same':>8}" for b in bs))
    lines = [head]
    for k, r in sec["rows"].items():
        f = lambda v, nd: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
        lines.append(f"  {k:<22}{str(r.get('backend') or '-'):>12}{f(r.get('accuracy_delta'), 2):>10}"
                     f"{f(r.get('top1_agreement'), 4):>8}{f(r.get('cosine_mean'), 4):>9}"
                     f"{str(r.get('within_int8_budget', '-')):>8}"
                     + "".join(f"{f(r.get(f'b{b}_ms'), 1):>11}{f(r.get(f'b{b}_speedup'), 2):>8}"
                               f"{f(r.get(f'b{b}_speedup_same_backend'), 2):>8}" for b in bs)
                     + (f"  ({r['error']})" if r.get("error") else ""))
    return "\n".join(lines)


def report_section(artifacts: Path, names: Sequence[str]) -> list[str]:
    """The report's section (bench.report): one table per model that has ``int8_peers.json``."""
    from pipeline.artifacts import ModelRef

    out: list[str] = []
    for m in names:
        sec = read_json(ModelRef.resolve(m, artifacts).folder / "int8_peers.json", None)
        if not sec:
            continue
        bs = sec["batches"]
        f = lambda v, nd: "-" if v is None else f"{v:.{nd}f}"  # noqa: E731
        out += [f"### {m}", "", f"{sec['eval']}, n={sec['n']}; latency: seq {sec['seq_len']}, {sec['threads']} "
                f"threads, {sec['timing']}.", "",
                "| row | backend | accuracy delta pts (95 % CI) | top-1 agreement | cosine mean | within int8 budget | "
                + " | ".join(f"batch {b} ms | x fp32 ORT | x fp32 same backend" for b in bs) + " |",
                "|---|---|---|---|---|---|" + "---|---|---|" * len(bs)]
        for k, r in sec["rows"].items():
            ci = r.get("accuracy_delta_ci95")
            delta = "-" if r.get("accuracy_delta") is None else (
                f"{r['accuracy_delta']:+.2f}" + (f" ({ci[0]:+.2f}, {ci[1]:+.2f})" if ci else ""))
            out.append(f"| {k}{' (' + r['error'] + ')' if r.get('error') else ''} | {r.get('backend') or '-'} | {delta} | "
                       f"{f(r.get('top1_agreement'), 4)} | {f(r.get('cosine_mean'), 4)} | "
                       f"{r.get('within_int8_budget', '-')} | "
                       + " | ".join(f"{f(r.get(f'b{b}_ms'), 1)} | {f(r.get(f'b{b}_speedup'), 2)} | "
                                    f"{f(r.get(f'b{b}_speedup_same_backend'), 2)}" for b in bs) + " |")
        out += ["", "How each peer was built: " + "; ".join(f"`{k}`: {r['how']}" for k, r in sec["rows"].items()
                                                            if r.get("how")) + ".", ""]
    return (["## CPU INT8 vs the tools a CPU user would try first (bench.int8_peers)", ""] + out) if out else []


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    ap = stage_parser("int8-peers", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    ap.add_argument("--eval-samples", type=positive_int, default=1000, help="test rows for the figures")
    add_batches(ap, default="1,8", help="comma-separated batch sizes to time")
    ap.add_argument("--seq-len", type=positive_int, default=128)
    ap.add_argument("--runs", type=positive_int, default=20)
    add_force(ap, help="rebuild the peers")
    add_threads(ap, default="2")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    batches = list(args.batches)
    errors = StageErrors("int8-peers")
    for ref in resolve_models(args.models, args.artifacts):
        with errors.model(ref.name):
            sec = model_rows(ref.folder, args.eval_samples, batches, args.seq_len, args.threads, args.runs,
                             force=args.force)
            atomic_write_json(ref.folder / "int8_peers.json", sec)
            print(format_table(ref.name, sec))
    return errors.finish()


if __name__ == "__main__":
    raise SystemExit(cli("int8-peers", main))
