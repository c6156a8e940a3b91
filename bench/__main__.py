"""``python -m bench --models a,b --artifacts DIR [--threads N] [--quick]``: latency of every artifact on every
backend this machine can run, side by side with PyTorch and plain ONNX Runtime peers, in ONE run.

Per model and batch size, all candidates are timed interleaved (bench/timing.py): warm-up excluded, round-robin
rounds so load drift hits all alike, time-budgeted iterations, percentiles over all timed calls. Every runtime
candidate runs in its own worker process and the PyTorch peers share one (bench/worker.py): a backend crash is
recorded and the run goes on. The combinations timed are exactly verify's (verify.plan.backend_plan), so each
row carries verify's verdict; candidates verify has not run are smoke-tested at every batch size first.

Writes ``<artifacts>/bench.json`` ({"env", "rows", "guard", "summary"}; see bench/results.py) and PNG plots in
``<artifacts>/plots/``. ``python -m bench.report --artifacts DIR`` turns it into ``<artifacts>/report.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import envinfo
from bench.engine_timing import format_table as format_engine_table, time_engines
from bench.generation import bench_decoder, print_section
from bench.peers import PEER_DEVICE, PEER_MODES, ALL_PEERS, TORCH_PEERS, default_peers
from bench.plots import write_plots
from bench.results import (accuracy_from_verify, find_verify_row, int8_guard, make_row, summarize,
                           verified_mode)
from bench.results import device_of
from bench.timing import TimingConfig, run_interleaved, summarize as stats_of
from bench.worker import RemoteTimer, Worker, WorkerDied, adopt_in_turn
from runtime import gpu
from pipeline.args import (add_artifacts, add_batches, add_force, add_models, add_threads, choice_list,
                           non_negative_int, positive_int, positive_seconds, stage_parser)
from pipeline.artifacts import ModelRef, resolve_models
from pipeline.sources import source_of
from runtime.ort_backend import levels_from
from pipeline.stage import cli
from verify.plan import ROLE_REFERENCE, artifact_files, backend_plan, test_inputs
from zoo.io import atomic_write_json, read_json
from zoo.spec import ModelSpec
from zoo.tasks import task_of

log = logging.getLogger("edgeattn.bench")

SMALL_SWEEP = (1, 8)  # plus the profile max; `--batches 1,8,32` for a finer sweep
PARITY_SEED = 1234  # verify's seeded images for models without a dataset: agreement is measured on the same ones


# ---- planning ----------------------------------------------------------------------------------------------
def batch_sweep(spec, name: str, wanted: list[int] | None = None) -> list[int]:
    """``wanted`` (within the profile's batch range) when given; else 1, 8 and the profile max for the small models
    and batch 1 only for heavy models (torchvision: pipeline.sources), which keeps `make demo` inside its time budget."""
    r = spec.dynamic["batch"]
    if wanted:
        return sorted({min(max(int(b), r.min), r.max) for b in wanted})
    if source_of(name).policy.heavy:
        return [max(1, int(r.min))]
    return sorted({b for b in SMALL_SWEEP if r.min <= b <= r.max} | {int(r.max)})


def seq_len_for(spec, wanted: int) -> int | None:
    if "sequence" not in spec.dynamic:
        return None
    r = spec.dynamic["sequence"]
    return int(min(max(wanted, r.min), r.max))


def plan_ours(name: str, model_dir: Path, vrows: list[dict], skip_plain: bool) -> list[dict[str, Any]]:
    """Every (artifact, backend, mode) verify checks (verify.plan: on a GPU machine also the engines and the ONNX
    Runtime GPU providers). ORT modes are the ones verify actually ran ('extended' where 'all' crashed there)."""

    out = []
    for art in artifact_files(model_dir):
        for backend, mode, prec, role in backend_plan(model_dir, art):
            if role == ROLE_REFERENCE:
                continue  # an accuracy reference (Q/DQ simulated in float), not a way to deploy
            if art == "fp32.onnx" and backend == "onnxruntime" and mode == "all" and skip_plain:
                continue  # that is the ort_plain peer
            out.append({"path": model_dir / art, "backend": backend, "precision": prec,
                        "mode": verified_mode(vrows, name, art, backend, mode)})
    return out


# ---- accuracy ----------------------------------------------------------------------------------------------
def load_eval(spec, ref: ModelRef, limit: int | None, parity_n: int):
    """(inputs, labels or None, description): the test split (first ``limit``) or verify's seeded inputs."""
    x, labels, d = test_inputs(spec, ref, None if spec.dataset is None else limit, parity_n=parity_n,
                               parity_seed=PARITY_SEED)
    if labels is None:
        return x, None, f"top-1 agreement with PyTorch eager fp32 on {d['n']} {d['name']} (seed {PARITY_SEED})"
    which = "full test split" if d["n"] == d["n_split"] else f"first {d['n']} of {d['n_split']} test samples"
    return x, labels, f"bench: {d['name']} {which}, n={d['n']}"


def peer_accuracies(slots, spec, x, labels, desc: str, batch: int, tmp: Path) -> dict[str, tuple]:
    """key -> (value, metric, source) for each live peer, predictions made by its worker."""
    inputs = tmp / "eval_inputs.npz"
    np.savez(inputs, **x)
    pad_id = spec.trim_pad_id()
    out: dict[str, tuple] = {}
    ref = None
    ordered = sorted(slots, key=lambda s: s.peer_kind != "eager")  # eager first: the agreement reference
    for i, s in enumerate(ordered):
        dst = tmp / f"logits_{i}.npy"
        try:
            s.worker.request({"cmd": "predict", "key": s.key, "inputs": str(inputs), "out": str(dst), "batch": batch,
                              "pad_id": pad_id})
            logits = np.load(dst)
        except Exception as e:  # noqa: BLE001
            out[s.key] = (None, None, f"accuracy failed: {str(e)[:200]}")
            continue
        if s.peer_kind == "eager":
            ref = logits
        if labels is not None:
            out[s.key] = (float((logits.argmax(-1) == labels).mean()), "accuracy", desc)
        elif ref is not None:
            out[s.key] = (float((logits.argmax(-1) == ref.argmax(-1)).mean()), "top1_agreement", desc)
        else:
            out[s.key] = (None, None, "no PyTorch eager reference for top-1 agreement")
    return out


# ---- one model ---------------------------------------------------------------------------------------------
@dataclass
class Slot:
    """One candidate as the parent sees it: identity, the worker serving it, and its state."""

    model: str
    backend: str
    artifact: str
    precision: str
    mode: str
    is_peer: bool
    peer_kind: str | None
    worker: Any = None
    error: str | None = None
    load_seconds: float | None = None
    notes: dict = field(default_factory=dict)
    verified: bool | None = None
    vrow: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.backend}|{self.artifact}|{self.mode}"


