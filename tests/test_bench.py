"""bench: percentile maths, the interleaved loop, the INT8 guard, the summary, the bench.json schema, worker crash
isolation, and a tiny end-to-end run (tiny exported models, --quick) followed by the report."""
from __future__ import annotations

import json
import math
import os
import signal
import time

import numpy as np
import pytest

from bench.results import (check_schema, find_verify_row, int8_guard, make_row, summarize_model, verified_mode)
from bench.timing import LocalTimer, TimingConfig, percentiles, run_interleaved, summarize
from tests.conftest import tiny_model


# ---- statistics -------------------------------------------------------------------------------------------
def test_percentiles_of_1_to_100_follow_numpy_linear():
    samples = list(range(1, 101))
    p50, p90, p99 = percentiles(samples)
    assert (p50, p90, p99) == pytest.approx((50.5, 90.1, 99.01))
    assert [p50, p90, p99] == pytest.approx(list(np.percentile(samples, [50, 90, 99], method="linear")))


def test_percentiles_small_and_empty_samples():
    assert percentiles([7.0]) == [7.0, 7.0, 7.0]
    assert percentiles([1.0, 3.0]) == pytest.approx([2.0, 2.8, 2.98])
    with pytest.raises(ValueError, match="0 samples"):
        percentiles([])


def test_summarize_units_and_throughput():
    s = summarize([0.001, 0.002, 0.003, 0.004], batch=8)  # seconds
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0)
    assert s["iterations"] == 4
    assert s["throughput_per_s"] == pytest.approx(8 / 0.0025)
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]


# ---- interleaved loop ----------------------------------------------------------------------------------------
def test_run_interleaved_round_robin_and_failure_isolated():
    log: list[str] = []

    def make(name, sleep):
        def fn():
            log.append(name)
            time.sleep(sleep)
        return fn

    def boom():
        raise RuntimeError("backend exploded")

    cfg = TimingConfig(budget_s=0.02, rounds=3, min_iters=3, max_iters=30, warmup_s=0.0, warmup_calls=1)
    timers = {"a": LocalTimer(make("a", 0.001)), "b": LocalTimer(make("b", 0.002)), "bad": LocalTimer(boom),
              "c": LocalTimer(make("c", 0.001))}
    out = run_interleaved(timers, cfg)
    assert out["bad"].error and "backend exploded" in out["bad"].error and not out["bad"].samples_s
    for k in ("a", "b", "c"):
        assert out[k].error is None
        assert len(out[k].samples_s) >= 3
        assert out[k].first_call_s is not None and out[k].warmup_calls == 2  # first call + 1 warm-up call
        assert all(s > 0 for s in out[k].samples_s)
    # interleaved: after the warm-up phase (2 calls each), every candidate runs in one block per round
    timed = log[6:]
    blocks = [x for i, x in enumerate(timed) if i == 0 or timed[i - 1] != x]
    assert sorted(blocks) == sorted(["a", "b", "c"] * cfg.rounds)
    assert blocks[:3] == ["a", "b", "c"] and blocks[3:6] == ["b", "c", "a"]  # the start rotates each round
    assert np.median(out["a"].samples_s) < np.median(out["b"].samples_s)


# ---- rows, guard, summary --------------------------------------------------------------------------------------
class _C:
    def __init__(self, backend, artifact, precision, mode, is_peer=False, peer_kind=None, model="m"):
        self.model, self.backend, self.artifact, self.precision, self.mode = model, backend, artifact, precision, mode
        self.is_peer, self.peer_kind, self.load_seconds, self.notes = is_peer, peer_kind, 0.1, {}


def _row(backend, artifact, precision, mode, p50, batch=1, verified=True, **kw):
    c = _C(backend, artifact, precision, mode, **kw)
    stats = {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "mean_ms": p50, "min_ms": p50 * 0.9,
             "throughput_per_s": batch * 1000 / p50, "iterations": 10}
    return make_row(c, batch, None, 2, stats, None, verified)


