"""ONNX Runtime GPU execution providers (runtime/ort_backend.py): TensorRT EP options and the silent-fallback check.

No GPU here, and the CPU onnxruntime has no TensorRT/CUDA EP, so a stand-in ``onnxruntime`` module wraps the real
one: it offers the GPU providers, records the providers and options each InferenceSession is created with, runs
the model on the real CPU session, and reports as ``get_providers()`` what a real ONNX Runtime would when an EP
cannot start (onnxruntime 1.32 onnxruntime_inference_collection.py: an EP that fails to load is dropped, an EP
error at creation retries with ``_fallback_providers``, and a run-time EPFail does ``set_providers(fallback)``).
These tests check OUR options and checks, not the EPs themselves.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import BackendError

ort = pytest.importorskip("onnxruntime")

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
SPEC = {
    "name": "two", "family": "custom",
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]},
               {"name": "t", "dtype": "float32", "shape": ["batch", "sequence"]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]},
                {"name": "z", "dtype": "float32", "shape": ["batch", "sequence"]}],
    "dynamic": {"batch": {"min": 1, "opt": 8, "max": 64}, "sequence": {"min": 1, "opt": 16, "max": 32}},
}
PROFILE = {"trt_profile_min_shapes": "x:1x4,t:1x1", "trt_profile_opt_shapes": "x:8x4,t:8x16",
           "trt_profile_max_shapes": "x:64x4,t:64x32"}


def write_model(path: Path, spec_beside: bool = True, spec_in_metadata: bool = False, spec=SPEC) -> Path:
    """y = 2 x, z = t + 1 with dynamic batch/sequence; the spec beside it (spec.json) and/or in its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path.parent.mkdir(parents=True, exist_ok=True)
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["t", "one"], ["z"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "sequence"])],
        [numpy_helper.from_array(np.array(2, np.float32), "two"),
         numpy_helper.from_array(np.array(1, np.float32), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if spec_in_metadata:
        helper.set_model_props(m, {"edgeattn.spec": json.dumps(spec)})
    onnx.save(m, str(path))
    if spec_beside:
        (path.parent / "spec.json").write_text(json.dumps(spec))
    return path


class _Session:
    """The real CPU session, reporting ``providers`` as the ones in use."""

    def __init__(self, real, providers: list[str]) -> None:
        self._real, self._providers, self.fallback_disabled = real, providers, False

    def get_providers(self):
        return list(self._providers)

    def disable_fallback(self):
        self.fallback_disabled = True

    def __getattr__(self, name):
        return getattr(self._real, name)


class FakeOrt:
    """A stand-in onnxruntime: ``available`` providers; ``starts`` = the providers that can start (the others are
    dropped, as ONNX Runtime does with an EP whose libraries are missing)."""

    def __init__(self, available=(TRT, CUDA, CPU), starts=(TRT, CUDA, CPU)) -> None:
        self.SessionOptions, self.RunOptions = ort.SessionOptions, ort.RunOptions
        self.GraphOptimizationLevel = ort.GraphOptimizationLevel
        self.available, self.starts = list(available), set(starts)
        self.created: list[list] = []  # providers (names or (name, options)) per InferenceSession
        self.sessions: list[_Session] = []

    def get_available_providers(self):
        return list(self.available)

    def InferenceSession(self, path, sess_options=None, providers=None, **kw):  # noqa: N802 - ORT's name
        self.created.append(list(providers))
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        real = ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])
        s = _Session(real, [n for n in names if n in self.starts] or [CPU])
        self.sessions.append(s)
        return s

    def options(self, k: int = -1) -> dict[str, dict[str, str]]:
        """{provider: options} of the k-th session created."""
        return {p[0]: p[1] for p in self.created[k] if isinstance(p, tuple)}


@pytest.fixture
def fake_ort(monkeypatch):
    import runtime.ort_backend as ob

    def install(**kw) -> FakeOrt:
        fake = FakeOrt(**kw)
        monkeypatch.setattr(ob, "_ort", lambda: fake)
        return fake

    return install


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _feed(b: int = 3, s: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((b, 4)).astype(np.float32), "t": rng.standard_normal((b, s)).astype(np.float32)}


