"""Latency statistics and the interleaved timing loop.

Percentiles use numpy's default definition (``method="linear"``, Hyndman & Fan type 7): for the samples
1..100, p50 = 50.5, p90 = 90.1, p99 = 99.01.

``run_interleaved`` times several candidates side by side in ONE run: after a warm-up per candidate (excluded), it
goes round-robin over all candidates for ``rounds`` rounds, each candidate getting a time slice of
``budget_s / rounds`` per round, so load drift on a shared machine hits every candidate alike. The start of the
round-robin order rotates every round (3+ candidates). When a slice holds several calls, one untimed call opens it (the switch
from another candidate leaves cold caches and parked thread pools). A candidate that raises is recorded and
dropped; the others carry on. The calls themselves run in worker processes (bench/worker.py), driven one at a
time by the parent; ``LocalTimer`` is the in-process loop a worker (or a test) uses.

GPU candidates (``gpu_keys``: engines, ONNX Runtime GPU providers, CUDA peers) get their own warm-up: at least
``gpu_warmup_calls`` calls and ``gpu_warmup_s`` seconds, whatever the first call cost, so GPU clocks ramp up and
lazy JIT / autotuning (RTX kernel specialisation, cuDNN/cuBLAS heuristics, the TensorRT EP's engine build) settle
before timing. The CPU rule (a first call slower than ``heavy_call_s`` is the whole warm-up) would give a GPU
candidate whose first call built an engine no warm-up at all.
"""
from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("edgeattn.bench.timing")
PERCENTILE_METHOD = "linear"


def percentiles(samples_ms: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> list[float]:
    """Percentiles of ``samples_ms`` (numpy ``method="linear"``). Raises ValueError on an empty sample."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("percentiles: got 0 samples, expected at least 1")
    return [float(v) for v in np.percentile(a, list(qs), method=PERCENTILE_METHOD)]


def summarize(samples_s: Sequence[float], batch: int) -> dict[str, Any]:
    """Per-call latencies in seconds -> p50/p90/p99/mean/min in ms and throughput in samples/s at the median
    latency (``batch / p50``: one request stream; robust to the load spikes of a shared machine, unlike the mean)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = percentiles(ms)
    mean = float(ms.mean())
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "min_ms": float(ms.min()),
            "throughput_per_s": batch / (p50 / 1e3) if p50 > 0 else None, "iterations": int(ms.size)}


@dataclass
class TimingConfig:
    budget_s: float = 0.4  # timed seconds per candidate per batch point (split over the rounds)
    rounds: int = 3
    min_iters: int = 3  # timed calls per candidate at least, whatever the budget
    min_iters_batch1: int = 12  # batch 1 is the headline comparison: at least this many there (ViT-B/16 medians over
    # 6 calls moved its speed-up over the best peer from 2.07x to 1.54x between two runs on one machine)
    max_iters: int = 2000
    warmup_s: float = 0.15  # warm-up seconds per candidate after its first call (at least ``warmup_calls``), excluded
    warmup_calls: int = 1
    heavy_call_s: float = 1.0  # a first call slower than this is the whole warm-up (ViT-B/16 at batch 8 on 2 cores)
    gpu_warmup_s: float = 2.0  # GPU candidates: warm-up seconds (clocks, JIT, autotuning), never cut by heavy_call_s
    gpu_warmup_calls: int = 20
    gpu_warmup_max_calls: int = 100_000  # the time, not a call cap, ends a GPU warm-up of fast calls


@dataclass
class Timed:
    """What the loop measured for one candidate."""

    key: str
    samples_s: list[float] = field(default_factory=list)
    first_call_s: float | None = None  # the first call ever at this input shape (lazy init / compilation)
    warmup_calls: int = 0
    error: str | None = None


def describe(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:600]}"


class LocalTimer:
    """Times a zero-argument callable in this process (bench workers use it; so do the tests)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def warm(self, warmup_s: float, warmup_calls: int, heavy_call_s: float = math.inf,
             max_calls: int = 50) -> dict[str, Any]:
        """First call (timed separately: lazy init / compilation), then calls until warm (none after a first call
        slower than ``heavy_call_s``): at least ``warmup_calls``, then more until ``warmup_s`` has passed or
        ``max_calls`` were made. Returns {first_call_s, est_s (fastest warm call), calls}."""
        fn = self.fn
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        if first > heavy_call_s:
            warmup_calls, warmup_s = 0, 0.0
        best, n, start = math.inf, 0, time.perf_counter()
        while n < warmup_calls or (time.perf_counter() - start < warmup_s and n < max_calls):
            c0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - c0)
            n += 1
        return {"first_call_s": first, "est_s": best if n else first, "calls": n + 1}

    def time_slice(self, slice_s: float, min_calls: int, max_calls: int, switch_warmup: bool) -> list[float]:
        """Timed calls until ``slice_s`` has passed (at least ``min_calls``, at most ``max_calls``); GC off."""
        fn = self.fn
        if switch_warmup:
            fn()
        samples: list[float] = []
        was = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - start < slice_s):
                c0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - c0)
        finally:
            if was:
                gc.enable()
        return samples


def warm_args(cfg: TimingConfig, gpu: bool) -> tuple[float, int, float, int]:
    """(warmup_s, warmup_calls, heavy_call_s, max_calls) for a CPU or a GPU candidate."""
    if gpu:
        return cfg.gpu_warmup_s, cfg.gpu_warmup_calls, math.inf, cfg.gpu_warmup_max_calls
    return cfg.warmup_s, cfg.warmup_calls, cfg.heavy_call_s, 50


def run_interleaved(timers: dict[str, Any], cfg: TimingConfig,
                    on_progress: Callable[[str], None] | None = None, gpu_keys=frozenset()) -> dict[str, Timed]:
    """Time every timer (key -> object with ``warm`` and ``time_slice`` like LocalTimer, local or in a worker
    process) interleaved; see the module docstring (``gpu_keys``: the GPU candidates' warm-up). A timer that
    raises is recorded and dropped."""
    out = {k: Timed(k) for k in timers}
    est: dict[str, float] = {}
    for key, tm in timers.items():
        try:
            w = tm.warm(*warm_args(cfg, key in gpu_keys))
            out[key].first_call_s, out[key].warmup_calls, est[key] = w["first_call_s"], w["calls"], w["est_s"]
        except Exception as e:  # noqa: BLE001 - one candidate's failure must not end the run
            out[key].error = describe(e)
            log.warning("%s: failed during warm-up: %s", key, out[key].error)
        if on_progress:
            on_progress(key)
    live = [k for k in timers if out[k].error is None]
    rounds = max(1, cfg.rounds)
    slice_s = cfg.budget_s / rounds
    per_round_min = max(1, math.ceil(cfg.min_iters / rounds))
    per_round_max = max(per_round_min, math.ceil(cfg.max_iters / rounds))
    for r in range(rounds):
        # rotate the start each round (with 3+ candidates; with 2, rotation would run one of them twice in a row)
        shift = r % len(live) if len(live) >= 3 else 0
        order = live[shift:] + live[:shift]
        for key in order:
            if out[key].error is not None:
                continue
            try:
                # several calls fit in the slice: one untimed call first, after the switch from another candidate
                out[key].samples_s += timers[key].time_slice(slice_s, per_round_min, per_round_max,
                                                             est[key] * 4 <= slice_s)
            except Exception as e:  # noqa: BLE001
                out[key].error = describe(e)
                log.warning("%s: failed in round %d: %s", key, r, out[key].error)
    return out
