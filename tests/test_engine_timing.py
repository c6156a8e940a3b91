"""bench.engine_timing: trtexec-grade engine timing. The GPU measurements run where a GPU is present; here the
pieces that decide what is reported are checked with real values: trtexec's summary parser, the flags per flavour,
the GPU-side statistics, and the whole loop over a stand-in runner (no CUDA) that reports known event times."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from bench.engine_timing import (INCLUDES, cli_args, format_table, gpu_side, parse_cli_summary, throughput,
                                 time_engine, time_engines)
from runtime import engine_manifest as em
from zoo.registry import create_model

TRTEXEC_TAIL = """\
[12/01/2026-10:00:01] [I] === Performance summary ===
[12/01/2026-10:00:01] [I] Throughput: 2456.78 qps
[12/01/2026-10:00:01] [I] Latency: min = 0.451172 ms, max = 1.25 ms, mean = 0.48 ms, median = 0.475586 ms, percentile(90%) = 0.49 ms, percentile(95%) = 0.5 ms, percentile(99%) = 0.61 ms
[12/01/2026-10:00:01] [I] Enqueue Time: min = 0.01 ms, max = 0.2 ms, mean = 0.02 ms, median = 0.02 ms, percentile(90%) = 0.03 ms, percentile(95%) = 0.03 ms, percentile(99%) = 0.05 ms
[12/01/2026-10:00:01] [I] H2D Latency: min = 0.009 ms, max = 0.03 ms, mean = 0.01 ms, median = 0.0100098 ms, percentile(90%) = 0.011 ms, percentile(95%) = 0.012 ms, percentile(99%) = 0.02 ms
[12/01/2026-10:00:01] [I] GPU Compute Time: min = 0.39 ms, max = 1.1 ms, mean = 0.41 ms, median = 0.405 ms, percentile(90%) = 0.42 ms, percentile(95%) = 0.43 ms, percentile(99%) = 0.55 ms
[12/01/2026-10:00:01] [I] D2H Latency: min = 0.004 ms, max = 0.01 ms, mean = 0.005 ms, median = 0.005 ms, percentile(90%) = 0.006 ms, percentile(95%) = 0.006 ms, percentile(99%) = 0.008 ms
[12/01/2026-10:00:01] [I] Total Host Walltime: 3.00041 s
"""


def test_trtexec_summary_is_parsed_into_our_fields():
    got = parse_cli_summary(TRTEXEC_TAIL)
    assert got["throughput_qps"] == pytest.approx(2456.78)
    assert got["compute"]["median_ms"] == pytest.approx(0.405) and got["compute"]["p99_ms"] == pytest.approx(0.55)
    assert got["latency"]["min_ms"] == pytest.approx(0.451172) and got["latency"]["p90_ms"] == pytest.approx(0.49)
    assert got["h2d"]["median_ms"] == pytest.approx(0.0100098) and got["d2h"]["max_ms"] == pytest.approx(0.01)
    assert set(got) == {"throughput_qps", "latency", "enqueue", "h2d", "compute", "d2h"}
    assert parse_cli_summary("[I] Loading engine\n[E] Error[1]: no such file") == {}


def test_cli_flags_follow_each_flavours_cuda_graph_switch(tmp_path):
    feed = {"pixels": np.zeros((8, 1, 28, 28), np.float32), "mask": np.zeros((8, 5), bool)}
    on10, off10 = (cli_args("trt10", tmp_path / "e.engine", feed, g, 2.0) for g in (True, False))
    assert f"--loadEngine={tmp_path / 'e.engine'}" in on10 and "--shapes=pixels:8x1x28x28,mask:8x5" in on10
    assert "--useCudaGraph" in on10 and "--useCudaGraph" not in off10 and "--duration=2" in on10
    assert "--noCudaGraph" in cli_args("trt11", tmp_path / "e", feed, False, 2.0)  # 11.x: graphs on by default
    assert "--noCudaGraph" not in cli_args("trt11", tmp_path / "e", feed, True, 2.0)
    assert "--rtxCudaGraphStrategy=wholeGraph" in cli_args("rtx", tmp_path / "e", feed, True, 2.0)
    assert "--rtxCudaGraphStrategy=disable" in cli_args("rtx", tmp_path / "e", feed, False, 2.0)


def test_gpu_side_percentiles():
    t = [{"h2d_ms": 0.1 * (i + 1), "compute_ms": 1.0 + i, "d2h_ms": 0.05} for i in range(5)]
    g = gpu_side(t + [None])  # a call without a timing (timing off) is left out
    assert g["compute"]["p50_ms"] == pytest.approx(3.0) and g["compute"]["mean_ms"] == pytest.approx(3.0)
    assert g["h2d"]["p90_ms"] == pytest.approx(0.46) and g["d2h"]["p99_ms"] == pytest.approx(0.05)


class _StandInRunner:
    """What time_engine needs of TensorRTRunner: infer, last_timing (per thread), compute_burst_ms, graph_stats,
    rtx_capture / rtx_settings, a context manager."""

    opened: list[dict] = []

    def __init__(self, path, use_cuda_graph=False, timing=False, **kw) -> None:
        self.kw = {"path": Path(path), "use_cuda_graph": use_cuda_graph, "timing": timing, **kw}
        self.graph_stats = {"captures": 1, "launches": 0, "fallbacks": 0}
        self.rtx_capture = {"capturable": 1, "not_capturable": 0}
        if "rtx_specialization" in kw:
            self.rtx_settings = {"kernel_specialization": kw["rtx_specialization"].upper(),
                                 "cuda_graph_strategy": "WHOLE_GRAPH_CAPTURE" if use_cuda_graph else "DISABLED"}
        self._local = threading.local()
        self.calls = 0
        _StandInRunner.opened.append(self.kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def infer(self, feed):
        x = feed["pixels"]
        assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28)
        self.calls += 1
        self.graph_stats["launches"] += 1
        self._local.t = {"h2d_ms": 0.02, "compute_ms": 0.5 if self.kw["use_cuda_graph"] else 0.7, "d2h_ms": 0.01}
        return {"logits": np.zeros((len(x), 10), np.float32)}

    @property
    def last_timing(self):
        return getattr(self._local, "t", None)

    def compute_burst_ms(self, feed, executions):
        assert executions == 10
        return 0.4 if self.kw["use_cuda_graph"] else 0.45


def test_time_engine_measures_every_point_with_the_runner_it_is_given(tmp_path):
    built = create_model("vit", depth=1, dim=16, heads=2, mlp_dim=32)
    (tmp_path / "spec.json").write_text(built.spec.to_json())
    engine = tmp_path / "fp16.trt10.engine"
    engine.write_bytes(b"not a real engine")
    em.manifest_path(engine).write_text(json.dumps({"format": em.MANIFEST_FORMAT, "flavor": "trt10",
                                                               "precision": "fp16"}))
    _StandInRunner.opened.clear()
    doc = time_engine(engine, batches=(1, 8, 10_000), seconds=0.05, threads=(1, 2), use_cli=False,
                      open_runner=_StandInRunner)
    assert doc["flavor"] == "trt10" and doc["precision"] == "fp16" and doc["cli"] is None
    top = built.spec.dynamic["batch"].max
    assert [(p["batch"], p["cuda_graph"]) for p in doc["points"]] == \
        [(1, False), (1, True), (8, False), (8, True), (top, False), (top, True)]  # 10000 clamped to the profile
    assert all(kw["timing"] for kw in _StandInRunner.opened)
    for p in doc["points"]:
        assert "error" not in p and p["e2e"]["iterations"] >= 20 and p["e2e"]["p50_ms"] > 0
        assert p["gpu"]["compute"]["p50_ms"] == pytest.approx(0.5 if p["cuda_graph"] else 0.7)
        assert [t["threads"] for t in p["throughput"]] == [1, 2]
        assert all(t["calls"] > 0 and t["samples_per_s"] > 0 and "error" not in t for t in p["throughput"])
        assert ("graph_stats" in p) == p["cuda_graph"]
    lines = format_table({"engines": [doc]})
    assert len(lines) == 2 + len(doc["points"]) and "compute (launch incl.) 0.5 GPU compute (back to back) 0.4" \
        in lines[3]


def test_a_failing_runner_is_recorded_per_point_and_per_thread(tmp_path):
    built = create_model("vit", depth=1, dim=16, heads=2, mlp_dim=32)
    (tmp_path / "spec.json").write_text(built.spec.to_json())
    engine = tmp_path / "fp32.rtx.engine"
    engine.write_bytes(b"x")

    def refuses(*a, **k):
        raise RuntimeError("EngineMismatchError: built for another GPU")

    doc = time_engine(engine, batches=(1,), seconds=0.01, use_cli=False, open_runner=refuses)
    assert [p["error"] for p in doc["points"]] == ["RuntimeError: EngineMismatchError: built for another GPU"] * 2
    em.manifest_path(engine).write_text("{not json")
    bad = time_engines([engine], batches=(1,), seconds=0.01, use_cli=False, open_runner=refuses)["engines"][0]
    assert bad["engine"] == str(engine) and "manifest" in bad["error"] and bad["points"] == []

    class Crashes(_StandInRunner):
        def infer(self, feed):
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError("CUDA error: an illegal memory access")
            return super().infer(feed)

    r = Crashes(engine)
    got = throughput(r, built.spec.example_inputs({"batch": 2}), 2, threads=2, seconds=0.01)
    assert got["calls"] == 0 and got["samples_per_s"] is None and "illegal memory access" in got["error"]


def test_no_gpu_cli_exits_2_with_a_message(tmp_path, capsys, monkeypatch):
    import runtime.gpu
    from bench.engine_timing import main

    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: False)
    assert main([str(tmp_path / "x.engine"), "--out", str(tmp_path / "t.json")]) == 2
    assert "no NVIDIA GPU" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def _engine(tmp_path: Path, flavor: str, tf32) -> Path:
    built = create_model("vit", depth=1, dim=16, heads=2, mlp_dim=32)
    (tmp_path / "spec.json").write_text(built.spec.to_json())
    engine = tmp_path / f"fp32.{flavor}.engine"
    engine.write_bytes(b"not a real engine")
    em.manifest_path(engine).write_text(json.dumps({"format": em.MANIFEST_FORMAT, "flavor": flavor,
                                                    "precision": "fp32", "builder": {"tf32": tf32}}))
    return engine


@pytest.mark.parametrize("flavor,tf32", [("trt10", False), ("rtx", True), ("trt11", None)])
def test_every_point_states_what_it_includes_tf32_rtx_settings_and_capture(tmp_path, flavor, tf32):
    """#22: per row, what each figure includes (H2D, compute with its launch, compute back to back, D2H), the TF32
    mode, RTX's specialisation strategy (EAGER asked for) and whether a CUDA graph was captured."""
    _StandInRunner.opened.clear()
    doc = time_engine(_engine(tmp_path, flavor, tf32), batches=(2,), seconds=0.02, threads=(1,), use_cli=False,
                      open_runner=_StandInRunner)
    want_tf32 = {False: "off (", True: "allowed (", None: "unknown ("}[tf32]
    assert doc["tf32"].startswith(want_tf32)
    for p in doc["points"]:
        assert p["includes"] == INCLUDES and p["tf32"] == doc["tf32"]
        assert p["gpu"]["compute_burst"]["p50_ms"] == pytest.approx(0.4 if p["cuda_graph"] else 0.45)
        assert p["cuda_graph_captured"]["captured"] is p["cuda_graph"]
        if flavor == "rtx":
            assert p["rtx"]["kernel_specialization"] == "EAGER"
            assert "is_stream_capturable" in p["cuda_graph_captured"]["evidence"] or not p["cuda_graph"]
        else:
            assert "rtx" not in p
    assert all(("rtx_specialization" in kw) == (flavor == "rtx") for kw in _StandInRunner.opened)
    assert "h2d: GPU time of the host-to-device transfers only" in format_table({"engines": [doc]})[0]
    assert INCLUDES["compute"].startswith("one synchronised call: the launch")


