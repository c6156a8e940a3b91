"""Engine timing a user can trust: ``python -m bench.engine_timing ENGINE [ENGINE ...]``, and the GPU part of
`make bench` (``bench`` calls :func:`time_engines` where a GPU is present).

Per engine and batch size, with CUDA graphs off and on:

- end-to-end latency (numpy in, numpy out: what a caller of ``TensorRTRunner.infer`` waits), p50/p90/p99/mean/min;
- the GPU side alone, from CUDA events on the runner's own stream (``TensorRTRunner(timing=True)``): the H2D copies,
  the compute of one synchronised call (launch included: the GPU idles while ``execute_async_v3`` enqueues) and the
  D2H copies, each p50/p90/p99; and ``compute_burst``, GPU compute per execution with executions enqueued back to
  back (launches overlapped), which is what trtexec calls GPU Compute Time and what to put beside its figure;
- throughput with 1, 2 and 4 threads calling one runner at once (each thread gets its own execution context and
  stream in the runner), samples/s over a fixed time;
- where ``trtexec`` (TensorRT; also /usr/src/tensorrt/bin on Jetson) or ``tensorrt_rtx`` (RTX) is found, its own
  numbers on the same engine, shapes and CUDA-graph setting, parsed from its performance summary, beside ours.

Every point states what each of its figures includes (``includes``, :data:`INCLUDES`), the engine's TF32 mode
(``tf32``, from the manifest), for TensorRT-RTX the runtime settings in force (``rtx``: kernel specialisation EAGER,
so no row is timed on the generic kernels LAZY runs until the specialised ones are compiled; the CUDA-graph
strategy) and whether a CUDA graph was captured (``cuda_graph_captured``: our own capture on TensorRT 10/11; on RTX,
which captures inside its runtime, what ``is_stream_capturable`` answered).

The GPU itself (NVML: name, clocks, power limit; Jetson: nvpmodel / jetson_clocks) is recorded with the results,
since clocks and power modes move these numbers more than anything in the engine.
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.candidates import engine_tf32_mode, make_feed
from bench.envinfo import gpu_info, jetson_info
from bench.timing import percentiles, summarize
from pipeline.args import add_batches, positive_seconds, stage_parser
from pipeline.stage import cli
from runtime import engine_manifest as em
from runtime import gpu
from runtime.child import run_child
from runtime.files import atomic_write_json
from runtime.modelspec import ModelSpec, read_spec

log = logging.getLogger("edgeattn.bench.engine_timing")
THREADS = (1, 2, 4)
JETSON_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")
CLI_TIMEOUT_S = 300.0
BURSTS, BURST_EXECUTIONS = 20, 10  # compute_burst: 20 samples of 10 executions enqueued back to back
RTX_SPECIALIZATION = "eager"  # never time RTX's LAZY fallback kernels
INCLUDES = {
    "e2e": "host wall time of one infer call: input checks, staging into pinned memory, H2D, launch, GPU compute, "
           "D2H, synchronise, output copy",
    "h2d": "GPU time of the host-to-device transfers only (inputs staged into pinned memory before the start event)",
    "compute": "one synchronised call: the launch (execute_async_v3 or graph launch; the GPU idles while it enqueues) "
               "plus GPU compute",
    "compute_burst": f"GPU compute per execution, {BURST_EXECUTIONS} executions enqueued back to back (each launch "
                     "overlaps the execution before it unless launching takes longer): trtexec's GPU Compute Time",
    "d2h": "GPU time of the device-to-host transfers only",
    "throughput": "samples/s over wall time, each thread with its own context and stream, end to end as e2e",
    "cli": "trtexec / tensorrt_rtx's own performance summary for the same engine, shapes and CUDA-graph setting",
}


# ---- our measurement ----------------------------------------------------------------------------------------
def gpu_side(timings: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """[{h2d_ms, compute_ms, d2h_ms}, ...] (one per call) -> {h2d|compute|d2h: {p50_ms, p90_ms, p99_ms, mean_ms}}."""
    out = {}
    for key in ("h2d_ms", "compute_ms", "d2h_ms"):
        vals = [t[key] for t in timings if t and t.get(key) is not None]
        if vals:
            p50, p90, p99 = percentiles(vals)
            out[key[:-3]] = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(np.mean(vals))}
    return out


def latency(runner, feed: dict[str, np.ndarray], batch: int, seconds: float, min_iters: int = 20,
            warmup: int = 10) -> dict[str, Any]:
    """End-to-end and GPU-side latency of one runner on one feed, after ``warmup`` calls (the first call at a shape
    sets shapes, grows buffers and, with CUDA graphs, captures)."""
    for _ in range(warmup):
        runner.infer(feed)
    samples, gpu_times = [], []
    t_end = time.perf_counter() + seconds
    while len(samples) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        runner.infer(feed)
        samples.append(time.perf_counter() - t0)
        gpu_times.append(runner.last_timing)
    out = {"e2e": summarize(samples, batch), "gpu": gpu_side(gpu_times)}
    burst = compute_burst(runner, feed)
    if burst:
        out["gpu"]["compute_burst"] = burst
    return out


def compute_burst(runner, feed: dict[str, np.ndarray], bursts: int = BURSTS,
                  executions: int = BURST_EXECUTIONS) -> dict[str, float] | None:
    """p50/p90/p99/mean of ``runner.compute_burst_ms`` over ``bursts`` samples; None for a runner without it."""
    fn = getattr(runner, "compute_burst_ms", None)
    if fn is None:
        return None
    vals = [float(fn(feed, executions)) for _ in range(bursts)]
    p50, p90, p99 = percentiles(vals)
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(np.mean(vals))}


def graph_captured(runner, graph: bool, flavor: str) -> dict[str, Any]:
    """Whether a CUDA graph ran, with its evidence: our capture counts (TensorRT 10/11), or RTX's
    ``is_stream_capturable`` answers (RTX captures inside its runtime and reports nothing else)."""
    if not graph:
        return {"captured": False, "evidence": "CUDA graphs off"}
    if flavor == "rtx":
        cap = dict(getattr(runner, "rtx_capture", None) or {})
        ok = cap.get("capturable", 0) > 0 and cap.get("not_capturable", 0) == 0
        return {"captured": ok, "evidence": f"RTX WHOLE_GRAPH_CAPTURE, is_stream_capturable per shape: {cap}"}
    stats = dict(getattr(runner, "graph_stats", None) or {})
    ok = stats.get("captures", 0) > 0 and stats.get("fallbacks", 0) == 0
    return {"captured": ok, "evidence": f"own capture: {stats}"}


def throughput(runner, feed: dict[str, np.ndarray], batch: int, threads: int, seconds: float) -> dict[str, Any]:
    """Samples/s with ``threads`` threads calling ``runner.infer`` in a loop for ``seconds`` (after one warm-up call
    each: a thread's first call creates its context, stream and buffers)."""
    counts = [0] * threads
    errors: list[str] = []
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def work(k: int) -> None:
        try:
            runner.infer(feed)
            start.wait()
            while not stop.is_set():
                runner.infer(feed)
                counts[k] += 1
        except Exception as e:  # noqa: BLE001 - recorded; the other threads finish their time
            errors.append(f"{type(e).__name__}: {e}")
            start.abort()

    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    dt = time.perf_counter() - t0
    calls = sum(counts)
    return {"threads": threads, "calls": calls, "seconds": round(dt, 3),
            "samples_per_s": calls * batch / dt if calls else None, **({"error": errors[0]} if errors else {})}


# ---- trtexec / tensorrt_rtx beside ours ----------------------------------------------------------------------
def find_cli(flavor: str) -> str | None:
    """The command-line tool that runs ``flavor``'s engines: tensorrt_rtx for RTX, else trtexec (PATH, then the
    JetPack location, which is not on PATH)."""
    if flavor == "rtx":
        return shutil.which("tensorrt_rtx")
    found = shutil.which("trtexec")
    return found or (str(JETSON_TRTEXEC) if JETSON_TRTEXEC.is_file() else None)


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def cli_args(flavor: str, engine: Path, feed: dict[str, np.ndarray], cuda_graph: bool, seconds: float) -> list[str]:
    """Flags for the same engine, input shapes and CUDA-graph setting we time. trtexec 10.x: graphs opt-in
    (``--useCudaGraph``); 11.x: on by default (``--noCudaGraph``); tensorrt_rtx: ``--rtxCudaGraphStrategy``."""
    args = [f"--loadEngine={engine}", "--shapes=" + ",".join(f"{n}:{_dims(a.shape)}" for n, a in feed.items()),
            f"--duration={max(1, int(round(seconds)))}", "--warmUp=500"]
    if flavor == "rtx":
        args.append(f"--rtxCudaGraphStrategy={'wholeGraph' if cuda_graph else 'disable'}")
    elif flavor == "trt11":
        args += [] if cuda_graph else ["--noCudaGraph"]
    elif cuda_graph:
        args.append("--useCudaGraph")
    return args


_SUMMARY = re.compile(r"(Throughput|Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency): (.*)$")
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([-+\d.eE]+)\s*ms")


def parse_cli_summary(text: str) -> dict[str, Any]:
    """trtexec's "=== Performance summary ===" lines -> {throughput_qps, latency, h2d, compute, d2h, enqueue}, each
    timing as {min_ms, max_ms, mean_ms, median_ms, p90_ms, ...}. Empty when the text has no summary."""
    names = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d", "GPU Compute Time": "compute",
             "D2H Latency": "d2h"}
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _SUMMARY.search(line)
        if not m:
            continue
        what, rest = m.groups()
        if what == "Throughput":
            q = re.search(r"([-+\d.eE]+)\s*qps", rest)
            if q:
                out["throughput_qps"] = float(q.group(1))
            continue
        stats = {}
        for stat, pct, val in _STAT.findall(rest):
            stats[f"p{pct}_ms" if pct else f"{stat}_ms"] = float(val)
        if stats:
            out[names[what]] = stats
    return out


