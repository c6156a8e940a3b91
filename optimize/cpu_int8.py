"""The int8.cpu.onnx choice: which CPU int8 forms to build for this CPU, building them, their accuracy on this CPU's
integer kernels, their latency next to fp32 (interleaved, in a crash-guarded child) and the pick.

The pick is a (form, backend) pair: most forms run on ONNX Runtime's CPU provider; ``qdq_openvino`` is the TensorRT
Q/DQ graph (smoothed, per-channel s8 weights, per-tensor symmetric activations) on OpenVINO's int8 kernels, built
where openvino is installed. A form is judged and timed on its own backend (:func:`candidate_backend`); the winner's
backend is written into int8.cpu.onnx (runtime.cpu.CPU_BACKEND_METADATA_KEY, so the thin runtime's ``auto`` opens it
there) and into the manifest (:func:`backend_record`), which verify and bench read (:func:`artifact_backend`).
``python -m optimize.cpu_int8 --child-bench SPEC FEED OUT`` is the latency child's entry point, ``--child-run ...``
the accuracy child's for a form on another backend than ONNX Runtime."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from calibration import TensorRange
from calibration.evalset import EvalSet
from optimize.fp16 import child_args, ort_logits, run_guarded
from optimize.int8_budget import QuantOptions, brief_figures, logit_error
from optimize.int8_build import QuantizeError, quantize_dynamic_matmul, quantize_static_cached
from optimize.cpu_fused_int8 import FUSED_FP32, build_fused, fused_search, fusion_report, quantize_fused_dynamic
from optimize.qdq_graph import int8_weight_coverage, quantizable_weight_elements
from runtime.child import python_module, run_child
from runtime.cpu import CPU_BACKEND_METADATA_KEY, ISA_METADATA_KEY, int8_isa, int8_saturates
from runtime.ort_backend import cpu_session
from judge.budget import Budget, passes
from judge.figures import figures
from zoo.io import atomic_save_onnx

log = logging.getLogger("edgeattn.optimize.cpu_int8")
# fused_dynamic: the CPU's own form (optimize.cpu_fused_int8): fused transformer graph, dynamic int8, per-channel weights,
# its own sensitivity search; the others are built on the plain graph with the TensorRT search's exclusions.
CPU_CANDIDATES = ("fused_dynamic", "dynamic", "dynamic_conv", "static_qdq_u8s8", "static_qoperator", "qdq_s8s8")
# 7-bit weights (reduce_range): ORT's u8s8 kernels on CPUs without VNNI add pairs of u8*s8 products in int16 and
# saturate; 255 * 63 * 2 stays inside int16 (runtime.cpu). Built where the CPU at hand saturates.
RR_CANDIDATES = ("fused_dynamic_rr", "dynamic_rr", "static_qdq_u8s8_rr", "static_qoperator_rr")
# Forms for another CPU backend than ONNX Runtime, built where that backend is installed. qdq_openvino: the TensorRT
# Q/DQ graph on OpenVINO's int8 kernels (its CPU plugin turns Q/DQ into FakeQuantize + int8 FullyConnected);
# qdq_attention_openvino: the same with the attention BMMs' inputs quantised too (:func:`quantize_attention_inputs`),
# so OpenVINO runs its attention subgraph in int8.
OPENVINO_CANDIDATES = ("qdq_openvino", "qdq_attention_openvino")
ALL_CPU_CANDIDATES = CPU_CANDIDATES + RR_CANDIDATES + OPENVINO_CANDIDATES
ORT_CPU = ("onnxruntime", "all")  # (backend, mode) of every form not in CANDIDATE_BACKENDS
CANDIDATE_BACKENDS = {"qdq_openvino": ("openvino", "f32"), "qdq_attention_openvino": ("openvino", "f32")}
SOFTMAX_SCALE = 1.0 / 255.0  # a softmax output's uint8 scale: [0, 1] by construction, 8 bits with zero point 0


def default_cpu_candidates(isa: str | None = None, openvino: bool | None = None) -> tuple[str, ...]:
    """The CPU int8 forms worth building on a CPU of class ``isa`` (runtime.cpu.int8_isa()): the full-range ones
    everywhere, plus the 7-bit ones where the int8 kernels saturate, plus the OpenVINO forms where ``openvino`` (None:
    the package is installed here)."""
    from runtime.openvino_backend import available

    isa = isa or int8_isa()
    openvino = available() if openvino is None else openvino
    return CPU_CANDIDATES + (RR_CANDIDATES if int8_saturates(isa) else ()) + (OPENVINO_CANDIDATES if openvino else ())


def candidate_backend(name: str) -> tuple[str, str]:
    """(backend, mode) a CPU form is judged, timed and shipped on: runtime.loader.open_mode's pair."""
    return CANDIDATE_BACKENDS.get(name, ORT_CPU)


