"""TensorRTRunner (runtime/tensorrt_backend.py).

Three groups:
- CPU, real modules: importing needs no tensorrt/CUDA; without a GPU the runner raises a clear BackendError.
- CPU, FAKE tensorrt runtime + FAKE cuda-python (verify/standin_tensorrt.py, shared with ``make gpu-check``):
  drive the runner's own logic (shapes, buffer growth, pinned copies, CUDA-graph capture/replay/fallback, one
  context per thread, clean-up). They prove the call sequence and bookkeeping, not TensorRT or CUDA behaviour.
- ``@pytest.mark.gpu``: the real thing against ONNX Runtime, run only where an NVIDIA GPU is present.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime import engine_manifest as em
from runtime.base import DimBounds, IOInfo
from runtime.errors import BackendError, EngineMismatchError, InputError
from devtools.standin_tensorrt import GPU, FakeCudart, fake_tensorrt_runtime, write_fake_engine

ROOT = Path(__file__).resolve().parents[1]


# ---- CPU, real modules ------------------------------------------------------------------------------
def test_import_needs_no_tensorrt_cuda_torch_or_onnx():
    code = (
        "import sys\n"
        "for m in ('tensorrt', 'tensorrt_rtx', 'cuda', 'cuda.bindings', 'torch', 'onnx'):\n"
        "    sys.modules[m] = None  # any import of these now raises ImportError\n"
        "import runtime.tensorrt_backend, runtime.engine_manifest\n"
        "from runtime.tensorrt_backend import TensorRTRunner\n"
        "info, why = runtime.engine_manifest.probe_gpu()\n"
        "assert info is None and 'cuda-python is not installed' in why, why\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_no_gpu_gives_a_clear_backend_error(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    if em.probe_gpu()[0] is not None:
        pytest.skip("a GPU is present: this checks the no-GPU path")
    import onnx
    from onnx import TensorProto, helper

    from optimize.engines import build_engine
    from zoo.spec import DimRange, ModelSpec, TensorSpec

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "fp32.sim.onnx"))
    spec = ModelSpec("relu", "custom", [TensorSpec("x", "float32", ("batch", 4))],
                     [TensorSpec("y", "float32", ("batch", 4))], {"batch": DimRange(1, 2, 8)}, [])
    engine = tmp_path / "fp32.rtx.engine"
    build_engine(tmp_path / "fp32.sim.onnx", engine, spec, flavor="rtx")
    from runtime.tensorrt_backend import TensorRTRunner

    with pytest.raises(BackendError, match=r"^no NVIDIA GPU/CUDA driver: .*needs one to run \(tensorrt_rtx "):
        TensorRTRunner(engine)
    from runtime.loader import open_runner  # the shared loader dispatches .engine here

    with pytest.raises(BackendError, match="no NVIDIA GPU/CUDA driver"):
        open_runner(engine)
    assert trt.__version__


# ---- CPU, fake tensorrt runtime + fake cuda-python ------------------------------------------------
@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Install fake cuda-python + fake tensorrt; return a factory (engine path, cudart, trt module)."""
    import runtime.tensorrt_backend as tb

    cudart = FakeCudart()
    monkeypatch.setattr(tb, "_LOGGERS", {})
    monkeypatch.setattr(em, "probe_gpu", lambda device=0: (dict(GPU), ""))
    monkeypatch.setattr(em, "import_cudart", lambda: cudart)

    def make(**kw):
        mod = fake_tensorrt_runtime(cudart, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        return write_fake_engine(tmp_path / "fp32.trt10.engine"), cudart, mod

    return make


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4)).astype(np.float32)