@pytest.mark.parametrize("fname,precision_opts", [
    ("fp32.sim.onnx", {}), ("fp16.onnx", {"trt_fp16_enable": "True"}), ("int8.qdq.onnx", {"trt_int8_enable": "True"})])
def test_tensorrt_ep_gets_options_per_precision(fake_ort, tmp_path, fname, precision_opts):
    from runtime.ort_backend import OrtRunner

    fake = fake_ort()
    model = write_model(tmp_path / "m" / fname)
    with OrtRunner(model, providers=["tensorrt", "cuda", "cpu"]) as r:
        assert r.providers == [TRT, CUDA, CPU] and r.precision == fname.split(".")[0]
        feed = _feed()
        out = r.infer(feed)
        np.testing.assert_array_equal(out["y"], 2 * feed["x"])
        np.testing.assert_array_equal(out["z"], feed["t"] + 1)
    assert len(fake.created) == 1  # spec.json beside the model: options known up front, one session
    cache = tmp_path / "m" / "ort_trt_cache" / _sha(model)
    tf32 = "0" if fname.startswith("fp32") else "1"
    assert fake.options() == {TRT: {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                                    **precision_opts, **PROFILE}, CUDA: {"use_tf32": tf32}}
    assert cache.is_dir()
    assert fake.created[0][1:] == [(CUDA, {"use_tf32": tf32}), CPU]  # the CUDA EP (TF32 explicit) and CPU
    assert fake.sessions[0].fallback_disabled  # a run-time EP failure raises instead of switching to CPU


def test_precision_argument_and_caller_options_win(fake_ort, tmp_path):
    from runtime.ort_backend import OrtRunner

    fake = fake_ort()
    model = write_model(tmp_path / "m" / "model.onnx")  # a name that says nothing about its precision
    mine = tmp_path / "elsewhere"
    with OrtRunner(model, providers=[(TRT, {"trt_engine_cache_path": str(mine), "trt_fp16_enable": False}), CPU],
                   precision="fp16") as r:
        assert r.precision == "fp16"
    assert fake.options()[TRT] == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(mine),
                                   "trt_fp16_enable": "False", **PROFILE}
    assert mine.is_dir()
    with OrtRunner(model, providers=["tensorrt", "cpu"]) as r:  # unknown precision: no precision flag at all
        assert r.precision is None
    assert not {"trt_fp16_enable", "trt_int8_enable"} & set(fake.options()[TRT])


@pytest.mark.parametrize("asked,starts,runs_on", [
    (["tensorrt", "cuda", "cpu"], (CUDA, CPU), [CUDA, CPU]),  # no TensorRT libraries: ORT drops the TensorRT EP
    (["tensorrt", "cpu"], (CPU,), [CPU]),
    (["cuda", "cpu"], (CPU,), [CPU]),  # no cuDNN / no GPU: CPU
])
def test_silent_fallback_is_a_backend_error(fake_ort, tmp_path, asked, starts, runs_on):
    from runtime.ort_backend import PROVIDER_ALIASES, OrtRunner

    fake_ort(starts=starts)
    model = write_model(tmp_path / "m" / "fp16.onnx")
    want = PROVIDER_ALIASES[asked[0]]
    with pytest.raises(BackendError, match=rf"onnxruntime was asked for {want} first but runs on "
                                           rf"\[{', '.join(repr(p) for p in runs_on)}\].*missing TensorRT/CUDA/cuDNN"):
        OrtRunner(model, providers=asked)