def backend_record(name: str | None) -> dict[str, Any]:
    """The manifest's record of where int8.cpu.onnx (form ``name``; None: fp32 kept) runs: backend, mode, judged_by."""
    backend, mode = candidate_backend(name) if name else ORT_CPU
    kernels = "OpenVINO's int8 kernels" if backend == "openvino" else "ONNX Runtime's integer kernels"
    return {"backend": backend, "mode": mode, "judged_by": f"{kernels} on this CPU"}


def artifact_backend(cpu_section: dict[str, Any] | None) -> tuple[str, str]:
    """(backend, mode) verify and bench run int8.cpu.onnx on: the manifest's ``int8.cpu`` section's (written by
    :func:`backend_record`); ONNX Runtime at 'all' for a section from before backends were recorded."""
    sec = cpu_section or {}
    return (sec["backend"], sec["mode"]) if sec.get("backend") and sec.get("mode") else ORT_CPU


def cpu_session_on(path: str | os.PathLike, backend: str, mode: str, threads: int):
    """A bare session (``run(None, feed)``) of ``path`` on ``backend``: ONNX Runtime at level ``mode`` or OpenVINO with
    precision hint ``mode``."""
    if backend == "openvino":
        from runtime.openvino_backend import openvino_session

        return openvino_session(path, mode, threads)
    if backend != "onnxruntime":
        raise QuantizeError(f"CPU backend: got {backend!r}, expected 'onnxruntime' or 'openvino'")
    return cpu_session(str(path), mode, threads)


# ---- latency -----------------------------------------------------------------------------------------
def bench_inprocess(models: dict[str, str], feed: dict[str, np.ndarray], runs: int, threads: int,
                    backends: dict[str, Sequence[str]] | None = None, warmup: int = 3,
                    seconds_total: float = 6.0) -> dict[str, dict[str, float]]:
    """Interleaved (round-robin) latency of several models on one feed: median / p10 / p90 ms per model, each on its
    (backend, mode) in ``backends`` (default: ONNX Runtime at 'all'). ``runs`` rounds (every model once) at least;
    while the rounds have taken less than ``seconds_total``, more follow, up to 10x ``runs``, to beat noise. The time
    is for all models together (eleven CPU forms of a 22M-parameter encoder at batch 1 took 31 s at 3 s per model),
    and it is measured on the rounds themselves: back-to-back warm-up runs find the caches warm and were 3x faster
    than an interleaved round."""
    backends = backends or {}
    sessions, setup = {}, {}
    for k, v in models.items():  # session creation (OpenVINO: compilation) and warm-up, per model
        t0 = time.perf_counter()
        sessions[k] = s = cpu_session_on(v, *backends.get(k, ORT_CPU), threads)
        for _ in range(warmup):
            s.run(None, feed)
        setup[k] = round(time.perf_counter() - t0, 2)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    start, done = time.perf_counter(), 0
    while done < 10 * runs and (done < runs or time.perf_counter() - start < seconds_total):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
        done += 1
    return {k: {"median_ms": round(float(np.median(v)), 3), "p10_ms": round(float(np.percentile(v, 10)), 3),
                "p90_ms": round(float(np.percentile(v, 90)), 3), "runs": len(v), "setup_s": setup[k]}
            for k, v in times.items()}


def bench_guarded(models: dict[str, str], feed: dict[str, np.ndarray], runs: int, threads: int,
                  backends: dict[str, Sequence[str]] | None = None, timeout_s: float = 1800.0) -> dict[str, Any]:
    """:func:`bench_inprocess` in a child process, so a backend crash is reported instead of fatal."""
    with tempfile.TemporaryDirectory(prefix="edgeattn-bench-") as tmp:
        fp, out = Path(tmp) / "feed.npz", Path(tmp) / "out.json"
        np.savez(fp, **feed)
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"models": models, "backends": backends or {}, "runs": runs, "threads": threads}))
        res = run_child(python_module("optimize.cpu_int8", "--child-bench", spec, fp, out), timeout_s)
        if not res.ok or not out.is_file():
            return {"error": f"benchmark child {res.describe()}"}
        return json.loads(out.read_text())