def test_int8_guard_flags_only_slower_int8_on_same_backend_and_batch():
    rows = [
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 10.0),
        _row("onnxruntime", "int8.qdq.onnx", "int8", "all", 14.0),  # slower: flagged
        _row("onnxruntime", "int8.cpu.onnx", "int8", "all", 5.0),  # faster: fine
        _row("openvino", "fp32.sim.onnx", "fp32", "f32", 20.0),
        _row("openvino", "fp32.sim.onnx", "bf16", "bf16", 2.0),  # bf16 is not the FP32 reference
        _row("openvino", "int8.qdq.onnx", "int8", "f32", 8.0),  # faster than OpenVINO f32: fine
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 30.0, batch=8),
        _row("onnxruntime", "int8.qdq.onnx", "int8", "all", 33.0, batch=8),  # slower at batch 8: flagged
        _row("onnxruntime", "int8.cpu.onnx", "int8", "all", 31.0, batch=8),  # 3 % slower: within the noise margin
        _row("pytorch", "pytorch", "int8", "dynamic-int8-linear", 99.0, is_peer=True, peer_kind="dynamic_int8"),
    ]
    flags = int8_guard(rows)
    assert [(f["int8_artifact"], f["batch"]) for f in flags] == [("int8.qdq.onnx", 1), ("int8.qdq.onnx", 8)]
    assert flags[0]["fp32_artifact"] == "fp32.sim.onnx" and flags[0]["slowdown"] == pytest.approx(1.4)
    assert "slower than fp32.sim.onnx" in flags[0]["message"]


def test_int8_guard_falls_back_to_plain_export_and_ignores_failed_rows():
    failed = make_row(_C("onnxruntime", "fp32.sim.onnx", "fp32", "all"), 1, None, 2, None, "crashed", None)
    rows = [failed, _row("onnxruntime", "fp32.onnx", "fp32", "all", 10.0, is_peer=True, peer_kind="ort_plain"),
            _row("onnxruntime", "int8.cpu.onnx", "int8", "all", 12.0)]
    flags = int8_guard(rows)
    assert len(flags) == 1 and flags[0]["fp32_artifact"] == "fp32.onnx"


def test_summary_picks_fastest_verified_only_and_computes_speedups():
    rows = [
        _row("pytorch", "pytorch", "fp32", "eager", 90.0, is_peer=True, peer_kind="eager"),
        _row("pytorch", "pytorch", "bf16", "bf16-autocast", 45.0, is_peer=True, peer_kind="bf16_autocast"),
        _row("onnxruntime", "fp32.onnx", "fp32", "all", 20.0, is_peer=True, peer_kind="ort_plain"),  # peer: never picked
        _row("openvino", "fp32.sim.onnx", "bf16", "bf16", 10.0, verified=False),  # failed verify: never picked
        _row("onnxruntime", "int8.cpu.onnx", "int8", "all", 15.0, verified=None),  # not verified: never picked
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 30.0, verified=True),
    ]
    s = summarize_model(rows, "m")
    assert s["fastest_verified"]["artifact"] == "fp32.sim.onnx"
    assert s["speedup_vs_eager"] == pytest.approx(3.0)
    assert s["speedup_vs_best_torch_peer"] == pytest.approx(1.5)
    assert s["fastest_any_ours"]["p50_ms"] == 10.0
    assert s["targets"][0]["met"] is True and len(s["targets"]) == 1
    tv = summarize_model([dict(r, model="torchvision:vit_b_16") for r in rows], "torchvision:vit_b_16")
    assert [t["met"] for t in tv["targets"]] == [True, True]


def test_gpu_rows_are_compared_with_gpu_peers_only():
    """Like against like: an engine is never measured against CPU eager, a CPU artifact never against CUDA eager,
    and the INT8 guard compares an ORT GPU-provider row with the FP32 graph on the same provider only."""
    rows = [
        _row("pytorch", "pytorch", "fp32", "eager", 90.0, is_peer=True, peer_kind="eager"),
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 30.0),
        _row("pytorch", "pytorch", "fp32", "cuda-eager", 2.0, is_peer=True, peer_kind="cuda_eager"),
        _row("pytorch", "pytorch", "fp16", "cuda-fp16-autocast", 1.6, is_peer=True, peer_kind="cuda_fp16_autocast"),
        _row("tensorrt", "fp16.trt10.engine", "fp16", "engine", 0.5),
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "cuda-ep", 1.0),
        _row("onnxruntime", "int8.qdq.onnx", "int8", "cuda-ep", 1.5),  # slower than fp32 on the CUDA EP: flagged
        _row("onnxruntime", "int8.qdq.onnx", "int8", "all", 20.0),  # faster than fp32 on the CPU: fine
    ]
    assert [r["device"] for r in rows] == ["cpu", "cpu", "gpu", "gpu", "gpu", "gpu", "gpu", "cpu"]
    s = summarize_model(rows, "m")
    assert s["device"] == "cpu" and s["fastest_verified"]["artifact"] == "int8.qdq.onnx"  # not the 0.5 ms engine
    assert s["speedup_vs_eager"] == pytest.approx(90.0 / 20.0)
    g = s["gpu"]
    assert g["device"] == "gpu" and g["eager_fp32"]["peer_kind"] == "cuda_eager"
    assert g["fastest_verified"]["artifact"] == "fp16.trt10.engine"
    assert g["speedup_vs_eager"] == pytest.approx(4.0) and g["speedup_vs_best_torch_peer"] == pytest.approx(3.2)
    flags = int8_guard(rows)
    assert [(f["int8_mode"], f["fp32_mode"]) for f in flags] == [("cuda-ep", "cuda-ep")]
    assert "gpu" not in summarize_model(rows[:2], "m")  # a CPU-only run has no GPU section