def test_auto_warns_and_keeps_the_truth_in_providers(fake_ort, tmp_path, monkeypatch, caplog):
    import runtime.gpu
    from runtime.ort_backend import OrtRunner

    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: True)
    fake = fake_ort(starts=(CUDA, CPU))
    model = write_model(tmp_path / "m" / "fp32.onnx")
    with caplog.at_level(logging.WARNING, logger="edgeattn.runtime.ort"):
        with OrtRunner(model) as r:  # auto: TensorRT EP -> CUDA EP -> CPU
            assert r.providers == [CUDA, CPU]
            feed = _feed(2, 3)
            np.testing.assert_array_equal(r.infer(feed)["y"], 2 * feed["x"])
    assert f"asked for {TRT} first but runs on ['{CUDA}', '{CPU}']" in caplog.text and "providers='auto'" in caplog.text
    assert [p if isinstance(p, str) else p[0] for p in fake.created[0]] == [TRT, CUDA, CPU]


def test_cpu_sessions_are_left_alone(fake_ort, tmp_path):
    from runtime.ort_backend import OrtRunner

    fake = fake_ort()
    model = write_model(tmp_path / "m" / "fp16.onnx")
    with OrtRunner(model, providers="cpu") as r:
        assert r.providers == [CPU]
    assert fake.created == [[CPU]] and not fake.sessions[0].fallback_disabled
    assert not (tmp_path / "m" / "ort_trt_cache").exists()


def test_spec_only_in_the_metadata_reloads_with_the_profile(fake_ort, tmp_path):
    from runtime.ort_backend import OrtRunner

    fake = fake_ort()
    model = write_model(tmp_path / "m" / "fp32.onnx", spec_beside=False, spec_in_metadata=True)
    with OrtRunner(model, providers=["tensorrt", "cpu"]) as r:
        assert r.spec["dynamic"] == SPEC["dynamic"]
        feed = _feed(4, 7)
        np.testing.assert_array_equal(r.infer(feed)["z"], feed["t"] + 1)
        assert r._session is fake.sessions[1]  # the runner keeps the session that has the profile
    assert len(fake.created) == 2  # first without a profile (no spec known yet), then with the metadata's
    assert not set(PROFILE) & set(fake.options(0)[TRT]) and PROFILE.items() <= fake.options(1)[TRT].items()


def test_profile_shapes_need_bounds_for_every_dynamic_dim(caplog):
    from runtime.ort_backend import profile_shape_options, tensorrt_ep_options

    assert profile_shape_options(SPEC) == PROFILE
    assert profile_shape_options(None) == {}
    partial = {**SPEC, "dynamic": {"batch": SPEC["dynamic"]["batch"]}}  # 'sequence' has no bounds
    with caplog.at_level(logging.WARNING, logger="edgeattn.runtime.ort"):
        assert profile_shape_options(partial) == {}
    assert "input 't': dynamic dims ['sequence'] have no min/opt/max" in caplog.text
    static = {**SPEC, "inputs": [{"name": "x", "dtype": "float32", "shape": [2, 4]}]}
    assert profile_shape_options(static) == {}  # nothing dynamic: no profile needed
    assert tensorrt_ep_options("int8", None, "/c") == {"trt_engine_cache_enable": "True",
                                                       "trt_engine_cache_path": "/c", "trt_int8_enable": "True"}


def test_real_onnxruntime_cpu_is_unchanged(tmp_path):
    """The real (CPU) onnxruntime: the check passes on CPU, and asking for a GPU EP it lacks is refused up front."""
    from runtime.ort_backend import OrtRunner

    model = write_model(tmp_path / "m" / "fp32.onnx")
    with OrtRunner(model, providers="cpu") as r:
        assert r.providers[0] == CPU
        feed = _feed(1, 1)
        np.testing.assert_array_equal(r.infer(feed)["y"], 2 * feed["x"])
    if TRT not in ort.get_available_providers():
        with pytest.raises(BackendError, match="not available"):
            OrtRunner(model, providers="tensorrt")