def _child_bench(argv: Sequence[str]) -> int:
    spec_path, feed_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    with np.load(feed_path) as z:
        feed = {k: z[k] for k in z.files}
    res = bench_inprocess(spec["models"], feed, int(spec["runs"]), int(spec["threads"]), spec.get("backends"))
    Path(out_path).write_text(json.dumps(res))
    return 0


def run_argv(backend: str):
    """run_guarded's ``argv_factory`` for a form on ``backend`` (its ``level`` argument carries the mode)."""
    def argv(model, feeds, out, mode, threads, batch_size) -> list[str]:
        return python_module("optimize.cpu_int8", "--child-run", "--model", model, "--feeds", feeds, "--out", out,
                             "--level", f"{backend}:{mode}", "--threads", threads, "--batch-size", batch_size)
    return argv


def _child_run(argv: Sequence[str]) -> int:
    a = child_args(["--child", *argv])
    backend, _, mode = a.level.partition(":")
    es = EvalSet.load_npz(a.feeds)
    np.save(a.out, ort_logits(cpu_session_on(a.model, backend, mode, a.threads), es, batch_size=a.batch_size))
    return 0


# ---- CPU flavour -------------------------------------------------------------------------------------
def build_cpu_candidates(src: Path, ranges: dict[str, TensorRange], method: str, quantized: Sequence[str],
                         excluded: Sequence[str], qdq_path: Path, work: Path, opts: QuantOptions) -> dict[str, Path]:
    """Write each CPU candidate into ``work``; returns name -> path (failures are logged and skipped)."""
    out: dict[str, Path] = {}
    fused: Path | None = None
    for name in opts.cpu_candidates or default_cpu_candidates():
        p = work / f"{name}.onnx"
        base, rr = (name[:-3], True) if name.endswith("_rr") else (name, False)
        try:
            if name not in ALL_CPU_CANDIDATES:
                raise QuantizeError(f"CPU candidate: got {name!r}, expected one of {ALL_CPU_CANDIDATES}")
            if base == "fused_dynamic":
                fused = fused or build_fused(src, work)
                if not (fusion_report(work) or {}).get("fused", {}).get("Attention"):
                    log.info("int8 CPU candidate %s for %s: no transformer attention block to fuse; skipped", name,
                             src.parent.name)
                    continue
                quantize_fused_dynamic(fused, p, reduce_range=rr)
            elif base == "dynamic":
                quantize_dynamic_matmul(src, p, exclude=excluded, reduce_range=rr)
            elif base == "dynamic_conv":
                quantize_dynamic_matmul(src, p, exclude=excluded, conv=True)
            elif base == "static_qdq_u8s8":
                quantize_static_cached(src, p, ranges, method, quantized, "qdq_u8s8", reduce_range=rr)
            elif base == "static_qoperator":
                quantize_static_cached(src, p, ranges, method, quantized, "qoperator", reduce_range=rr)
            elif base in ("qdq_s8s8", "qdq_openvino"):
                shutil.copyfile(qdq_path, p)
            elif base == "qdq_attention_openvino":
                if not quantize_attention_inputs(qdq_path, p, ranges):
                    log.info("int8 CPU candidate %s for %s: no attention BMM (MatMul of two activations); skipped",
                             name, src.parent.name)
                    continue
            out[name] = p
        except Exception as e:  # noqa: BLE001 - one failing candidate must not stop the others
            log.warning("int8 CPU candidate %s for %s failed: %s: %s", name, src.parent.name, type(e).__name__, e)
    return out