def test_verify_rows_match_on_model_artifact_backend_mode():
    vrows = [{"model": "m", "artifact": "fp16.onnx", "backend": "onnxruntime", "mode": "extended (all: worker exit -11)",
              "passed": True},
             {"model": "m", "artifact": "fp32.sim.onnx", "backend": "openvino", "mode": "bf16", "passed": False}]
    assert verified_mode(vrows, "m", "fp16.onnx", "onnxruntime", "all") == "extended"
    assert verified_mode(vrows, "m", "fp32.sim.onnx", "onnxruntime", "all") == "all"
    assert find_verify_row(vrows, "m", "fp16.onnx", "onnxruntime", "extended")["passed"] is True
    assert find_verify_row(vrows, "m", "fp32.sim.onnx", "openvino", "bf16")["passed"] is False
    assert find_verify_row(vrows, "m", "fp32.sim.onnx", "openvino", "f32") is None


def test_verify_rows_match_like_against_like_only():
    """A CPU verify row never verifies a GPU execution provider's timing (or the reverse); a bf16 hint that ran
    f32 is still the row of the bf16-hint candidate."""
    vrows = [{"model": "m", "artifact": "int8.qdq.onnx", "backend": "onnxruntime", "mode": "all", "precision": "int8",
              "execution_provider": "CPUExecutionProvider", "passed": True},
             {"model": "m", "artifact": "fp32.sim.onnx", "backend": "openvino", "mode": "bf16", "precision": "fp32",
              "precision_asked": "bf16", "execution_provider": "CPU", "passed": True}]
    cpu = find_verify_row(vrows, "m", "int8.qdq.onnx", "onnxruntime", "all", "CPUExecutionProvider", "int8")
    assert cpu is vrows[0]
    assert find_verify_row(vrows, "m", "int8.qdq.onnx", "onnxruntime", "all", "TensorrtExecutionProvider", "int8") is None
    assert find_verify_row(vrows, "m", "int8.qdq.onnx", "onnxruntime", "all", "CPUExecutionProvider", "fp16") is None
    assert find_verify_row(vrows, "m", "fp32.sim.onnx", "openvino", "bf16", None, "bf16") is vrows[1]


def test_schema_checker_catches_missing_and_mistyped_keys():
    good = {"env": {}, "rows": [_row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 1.0)], "guard": [], "summary": {}}
    assert check_schema(good) == []
    bad_row = dict(good["rows"][0], batch="1")
    del bad_row["p50_ms"]
    problems = check_schema({"env": {}, "rows": [bad_row], "guard": {}})
    assert any("'p50_ms'" in p for p in problems)
    assert any("'batch' is str" in p for p in problems)
    assert any("'guard'" in p for p in problems) and any("'summary'" in p for p in problems)


def test_pareto_front():
    from bench.plots import pareto_front

    pts = [(10, 0.90), (5, 0.85), (20, 0.95), (12, 0.80), (5, 0.80), (25, 0.95)]
    assert pareto_front(pts) == [1, 0, 2]


def test_cpu_info_reads_isa_flags():
    from bench.envinfo import cpu_info

    text = ("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_int8\n"
            "physical id\t: 0\ncore id\t\t: 0\n")
    info = cpu_info(text)
    assert info["model"] == "Test CPU"
    assert info["isa"]["avx512_vnni"] and info["isa"]["amx_int8"] and not info["isa"]["amx_bf16"]


# ---- end to end --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    from export.onnx_export import export_model
    from optimize.simplify import simplify_file
    from zoo.registry import save_checkpoint

    root = tmp_path_factory.mktemp("bench") / "artifacts"
    for name in ("vit", "text_transformer"):
        built = tiny_model(name)
        d = root / name
        d.mkdir(parents=True)
        save_checkpoint(built, d / "model.pt")
        export_model(built, d / "fp32.onnx")
        simplify_file(d / "fp32.onnx", d / "fp32.sim.onnx")
    return root