def _print_point(name: str, batch: int, rows: list[dict]) -> None:
    print(f"  {name} batch {batch}:")
    for r in sorted(rows, key=lambda r: (r["p50_ms"] is None, r["p50_ms"] or 0)):
        tag = "peer" if r["is_peer"] else {True: "ok", False: "FAIL", None: "unver"}[r["verified"]]
        if r["p50_ms"] is None:
            print(f"    {r['backend']:<12} {r['artifact']:<15} {r['mode']:<20} {tag:<5} ERROR {str(r['error'])[:100]}")
        else:
            print(f"    {r['backend']:<12} {r['artifact']:<15} {r['mode']:<20} {tag:<5} p50 {r['p50_ms']:9.3f} ms  "
                  f"p90 {r['p90_ms']:9.3f}  p99 {r['p99_ms']:9.3f}  min {r['min_ms']:8.3f}  "
                  f"{r['throughput_per_s']:9.1f}/s  n={r['iterations']}", flush=True)


class ModelBench:
    """Spawns the workers of one model, times them interleaved per batch size, collects rows."""

    def __init__(self, ref: ModelRef, args, cfg) -> None:
        self.ref, self.name, self.args, self.cfg = ref, ref.name, args, cfg
        self.model_dir = ref.folder
        self.vrows = verify_rows(args.artifacts, ref.name)
        self.slots: list[Slot] = []
        self.workers = []
        self.spec = None
        self.spec_source = None
        self.eval = None  # (inputs, labels or None, description) once loaded
        self.eval_error: str | None = None
        self.env = worker_env(args)

    # -- workers
    def _runner_argv(self, item: dict, peer_kind: str | None) -> list[str]:
        argv = ["--runner", str(item["path"]), "--backend", item["backend"], "--mode", item["mode"], "--precision",
                item["precision"], "--model", self.name, "--threads", str(self.args.threads)]
        return argv + (["--peer-kind", peer_kind] if peer_kind else [])

    def _spawn_runner(self, item: dict, peer_kind: str | None = None):
        slot = Slot(self.name, item["backend"], Path(item["path"]).name, item["precision"], item["mode"],
                    bool(peer_kind), peer_kind)
        w = Worker(self._runner_argv(item, peer_kind), f"{self.name} {slot.key}", self.env)
        self.workers.append(w)
        return w, [slot]

    def _spawn_torch(self, kinds: list[str]):
        argv = ["--torch", self.name, "--artifacts", str(self.args.artifacts), "--peers", ",".join(kinds),
                "--threads", str(self.args.threads)]
        slots = [Slot(self.name, "pytorch", "pytorch", PEER_MODES[k][0], PEER_MODES[k][1], True, k) for k in kinds]
        w = Worker(argv, f"{self.name} pytorch peers", self.env)
        self.workers.append(w)
        return w, slots

    def _adopt(self, w, planned: list[Slot]) -> list[Slot]:
        """Wait for a worker's hello; its candidates become slots (or the planned ones get its error)."""

        hello = w.hello_or_error()
        if not hello.get("ok"):
            for s in planned:
                s.error = f"worker failed to start: {hello.get('error')}"
            return planned
        if hello.get("spec"):
            # the PyTorch model's spec (the code verify also uses) wins over spec.json and the artifacts' metadata
            if any(c["backend"] == "pytorch" for c in hello["candidates"]):
                self.spec = ModelSpec.from_dict(hello["spec"])
                self.spec_source = "PyTorch model (zoo registry)"
            elif self.spec is None:
                self.spec = ModelSpec.from_dict(hello["spec"])
                self.spec_source = "artifact metadata"
        out = []
        for c in hello["candidates"]:
            s = Slot(c["model"], c["backend"], c["artifact"], c["precision"], c["mode"], c["is_peer"], c["peer_kind"],
                     worker=w, error=c["error"], load_seconds=c["load_seconds"], notes=c.get("notes") or {})
            out.append(s)
        return out

    def start(self) -> None:
        spec_file = self.model_dir / "spec.json"
        if spec_file.is_file():
            self.spec = ModelSpec.from_json(spec_file.read_text(encoding="utf-8"))
            self.spec_source = str(spec_file)
        args = self.args
        kinds = [k for k in TORCH_PEERS if k in args.peers] if self.ref.source.policy.pytorch else []
        plain = self.model_dir / "fp32.onnx"
        launches = []  # (launch, on the GPU)
        if kinds:
            launches.append((lambda: self._spawn_torch(kinds), any(PEER_DEVICE[k] == "gpu" for k in kinds)))
        if "ort_plain" in args.peers and plain.is_file():
            launches.append((lambda: self._spawn_runner({"path": plain, "backend": "onnxruntime", "mode": "all",
                                                         "precision": "fp32"}, "ort_plain"), False))
        if not args.no_ours:
            for item in plan_ours(self.name, self.model_dir, self.vrows, "ort_plain" in args.peers and plain.is_file()):
                launches.append((lambda item=item: self._spawn_runner(item),
                                 device_of(item["backend"], item["mode"]) == "gpu"))
        # CPU workers two at a time (2 cores; bounded memory for the heavy model), GPU workers one at a time
        self.slots += adopt_in_turn(launches, self._adopt)
        for s in self.slots:
            if not s.is_peer:
                s.vrow = _verify_row_of(self.vrows, self.name, s)
                s.verified = None if s.vrow is None else bool(s.vrow.get("passed"))

    def smoke(self, batches: list[int], seq_len: int | None) -> None:
        """Run every runtime candidate verify has not run to completion once per batch size; a crash is recorded,
        and an ORT 'all' crash of ours is retried at 'extended' (what verify does)."""

        todo = [s for s in self.slots if s.error is None and s.backend != "pytorch"
                and not (s.vrow and not s.vrow.get("error"))]
        if self.args.no_probe or not todo:
            return
        t0 = time.perf_counter()
        retry = []
        for s in todo:
            try:
                errs = s.worker.request({"cmd": "smoke", "batches": batches, "seq_len": seq_len})["errors"]
                s.error = errs.get(s.key)
            except Exception as e:  # noqa: BLE001
                s.error = f"crash probe: {e}"
                if isinstance(e, WorkerDied) and s.backend == "onnxruntime" and s.mode == "all" and not s.is_peer:
                    retry.append(s)
        for s in retry:
            item = {"path": self.model_dir / s.artifact, "backend": "onnxruntime",
                    "mode": levels_from(s.mode, "extended")[-1],
                    "precision": s.precision}
            new = self._adopt(*self._spawn_runner(item))
            for n in new:
                n.notes["fallback"] = f"'all' failed: {s.error[:200]}"
                n.vrow = _verify_row_of(self.vrows, self.name, n)
                n.verified = None if n.vrow is None else bool(n.vrow.get("passed"))
                if n.error is None:
                    try:
                        n.error = n.worker.request({"cmd": "smoke", "batches": batches,
                                                    "seq_len": seq_len})["errors"].get(n.key)
                    except Exception as e:  # noqa: BLE001
                        n.error = f"crash probe: {e}"
            self.slots += new
        n_fail = sum(1 for s in todo + retry if s.error)
        print(f"bench {self.name}: smoke-tested {len(todo) + len(retry)} unverified candidate(s) at every batch size "
              f"({time.perf_counter() - t0:.1f} s, {n_fail} failed)")

    def time_batch(self, b: int, seq_len: int | None) -> list[dict[str, Any]]:
        args = self.args
        rows, timers = [], {}
        fed: dict[int, dict] = {}
        for s in self.slots:
            if s.error is not None:
                continue
            w = s.worker
            if id(w) not in fed:
                try:
                    fed[id(w)] = w.request({"cmd": "feed", "batch": b, "seq_len": seq_len})["errors"]
                except Exception as e:  # noqa: BLE001 - worker gone: all its slots fail from now on
                    fed[id(w)] = None
                    for o in self.slots:
                        if o.worker is w and o.error is None:
                            o.error = str(e)
            if s.error is not None:
                continue
            if fed[id(w)] and s.key in fed[id(w)]:
                rows.append(make_row(s, b, seq_len, args.threads, None, fed[id(w)][s.key], s.verified))
                continue
            timers[s.key] = RemoteTimer(w, s.key)
        cfg = self.cfg
        if b == 1 and cfg.min_iters_batch1 > cfg.min_iters:

            cfg = replace(cfg, min_iters=cfg.min_iters_batch1)
        gpu_keys = {s.key for s in self.slots if device_of(s.backend, s.mode, s.peer_kind) == "gpu"}
        timed = run_interleaved(timers, cfg, gpu_keys=gpu_keys)
        for s in self.slots:
            if s.key in timed:
                t = timed[s.key]
                if t.error and s.worker is not None and s.worker.dead:
                    s.error = t.error  # the worker died: no later batch for it
                stats = stats_of(t.samples_s, b) if (t.error is None and t.samples_s) else None
                err = t.error or (None if stats else "no timed samples")
                rows.append(make_row(s, b, seq_len, args.threads, stats, err, s.verified, t.first_call_s,
                                     t.warmup_calls))
            elif s.error is not None:
                rows.append(make_row(s, b, seq_len, args.threads, None, s.error, s.verified))
        return rows

    def accuracy(self, rows: list[dict], batches: list[int]) -> None:
        acc: dict[str, tuple] = {s.key: accuracy_from_verify(s.vrow) for s in self.slots if not s.is_peer}
        live_peers = [s for s in self.slots if s.is_peer and s.error is None and s.worker is not None
                      and not s.worker.dead]
        if live_peers and self.args.accuracy_samples != 0 and self.spec is not None:
            t0 = time.perf_counter()
            try:
                if self.eval is None:
                    raise RuntimeError(self.eval_error or "no evaluation data")
                x, labels, desc = self.eval
                with tempfile.TemporaryDirectory(prefix="edgeattn-bench-") as tmp:
                    acc.update(peer_accuracies(live_peers, self.spec, x, labels, desc, min(max(batches), 64),
                                               Path(tmp)))
                print(f"bench {self.name}: peer accuracy ({desc}) in {time.perf_counter() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001 - e.g. no tokenizer or dataset: accuracy stays null
                print(f"bench {self.name}: peer accuracy not measured ({type(e).__name__}: {str(e)[:200]})")
                for s in live_peers:
                    acc[s.key] = (None, None, f"not measured: {type(e).__name__}: {str(e)[:200]}")
        for r in rows:
            key = f"{r['backend']}|{r['artifact']}|{r['mode']}"
            if acc.get(key):
                r["accuracy"], r["accuracy_metric"], r["accuracy_source"] = acc[key]

    def load_eval_set(self) -> None:
        try:
            self.eval = load_eval(self.spec, self.ref, self.args.accuracy_samples or None, self.args.parity_samples)
        except Exception as e:  # noqa: BLE001 - e.g. no tokenizer or dataset: accuracy stays null
            self.eval_error = f"{type(e).__name__}: {str(e)[:200]}"

    def sequence_length(self) -> tuple[int | None, str | None]:
        """(length, how it was chosen) for text models: --seq-len, else the median token count of the test inputs
        (rounded up to a multiple of 8, within the spec's range), else the spec's opt size."""
        if "sequence" not in self.spec.dynamic:
            return None, None
        r = self.spec.dynamic["sequence"]
        if self.args.seq_len:
            return seq_len_for(self.spec, self.args.seq_len), "--seq-len"
        ids = None if self.eval is None else self.eval[0][self.spec.inputs[0].name]
        if ids is not None and ids.dtype.kind in "iu" and ids.ndim == 2:
            pad = int(self.spec.preprocess.get("pad_id", 0))
            med = float(np.median((ids != pad).sum(1)))
            n = int(min(max(8 * math.ceil(med / 8), r.min), r.max))
            return n, f"median token count of the test inputs ({med:.0f}; {self.eval[2]}), rounded up to a multiple of 8"
        return int(r.opt), f"spec opt size (test inputs unavailable: {self.eval_error})"

    def close(self) -> None:
        for w in self.workers:
            w.close()


def verify_rows(artifacts: Path, name: str) -> list[dict[str, Any]]:
    """The rows verify.json holds for one model."""
    return [r for r in (read_json(artifacts / "verify.json", []) or []) if r.get("model") == name]


def _verify_row_of(vrows, name, slot):
    provider = (slot.notes.get("providers") or [None])[0]
    return find_verify_row(vrows, name, slot.artifact, slot.backend, slot.mode, provider, slot.precision)


def bench_model(ref: ModelRef, args, cfg) -> list[dict[str, Any]]:
    name = ref.name
    mb = ModelBench(ref, args, cfg)
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        mb.start()
        if mb.spec is None:
            print(f"bench {name}: no model spec (no spec.json in {mb.model_dir}, PyTorch model not loadable); skipped")
            return [{**_skeleton(name), "error": "no model spec: run 'make export' (writes spec.json) first; "
                     + "; ".join(sorted({s.error for s in mb.slots if s.error}))[:400]}]
        batches = batch_sweep(mb.spec, name, args.batches)
        mb.load_eval_set()
        seq_len, seq_how = mb.sequence_length()
        print(f"bench {name}: {len(mb.slots)} candidates loaded in {time.perf_counter() - t0:.1f} s, batches {batches}"
              + (f", sequence {seq_len} ({seq_how})" if seq_len else ""), flush=True)
        mb.smoke(batches, seq_len)
        for b in batches:
            t0 = time.perf_counter()
            point = mb.time_batch(b, seq_len)
            rows += point
            _print_point(name, b, point)
            print(f"    ({time.perf_counter() - t0:.1f} s)", flush=True)
        mb.accuracy(rows, batches)
        for r in rows:
            r["spec_source"] = mb.spec_source
            if seq_how:
                r["seq_len_source"] = seq_how
    finally:
        mb.close()
    return rows


@dataclass
class Benched:
    """What the bench stage's handler (zoo.tasks) gives back for one model: latency rows, or a generation section
    (model -> section), the runs whose results it reused, and whether it timed anything now."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused_runs: set = field(default_factory=set)
    timed: bool = True


def bench_outputs(ref: ModelRef, args, cfg, key: str, old: dict[str, Any]) -> Benched:
    """The bench handler of models judged by their outputs: its previous rows when their key is unchanged, else
    timed now (:func:`bench_model`); a failure is one row with ``error``, the other models go on."""
    name = ref.name
    prev = [r for r in old["rows"] if r.get("model") == name]
    if not args.force and prev and all(r.get("bench_key") == key for r in prev):
        print(f"bench {name}: up to date ({len(prev)} rows reused: artifacts, verify verdicts, CPU and settings "
              "unchanged; --force to rerun)")
        return Benched(rows=prev, reused_runs={r.get("run") for r in prev}, timed=False)
    try:
        new = bench_model(ref, args, cfg)
        for r in new:
            r["bench_key"] = key
    except Exception as e:  # noqa: BLE001 - one model failing must not hide the others
        log.exception("bench %s failed", name)
        new = [{**_skeleton(name), "error": f"bench failed: {type(e).__name__}: {str(e)[:400]}"}]
    return Benched(rows=new)


def bench_generation(ref: ModelRef, args, cfg, key: str, old: dict[str, Any]) -> Benched:
    """The bench handler of a decoder with its KV cache: TTFT and decode tokens/s (bench.generation)."""
    sec = _bench_decoder(ref, args, cfg, key, old["generation"].get(ref.name))
    return Benched(generation={ref.name: sec}, reused_runs={sec.get("run")} if sec.get("reused") else set())


def _bench_decoder(ref: ModelRef, args, cfg, key: str, prev: dict | None) -> dict[str, Any]:
    """A decoder's generation section: the previous one when its key is unchanged (marked ``reused``), else
    measured now (bench.generation); a failure is a section with ``error``, the other models go on."""
    if not args.force and prev and prev.get("bench_key") == key:
        print(f"bench {ref.name}: up to date (generation section reused: artifacts, verify verdicts, CPU and "
              "settings unchanged; --force to rerun)")
        return {**prev, "reused": True}
    try:
        sec = bench_decoder(ref, args, cfg, worker_env(args), verify_rows(args.artifacts, ref.name))
    except Exception as e:  # noqa: BLE001 - one model failing must not hide the others
        log.exception("bench %s failed", ref.name)
        return {"model": ref.name, "candidates": [], "error": f"bench failed: {type(e).__name__}: {str(e)[:400]}",
                "bench_key": key}
    sec["bench_key"] = key
    print_section(sec)
    return sec


def _skeleton(name: str) -> dict[str, Any]:
    return {"model": name, "backend": "-", "artifact": "-", "precision": "-", "mode": "-", "batch": 1, "seq_len": None,
            "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "min_ms": None, "throughput_per_s": None,
            "iterations": 0, "is_peer": False, "peer_kind": None, "verified": None, "compile_seconds": None,
            "accuracy": None, "accuracy_metric": None, "accuracy_source": None, "error": None}


CODE_VERSION = "bench/2"


def bench_key(ref: ModelRef, args, cfg, env: dict[str, Any]) -> str:
    """Digest of what a model's bench rows depend on: its verify key (artifacts, checkpoint, CPU class, backend
    versions), the verify verdicts bench carries, the CPU model, threads, peers and timing settings."""
    vrows = verify_rows(args.artifacts, ref.name)
    verdicts = sorted((r.get("artifact"), r.get("backend"), str(r.get("mode")), bool(r.get("passed"))) for r in vrows)
    task = task_of(ref)  # a task may add its own bench code version (text generation: bench.generation's)
    blob = {"code": CODE_VERSION + (f"+{task.handler('bench_version')}" if task.has("bench_version") else ""),
            "verify": task.run("verify_key", ref, None), "verdicts": verdicts,
            "cpu": env.get("cpu", {}).get("model"), "threads": args.threads, "peers": list(args.peers),
            "no_ours": args.no_ours, "seq_len": args.seq_len, "timing": asdict(cfg), "quick": args.quick,
            "batches": args.batches,
            "accuracy_samples": args.accuracy_samples, "parity_samples": args.parity_samples,
            "omp": args.omp_wait_policy}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def worker_env(args) -> dict[str, str]:
    """Thread settings every worker starts with. OMP_WAIT_POLICY=PASSIVE by default: on this shared 2-core machine,
    PyTorch's libgomp at its default spin-then-sleep policy produced ~100 ms stalls per forward of a 0.3 ms model
    whenever other processes kept the CPUs busy, which would inflate every speed-up against PyTorch."""
    env = {"OMP_NUM_THREADS": str(args.threads)}
    if args.omp_wait_policy != "default" and "OMP_WAIT_POLICY" not in os.environ:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    return env


# ---- CLI ---------------------------------------------------------------------------------------------------
def bench_parser():
    """bench's argument parser (``edgeattn run`` checks its --bench-args with it before any stage starts)."""
    ap = stage_parser("bench", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    add_threads(ap, help="intra-op threads for every backend (default: usable cores)")
    ap.add_argument("--quick", action="store_true", help="a few iterations only (smoke test, numbers are noisy)")
    ap.add_argument("--budget", type=positive_seconds, default=None, help="timed seconds per candidate per batch size")
    ap.add_argument("--rounds", type=positive_int, default=None)
    ap.add_argument("--min-iters", type=positive_int, default=None)
    ap.add_argument("--seq-len", type=positive_int, default=None,
                    help="sequence length for text models (default: the median token count of the test inputs, "
                         "rounded up to a multiple of 8)")
    ap.add_argument("--peers", type=choice_list(ALL_PEERS, allow_empty=True), default=None,
                    help=f"subset of {','.join(ALL_PEERS)} ('' for none; default: the CPU "
                    "peers, and the CUDA ones where PyTorch sees a GPU)")
    ap.add_argument("--no-ours", action="store_true", help="peers only")
    ap.add_argument("--no-engine-timing", action="store_true",
                    help="skip the per-engine GPU timing (bench.engine_timing) on a GPU machine")
    ap.add_argument("--no-probe", action="store_true",
                    help="skip the smoke test of candidates verify has not run (a crash is then found while timing)")
    ap.add_argument("--accuracy-samples", type=non_negative_int, default=None,
                    help="peer accuracy (and the text length) on the first N test samples (default: full split; "
                         "--quick: 512; 0: no peer accuracy)")
    ap.add_argument("--parity-samples", type=positive_int, default=None,
                    help="seeded inputs for top-1 agreement of peers on models without a dataset (default 8, quick 4)")
    add_batches(ap, help="comma-separated batch sizes for every model (default: 1, 8 and the profile max; batch 1 "
                         "only for torchvision models)")
    ap.add_argument("--no-plots", action="store_true")
    add_force(ap, help="re-time even when nothing the rows depend on changed")
    ap.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                    help="OMP_WAIT_POLICY for PyTorch's libgomp (default passive: robust when other processes load "
                         "the CPUs; an OMP_WAIT_POLICY already in the environment wins)")
    return ap