def quantize_attention_inputs(qdq: str | os.PathLike, dst: str | os.PathLike, ranges: dict[str, TensorRange]) -> int:
    """``qdq`` (a Q/DQ graph) with Q/DQ also on both inputs of every MatMul of two activations (attention scores and
    context; neither input comes from a DequantizeLinear), written to ``dst``; returns how many tensors were quantised.
    A Softmax output gets uint8 with zero point 0 and scale 1/255 (its range is [0, 1]: 8 bits where symmetric int8
    keeps 7, and no calibrated range to clip a near-one attention weight); every other one symmetric int8 per tensor
    at its calibrated ``ranges`` amax. Ranges of the unsmoothed graph serve: smoothing leaves Q, K, V and the scores
    unchanged. A CPU form only: the TensorRT graph keeps the symmetric rules of optimize.qdq_rules."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(qdq))
    g = model.graph
    consts = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    producer = {o: n for n in g.node for o in n.output}
    dq = {o for o, n in producer.items() if n.op_type == "DequantizeLinear"}
    done: dict[str, str] = {}
    before: dict[int, list] = {}  # node index -> the Q/DQ nodes that go in front of it
    inits = []
    for k, n in enumerate(g.node):
        if n.op_type != "MatMul" or any(t in consts or t in dq for t in n.input[:2]):
            continue
        for i, t in enumerate(n.input[:2]):
            if t not in done:
                soft = producer.get(t) is not None and producer[t].op_type == "Softmax"
                if not soft and t not in ranges:
                    raise QuantizeError(f"{Path(qdq).name}: attention input '{t}' of {n.name} has no calibrated range; "
                                        "expected the ranges of every MatMul input (optimize.int8_build)")
                scale = SOFTMAX_SCALE if soft else ranges[t].scale
                zp = np.array(0, np.uint8 if soft else np.int8)
                sn, zn = f"{t}.attention_scale", f"{t}.attention_zero_point"
                inits += [numpy_helper.from_array(np.array(scale, np.float32), sn), numpy_helper.from_array(zp, zn)]
                before.setdefault(k, []).extend(
                    [helper.make_node("QuantizeLinear", [t, sn, zn], [f"{t}.attention_q"], name=f"{t}.attention_Q"),
                     helper.make_node("DequantizeLinear", [f"{t}.attention_q", sn, zn], [f"{t}.attention_dq"],
                                      name=f"{t}.attention_DQ")])
                done[t] = f"{t}.attention_dq"
            n.input[i] = done[t]
    if not done:
        return 0
    nodes = [m for k, n in enumerate(g.node) for m in (*before.get(k, ()), n)]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    atomic_save_onnx(model, Path(dst))
    return len(done)


def pick_cpu(rows: dict[str, dict[str, Any]], fp32_ms: float | None, opts: QuantOptions,
             labelled: bool) -> tuple[str | None, str]:
    """(winner or None, why) from measured candidate rows: the fastest candidate that is within the budget, really
    int8 (``passed`` already holds both) and at least ``opts.min_speedup`` times faster than fp32 here; candidates
    within ``tie_tolerance`` of the fastest count as tied and the most accurate of them wins. None: no int8 form
    is both within the budget and faster on this CPU, so fp32 is kept."""
    within = [k for k, r in rows.items() if r.get("passed") and r.get("latency_ms") is not None]
    if fp32_ms is None:
        return None, "fp32 latency could not be measured, so no int8 form is known to be faster: fp32 kept"
    ok = [k for k in within if fp32_ms / rows[k]["latency_ms"] >= opts.min_speedup]

    def accuracy_rank(k: str) -> tuple:
        v = rows[k]["val"]
        return (v.get("accuracy_delta") or 0.0, v["top1_agreement"], v.get("cosine_mean") or 0.0) if labelled else \
            (v["cosine_mean"], v["top1_agreement"])  # decoders (optimize.decoder_quant) have no logit cosine

    if not ok:
        if within:
            fastest = min(within, key=lambda k: rows[k]["latency_ms"])
            return None, (f"no int8 form within the budget is faster than fp32 on this CPU (best: {fastest} "
                          f"{rows[fastest]['latency_ms']:.3f} ms vs fp32 {fp32_ms:.3f} ms, needs >= "
                          f"{opts.min_speedup:.2f}x): fp32 kept")
        return None, "no int8 form within the budget on this CPU: fp32 kept"
    best = min(rows[k]["latency_ms"] for k in ok)
    tied = [k for k in ok if rows[k]["latency_ms"] <= best * (1.0 + opts.tie_tolerance)]
    winner = max(tied, key=accuracy_rank)
    why = ("fastest within the budget" if len(tied) == 1 else
           f"most accurate of {sorted(tied)} (within {opts.tie_tolerance:.0%} of the fastest, within the budget)")
    return winner, why


def judge_fastest_first(lat: dict[str, float], fp32_ms: float, judge: Callable[[str], dict[str, Any]],
                        opts: QuantOptions, search: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None,
                        ) -> dict[str, dict[str, Any]]:
    """Candidate rows, judged in order of their best-case latency ``lat`` (ms, each form as built: all its nodes
    int8; a search that keeps nodes float only makes a form slower), skipping what cannot be picked (:func:`pick_cpu`):

    - a form whose best case is not ``opts.min_speedup`` times faster than ``fp32_ms``;
    - a form slower than the fastest one already within the budget by more than ``opts.tie_tolerance`` (pick_cpu's
      tie, where the most accurate wins: those are judged too).

    ``judge(name)``: its verdict row ({"ran", "passed", ...}). ``search(name, row)``: for a form that missed, its own
    search (the fused form's keep-float bisection, several evaluations), returning the searched row with its new
    ``latency_ms`` on the scale of ``lat`` (None: no search for that form). Searches run after every form has been
    judged as built, and only for a form whose best case beats the fastest form within the budget by more than
    ``opts.search_margin``: the searched form is slower than its best case, and a search costs minutes on a real
    model (MiniLM's fused form: 128 s on 2 cores for a best case 6 % faster than the OpenVINO form that passed as
    built). A skipped row: {"ran": None, "passed": False, "skipped": why}. So a model whose fastest form passes is
    judged once instead of once per candidate."""
    rows: dict[str, dict[str, Any]] = {}
    best: tuple[float, str] | None = None  # (latency, name) of the fastest form within the budget so far

    def better(t: float | None, name: str, row: dict[str, Any]) -> None:
        nonlocal best
        if row.get("passed") and t and fp32_ms / t >= opts.min_speedup and (best is None or t < best[0]):
            best = (t, name)

    order = sorted(lat, key=lambda k: lat[k])
    for name in order:
        t = lat[name]
        if fp32_ms / t < opts.min_speedup:
            rows[name] = {"ran": None, "passed": False, "skipped": f"best case {fp32_ms / t:.2f}x fp32, needs >= "
                                                                    f"{opts.min_speedup:.2f}x: cannot be picked"}
            continue
        if best is not None and t > best[0] * (1.0 + opts.tie_tolerance):
            rows[name] = {"ran": None, "passed": False, "skipped": f"best case {t:.3f} ms, slower than {best[1]} "
                                                                    f"({best[0]:.3f} ms, within the budget)"}
            continue
        rows[name] = judge(name)
        better(t, name, rows[name])
    for name in order if search is not None else ():
        row = rows[name]
        if not row.get("ran") or row.get("passed"):
            continue
        if best is not None and lat[name] * (1.0 + opts.search_margin) >= best[0]:
            row["search_skipped"] = (f"best case {lat[name]:.3f} ms is not {opts.search_margin:.0%} faster than "
                                     f"{best[1]} ({best[0]:.3f} ms, within the budget as built)")
            continue
        searched = search(name, row)
        if searched is None:
            continue
        rows[name] = searched
        better(searched["latency_ms"] if "latency_ms" in searched else lat[name], name, searched)
    return rows


def choose_cpu(src: Path, candidates: dict[str, Path], es: EvalSet, ref: np.ndarray, feed: dict[str, np.ndarray],
               opts: QuantOptions, budget: Budget | None = None) -> dict[str, Any]:
    """Latency of every candidate beside fp32 (one interleaved, crash-guarded child; each form on its own backend),
    then accuracy on this CPU's integer kernels (crash-guarded child) judged by verify's verdict (``budget``; None:
    ``opts.loop_budget`` on the default tolerances), fastest first (:func:`judge_fastest_first`; ``opts.cpu_judge``
    "all": every candidate, as when the latency child fails), then :func:`pick_cpu`. ``winner`` None: fp32 kept."""
    import onnx

    labelled = es.y is not None
    budget = budget or opts.loop_budget(None, labelled)
    quantizable = quantizable_weight_elements(onnx.load(str(src)))
    backends = {k: candidate_backend(k) for k in candidates}
    fused_fp32 = next((p.parent / FUSED_FP32 for k, p in candidates.items() if k.startswith("fused_")), None)
    extra = {"fp32_fused": str(fused_fp32)} if fused_fp32 is not None and fused_fp32.is_file() else {}
    for b in sorted({b for b in backends.values() if b != ORT_CPU}):  # fp32 on each other backend: its own baseline
        extra[f"fp32_{b[0]}"] = str(src)
        backends[f"fp32_{b[0]}"] = b

    def timed(models: dict[str, str]) -> dict[str, Any]:
        return bench_guarded({"fp32": str(src), **extra, **models}, feed, opts.bench_runs, opts.threads, backends)

    def judge(name: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        row = judge_cpu(candidates[name], es, ref, budget, labelled, opts, quantizable, candidate_backend(name))
        row["judge_s"] = round(time.perf_counter() - t0, 1)
        return row

    def search(name: str, row: dict[str, Any], retime: bool = True) -> dict[str, Any] | None:
        if not name.startswith("fused_dynamic"):
            return None
        t0 = time.perf_counter()
        p = candidates[name]
        res = fused_search(p.parent / FUSED_FP32, p, es,  # the CPU form's own search (optimize.cpu_fused_int8)
                           lambda q: judge_cpu(q, es, ref, budget, labelled, opts, quantizable), opts,
                           name.endswith("_rr"), row)  # rewrites p
        out = {**res["row"], "search": res["search"], "judge_s": round(row.get("judge_s", 0) + time.perf_counter()
                                                                       - t0, 1)}
        if retime and res["search"]["kept_float"]:  # slower now: timed again, on the first timing's fp32 scale
            again = timed({name: str(p)})
            ok = "error" not in again and name in again and "fp32" in again and lat.get("fp32")
            out["latency_ms"] = round(again[name]["median_ms"] * lat["fp32"]["median_ms"]
                                      / again["fp32"]["median_ms"], 3) if ok else None
        return out

    t_lat = time.perf_counter()
    lat = timed({k: str(v) for k, v in candidates.items()}) if opts.cpu_judge == "fastest_first" else \
        {"error": "every candidate judged (cpu_judge 'all')"}
    t_lat = round(time.perf_counter() - t_lat, 1)
    fp32_ms = lat.get("fp32", {}).get("median_ms")
    if fp32_ms and all(k in lat for k in candidates):
        order = "fastest first: best-case latency of every form, then judged until the fastest within the budget"
        rows = judge_fastest_first({k: lat[k]["median_ms"] for k in candidates}, fp32_ms, judge, opts, search)
    else:  # the latency child failed (a form crashed it) or was not asked for first: judge all, time those that ran
        order = "all judged, then the ones that ran timed" + (f" ({lat['error']})" if "error" in lat else "")
        rows = {}
        for name in candidates:
            rows[name] = judge(name)
            if rows[name]["ran"] and not rows[name]["passed"]:
                rows[name] = search(name, rows[name], retime=False) or rows[name]
        lat = timed({k: str(candidates[k]) for k, r in rows.items() if r["ran"]})
        fp32_ms = lat.get("fp32", {}).get("median_ms") if "error" not in lat else None
    for k, r in rows.items():
        r.setdefault("backend", backends[k][0])
        r.setdefault("mode", backends[k][1])
        if k.startswith("fused_") and r.get("ran") is not None:
            r["fusion"] = fusion_report(candidates[k].parent)
        if k in lat and "error" not in lat:
            if "latency_ms" in r:  # searched after the first timing: timed again (None: that timing failed)
                r["best_case_latency_ms"] = lat[k]["median_ms"]
                if r["latency_ms"] is None:
                    continue
            else:
                r["latency_ms"] = lat[k]["median_ms"]
                r["latency_p10_p90_ms"] = [lat[k]["p10_ms"], lat[k]["p90_ms"]]
                r["bench_runs"] = lat[k]["runs"]
                r["bench_setup_s"] = lat[k].get("setup_s")
            r["speedup_vs_fp32"] = round(fp32_ms / r["latency_ms"], 3) if fp32_ms else None
            same = lat.get(f"fp32_{backends[k][0]}", {}).get("median_ms") if backends[k] != ORT_CPU else fp32_ms
            r["speedup_vs_fp32_same_backend"] = round(same / r["latency_ms"], 3) if same else None
    if not any(r["ran"] for r in rows.values()) and not any(r.get("skipped") for r in rows.values()):
        raise QuantizeError(f"{src.parent.name}: every CPU int8 candidate crashed or failed: "
                            f"{ {k: r.get('error') for k, r in rows.items()} }")
    winner, why = pick_cpu(rows, fp32_ms, opts, labelled)
    skipped = [k for k, r in rows.items() if r.get("skipped")]
    if winner is None and skipped:
        why += f" ({len(skipped)} form(s) not judged: slower than fp32 x {opts.min_speedup:.2f} at best)"
    ok = "error" not in lat
    return {"winner": winner, "why": why, "candidates": rows, "fp32_latency_ms": fp32_ms, "order": order,
            "judged": [k for k, r in rows.items() if r.get("ran") is not None],
            "fp32_fused_latency_ms": lat.get("fp32_fused", {}).get("median_ms") if ok else None,
            "fp32_other_backends_ms": {k[5:]: v["median_ms"] for k, v in lat.items()
                                       if k.startswith("fp32_") and k != "fp32_fused" and isinstance(v, dict)},
            "latency_error": lat.get("error"), "bench": {"batch": int(next(iter(feed.values())).shape[0]),
                                                        "runs": opts.bench_runs, "threads": opts.threads,
                                                        "ort_opt_level": "all", "first_timing_s": t_lat}}


def judge_cpu(path: Path, es: EvalSet, ref: np.ndarray, budget: Budget, labelled: bool, opts: QuantOptions,
              quantizable: int, backend: Sequence[str] = ORT_CPU) -> dict[str, Any]:
    """One CPU candidate on this CPU's integer kernels of ``backend`` ((backend, mode); crash-guarded child), judged by
    verify's verdict: {"ran", "passed", "val", "int8_weight_coverage", "backend", "mode"[, "error", "problem"]}."""
    coverage = int8_weight_coverage(path, quantizable)
    where = {"backend": backend[0], "mode": backend[1]}
    run = run_guarded(path, es, backend[1], opts.threads,
                      argv_factory=None if tuple(backend) == ORT_CPU else run_argv(backend[0]))
    if not run.ok:
        return {"ran": False, "error": run.error, "passed": False, "int8_weight_coverage": coverage, **where}
    cmp = figures(ref, run.logits, es.y, budget.neighbour_k)
    cmp["logit_rel_mse"] = logit_error(ref, run.logits)
    row = {"int8_weight_coverage": coverage, "ran": True, "val": brief_figures(cmp),
           "passed": passes(cmp, budget, labelled), **where}
    if coverage < opts.min_int8_coverage:
        row.update(passed=False, problem=f"only {coverage:.0%} of the Conv/Gemm/MatMul weights are int8, "
                                         f"expected >= {opts.min_int8_coverage:.0%}")
    return row


def write_cpu_artifact(chosen: Path | None, dst: Path, isa: str, backend: Sequence[str] | None = None) -> None:
    """Write the chosen CPU form to ``dst`` (int8.cpu.onnx) atomically, stamped with the CPU class it was chosen and
    verified on (runtime.cpu.ISA_METADATA_KEY) and, given, the (backend, mode) it was judged on
    (runtime.cpu.CPU_BACKEND_METADATA_KEY); with none chosen, a stale ``dst`` (from another CPU or budget: it
    must not be verified or shipped as this run's choice) is moved aside to ``<dst>.prev``, never deleted."""
    import onnx

    if chosen is None:
        if dst.exists():
            os.replace(dst, dst.with_name(dst.name + ".prev"))
            log.warning("%s: no int8 form chosen on this CPU; the previous file is kept as %s.prev", dst, dst.name)
        return
    m = onnx.load(str(chosen))
    props = {p.key: p.value for p in m.metadata_props if p.key != CPU_BACKEND_METADATA_KEY}
    props[ISA_METADATA_KEY] = isa
    if backend is not None:
        props[CPU_BACKEND_METADATA_KEY] = f"{backend[0]}:{backend[1]}"
    onnx.helper.set_model_props(m, props)
    atomic_save_onnx(m, dst)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child-bench"]:
        return _child_bench(argv[1:])
    if argv[:1] == ["--child-run"]:
        return _child_run(argv[1:])
    print("optimize.cpu_int8 is run through 'python -m optimize quantize'; '--child-bench SPEC FEED OUT' is its "
          "latency child, '--child-run ...' its accuracy child for other backends.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