def test_capture_not_claimed_without_evidence(tmp_path):
    from bench.engine_timing import graph_captured

    class R:
        graph_stats = {"captures": 1, "launches": 9, "fallbacks": 1}
        rtx_capture = {"capturable": 1, "not_capturable": 1}

    assert graph_captured(R(), True, "trt10")["captured"] is False  # a shape fell back to plain execution
    assert graph_captured(R(), True, "rtx")["captured"] is False  # RTX said one shape was not capturable
    assert graph_captured(R(), False, "trt10") == {"captured": False, "evidence": "CUDA graphs off"}


def test_trtexec_figure_is_printed_beside_ours():
    """#22 item 3: trtexec's GPU Compute Time and our back-to-back compute of the same point on one line."""
    doc = {"engines": [{"engine": "e.engine", "flavor": "trt10", "precision": "fp16", "tf32": "allowed (x)",
                        "cli": "/usr/bin/trtexec",
                        "points": [{"batch": 1, "cuda_graph": False, "error": "RuntimeError: x",
                                    "gpu": {"compute_burst": {"p50_ms": 0.41}},
                                    "cli": parse_cli_summary(TRTEXEC_TAIL)}]}]}
    lines = format_table(doc)
    assert "TF32 allowed (x)" in lines[1]
    assert lines[3] == ("    trtexec: GPU Compute Time median 0.405 ms (ours, back to back: 0.41 ms), latency median "
                        "0.476 ms, 2.46e+03 qps")