def test_trt_cache_is_keyed_by_the_files_content(fake_ort, tmp_path, monkeypatch):
    """#22 item 1: ORT's own cache key hashes names, not weights; a retrained model (same names, new weights) must get
    a new cache folder, the same file the same one, and the hash is computed once per file version."""
    import runtime.ort_backend as ob
    from runtime.ort_backend import OrtRunner

    fake = fake_ort()
    model = write_model(tmp_path / "m" / "fp16.onnx")
    with OrtRunner(model, providers=["tensorrt", "cpu"]):
        pass
    first = fake.options()[TRT]["trt_engine_cache_path"]
    assert first == str(tmp_path / "m" / "ort_trt_cache" / _sha(model))
    calls = []
    monkeypatch.setattr(ob, "sha256_file", lambda p: calls.append(p) or "x" * 64)
    with OrtRunner(model, providers=["tensorrt", "cpu"]):
        pass
    assert fake.options()[TRT]["trt_engine_cache_path"] == first and calls == []  # same file version: no re-hash
    monkeypatch.undo()
    fake = fake_ort()
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(3, np.float32), "two"))  # "retrained"
    onnx.save(m, str(model))
    with OrtRunner(model, providers=["tensorrt", "cpu"]) as r:
        np.testing.assert_array_equal(r.infer(_feed())["y"], 3 * _feed()["x"])
    second = fake.options()[TRT]["trt_engine_cache_path"]
    assert second != first and second == str(tmp_path / "m" / "ort_trt_cache" / _sha(model))
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    with OrtRunner(model, providers=["tensorrt", "cpu"]) as r:
        assert r.tf32 == "off (NVIDIA_TF32_OVERRIDE=0)"
    assert fake.options()[TRT]["trt_engine_cache_path"] == second + "-tf32off"  # TF32 off builds another engine


@pytest.mark.parametrize("fname,providers,want", [
    ("fp32.onnx", ["cuda", "cpu"], "off (CUDA EP use_tf32=0)"),
    ("fp16.onnx", ["cuda", "cpu"], "allowed (CUDA EP use_tf32=1)"),
    ("fp32.onnx", ["tensorrt", "cpu"], "allowed (TensorRT's default; the TensorRT EP has no TF32 option)"),
    ("fp32.onnx", ["cpu"], None)])
def test_tf32_is_explicit_and_recorded(fake_ort, tmp_path, fname, providers, want, monkeypatch):
    """#22 item 7: the CUDA EP's TF32 is set, not left to its default (on); the runner says what applies."""
    from runtime.ort_backend import OrtRunner

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    fake_ort()
    with OrtRunner(write_model(tmp_path / "m" / fname), providers=providers) as r:
        assert r.tf32 == want


def test_decoder_profile_starts_the_past_at_past_min():
    """#22 item 6: DimRange cannot say 0, so dynamic['past'] starts at 1; the prefill binds an empty past, which
    the TensorRT EP profile must cover (preprocess['past_min'] = 0)."""
    from runtime.ort_backend import profile_shape_options

    spec = {"inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                       {"name": "past", "dtype": "float32", "shape": ["batch", 2, "past", 4]}],
            "dynamic": {"batch": {"min": 1, "opt": 2, "max": 4}, "sequence": {"min": 1, "opt": 8, "max": 16},
                        "past": {"min": 1, "opt": 8, "max": 15}},
            "preprocess": {"past_min": 0}}
    got = profile_shape_options(spec)
    assert got["trt_profile_min_shapes"] == "ids:1x1,past:1x2x0x4"
    assert got["trt_profile_max_shapes"] == "ids:4x16,past:4x2x15x4"
    no_pre = {k: v for k, v in spec.items() if k != "preprocess"}
    assert profile_shape_options(no_pre)["trt_profile_min_shapes"] == "ids:1x1,past:1x2x1x4"


def test_triton_cache_path_is_keyed_by_the_model_sha256():
    from serve.configs import trt_cache_path
    from serve.errors import RepositoryError

    a, b = "a" * 64, "b" * 64
    assert trt_cache_path("m_onnx", a) == f"/tmp/edgeattn_trt_cache/m_onnx/{a}" != trt_cache_path("m_onnx", b)
    with pytest.raises(RepositoryError, match=r"model sha256 'abc': expected 64 lowercase hex digits"):
        trt_cache_path("m_onnx", "abc")