def test_fake_contract_shapes_and_buffer_growth(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, mod = fake()
    with TensorRTRunner(engine) as r:
        assert (r.flavor, r.version) == ("trt10", "10.3.0.26")
        assert r.inputs == [IOInfo("x", "float32", ("batch", 4))] and r.outputs == [IOInfo("y", "float32", ("batch", 4))]
        assert r.contract.bounds == {"batch": DimBounds(1, 64)}  # from get_tensor_profile_shape
        for b in (2, 5, 3, 64, 1):
            x = _x(b, seed=b)
            np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        # x, y: device + pinned each, first at batch 2 (256-byte minimum); grown for 5 (80 B still fits) -> only
        # batch 64 (1024 B) reallocates: 4 + 4 allocations in all
        assert cudart.mallocs == 8
        assert len(mod.contexts) == 1 and mod.contexts[0].executions == 5
    assert cudart.mem == {} and cudart.streams == {}


def test_fake_timing_records_h2d_compute_d2h_per_thread_and_frees_its_events(fake):
    """timing=True: four CUDA events on the thread's stream around H2D, execute and D2H; their elapsed times are the
    call's GPU-side split (what bench.engine_timing reports beside trtexec). Off by default: no events at all."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, _ = fake()
    with TensorRTRunner(engine) as plain:
        plain.infer({"x": _x(2)})
        assert plain.last_timing is None and not cudart.events
    for graphs in (False, True):
        with TensorRTRunner(engine, timing=True, use_cuda_graph=graphs) as r:
            assert r.last_timing is None  # no call yet on this thread
            for b in (2, 2, 3):
                np.testing.assert_array_equal(r.infer({"x": _x(b)})["y"], 2 * _x(b) + 1)
                t = r.last_timing
                assert set(t) == {"h2d_ms", "compute_ms", "d2h_ms"} and all(v >= 0.0 for v in t.values())
            assert len(cudart.events) == 4
            seen = {}
            th = threading.Thread(target=lambda: (r.infer({"x": _x(1)}), seen.update(t=r.last_timing)))
            th.start()
            th.join()
            assert set(seen["t"]) == {"h2d_ms", "compute_ms", "d2h_ms"}  # that thread's own events and stream
            assert len(cudart.events) == 8
        assert not cudart.events  # close() destroyed every thread's events


def test_fake_bad_feeds_raise_input_error_before_execution(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake()
    with TensorRTRunner(engine) as r:
        with pytest.raises(InputError, match=r"input 'x': got dtype float64, expected float32"):
            r.infer({"x": _x(2).astype(np.float64)})
        with pytest.raises(InputError, match=r"axis 0 'batch' = 65 is outside 1..64"):
            r.infer({"x": _x(65)})
        with pytest.raises(InputError, match=r"missing input\(s\) \['x'\].*unknown input\(s\) \['pixels'\]"):
            r.infer({"pixels": _x(2)})
        with pytest.raises(InputError, match=r"axis 1 must be 4"):
            r.infer({"x": np.zeros((2, 5), np.float32)})
        assert not mod.contexts  # nothing reached TensorRT: no context was even created


def test_fake_cuda_graph_capture_replay_and_recapture(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, mod = fake()
    with TensorRTRunner(engine, use_cuda_graph=True) as g, TensorRTRunner(engine) as plain:
        for b, seed in ((2, 0), (2, 1), (2, 2), (3, 3), (3, 4)):
            x = _x(b, seed)
            np.testing.assert_array_equal(g.infer({"x": x})["y"], plain.infer({"x": x})["y"])
        # batch 2: warm-up + capture, then 2 replays; batch 3: recapture (old graph destroyed), 1 replay
        assert g.graph_stats == {"captures": 2, "launches": 3, "fallbacks": 0}
        graph_ctx = mod.contexts[0]
        assert graph_ctx.executions == 2  # only the two uncaptured warm-up runs executed directly
        assert len(cudart.graphs) == 2  # one live graph + its exec
    assert not cudart.graphs


def test_fake_cuda_graph_capture_failure_falls_back(fake, caplog):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake(capture_fails=True)
    with TensorRTRunner(engine, use_cuda_graph=True) as r:
        for seed in range(3):
            x = _x(4, seed)
            np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        assert r.graph_stats == {"captures": 0, "launches": 0, "fallbacks": 1}  # not retried at the same shape
        assert mod.contexts[0].executions == 3
    assert "CUDA graph capture failed" in caplog.text


def test_fake_failed_capture_clears_the_last_cuda_error(fake):
    """An invalidated capture leaves cudaErrorStreamCaptureInvalidated as the thread's last CUDA error; trtexec clears
    it (sampleInference.cpp: endCaptureOnError + cudaGetLastError). Left there, the next launch that checks it (here:
    the fake execute_async_v3) fails although nothing is wrong."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, mod = fake(capture_fails=True)
    with TensorRTRunner(engine, use_cuda_graph=True) as r:
        x = _x(4, 0)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        assert cudart.last_error == FakeCudart.cudaError_t.cudaSuccess
        for b in (4, 5):  # plain execution goes on, at the failed shape and at a new one
            x = _x(b, b)
            np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        assert mod.contexts[0].executions == 3


def test_fake_exception_during_capture_ends_it_and_frees_the_graph(fake, caplog):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, mod = fake(capture_raises=True)
    with TensorRTRunner(engine, use_cuda_graph=True) as r:
        for seed in range(3):
            x = _x(3, seed)
            np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)  # the warm-up run's result stands
        assert r.graph_stats == {"captures": 0, "launches": 0, "fallbacks": 1}
        assert not cudart.graphs  # the graph cudaStreamEndCapture returned was destroyed, not leaked
        assert all(s.capturing is None for s in cudart.streams.values())  # capture ended
        assert cudart.last_error == FakeCudart.cudaError_t.cudaSuccess and mod.contexts[0].executions == 3
    assert "execute_async_v3 raised RuntimeError: enqueue raised during capture" in caplog.text