def test_time_engine_with_the_real_runner_on_the_stand_ins(tmp_path, monkeypatch):
    """The whole point with TensorRTRunner itself (stand-in TensorRT + cudart): a 2 ms kernel whose launch costs
    1 ms of host time; per-call compute holds both, the back-to-back figure only the kernel; graphs captured."""
    import runtime.tensorrt_backend as tb
    from devtools.standin_tensorrt import GPU, FakeCudart, fake_tensorrt_runtime, standin_installed, write_fake_engine
    from zoo.spec import DimRange, ModelSpec, TensorSpec

    monkeypatch.setattr(tb, "_LOGGERS", {})
    spec = ModelSpec("fake", "custom", [TensorSpec("x", "float32", ("batch", 4))],
                     [TensorSpec("y", "float32", ("batch", 4))], {"batch": DimRange(1, 8, 64)}, [])
    (tmp_path / "spec.json").write_text(spec.to_json())
    engine = write_fake_engine(tmp_path / "fp32.trt10.engine")
    cudart = FakeCudart()
    mod = fake_tensorrt_runtime(cudart, kernel_s=0.002, launch_s=0.001)
    with standin_installed(mod, cudart, GPU):
        doc = time_engine(engine, batches=(2,), seconds=0.05, threads=(1,), use_cli=False)
    for p in doc["points"]:
        assert "error" not in p, p.get("error")
        per_call, burst = p["gpu"]["compute"]["p50_ms"], p["gpu"]["compute_burst"]["p50_ms"]
        assert 1.9 <= burst < per_call if not p["cuda_graph"] else 1.9 <= burst
        assert p["cuda_graph_captured"]["captured"] is p["cuda_graph"]
        assert p["gpu"]["h2d"]["p50_ms"] < 1.0
    assert cudart.mem == {} and cudart.streams == {}
