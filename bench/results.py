"""Rows, the verify.json cross-reference, the INT8 guard and the per-model summary of bench.json.

A row (one candidate at one batch size):

    model, backend, artifact, precision, mode, batch, seq_len, p50_ms, p90_ms, p99_ms, mean_ms, min_ms,
    throughput_per_s (= batch / p50), iterations (timed calls), warmup_calls, is_peer, peer_kind, verified,
    compile_seconds (torch.compile: first call at this shape), load_seconds, threads, device ("cpu" | "gpu":
    where the candidate computes; ``device_of``), accuracy, accuracy_metric
    ("accuracy" | "top1_agreement"), accuracy_source, error, and where known notes, spec_source,
    seq_len_source, run (the bench run's start time)

Latency fields are null when the candidate failed (``error`` says why). ``verified`` is the verify.json
``passed`` of the row with the same model + artifact + backend + mode, null when verify has no such row and
for peers (they are the references). The fastest "ours" row is picked among ``verified is True`` rows only.
Like against like: speed-ups, the summary and the INT8 guard compare rows of the same device only (CPU artifacts
with CPU peers, engines and ONNX Runtime GPU providers with the CUDA peers).
"""
from __future__ import annotations

from typing import Any, Iterable

from judge.rows import VerifyRow, split_mode
from bench.peers import COMPILE_PEERS, CPU_TORCH_PEERS, CUDA_TORCH_PEERS, EAGER_PEER, PEER_DEVICE
from pipeline.sources import source_of
from runtime.loader import ORT_GPU_MODES

ROW_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,), "backend": (str,), "artifact": (str,), "precision": (str,), "mode": (str,),
    "batch": (int,), "seq_len": (int, type(None)), "p50_ms": (float, type(None)), "p90_ms": (float, type(None)),
    "p99_ms": (float, type(None)), "mean_ms": (float, type(None)), "throughput_per_s": (float, type(None)),
    "iterations": (int,), "is_peer": (bool,), "verified": (bool, type(None)),
    "compile_seconds": (float, type(None)), "accuracy": (float, type(None)), "error": (str, type(None)),
}
TOP_KEYS = {"env": dict, "rows": list, "guard": list, "summary": dict}
TORCH_PEERS_ON = {"cpu": CPU_TORCH_PEERS, "gpu": CUDA_TORCH_PEERS}
SPEEDUP_TARGETS = {"vs_eager": 3.0, "vs_best_torch_peer": 1.5}
GUARD_MARGIN = 0.05  # an INT8 row is flagged when its p50 exceeds the FP32 p50 by more than this (timing noise)


# ---- verify.json ------------------------------------------------------------------------------------
def verify_mode(mode: Any) -> str:
    """The mode a verify row ran (judge.rows: a field; rows of older verify.json files wrote 'extended (all: <why>)'
    when it fell back)."""
    return split_mode(mode)[0]


def find_verify_row(vrows: Iterable[dict], model: str, artifact: str, backend: str, mode: str,
                    provider: str | None = None, precision: str | None = None) -> dict | None:
    """The verify row of the same (artifact, backend, mode) and, where both sides know them, the same execution
    provider and precision: a CPU timing is never marked verified by a GPU run, or the reverse."""
    hit = None
    for r in vrows:
        if (r.get("model"), r.get("artifact"), r.get("backend")) != (model, artifact, backend) or \
                verify_mode(r.get("mode")) != mode:
            continue
        if provider and r.get("execution_provider") and r["execution_provider"] != provider:
            continue
        if precision and r.get("precision") and precision not in (r["precision"], r.get("precision_asked")):
            continue
        hit = r
    return hit


def verified_mode(vrows: Iterable[dict], model: str, artifact: str, backend: str, planned: str) -> str:
    """The mode verify actually ran for a planned (artifact, backend, mode): 'extended' after an 'all' crash."""
    for r in vrows:
        if (r.get("model"), r.get("artifact"), r.get("backend")) != (model, artifact, backend):
            continue
        row = VerifyRow.from_dict(r)
        if planned in (row.mode, row.mode_asked):
            return row.mode
    return planned


def accuracy_from_verify(vr: dict | None) -> tuple[float | None, str | None, str | None]:
    """(value, metric, source) for an artifact row, from its verify.json row."""
    if not vr:
        return None, None, None
    n = vr.get("n_samples")
    data = vr.get("dataset", "?")
    if vr.get("accuracy") is not None:
        return float(vr["accuracy"]), "accuracy", f"verify.json: {data} test split, n={n}"
    if vr.get("top1_agreement") is not None:
        return float(vr["top1_agreement"]), "top1_agreement", f"verify.json: top-1 agreement with PyTorch fp32, {data}, n={n}"
    return None, None, None