def test_fake_two_profiles_switch_and_a_failed_switch_is_a_backend_error(fake):
    """set_optimization_profile_async raises RuntimeError on failure (it does not return False): BackendError."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake(two_profiles=True)
    with TensorRTRunner(engine) as r:
        assert r.contract.bounds == {"batch": DimBounds(1, 64)}
        for b in (2, 40, 64, 1):
            x = _x(b, b)
            np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        assert mod.contexts[0].switches == [1, 0]
    engine, _, _ = fake(two_profiles=True, profile_switch_fails=True)
    with TensorRTRunner(engine) as r:
        x = _x(2)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)  # profile 0: no switch needed
        with pytest.raises(BackendError, match=r"set_optimization_profile_async\(1\) failed for input shapes "
                                               r"\(\(40, 4\),\): Error in set optimization profile async"):
            r.infer({"x": _x(40)})


def test_fake_infer_shapes_error_is_a_backend_error(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake(infer_shapes_fails=True)
    with TensorRTRunner(engine) as r, pytest.raises(
            BackendError, match=r"TensorRT shape inference failed for input shapes \(\(2, 4\),\): infer_shapes error"):
        r.infer({"x": _x(2)})
    assert mod.contexts[0].executions == 0


def test_fake_runner_does_not_rely_on_all_binding_shapes_specified(fake):
    """The fake's all_binding_shapes_specified is always False, as the real one may be with set_input_shape."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake()
    assert mod.contexts == []
    with TensorRTRunner(engine) as r:
        x = _x(3)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
        assert mod.contexts[0].all_binding_shapes_specified is False