def test_worker_crash_is_recorded_not_fatal(tiny_artifacts):
    from bench.worker import RemoteTimer, Worker, WorkerDied

    w = Worker(["--runner", str(tiny_artifacts / "vit" / "fp32.sim.onnx"), "--backend", "onnxruntime", "--mode", "all",
                "--model", "vit", "--threads", "1"], "crash test")
    try:
        hello = w.wait_hello(timeout=120)
        assert hello["ok"] and hello["candidates"][0]["error"] is None
        key = hello["candidates"][0]["key"]
        w.request({"cmd": "feed", "batch": 2, "seq_len": None})
        assert RemoteTimer(w, key).time_slice(0.0, 2, 2, False).__len__() == 2
        os.kill(w.proc.pid, signal.SIGSEGV)  # what a backend segfault looks like from the parent
        with pytest.raises(WorkerDied, match="SIGSEGV"):
            RemoteTimer(w, key).warm(0.0, 1)
        with pytest.raises(WorkerDied):  # stays dead
            w.request({"cmd": "feed", "batch": 1})
    finally:
        w.close()


def test_end_to_end_quick_bench_and_report(tiny_artifacts):
    from bench.__main__ import main
    from bench.report import main as report_main

    art = tiny_artifacts
    # verify.json with one passing row, so 'verified' and the fastest-verified pick are exercised
    (art / "verify.json").write_text(json.dumps([
        {"model": "vit", "artifact": "fp32.sim.onnx", "backend": "onnxruntime", "mode": "all", "precision": "fp32",
         "passed": True, "accuracy": 0.1, "top1_agreement": 1.0, "n_samples": 10, "dataset": "fashion_mnist"}]))
    rc = main(["--models", "vit,text_transformer", "--artifacts", str(art), "--quick", "--threads", "1",
               "--peers", "eager,bf16_autocast,dynamic_int8,ort_plain", "--accuracy-samples", "64"])
    assert rc == 0
    doc = json.loads((art / "bench.json").read_text())
    assert check_schema(doc) == [], check_schema(doc)
    rows = doc["rows"]
    for model, seq in (("vit", None), ("text_transformer", 16)):
        mine = [r for r in rows if r["model"] == model]
        assert {r["batch"] for r in mine} == {1, 8, 64}  # 1, 8 and the profile max
        assert {r.get("peer_kind") for r in mine if r["is_peer"]} == {"eager", "bf16_autocast", "dynamic_int8",
                                                                        "ort_plain"}
        ours = {(r["backend"], r["artifact"], r["mode"]) for r in mine if not r["is_peer"]}
        assert ("onnxruntime", "fp32.sim.onnx", "all") in ours
        for r in mine:
            assert r["error"] is None, r
            assert r["seq_len"] == seq and r["threads"] == 1
            assert math.isfinite(r["p50_ms"]) and r["p50_ms"] > 0 and r["iterations"] >= 3
            assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
            assert r["throughput_per_s"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
            assert r["verified"] is None if r["is_peer"] else r["verified"] in (True, None)
    v = [r for r in rows if r["model"] == "vit"]
    assert next(r for r in v if r["artifact"] == "fp32.sim.onnx" and r["backend"] == "onnxruntime")["verified"] is True
    eager = next(r for r in v if r.get("peer_kind") == "eager")
    assert eager["accuracy_metric"] == "accuracy" and 0 <= eager["accuracy"] <= 1 and "n=64" in eager["accuracy_source"]
    assert doc["summary"]["vit"]["fastest_verified"]["artifact"] == "fp32.sim.onnx"
    assert doc["summary"]["text_transformer"]["fastest_verified"] is None  # nothing verified for it
    assert doc["env"]["threads"] == 1 and "isa" in doc["env"]["cpu"] and doc["env"]["libs"]["onnxruntime"]
    assert (art / "plots" / "vit_latency.png").stat().st_size > 1000
    assert (art / "plots" / "vit_pareto.png").is_file()

    # a second run with nothing changed reuses the rows (same run id, same numbers) instead of timing again
    assert main(["--models", "vit,text_transformer", "--artifacts", str(art), "--quick", "--threads", "1",
                 "--peers", "eager,bf16_autocast,dynamic_int8,ort_plain", "--accuracy-samples", "64"]) == 0
    again = json.loads((art / "bench.json").read_text())
    assert [(r["run"], r["p50_ms"]) for r in again["rows"]] == [(r["run"], r["p50_ms"]) for r in rows]
    assert all(r["bench_key"] for r in again["rows"]) and set(again["envs"]) >= {r["run"] for r in rows}

    assert report_main(["--artifacts", str(art)]) == 0
    md = (art / "report.md").read_text()
    for needle in ("## Targets", "## Latency at batch 1", "### vit", "### text_transformer (sequence length 16)",
                   "PyTorch eager FP32", "## INT8 guard", "## Verification against PyTorch", "plots/vit_latency.png",
                   "## Environment and method"):
        assert needle in md, needle
    assert "fp32.sim.onnx on onnxruntime (all)" in md


def test_report_shows_gpu_rows_against_cuda_peers_and_engine_timing():
    from bench.report import section_engine_timing, section_latency, section_targets
    from bench.results import summarize

    rows = [
        _row("pytorch", "pytorch", "fp32", "eager", 90.0, is_peer=True, peer_kind="eager"),
        _row("onnxruntime", "fp32.sim.onnx", "fp32", "all", 30.0),
        _row("pytorch", "pytorch", "fp32", "cuda-eager", 2.0, is_peer=True, peer_kind="cuda_eager"),
        _row("tensorrt", "fp16.trt10.engine", "fp16", "engine", 0.5),
    ]
    doc = {"rows": rows, "summary": summarize(rows), "engine_timing": {
        "env": {"gpu": {"gpus": [{"name": "NVIDIA H200", "sm_clock_mhz": 1980, "power_limit_w": 700}]}},
        "engines": [{"engine": "a/m/fp16.trt10.engine", "flavor": "trt10", "precision": "fp16", "points": [
            {"batch": 1, "cuda_graph": True, "e2e": {"p50_ms": 0.21, "p99_ms": 0.3},
             "gpu": {"compute": {"p50_ms": 0.12}, "h2d": {"p50_ms": 0.01}, "d2h": {"p50_ms": 0.005}},
             "throughput": [{"threads": 1, "samples_per_s": 4700.0}, {"threads": 2, "samples_per_s": 8100.0}],
             "cli": {"compute": {"median_ms": 0.118}, "latency": {"median_ms": 0.14}}},
            {"batch": 8, "cuda_graph": False, "error": "BackendError: execute_async_v3 returned False"}]}]}}
    text = "\n".join(section_latency(doc))
    assert "GPU fastest verified: fp16.trt10.engine on tensorrt (engine), 0.500 ms** = 4.00x vs CUDA PyTorch eager" \
        in text and "(PyTorch CUDA eager FP32, 2.00 ms)" in text
    assert "CPU fastest verified: fp32.sim.onnx on onnxruntime (all), 30.0 ms** = 3.00x vs PyTorch eager" in text
    targets = "\n".join(section_targets(doc))
    assert "fastest verified vs PyTorch eager FP32 (GPU: CUDA peers)" in targets
    et = "\n".join(section_engine_timing(doc))
    assert "NVIDIA H200, sm clock mhz 1980, power limit w 700" in et
    assert "| fp16.trt10.engine | 1 | on | 0.210 | 0.300 | 0.120 |" in et and "0.118 compute" in et
    assert "failed: BackendError: execute_async_v3 returned False" in et
    assert section_engine_timing({"rows": rows}) == []  # a CPU-only run has no such section


def test_cuda_peer_without_cuda_is_a_load_error_not_a_crash():
    import torch

    from bench.peers import TorchCandidate, default_peers

    c = TorchCandidate(tiny_model("vit"), "cuda_eager")
    assert (c.precision, c.mode, c.is_peer) == ("fp32", "cuda-eager", True)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gpu-marked test covers the peer")
    assert c.load() is False and "needs a CUDA GPU" in c.error
    assert not [p for p in default_peers() if p.startswith("cuda_")]  # not chosen by default without CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["cuda_eager", "cuda_fp16_autocast", "cuda_compile"])
def test_gpu_cuda_peers_match_cpu_eager(kind):
    """The CUDA PyTorch peers compute what the CPU module computes (fp16 autocast within fp16 error)."""
    from bench.candidates import make_feed
    from bench.peers import TorchCandidate

    built = tiny_model("vit")
    ref, peer = TorchCandidate(built, "eager"), TorchCandidate(built, kind)
    assert ref.load() and peer.load(), peer.error
    feed = make_feed(built.spec, 4, None)
    want, got = ref.logits(feed), peer.logits(feed)
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-2 if kind == "cuda_fp16_autocast" else 1e-3)
    assert peer.notes["device"] and next(built.module.parameters()).device.type == "cpu"  # the CPU module untouched