# ---- rows -------------------------------------------------------------------------------------------
def device_of(backend: str, mode: str, peer_kind: str | None = None) -> str:
    """Where a candidate computes: 'gpu' for TensorRT engines, ONNX Runtime GPU providers and the CUDA peers."""
    if peer_kind:
        return PEER_DEVICE.get(peer_kind, "cpu")
    return "gpu" if backend == "tensorrt" or mode in ORT_GPU_MODES else "cpu"


def make_row(cand, batch: int, seq_len: int | None, threads: int | None, stats: dict[str, Any] | None,
             error: str | None, verified: bool | None, first_call_s: float | None = None,
             warmup_calls: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": cand.model, "backend": cand.backend, "artifact": cand.artifact, "precision": cand.precision,
        "mode": cand.mode, "batch": int(batch), "seq_len": seq_len,
        "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "min_ms": None, "throughput_per_s": None,
        "iterations": 0, "warmup_calls": int(warmup_calls), "is_peer": bool(cand.is_peer), "peer_kind": cand.peer_kind,
        "verified": None if cand.is_peer else verified,
        "compile_seconds": (round(first_call_s, 3) if first_call_s is not None and cand.peer_kind in COMPILE_PEERS
                            else None),
        "device": device_of(cand.backend, cand.mode, cand.peer_kind),
        "load_seconds": round(cand.load_seconds, 3) if cand.load_seconds is not None else None,
        "threads": threads, "accuracy": None, "accuracy_metric": None, "accuracy_source": None, "error": error,
    }
    if stats and not error:
        row.update({k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "throughput_per_s",
                                          "iterations")})
    if cand.notes:
        row["notes"] = dict(cand.notes)
    return row


def ok(r: dict) -> bool:
    return r.get("p50_ms") is not None and not r.get("error")


# ---- INT8 guard ---------------------------------------------------------------------------------------
def _fp32_reference(rows: list[dict], r: dict) -> dict | None:
    """The same model's FP32 artifact on the same backend and batch: fp32.sim.onnx first, then fp32.onnx;
    same mode when there is one (ORT level / OpenVINO f32 hint), else any FP32 mode."""
    same = [x for x in rows if ok(x) and x["model"] == r["model"] and x["backend"] == r["backend"]
            and x["batch"] == r["batch"] and x["precision"] == "fp32" and x["artifact"] != "pytorch"
            and _device(x) == _device(r)]
    if r["backend"] == "openvino":
        same = [x for x in same if x["mode"] == "f32"]
    for art in ("fp32.sim.onnx", "fp32.onnx"):
        cands = [x for x in same if x["artifact"] == art]
        exact = [x for x in cands if x["mode"] == r["mode"]]
        if exact or cands:
            return (exact or cands)[0]
    engines = [x for x in same if x["artifact"].endswith((".engine", ".plan"))]
    return engines[0] if engines else None


def int8_guard(rows: list[dict], margin: float = GUARD_MARGIN) -> list[dict[str, Any]]:
    """A flag for every INT8 artifact row slower (p50, by more than ``margin``, i.e. beyond timing noise) than its
    model's FP32 artifact on the same backend and batch."""
    flags = []
    for r in rows:
        if r["is_peer"] or r["precision"] != "int8" or not ok(r):
            continue
        ref = _fp32_reference(rows, r)
        if ref is None or r["p50_ms"] <= ref["p50_ms"] * (1 + margin):
            continue
        flags.append({"model": r["model"], "backend": r["backend"], "batch": r["batch"],
                      "int8_artifact": r["artifact"], "int8_mode": r["mode"], "int8_p50_ms": r["p50_ms"],
                      "fp32_artifact": ref["artifact"], "fp32_mode": ref["mode"], "fp32_p50_ms": ref["p50_ms"],
                      "slowdown": r["p50_ms"] / ref["p50_ms"], "margin": margin,
                      "message": f"{r['model']}: {r['artifact']} on {r['backend']} ({r['mode']}) at batch {r['batch']} "
                                 f"takes {r['p50_ms']:.3g} ms, slower than {ref['artifact']} ({ref['p50_ms']:.3g} ms)"})
    return flags