def parse_args(argv):
    args = bench_parser().parse_args(argv)
    args.peers = default_peers() if args.peers is None else args.peers
    if args.threads is None:
        try:
            args.threads = len(os.sched_getaffinity(0))
        except AttributeError:
            args.threads = os.cpu_count() or 1
    if args.accuracy_samples is None:
        args.accuracy_samples = 512 if args.quick else None
    if args.parity_samples is None:
        args.parity_samples = 4 if args.quick else 8
    return args


def timing_config(args):
    cfg = (TimingConfig(budget_s=0.05, rounds=2, min_iters=3, min_iters_batch1=3, max_iters=50, warmup_s=0.0,
                        warmup_calls=1) if args.quick else TimingConfig())
    if args.budget is not None:
        cfg.budget_s = args.budget
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.min_iters is not None:
        cfg.min_iters = cfg.min_iters_batch1 = args.min_iters
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = timing_config(args)
    refs = resolve_models(args.models, args.artifacts)
    names = [ref.name for ref in refs]
    env = envinfo.collect(args.threads)
    env["worker_env"] = {**worker_env(args), **({"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"] + " (inherited)"}
                                                 if "OMP_WAIT_POLICY" in os.environ else {})}
    env["timing"] = {**asdict(cfg), "percentiles": "numpy method='linear'", "quick": bool(args.quick),
                     "seq_len": args.seq_len or "auto", "interleaved": True}
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    out = args.artifacts / "bench.json"
    old = read_json(out, {}) or {}
    old_rows = old.get("rows", []) if isinstance(old, dict) else []
    reused_runs: set[str] = set()
    old_gen = (old.get("generation") or {}) if isinstance(old, dict) else {}
    generation: dict[str, dict] = {}
    for ref in refs:
        name = ref.name
        t0 = time.perf_counter()
        key = bench_key(ref, args, cfg, env)
        # zoo.tasks: latency rows per artifact and backend, or a decoder's TTFT and decode tokens/s section
        got = task_of(ref).run("bench", ref, args, cfg, key, {"rows": old_rows, "generation": old_gen})
        rows += got.rows
        generation.update(got.generation)
        reused_runs |= got.reused_runs
        if got.timed:
            print(f"bench {name}: {time.perf_counter() - t0:.1f} s")
    try:
        env["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    env["bench_seconds"] = round(time.perf_counter() - started, 1)
    run_id = env["time_utc"]
    for r in rows + list(generation.values()):
        if not r.get("run") or r.get("run") not in reused_runs:
            r["run"] = run_id
        r.pop("reused", None)
    kept = [r for r in old_rows if r.get("model") not in names]
    generation = {**{k: v for k, v in old_gen.items() if k not in names}, **generation}
    runs = {r.get("run") for r in kept + rows + list(generation.values())}
    envs = {k: v for k, v in (old.get("envs") or {}).items() if k in runs} if isinstance(old, dict) else {}
    envs[run_id] = env
    all_rows = kept + rows
    doc = {"env": env, "rows": all_rows, "guard": int8_guard(all_rows), "summary": summarize(all_rows), "envs": envs,
           "generation": generation}
    engines = [e for ref in refs for e in sorted(ref.folder.glob("*.engine"))]
    if engines and not args.no_engine_timing and gpu.nvidia_gpu_present():
        # trtexec-grade timing of each engine (CUDA events, H2D/D2H, CUDA graphs on/off, threads, trtexec beside)
        doc["engine_timing"] = time_engines(engines, batches=args.batches or (1, 8), seconds=1.0)
        print("\n".join(format_engine_table(doc["engine_timing"])))
    elif isinstance(old, dict) and old.get("engine_timing"):
        doc["engine_timing"] = old["engine_timing"]  # kept from the GPU run that measured it
    atomic_write_json(out, doc)
    print(f"bench: {len(rows)} rows, {len(doc['guard'])} INT8 guard flag(s) -> {out} ({env['bench_seconds']} s)")
    for g in doc["guard"]:
        print(f"  GUARD {g['message']}")
    if not args.no_plots:
        try:
            paths = write_plots(doc, args.artifacts / "plots")
            print(f"bench: {len(paths)} plot(s) -> {args.artifacts / 'plots'}")
        except Exception as e:  # noqa: BLE001 - plots are a convenience; the data is already written
            print(f"bench: plots failed ({type(e).__name__}: {e})")
    return 0


if __name__ == "__main__":
    sys.exit(cli("bench", main))
