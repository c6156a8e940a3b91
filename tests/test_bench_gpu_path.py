"""bench on a GPU machine (#22), checked on CPU with real values: GPU candidates get their own warm-up and load one
at a time; torch.compile peers compile once per shape (dynamic=False) before timing, their compile time reported
apart; TF32 is set explicitly for the CUDA peers and the ONNX Runtime TensorRT-EP fp32 workers, and rows say it;
TensorRT-RTX engines open with EAGER kernel specialisation."""
from __future__ import annotations

import io
import json
import time

import pytest

from bench.timing import LocalTimer, TimingConfig, run_interleaved


class _SlowFirst:
    """A call whose first run takes 30 ms (an engine build, a JIT compile), then 1 ms."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        self.calls += 1
        time.sleep(0.03 if self.calls == 1 else 0.001)


def test_gpu_candidates_get_their_own_warm_up():
    """#22 item 8: on CPU a first call slower than heavy_call_s is the whole warm-up; a GPU candidate still gets
    gpu_warmup_calls calls and gpu_warmup_s seconds (clocks, JIT, autotuning)."""
    cfg = TimingConfig(budget_s=0.01, rounds=1, min_iters=1, min_iters_batch1=1, warmup_s=0.2, warmup_calls=3,
                       heavy_call_s=0.01, gpu_warmup_s=0.1, gpu_warmup_calls=5)
    cpu, gpu = _SlowFirst(), _SlowFirst()
    t0 = time.perf_counter()
    timed = run_interleaved({"cpu": LocalTimer(cpu), "gpu": LocalTimer(gpu)}, cfg, gpu_keys={"gpu"})
    assert time.perf_counter() - t0 >= 0.1 + 0.03
    assert timed["cpu"].warmup_calls == 1  # only the heavy first call
    assert timed["gpu"].warmup_calls >= 6 and timed["gpu"].first_call_s >= 0.03
    w = LocalTimer(_SlowFirst()).warm(0.05, 2, max_calls=3)  # the CPU cap on time-based calls stays
    assert w["calls"] == 4


def test_gpu_workers_load_one_at_a_time():
    """#22 item 9: CPU workers load two at a time; a GPU worker loads alone (nothing else loading, adopted before
    the next one starts), so two workers never build engines on one GPU at once."""
    loading: set[str] = set()
    seen: list[tuple[str, frozenset]] = []

    def launch(name):
        def go():
            loading.add(name)
            seen.append((name, frozenset(loading)))
            return (name,)
        return go

    def adopt(name):
        loading.discard(name)
        return [name]

    from bench.worker import adopt_in_turn

    plan = [("cpu1", False), ("cpu2", False), ("cpu3", False), ("gpu1", True), ("gpu2", True), ("cpu4", False),
            ("cpu5", False)]
    got = adopt_in_turn([(launch(n), g) for n, g in plan], adopt)
    assert sorted(got) == sorted(n for n, _ in plan) and not loading
    at_start = dict(seen)
    assert at_start["gpu1"] == {"gpu1"} and at_start["gpu2"] == {"gpu2"}  # alone while loading
    assert at_start["cpu2"] == {"cpu1", "cpu2"} and at_start["cpu5"] == {"cpu4", "cpu5"}  # CPU: two at a time


def _tiny():
    from zoo.registry import create_model

    return create_model("vit", depth=1, dim=16, heads=2, mlp_dim=32)


def test_compile_peers_compile_per_shape_before_timing(monkeypatch):
    """#22 item 10: torch.compile(dynamic=None) recompiles with dynamic shapes at the second batch size, wherever
    that call happens; compile per shape with dynamic=False when the feed arrives, and keep its time apart."""
    import torch

    from bench.peers import TorchCandidate

    made, compiles = [], []

    def fake_compile(module, **kw):
        made.append(kw)

        def run(*a):
            if run.first:  # the compile happens on the first call at this shape
                run.first = False
                compiles.append(a[0].shape)
                time.sleep(0.02)
            return module(*a)
        run.first = True
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    built = _tiny()
    c = TorchCandidate(built, "compile")
    assert c.load() and made == []  # nothing compiled at load: no shape known yet
    feeds = {b: built.spec.example_inputs({"batch": b}, seed=b) for b in (1, 4)}
    for b in (1, 4, 1, 4):
        fn = c.call(feeds[b])
        before = len(compiles)
        fn()
        assert len(compiles) == before  # never a compile inside the call a timer makes
    assert made == [{"dynamic": False}, {"dynamic": False}]  # one static compile per shape
    assert all(c.compile_seconds_of(feeds[b]) >= 0.02 for b in (1, 4))
    assert "dynamic=False" in c.notes["compile"]
    eager = TorchCandidate(built, "eager")
    assert eager.load() and eager.compile_seconds_of(feeds[1]) is None and len(made) == 2


def test_worker_reports_the_per_shape_compile_as_the_first_call():
    """The warm reply's first_call_s (bench's compile_seconds for compile peers) is the compile made at feed time."""
    from bench.worker import _serve

    class Cand:
        key, error = "pytorch|pytorch|compile-inductor", None

        def call(self, feed):
            return lambda: None

        def compile_seconds_of(self, feed):
            return 12.5

    spec = _tiny().spec
    lines = [json.dumps(m) for m in ({"cmd": "feed", "batch": 2, "seq_len": None},
                                     {"cmd": "warm", "key": Cand.key, "warmup_s": 0.0, "warmup_calls": 1,
                                      "heavy_call_s": 1e9, "max_calls": 5}, {"cmd": "exit"})]
    sent = []
    _serve([Cand()], spec, io.StringIO("\n".join(lines) + "\n"), sent.append)
    assert sent[0] == {"ok": True, "errors": {}}
    assert sent[1]["ok"] and sent[1]["first_call_s"] == 12.5 and sent[1]["calls"] == 2


def test_cuda_tf32_is_set_explicitly():
    """#22 item 7: PyTorch's defaults differ (cuDNN TF32 on, matmul TF32 off); the CUDA peers set both off."""
    import torch

    from bench.peers import TF32_NOTE, set_cuda_tf32

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert set_cuda_tf32(torch, False) == TF32_NOTE
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("runner,mode,precision,want", [
    ("artifacts/m/fp32.sim.onnx", "tensorrt-ep", "", {"NVIDIA_TF32_OVERRIDE": "0"}),
    ("artifacts/m/model.onnx", "tensorrt-ep", "fp32", {"NVIDIA_TF32_OVERRIDE": "0"}),
    ("artifacts/m/fp16.onnx", "tensorrt-ep", "", {}),
    ("artifacts/m/model.onnx", "tensorrt-ep", "", {}),  # unknown precision: not claimed fp32
    ("artifacts/m/fp32.sim.onnx", "cuda-ep", "", {}),  # the CUDA EP has its own use_tf32 option
    ("artifacts/m/fp32.sim.onnx", "all", "", {}),
    (None, "tensorrt-ep", "fp32", {})])