# ---- summary ------------------------------------------------------------------------------------------
def _brief(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {k: r.get(k) for k in ("backend", "artifact", "mode", "precision", "peer_kind", "p50_ms", "min_ms",
                                  "iterations", "verified", "accuracy", "accuracy_metric")}


def _device(r: dict) -> str:
    """A row's device (rows written before the field existed: derived the same way)."""
    return r.get("device") or device_of(r.get("backend", ""), str(r.get("mode", "")), r.get("peer_kind"))


def summarize_model(rows: list[dict], model: str, batch: int = 1) -> dict[str, Any]:
    """Batch-``batch`` speed-ups of the fastest verified artifact vs PyTorch eager and the best PyTorch peer, on the
    CPU (the top-level keys) and, where the run had GPU rows, on the GPU (key ``gpu``, the same fields)."""
    out = _summarize_device(rows, model, batch, "cpu")
    if any(r["model"] == model and _device(r) == "gpu" for r in rows):
        out["gpu"] = _summarize_device(rows, model, batch, "gpu")
    return out


def _summarize_device(rows: list[dict], model: str, batch: int, device: str) -> dict[str, Any]:
    at = [r for r in rows if r["model"] == model and r["batch"] == batch and ok(r) and _device(r) == device]
    eager = next((r for r in at if r.get("peer_kind") == EAGER_PEER[device]), None)
    torch_peers = [r for r in at if r.get("peer_kind") in TORCH_PEERS_ON[device]]
    best_peer = min(torch_peers, key=lambda r: r["p50_ms"]) if torch_peers else None
    ours = [r for r in at if not r["is_peer"]]
    verified = [r for r in ours if r.get("verified") is True]
    fastest = min(verified, key=lambda r: r["p50_ms"]) if verified else None
    fastest_any = min(ours, key=lambda r: r["p50_ms"]) if ours else None
    sp_eager = eager["p50_ms"] / fastest["p50_ms"] if (eager and fastest) else None
    sp_peer = best_peer["p50_ms"] / fastest["p50_ms"] if (best_peer and fastest) else None

    def at_min(ref):  # the same ratio from the fastest single calls: a check on load noise in the medians
        if not (ref and fastest and ref.get("min_ms") and fastest.get("min_ms")):
            return None
        return ref["min_ms"] / fastest["min_ms"]

    where = "" if device == "cpu" else " (GPU: CUDA peers)"
    targets = [{"name": f"fastest verified vs PyTorch eager FP32{where}", "target": SPEEDUP_TARGETS["vs_eager"],
                "measured": sp_eager, "met": None if sp_eager is None else sp_eager >= SPEEDUP_TARGETS["vs_eager"],
                "measured_at_min_latency": at_min(eager)}]
    if source_of(model).policy.heavy:  # a big architecture: measured against the best PyTorch peer too
        t = SPEEDUP_TARGETS["vs_best_torch_peer"]
        targets.append({"name": f"fastest verified vs best PyTorch peer{where}", "target": t, "measured": sp_peer,
                        "met": None if sp_peer is None else sp_peer >= t, "measured_at_min_latency": at_min(best_peer)})
    return {"device": device, "batch": batch, "eager_fp32": _brief(eager), "best_torch_peer": _brief(best_peer),
            "fastest_verified": _brief(fastest), "fastest_any_ours": _brief(fastest_any),
            "speedup_vs_eager": sp_eager, "speedup_vs_best_torch_peer": sp_peer,
            "n_failed_rows": sum(1 for r in rows if r["model"] == model and not ok(r) and _device(r) == device),
            "targets": targets}


def per_device(model_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A model's summaries, CPU first, then the GPU one where the run had GPU rows."""
    return [model_summary] + ([model_summary["gpu"]] if model_summary.get("gpu") else [])


def summarize(rows: list[dict]) -> dict[str, Any]:
    return {m: summarize_model(rows, m) for m in dict.fromkeys(r["model"] for r in rows)}


def check_schema(doc: Any) -> list[str]:
    """Problems with a bench.json document (empty list = fine); used by tests and the report."""
    problems = []
    if not isinstance(doc, dict):
        return [f"bench.json: got {type(doc).__name__}, expected an object"]
    for k, t in TOP_KEYS.items():
        if not isinstance(doc.get(k), t):
            problems.append(f"bench.json: key '{k}' is {type(doc.get(k)).__name__}, expected {t.__name__}")
    for i, r in enumerate(doc.get("rows") or []):
        for k, types in ROW_KEYS.items():
            if k not in r:
                problems.append(f"row {i}: missing '{k}'")
            elif not isinstance(r[k], types) or (bool in (type(r[k]),) and bool not in types):
                problems.append(f"row {i}: '{k}' is {type(r[k]).__name__}, expected {[t.__name__ for t in types]}")
    return problems