@pytest.mark.parametrize("validity", ["VALID", "INVALID"])
def test_fake_rtx_newer_gpu_is_left_to_get_engine_validity(fake, monkeypatch, tmp_path, validity):
    """An RTX engine with the default targets (8.0/8.6/8.9/12.0 "and later") on a 12.1 GPU: the manifest check lets
    it through and TensorRT-RTX's own get_engine_validity decides, before deserialisation."""
    from runtime.tensorrt_backend import TensorRTRunner

    _, cudart, _ = fake()
    mod = fake_tensorrt_runtime(cudart, version="1.7.1.116", rtx_validity=validity)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", mod)
    monkeypatch.delitem(sys.modules, "tensorrt")  # only tensorrt_rtx here
    monkeypatch.setattr(em, "probe_gpu", lambda device=0: ({**GPU, "name": "NVIDIA GB10", "compute_capability": "12.1"},
                                                           ""))
    engine = write_fake_engine(tmp_path / "fp32.rtx.engine", version="1.7.1.116")
    man = json.loads(em.manifest_path(engine).read_text())
    man.update(flavor="rtx", tensorrt={"module": "tensorrt_rtx", "version": "1.7.1.116"}, built_on="cpu-only",
               targets={"compute_capabilities": ["8.0", "8.6", "8.9", "12.0"], "default": True})
    em.write_manifest(engine, man)
    if validity == "INVALID":
        with pytest.raises(EngineMismatchError, match=r"tensorrt_rtx 1\.7\.1\.116 reports it INVALID on 'NVIDIA GB10' "
                                                      r"\(sm 12\.1\): UNSUPPORTED_CC"):
            TensorRTRunner(engine)
        assert mod.runtimes[0].deserialized == 0
        return
    with TensorRTRunner(engine) as r:
        assert (r.flavor, r.version) == ("rtx", "1.7.1.116")
        x = _x(5)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)


def test_fake_one_context_per_thread(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, mod = fake()
    errors: list[BaseException] = []
    together = threading.Barrier(4)
    with TensorRTRunner(engine) as r:
        def work(k: int) -> None:
            try:
                together.wait(timeout=30)
                for i in range(5):
                    x = _x(1 + (k + i) % 7, seed=10 * k + i)
                    np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)
                together.wait(timeout=30)  # all four alive at once: four distinct threads
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(mod.contexts) == 4 and all(len(c.threads) == 1 for c in mod.contexts)
        assert len({next(iter(c.threads)) for c in mod.contexts}) == 4
        assert len(cudart.streams) == 4 and len(r._states) == 4
        x = _x(2)
        np.testing.assert_array_equal(r.infer({"x": x})["y"], 2 * x + 1)  # main thread: new context; the
        assert len(r._states) == 1 and len(cudart.streams) == 1        # exited threads' states are freed
    assert cudart.mem == {} and cudart.streams == {}