def run_cli(cli: str, args: list[str], timeout_s: float = CLI_TIMEOUT_S) -> dict[str, Any]:
    """Run trtexec / tensorrt_rtx; its parsed summary, the exact command, or the error."""
    res = run_child([cli, *args], timeout_s)
    cmd = " ".join([cli, *args])
    if not res.ok:
        return {"command": cmd, "error": res.describe(tail_lines=3)[:600]}
    parsed = parse_cli_summary(res.stdout + "\n" + res.stderr)
    if not parsed:
        return {"command": cmd, "error": "no '=== Performance summary ===' in its output"}
    return {"command": cmd, **parsed}


# ---- one engine -------------------------------------------------------------------------------------------------
def engine_spec(engine: Path) -> ModelSpec:
    """The model spec beside the engine (spec.json in the model's folder, written by the export stage)."""
    d = read_spec(engine, None)
    if d is None:
        raise FileNotFoundError(f"engine '{engine}': no spec.json beside it; expected the model folder the engines "
                                "stage writes into (artifacts/<model>/)")
    return ModelSpec.from_dict(d)


def time_engine(engine: str | Path, batches: Sequence[int] = (1, 8), seconds: float = 2.0,
                threads: Sequence[int] = THREADS, graphs: Sequence[bool] = (False, True), use_cli: bool = True,
                open_runner: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Every measurement of the module docstring for one engine; a failure is recorded per point, never raised.
    ``open_runner(path, use_cuda_graph=..., timing=True)`` defaults to ``TensorRTRunner``."""
    engine = Path(engine)
    if open_runner is None:
        from runtime.tensorrt_backend import TensorRTRunner as open_runner
    man = em.read_manifest(engine) or {}
    flavor = man.get("flavor", "?")
    spec = engine_spec(engine)
    seq = spec.dynamic["sequence"].opt if "sequence" in spec.dynamic else None
    r = spec.dynamic["batch"]
    cli = find_cli(flavor) if use_cli else None
    out: dict[str, Any] = {"engine": str(engine), "flavor": flavor, "precision": man.get("precision"),
                           "cli": cli, "seq_len": seq, "tf32": engine_tf32_mode(man), "points": []}
    extra = {"rtx_specialization": RTX_SPECIALIZATION} if flavor == "rtx" else {}
    for b in sorted({min(max(int(b), r.min), r.max) for b in batches}):
        feed = make_feed(spec, b, seq)
        for graph in graphs:
            point: dict[str, Any] = {"batch": b, "cuda_graph": graph, "tf32": out["tf32"], "includes": INCLUDES}
            try:
                with open_runner(engine, use_cuda_graph=graph, timing=True, **extra) as runner:
                    point.update(latency(runner, feed, b, seconds))
                    point["throughput"] = [throughput(runner, feed, b, n, seconds) for n in threads]
                    if hasattr(runner, "graph_stats") and graph:
                        point["graph_stats"] = dict(runner.graph_stats)
                    point["cuda_graph_captured"] = graph_captured(runner, graph, flavor)
                    if getattr(runner, "rtx_settings", None):
                        point["rtx"] = dict(runner.rtx_settings)
            except Exception as e:  # noqa: BLE001 - one failing point must not hide the others
                point["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
            if cli:
                point["cli"] = run_cli(cli, cli_args(flavor, engine, feed, graph, seconds))
            out["points"].append(point)
    return out


def environment() -> dict[str, Any]:
    """The GPU the numbers belong to: NVML clocks and power limit, the Jetson power mode."""
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": gpu_info(),
            "jetson": jetson_info()}


def time_engines(engines: Sequence[Path], **kw: Any) -> dict[str, Any]:
    """:func:`time_engine` for each engine; an engine that cannot be timed at all (no spec, corrupt manifest) is
    recorded with its error and the others still run."""
    out = []
    for e in engines:
        try:
            out.append(time_engine(e, **kw))
        except Exception as err:  # noqa: BLE001
            out.append({"engine": str(e), "flavor": "?", "precision": None, "points": [],
                        "error": f"{type(err).__name__}: {' '.join(str(err).split())[:400]}"})
    return {"env": environment(), "engines": out}


def format_table(doc: dict[str, Any]) -> list[str]:
    """Readable lines: per engine point, ours (e2e, GPU compute, H2D, D2H p50; 1/2/4-thread samples/s) and trtexec's."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}"

    lines = ["what each figure includes: " + "; ".join(f"{k}: {v}" for k, v in INCLUDES.items())]
    for e in doc["engines"]:
        lines.append(f"{e['engine']} ({e['flavor']}, {e.get('precision')}, TF32 {e.get('tf32', 'unknown')})"
                     + (f": FAILED {e['error'][:200]}" if e.get("error") else ""))
        for p in e["points"]:
            head = f"  batch {p['batch']:>3} graph {'on ' if p['cuda_graph'] else 'off'}"
            if p.get("error"):
                lines.append(f"{head}: FAILED {p['error'][:200]}")
            else:
                g = p.get("gpu", {})
                tp = " ".join(f"{t['threads']}t {f(t.get('samples_per_s'))}/s" for t in p.get("throughput", []))
                cap = p.get("cuda_graph_captured") or {}
                rtx = p.get("rtx")
                lines.append(f"{head}: e2e p50 {f(p['e2e']['p50_ms'])} p99 {f(p['e2e']['p99_ms'])} ms | compute "
                             f"(launch incl.) {f(g.get('compute', {}).get('p50_ms'))} GPU compute (back to back) "
                             f"{f(g.get('compute_burst', {}).get('p50_ms'))} H2D {f(g.get('h2d', {}).get('p50_ms'))} "
                             f"D2H {f(g.get('d2h', {}).get('p50_ms'))} ms | {tp} | graph captured "
                             f"{cap.get('captured', '-')}"
                             + (f" | RTX {rtx.get('kernel_specialization')}, {rtx.get('cuda_graph_strategy')}"
                                if rtx else ""))
            c = p.get("cli")
            if c:
                lines.append(f"    {Path(e['cli'] or '?').name}: " + (
                    f"FAILED {c['error'][:200]}" if c.get("error") else
                    f"GPU Compute Time median {f(c.get('compute', {}).get('median_ms'))} ms (ours, back to back: "
                    f"{f((p.get('gpu') or {}).get('compute_burst', {}).get('p50_ms'))} ms), latency median "
                    f"{f(c.get('latency', {}).get('median_ms'))} ms, {f(c.get('throughput_qps'))} qps"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("engine-timing", __doc__)
    ap.add_argument("engines", nargs="+", type=Path, help=".engine files (their model folder holds spec.json)")
    add_batches(ap, "1,8", help="batch sizes, clamped to the engine's profile (default 1,8)")
    ap.add_argument("--seconds", type=positive_seconds, default=2.0,
                    help="timed seconds per point and per thread count")
    ap.add_argument("--no-cli", action="store_true", help="do not run trtexec / tensorrt_rtx beside ours")
    ap.add_argument("--out", type=Path, default=Path("artifacts/engine_timing.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not gpu.nvidia_gpu_present():
        print("engine_timing: no NVIDIA GPU (the driver reports none); TensorRT engines run only on a GPU",
              file=sys.stderr)
        return 2
    doc = time_engines(args.engines, batches=args.batches,
                       seconds=args.seconds, use_cli=not args.no_cli)
    atomic_write_json(args.out, doc)
    print("\n".join(format_table(doc)))
    print(f"engine_timing: -> {args.out}")
    return 1 if any(e.get("error") or any(p.get("error") for p in e["points"]) for e in doc["engines"]) else 0


if __name__ == "__main__":
    raise SystemExit(cli("engine-timing", main))