def test_tensorrt_ep_fp32_workers_turn_tf32_off(runner, mode, precision, want):
    from bench.worker import tf32_environment

    assert tf32_environment(runner, mode, precision) == want


def test_rows_say_what_tf32_does():
    from bench.candidates import runner_tf32

    class Ort:
        backend, tf32 = "onnxruntime", "off (CUDA EP use_tf32=0)"

    class Engine:
        backend, tf32 = "tensorrt", None
        manifest = {"builder": {"tf32": False}}

    class Cpu:
        backend = "openvino"

    assert runner_tf32(Ort()) == "off (CUDA EP use_tf32=0)"
    assert runner_tf32(Engine()).startswith("off (BuilderFlag.TF32 cleared")
    assert runner_tf32(Cpu()) is None


def test_engines_open_with_eager_rtx_specialization(monkeypatch, tmp_path):
    """#22 item 4: verify and bench share open_mode; an engine opens with EAGER (RTX's LAZY runs fallback kernels)."""
    import runtime.loader as loader

    got = {}
    monkeypatch.setattr(loader, "_open_engine", lambda p, **kw: got.update(path=p, **kw) or "runner")
    assert loader.open_mode(tmp_path / "fp16.rtx.engine", "tensorrt", "rtx") == "runner"
    assert got["rtx_specialization"] == "eager"