def test_fake_close_frees_everything_and_blocks_use(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, cudart, _ = fake()
    r = TensorRTRunner(engine, use_cuda_graph=True)
    r.infer({"x": _x(3)})
    assert cudart.mem and cudart.streams and cudart.graphs
    r.close()
    assert cudart.mem == {} and cudart.streams == {} and not cudart.graphs
    r.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        r.infer({"x": _x(3)})


def test_fake_execute_false_is_a_backend_error(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, _ = fake(execute_fails=True)
    with TensorRTRunner(engine) as r, pytest.raises(BackendError, match="execute_async_v3 returned False"):
        r.infer({"x": _x(2)})


def test_fake_mismatch_stops_before_the_runtime_exists(fake):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake(version="10.3.0.30")  # installed 10.3.0.30, engine built with 10.3.0.26
    with pytest.raises(EngineMismatchError, match=r"TensorRT version: engine built with 10.3.0.26, installed is 10.3.0.30"):
        TensorRTRunner(engine)
    assert mod.runtimes == []
    em.manifest_path(engine).unlink()
    with pytest.raises(EngineMismatchError, match="is missing"):
        TensorRTRunner(engine)
    assert mod.runtimes == []
    r = TensorRTRunner(engine, check_manifest=False)  # explicit opt-out: loads without a manifest
    try:
        assert r.inputs[0].shape == ("x_dim0", 4) and r.manifest is None  # no spec: dims named by position
    finally:
        r.close()


def test_fake_other_gpu_is_refused(fake, monkeypatch):
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake()
    monkeypatch.setattr(em, "probe_gpu", lambda device=0: ({**GPU, "name": "NVIDIA A100", "compute_capability": "8.0"},
                                                           ""))
    with pytest.raises(EngineMismatchError, match=r"engine built on 8.7, this GPU is 8.0.*'NVIDIA Jetson AGX Orin', "
                                                  r"this GPU is 'NVIDIA A100'"):
        TensorRTRunner(engine)
    assert mod.runtimes == []


# ---- GPU: the real runner against ONNX Runtime ------------------------------------------------------
MODELS = ("text_transformer", "attention_cnn", "vit")
SOURCES = {"fp32": "fp32.sim.onnx", "fp16": "fp16.onnx", "int8": "int8.qdq.onnx"}
# TensorRT vs ONNX Runtime CPU on the SAME graph: fp32 engines are built with TF32 cleared (kept loose, unverified on
# a GPU: other summation orders); int8 kernels round differently.
TOL = {"fp32": (5e-3, 0.9999), "fp16": (5e-2, 0.999), "int8": (0.25, 0.99)}


def _sizes(spec) -> list[dict[str, int]]:
    out = [{k: r.min for k, r in spec.dynamic.items()}, {k: r.opt for k, r in spec.dynamic.items()},
           {k: r.max for k, r in spec.dynamic.items()}, {"batch": 3}]
    if "sequence" in spec.dynamic:
        out.append({"batch": 2, "sequence": max(1, spec.dynamic["sequence"].max // 2 - 1)})
    return out


@pytest.fixture(scope="module")
def gpu_artifacts(tmp_path_factory):
    """The pipeline's three sources per tiny model, and an engine for each with flavour auto."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from export.onnx_export import export_model
    from optimize.engines import build_engine, load_tensorrt
    from optimize.simplify import simplify_file
    from tests.conftest import tiny_model

    art = tmp_path_factory.mktemp("gpu_artifacts")
    flavor = load_tensorrt("auto")[1]  # tensorrt 10/11 when installed (a GPU is present here), else rtx
    engines = {}
    for name in MODELS:
        folder = art / name
        built = tiny_model(name)
        export_model(built, folder / "fp32.onnx")
        simplify_file(folder / "fp32.onnx", folder / "fp32.sim.onnx")
        onnx.save(convert_float_to_float16(onnx.load(str(folder / "fp32.sim.onnx")), keep_io_types=True),
                  str(folder / "fp16.onnx"))

        class Reader(CalibrationDataReader):
            def __init__(self, spec=built.spec) -> None:
                self.it = iter([spec.example_inputs(seed=i) for i in range(8)])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(folder / "fp32.sim.onnx"), str(folder / "int8.qdq.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                        extra_options={"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True})
        for prec, src in SOURCES.items():
            engine = folder / em.engine_file_name(prec, flavor)
            man = build_engine(folder / src, engine, built.spec, flavor=flavor, precision=prec)
            engines[name, prec] = (folder / src, engine, built.spec, man)
    return engines


def _compare(a: np.ndarray, b: np.ndarray, prec: str) -> None:
    max_abs, min_cos = TOL[prec]
    assert a.shape == b.shape and np.isfinite(a).all()
    cos = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    assert np.abs(a - b).max() <= max_abs and cos >= min_cos, (np.abs(a - b).max(), cos)


@pytest.mark.gpu
@pytest.mark.parametrize("prec", list(SOURCES))
@pytest.mark.parametrize("name", MODELS)
def test_gpu_parity_with_onnxruntime_over_dynamic_shapes(gpu_artifacts, name, prec):
    from runtime.ort_backend import OrtRunner
    from runtime.tensorrt_backend import TensorRTRunner

    src, engine, spec, man = gpu_artifacts[name, prec]
    with OrtRunner(src, providers="cpu", opt_level="extended") as ref, TensorRTRunner(engine) as r:
        assert [i.name for i in r.inputs] == [t.name for t in spec.inputs]
        assert {k: (b.min, b.max) for k, b in r.contract.bounds.items()} == \
            {k: (d.min, d.max) for k, d in spec.dynamic.items()}
        for t in spec.inputs:  # the deserialised engine's profile (get_tensor_profile_shape) == the manifest's
            assert r._profiles[0][t.name] == tuple(tuple(man["profiles"][0][t.name][w]) for w in ("min", "opt", "max"))
        for i, sizes in enumerate(_sizes(spec)):
            feed = spec.example_inputs(sizes, seed=i)
            got, want = r.infer(feed), ref.infer(feed)
            for o in spec.outputs:
                _compare(got[o.name], want[o.name], prec)


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_gpu_bad_feeds_raise_input_error(gpu_artifacts, name):
    from runtime.tensorrt_backend import TensorRTRunner

    _, engine, spec, _ = gpu_artifacts[name, "fp16"]
    t = spec.inputs[0]
    with TensorRTRunner(engine) as r:
        ok = spec.example_inputs({"batch": 2})
        with pytest.raises(InputError, match="outside 1..64"):
            r.infer(spec.example_inputs({"batch": 65}))
        with pytest.raises(InputError, match="got dtype"):
            r.infer({t.name: ok[t.name].astype(np.float64 if t.dtype == "int64" else np.int64)})
        with pytest.raises(InputError, match="missing input"):
            r.infer({})
        r.infer(ok)  # still usable after refused feeds


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_gpu_cuda_graph_equals_plain(gpu_artifacts, name):
    from runtime.tensorrt_backend import TensorRTRunner

    _, engine, spec, man = gpu_artifacts[name, "fp16"]
    with TensorRTRunner(engine, use_cuda_graph=True) as g, TensorRTRunner(engine) as plain:
        for i, sizes in enumerate([{"batch": 4}, {"batch": 4}, {"batch": 4}, {"batch": 2}, {"batch": 2}]):
            feed = spec.example_inputs(sizes, seed=i)
            a, b = g.infer(feed), plain.infer(feed)
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5)
        if man["flavor"] != "rtx":  # tensorrt 10/11: our own capture; RTX captures inside its runtime
            stats = g.graph_stats
            assert stats["captures"] + stats["fallbacks"] == 2  # one capture attempt per new shape
            if stats["fallbacks"] == 0:
                assert stats == {"captures": 2, "launches": 3, "fallbacks": 0}


@pytest.mark.gpu
def test_gpu_one_context_per_thread(gpu_artifacts):
    from runtime.tensorrt_backend import TensorRTRunner

    _, engine, spec, _ = gpu_artifacts["vit", "fp32"]
    feeds = [spec.example_inputs({"batch": 1 + k}, seed=k) for k in range(4)]
    with TensorRTRunner(engine) as r:
        want = [r.infer(f)["logits"] for f in feeds]
        results: dict[int, list[np.ndarray]] = {}
        ran, leave = threading.Barrier(5, timeout=120), threading.Barrier(5, timeout=120)

        def work(k: int) -> None:
            results[k] = [r.infer(feeds[k])["logits"] for _ in range(5)]
            ran.wait()
            leave.wait()

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        ran.wait()
        assert len(r._states) == 5  # all alive: the main thread's context + one per worker
        leave.wait()
        for t in threads:
            t.join()
        for k in range(4):
            assert len(results[k]) == 5
            for out in results[k]:
                np.testing.assert_allclose(out, want[k], rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_gpu_manifest_records_the_gpu(gpu_artifacts):
    _, engine, _, man = gpu_artifacts["vit", "fp16"]
    gpu, _ = em.probe_gpu()
    assert gpu is not None
    if man["flavor"] != "rtx":
        assert man["built_on"] == {"name": gpu["name"], "compute_capability": gpu["compute_capability"]}
    assert json.loads(em.manifest_path(engine).read_text())["engine_sha256"] == em.sha256_file(engine)


# ---- #22: what the GPU-side figures include, RTX settings, stricter stand-ins ---------------------------------
class _SlowStaging:
    """numpy, except that ``copyto`` (the runner's host-side staging into pinned memory) takes 40 ms."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def copyto(dst, src, **kw):
        import time

        time.sleep(0.04)
        np.copyto(dst, src, **kw)


def test_fake_h2d_ms_excludes_the_host_staging_copy(fake, monkeypatch):
    """The stand-in's events carry device time: the GPU idles while the host stages the inputs, so a start event
    recorded before the staging counts it (#22 item 2: the old order gave h2d_ms >= 40 here)."""
    import runtime.tensorrt_backend as tb

    engine, cudart, _ = fake()
    monkeypatch.setattr(tb, "np", _SlowStaging())
    with tb.TensorRTRunner(engine, timing=True) as r:
        for _ in range(3):
            np.testing.assert_array_equal(r.infer({"x": _x(8)})["y"], 2 * _x(8) + 1)
            assert r.last_timing["h2d_ms"] < 20.0, r.last_timing


def test_fake_compute_per_call_includes_the_launch_and_the_burst_does_not(fake):
    """A 40 ms kernel whose launch takes 10 ms of host time: one synchronised call's compute_ms holds both (the GPU
    idles while execute_async_v3 enqueues); compute_burst_ms enqueues executions back to back, so each launch hides
    behind the execution before it and only the 40 ms remain (#22 item 3)."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _, mod = fake(kernel_s=0.04, launch_s=0.01)
    for graphs in (False, True):
        with TensorRTRunner(engine, timing=True, use_cuda_graph=graphs) as r:
            r.infer({"x": _x(2)})
            r.infer({"x": _x(2)})
            per_call = r.last_timing["compute_ms"]
            burst = r.compute_burst_ms({"x": _x(2)}, executions=4)
            if not graphs:
                assert per_call >= 49.0, per_call  # launch (10 ms) + kernel (40 ms)
            assert 39.0 <= burst < 46.0, burst
    with TensorRTRunner(engine) as r, pytest.raises(BackendError, match="timing=False; expected timing=True"):
        r.compute_burst_ms({"x": _x(2)})


def _rtx(fake, monkeypatch, tmp_path, **kw):
    _, cudart, _ = fake()
    mod = fake_tensorrt_runtime(cudart, version="1.7.1.116", rtx_validity="VALID", **kw)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", mod)
    monkeypatch.delitem(sys.modules, "tensorrt")
    engine = write_fake_engine(tmp_path / "fp32.rtx.engine", version="1.7.1.116")
    man = json.loads(em.manifest_path(engine).read_text())
    man.update(flavor="rtx", tensorrt={"module": "tensorrt_rtx", "version": "1.7.1.116"}, built_on="cpu-only",
               targets={"compute_capabilities": ["8.7"], "default": False})
    em.write_manifest(engine, man)
    return engine, mod


def test_fake_rtx_specialization_strategy_is_set_and_recorded(fake, monkeypatch, tmp_path):
    """#22 item 4: LAZY (RTX's default) times generic kernels; timing asks for EAGER and the runner says what ran."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, mod = _rtx(fake, monkeypatch, tmp_path)
    with TensorRTRunner(engine) as r:
        assert r.rtx_settings == {"cuda_graph_strategy": "DISABLED", "kernel_specialization": "LAZY"}
    with TensorRTRunner(engine, rtx_specialization="eager", use_cuda_graph=True) as r:
        assert r.rtx_settings == {"cuda_graph_strategy": "WHOLE_GRAPH_CAPTURE", "kernel_specialization": "EAGER"}
        assert r._runtime_config.dynamic_shapes_kernel_specialization_strategy == \
            mod.DynamicShapesKernelSpecializationStrategy.EAGER
    with pytest.raises(BackendError, match=r"rtx_specialization 'fast': expected one of \['lazy', 'eager', 'none'\]"):
        TensorRTRunner(engine, rtx_specialization="fast")


@pytest.mark.parametrize("capturable", [True, False])
def test_fake_rtx_graph_rows_carry_is_stream_capturable(fake, monkeypatch, tmp_path, capturable):
    """#22 item 12: RTX captures inside its runtime; per shape the runner asks is_stream_capturable and counts it."""
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _ = _rtx(fake, monkeypatch, tmp_path, stream_capturable=capturable)
    with TensorRTRunner(engine, use_cuda_graph=True) as r:
        for b in (2, 2, 3):
            r.infer({"x": _x(b)})
        assert r.rtx_capture == ({"capturable": 2, "not_capturable": 0} if capturable
                                 else {"capturable": 0, "not_capturable": 2})
        assert r.graph_stats == {"captures": 0, "launches": 0, "fallbacks": 0}  # no manual capture on RTX
    with TensorRTRunner(engine) as r:
        r.infer({"x": _x(2)})
        assert r.rtx_capture == {"capturable": 0, "not_capturable": 0}  # graphs off: not asked


def test_fake_rtx_runtime_cache_round_trip_and_a_foreign_cache(fake, monkeypatch, tmp_path, caplog):
    """#22 item 14: the RTX runtime-cache calls exist in the stand-in; a cache it did not write is refused (False)
    and the runner starts empty, then saves its own on close."""
    from devtools.standin_tensorrt import RUNTIME_CACHE_MAGIC
    from runtime.tensorrt_backend import TensorRTRunner

    engine, _ = _rtx(fake, monkeypatch, tmp_path)
    cache = tmp_path / "rtx.cache"
    cache.write_bytes(b"written by another TensorRT-RTX")
    with TensorRTRunner(engine, runtime_cache=cache) as r:
        assert r._runtime_config.get_runtime_cache() is r._runtime_cache
        r.infer({"x": _x(2)})
    assert "does not match this TensorRT-RTX" in caplog.text
    assert cache.read_bytes().startswith(RUNTIME_CACHE_MAGIC)
    caplog.clear()
    with TensorRTRunner(engine, runtime_cache=cache) as r:
        r.infer({"x": _x(2)})
    assert "does not match" not in caplog.text


def test_standin_is_as_strict_as_the_real_apis(fake):
    """#22 item 14: cudaStreamCaptureModeThreadLocal is 1 as in CUDA; set_tensor_address refuses a pointer that is
    not 256-byte aligned; an event is stamped when the stream reaches it, not when the host records it."""
    import time

    _, cudart, mod = fake()
    assert int(cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal) == 1
    assert int(cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal) == 0
    engine = mod.Runtime(None).deserialize_cuda_engine(b"FAKE-ENGINE")
    c = engine.create_execution_context()
    ptr = cudart.cudaMalloc(512)[1]
    assert c.set_tensor_address("x", ptr) and not c.set_tensor_address("x", ptr + 4)
    s = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)[1]
    a, b = cudart.cudaEventCreate()[1], cudart.cudaEventCreate()[1]
    cudart.cudaEventRecord(a, s)
    cudart.enqueue(s, lambda: None, 0.5)  # half a second of device work, enqueued at once
    cudart.cudaEventRecord(b, s)
    assert abs(cudart.cudaEventElapsedTime(a, b)[1] - 500.0) < 50.0
    t0 = time.perf_counter()
    cudart.cudaEventRecord(a, s)  # reached only once the 0.5 s of work is done
    assert a.time >= t0 + 0.4
    cudart.cudaFree(ptr)
    cudart.cudaStreamDestroy(s)
