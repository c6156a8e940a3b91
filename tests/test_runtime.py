"""The thin runtime's ONNX Runtime and OpenVINO runners, loader, GPU detection and import hygiene.

Tiny seeded models are exported once per module with export.onnx_export.export_model; every check compares
VALUES with PyTorch (fp32 parity within 1e-5 on ORT, 1e-4 on OpenVINO) or matches the error text.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, has_nvidia_gpu, tiny_model
from runtime.errors import BackendError, InputError, ModelLoadError, PreprocessError

NAMES = list(TINY)
ORT_TOL = 1e-5
OV_TOL = 1e-4


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built():
    """name -> tiny eval-mode BuiltModel (torch)."""
    return {n: tiny_model(n) for n in NAMES}


@pytest.fixture(scope="module")
def onnx_paths(built, tmp_path_factory):
    """name -> exported fp32.onnx (spec in the metadata and spec.json beside it)."""
    from export.onnx_export import export_model

    root = tmp_path_factory.mktemp("runtime_models")
    out = {}
    for n, b in built.items():
        out[n] = root / n / "fp32.onnx"
        export_model(b, out[n])
    return out


@pytest.fixture(scope="module")
def ort_runners(onnx_paths):
    from runtime.ort_backend import OrtRunner

    runners = {n: OrtRunner(p, threads=1) for n, p in onnx_paths.items()}
    yield runners
    for r in runners.values():
        r.close()


def torch_logits(b, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        args = [torch.from_numpy(feed[t.name]) for t in b.spec.inputs]
        return b.module(*args).numpy()


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- ONNX Runtime parity -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_ort_parity_random_inputs(name, built, ort_runners):
    b, r = built[name], ort_runners[name]
    feed = b.spec.example_inputs(seed=1)  # opt sizes: batch 8 (text: sequence 16)
    got = r.infer(feed)["logits"]
    want = torch_logits(b, feed)
    assert got.shape == want.shape and got.dtype == np.float32
    assert max_abs(got, want) <= ORT_TOL
    assert np.abs(want).max() > 1e-2  # non-trivial logits: a zero head would pass any parity check


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", NAMES)
def test_ort_dynamic_batch(name, batch, built, ort_runners):
    b = built[name]
    feed = b.spec.example_inputs({"batch": batch}, seed=2)
    got = ort_runners[name].infer(feed)["logits"]
    assert got.shape[0] == batch
    assert max_abs(got, torch_logits(b, feed)) <= ORT_TOL


def test_ort_opt_levels_agree(built, onnx_paths):
    from runtime.ort_backend import OrtRunner

    b = built["vit"]
    feed = b.spec.example_inputs({"batch": 3}, seed=3)
    want = torch_logits(b, feed)
    for level in ("extended", "basic", "disable"):
        with OrtRunner(onnx_paths["vit"], opt_level=level, threads=1) as r:
            assert r.opt_level == level
            assert max_abs(r.infer(feed)["logits"], want) <= ORT_TOL


@pytest.mark.parametrize("seq", ["max", 1])
def test_ort_sequence_lengths(seq, built, ort_runners):
    b, r = built["text_transformer"], ort_runners["text_transformer"]
    t = r.contract.bounds["sequence"].max if seq == "max" else seq
    assert r.contract.bounds["sequence"].max == TINY["text_transformer"]["max_len"]  # = positional table size
    feed = b.spec.example_inputs({"batch": 3, "sequence": t}, seed=4)
    got = r.infer(feed)["logits"]
    assert max_abs(got, torch_logits(b, feed)) <= ORT_TOL


def test_ort_padded_batch_equals_unpadded(built, ort_runners):
    b, r = built["text_transformer"], ort_runners["text_transformer"]
    rng = np.random.default_rng(5)
    lengths = [3, 9, 16, 1]
    sentences = [np.concatenate([[2], rng.integers(4, 64, size=n - 1)]).astype(np.int64) for n in lengths]
    padded = np.zeros((len(lengths), max(lengths)), dtype=np.int64)  # pad id 0
    for i, s in enumerate(sentences):
        padded[i, : len(s)] = s
    batch_logits = r.infer({"input_ids": padded})["logits"]  # (4, 2)
    for i, s in enumerate(sentences):
        alone = r.infer({"input_ids": s[None]})["logits"][0]
        assert max_abs(batch_logits[i], alone) <= ORT_TOL, f"sentence {i} (length {len(s)})"
    assert max_abs(batch_logits, torch_logits(b, {"input_ids": padded})) <= ORT_TOL


# ---- input contract: bad feeds --------------------------------------------------------------------------
def _text_feed(batch=2, seq=16):
    ids = np.full((batch, seq), 5, dtype=np.int64)
    ids[:, 0] = 2
    return ids


BAD_TEXT_FEEDS = {
    "wrong name": ({"ids": _text_feed()}, r"missing input\(s\) \['input_ids'\].*unknown input\(s\) \['ids'\]; "
                                          r"expected names \['input_ids'\]"),
    "wrong dtype": ({"input_ids": _text_feed().astype(np.int32)}, r"input 'input_ids': got dtype int32, expected int64"),
    "wrong rank": ({"input_ids": _text_feed()[0]}, r"got rank 1 shape \(16,\), expected rank 2 "
                                                   r"\(batch 1\.\.64, sequence 1\.\.16\)"),
    "batch beyond range": ({"input_ids": _text_feed(batch=65)}, r"got shape \(65, 16\), expected \(batch 1\.\.64, "
                                                                r"sequence 1\.\.16\) \(axis 0 'batch' = 65 is outside 1\.\.64\)"),
    "sequence beyond table": ({"input_ids": _text_feed(seq=17)}, r"got shape \(2, 17\).*axis 1 'sequence' = 17 is "
                                                                 r"outside 1\.\.16"),
    "missing input": ({}, r"missing input\(s\) \['input_ids'\]"),
    "not an array": ({"input_ids": [[2, 5, 5]]}, r"input 'input_ids': got list, expected numpy.ndarray"),
    "not a dict": (_text_feed(), r"feed: got ndarray, expected a dict"),
}


@pytest.mark.parametrize("case", list(BAD_TEXT_FEEDS))
def test_bad_text_feed_raises_input_error(case, ort_runners):
    feed, match = BAD_TEXT_FEEDS[case]
    with pytest.raises(InputError, match=match):
        ort_runners["text_transformer"].infer(feed)


def test_bad_image_feeds_raise_input_error(ort_runners):
    r = ort_runners["attention_cnn"]
    with pytest.raises(InputError, match=r"input 'pixels': got dtype float64, expected float32"):
        r.infer({"pixels": np.zeros((1, 1, 28, 28))})
    with pytest.raises(InputError, match=r"got shape \(1, 3, 28, 28\), expected \(batch 1\.\.64, 1, 28, 28\) "
                                         r"\(axis 1 must be 1\)"):
        r.infer({"pixels": np.zeros((1, 3, 28, 28), np.float32)})
    with pytest.raises(InputError, match=r"'batch' = 0 is outside 1\.\.64"):
        r.infer({"pixels": np.zeros((0, 1, 28, 28), np.float32)})


# ---- spec: metadata vs spec.json beside the file --------------------------------------------------------
def test_spec_read_from_metadata_then_spec_json_then_none(onnx_paths, tmp_path):
    import onnx

    from runtime.ort_backend import OrtRunner

    proto = onnx.load(str(onnx_paths["attention_cnn"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare" / "m.onnx"
    bare.parent.mkdir()
    onnx.save(proto, str(bare))
    with OrtRunner(bare) as r:  # no metadata, no spec.json: dims unbounded
        assert r.spec is None and r.contract.bounds == {}
        assert r.inputs[0].shape == ("batch", 1, 28, 28)
        assert r.infer({"pixels": np.zeros((65, 1, 28, 28), np.float32)})["logits"].shape == (65, 10)
    spec = json.loads((onnx_paths["attention_cnn"].parent / "spec.json").read_text())
    spec["dynamic"]["batch"]["max"] = 4
    (bare.parent / "spec.json").write_text(json.dumps(spec))
    with OrtRunner(bare) as r:  # spec.json beside the file
        assert r.spec["name"] == "attention_cnn"
        with pytest.raises(InputError, match=r"'batch' = 5 is outside 1\.\.4"):
            r.infer({"pixels": np.zeros((5, 1, 28, 28), np.float32)})
    with OrtRunner(onnx_paths["attention_cnn"]) as r:  # metadata wins over spec.json
        assert r.spec["name"] == "attention_cnn" and r.contract.bounds["batch"].max == 64


# ---- load errors ----------------------------------------------------------------------------------------
def _broken_files(src: Path, tmp_path: Path) -> dict[str, Path]:
    data = src.read_bytes()
    files = {"truncated": tmp_path / "truncated.onnx", "garbage": tmp_path / "garbage.onnx",
             "empty": tmp_path / "empty.onnx", "missing": tmp_path / "missing.onnx"}
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(b"this is not a protobuf \x00\xff" * 20)
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_broken_files_raise_model_load_error(backend, onnx_paths, tmp_path):
    from runtime.loader import open_runner

    for kind, path in _broken_files(onnx_paths["vit"], tmp_path).items():
        with pytest.raises(ModelLoadError) as info:
            open_runner(path, backend=backend)
        msg = str(info.value)
        assert str(path) in msg, (kind, msg)
        assert "expected" in msg and "Traceback" not in msg, (kind, msg)
        if kind in ("truncated", "garbage"):
            assert "truncated or corrupt" in msg


# ---- OpenVINO ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ov_runners(onnx_paths):
    from runtime.openvino_backend import OpenVINORunner

    runners = {n: OpenVINORunner(onnx_paths[n], threads=1) for n in ("attention_cnn", "vit", "text_transformer")}
    yield runners
    for r in runners.values():
        r.close()


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", NAMES)
def test_openvino_fp32_parity(name, batch, built, ov_runners):
    b, r = built[name], ov_runners[name]
    assert r.backend == "openvino" and r.spec["name"] == name  # spec read from the ONNX metadata (rt_info)
    assert [i.name for i in r.inputs] == [t.name for t in b.spec.inputs]
    feed = b.spec.example_inputs({"batch": batch}, seed=6)
    got = r.infer(feed)["logits"]
    assert max_abs(got, torch_logits(b, feed)) <= OV_TOL


@pytest.mark.parametrize("seq", [1, 7, 16])
def test_openvino_text_sequence_lengths(seq, built, ov_runners):
    b = built["text_transformer"]
    feed = b.spec.example_inputs({"batch": 2, "sequence": seq}, seed=9)
    got = ov_runners["text_transformer"].infer(feed)["logits"]
    assert max_abs(got, torch_logits(b, feed)) <= OV_TOL


def test_openvino_input_contract(ov_runners):
    r = ov_runners["text_transformer"]
    assert r.contract.bounds["sequence"].max == 16
    with pytest.raises(InputError, match=r"'sequence' = 17 is outside 1\.\.16"):
        r.infer({"input_ids": _text_feed(seq=17)})
    with pytest.raises(InputError, match=r"got dtype float32, expected int64"):
        r.infer({"input_ids": _text_feed().astype(np.float32)})


def test_openvino_bf16_hint_close(built, onnx_paths):
    from runtime.openvino_backend import OpenVINORunner

    b = built["vit"]
    feed = b.spec.example_inputs({"batch": 8}, seed=7)
    want = torch_logits(b, feed)
    with OpenVINORunner(onnx_paths["vit"], precision_hint="bf16", threads=1) as r:
        got = r.infer(feed)["logits"]
    assert cosine(got, want) >= 0.99
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_openvino_and_ort_read_qdq_int8(built, onnx_paths, tmp_path):
    """A static Q/DQ INT8 graph (TensorRT-style: symmetric, no bias quantisation) loads and runs on both."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime.openvino_backend import OpenVINORunner
    from runtime.ort_backend import OrtRunner

    b = built["attention_cnn"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([b.spec.example_inputs({"batch": 4}, seed=s) for s in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    qdq = tmp_path / "int8.qdq.onnx"
    quantize_static(str(onnx_paths["attention_cnn"]), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True})
    feed = b.spec.example_inputs({"batch": 5}, seed=11)
    want = torch_logits(b, feed)
    with OrtRunner(qdq, threads=1) as r1, OpenVINORunner(qdq, threads=1) as r2:
        assert r2.spec["name"] == "attention_cnn"  # metadata survives quantisation
        a, o = r1.infer(feed)["logits"], r2.infer(feed)["logits"]
    assert cosine(a, want) >= 0.99 and cosine(o, want) >= 0.99  # spec int8 tolerance; seen 0.998
    assert cosine(a, o) >= 0.98


# ---- backend errors, providers, GPU detection, crash probe ---------------------------------------------
def test_run_failure_is_backend_error(onnx_paths):
    from runtime.ort_backend import OrtRunner

    with OrtRunner(onnx_paths["vit"]) as r:
        class Boom:
            def run(self, *a, **k):
                raise RuntimeError("simulated kernel failure")
        r._session = Boom()
        with pytest.raises(BackendError, match=r"onnxruntime failed on 'fp32.onnx' with feed shapes "
                                               r"\{'pixels': \(2, 1, 28, 28\)\}: RuntimeError: simulated kernel failure"):
            r.infer({"pixels": np.zeros((2, 1, 28, 28), np.float32)})


def test_auto_providers_follow_real_gpu_not_ort_list(monkeypatch):
    import runtime.gpu
    from runtime.ort_backend import resolve_providers

    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: False)
    assert resolve_providers("auto", every) == ["CPUExecutionProvider"]  # onnxruntime-gpu on a CPU box
    assert resolve_providers(None, every) == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: True)
    assert resolve_providers("auto", every) == every
    assert resolve_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == every[1:]
    assert resolve_providers(["cpu"], every) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match=r"providers \['CUDAExecutionProvider'\]: not available; this onnxruntime "
                                           r"offers \['CPUExecutionProvider'\]"):
        resolve_providers("cuda", ["CPUExecutionProvider"])


def test_gpu_detection(monkeypatch):
    import runtime.gpu as gpu

    gpu.nvidia_gpu_present.cache_clear()
    try:
        assert gpu.nvidia_gpu_present() == has_nvidia_gpu() or Path("/dev/nvhost-ctrl-gpu").exists()
        # no nvidia-smi, no device node -> False without touching libcuda
        monkeypatch.setattr(gpu.shutil, "which", lambda _: None)
        monkeypatch.setattr(gpu, "_DEVICE_NODES", ("/nonexistent/nvidia0",))
        monkeypatch.setattr(gpu, "_libcuda_gpus", lambda: pytest.fail("libcuda probed without a device node"))
        gpu.nvidia_gpu_present.cache_clear()
        assert gpu.nvidia_gpu_present() is False
        # nvidia-smi present and listing one GPU -> True
        monkeypatch.setattr(gpu.shutil, "which", lambda _: "/usr/bin/nvidia-smi")
        monkeypatch.setattr(gpu.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
            a, 0, stdout="GPU 0: NVIDIA RTX 4090 (UUID: GPU-x)\n", stderr=""))
        gpu.nvidia_gpu_present.cache_clear()
        assert gpu.nvidia_gpu_present() is True
        monkeypatch.setenv("EDGEATTN_FORCE_CPU", "1")
        gpu.nvidia_gpu_present.cache_clear()
        assert gpu.nvidia_gpu_present() is False
    finally:
        gpu.nvidia_gpu_present.cache_clear()


def test_probe_in_subprocess(onnx_paths, tmp_path, monkeypatch):
    import runtime.ort_backend as ob

    assert ob.probe_in_subprocess(onnx_paths["vit"], "all") is True
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    assert ob.probe_in_subprocess(bad, "all") is False  # the child failed; this process is fine
    monkeypatch.setattr(ob, "probe_in_subprocess", lambda path, level: level != "all")  # "segfaults at all"
    assert ob.safe_opt_level(onnx_paths["vit"]) == "extended"
    monkeypatch.setattr(ob, "probe_in_subprocess", lambda path, level: False)  # crashes everywhere: the fallback
    assert ob.safe_opt_level(onnx_paths["vit"]) == "extended"


def test_level_fallback_is_one_loop():
    """levels_from / try_levels: the one 'crashed at this level, retry at the next safer one' rule."""
    import runtime.ort_backend as ob

    assert ob.levels_from("all", "extended") == ("all", "extended")
    assert ob.levels_from("all") == ("all", "extended", "basic", "disable")
    assert ob.levels_from("disable", "extended") == ("disable",)  # nothing safer than 'disable'
    with pytest.raises(BackendError, match="'fastest'.*expected one of"):
        ob.levels_from("fastest")
    calls = []

    def crashes_above_basic(level):
        calls.append(level)
        return (f"logits@{level}", None) if level in ("basic", "disable") else (None, f"SIGSEGV at {level}")

    level, result, failed = ob.try_levels(crashes_above_basic, ob.levels_from("all"))
    assert (level, result) == ("basic", "logits@basic") and calls == ["all", "extended", "basic"]
    assert failed == [("all", "SIGSEGV at all"), ("extended", "SIGSEGV at extended")]
    level, result, failed = ob.try_levels(crashes_above_basic, ("all", "extended"))  # every level failed
    assert (level, result) == ("extended", None) and [lv for lv, _ in failed] == ["all", "extended"]
    assert ob.try_levels(crashes_above_basic, ("disable",)) == ("disable", "logits@disable", [])


def test_model_ref_resolves_a_name_once(tmp_path):
    """A model name -> its folder, files, manifest and weights variable, in one place for every stage."""
    from pipeline.artifacts import ModelRef, resolve_models

    refs = resolve_models(" text_transformer, ,torchvision:vit_b_16,my.models:make_tiny ", tmp_path)
    assert [r.name for r in refs] == ["text_transformer", "torchvision:vit_b_16", "my.models:make_tiny"]
    assert [r.folder for r in refs] == [tmp_path / "text_transformer", tmp_path / "vit_b_16", tmp_path / "make_tiny"]
    tv = refs[1]
    assert tv.file("fp32.onnx") == tmp_path / "vit_b_16" / "fp32.onnx" and tv.checkpoint.name == "model.pt"
    assert tv.weights_env == "EDGEATTN_WEIGHTS_VIT_B_16" and tv.artifacts == tmp_path
    assert tv.manifest() == {}  # no manifest yet
    tv.folder.mkdir()
    tv.manifest_path.write_text(json.dumps({"export": {"opset": 18}}))
    assert ModelRef.resolve("torchvision:vit_b_16", tmp_path).manifest() == {"export": {"opset": 18}}


# ---- loader -----------------------------------------------------------------------------------------------
def test_loader_dispatch(onnx_paths, tmp_path, monkeypatch):
    import types

    from runtime.loader import open_runner
    from runtime.openvino_backend import OpenVINORunner
    from runtime.ort_backend import OrtRunner

    with open_runner(onnx_paths["vit"]) as r:
        assert isinstance(r, OrtRunner) and r.backend == "onnxruntime"
        assert r.providers == ["CPUExecutionProvider"] or has_nvidia_gpu()
    with open_runner(onnx_paths["vit"], backend="openvino", precision_hint="f32") as r:
        assert isinstance(r, OpenVINORunner)
    engine = tmp_path / "fp16.trt10.engine"
    engine.write_bytes(b"\x00" * 64)
    seen = {}
    fake = types.ModuleType("runtime.tensorrt_backend")

    class FakeTRT:
        def __init__(self, path, **kw):
            seen.update(path=path, kw=kw)
    fake.TensorRTRunner = FakeTRT
    monkeypatch.setitem(sys.modules, "runtime.tensorrt_backend", fake)
    assert isinstance(open_runner(engine, device=0), FakeTRT) and seen == {"path": engine, "kw": {"device": 0}}
    monkeypatch.setitem(sys.modules, "runtime.tensorrt_backend", None)  # import fails like without tensorrt
    with pytest.raises(BackendError, match=r"TensorRT engines need runtime.tensorrt_backend and the tensorrt package"):
        open_runner(engine)


def test_loader_errors(onnx_paths, tmp_path):
    from runtime.loader import open_runner

    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"model '.*model\.pt': unknown extension '\.pt'; expected one of "
                                             r"\['\.onnx', '\.engine'"):
        open_runner(weird)
    with pytest.raises(BackendError, match=r"backend 'tflite': unknown; expected one of"):
        open_runner(onnx_paths["vit"], backend="tflite")
    with pytest.raises(BackendError, match=r"backend 'tensorrt' needs a built \.engine file, got an \.onnx"):
        open_runner(onnx_paths["vit"], backend="tensorrt")
    with pytest.raises(BackendError, match=r"opt_level 'max': unknown"):
        open_runner(onnx_paths["vit"], opt_level="max")


# ---- classifier (image path; text is covered end to end by test_runtime_cli.py) ---------------------------
def test_classifier_image_and_tokenizer_checks(built, onnx_paths, tmp_path):
    from PIL import Image

    from runtime.classify import Classifier

    b = built["attention_cnn"]
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    png = tmp_path / "item.png"
    Image.fromarray(pixels, mode="L").save(png)
    x = ((pixels.astype(np.float32) / 255 - b.spec.preprocess["mean"]) / b.spec.preprocess["std"])[None, None]
    logits = torch_logits(b, {"pixels": x.astype(np.float32)})[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with Classifier(onnx_paths["attention_cnn"]) as clf:
        [(label, probs)] = clf.classify_image(png)
        assert list(probs) == b.spec.labels and label == b.spec.labels[int(want.argmax())]
        assert max_abs(np.array(list(probs.values())), want) <= 1e-5
        with pytest.raises(PreprocessError, match=r"is an image model, got text input"):
            clf.classify_text(["hello"])
    # a tokenizer with more ids than the embedding table is refused up front
    from zoo.tokenizer import train_tokenizer

    words = [f"w{i} x{i} y{i} z{i}" for i in range(200)]
    big = train_tokenizer(words, vocab_size=500, max_len=16, path=tmp_path / "big.json")
    with pytest.raises(PreprocessError, match=r"has \d+ tokens, expected at most the model's vocab_size 64"):
        Classifier(onnx_paths["text_transformer"], tokenizer=big)


# ---- import hygiene ---------------------------------------------------------------------------------------
def _imported_modules(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    mods = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return mods


def _forbidden(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in ("torch", "onnx", "tensorrt", "tensorrt_rtx"))


def test_runtime_imports_neither_torch_nor_onnx(onnx_paths):
    code = ("import numpy as np, runtime, runtime.ort_backend, runtime.openvino_backend, runtime.loader, "
            "runtime.classify, runtime.gpu, runtime.__main__\n"
            "from runtime.loader import open_runner\n"
            "for b in ('onnxruntime', 'openvino'):\n"
            f"    r = open_runner({str(onnx_paths['vit'])!r}, backend=b)\n"
            "    r.infer({'pixels': np.zeros((1, 1, 28, 28), np.float32)})\n")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    mods = _imported_modules(out.stderr)
    assert "runtime.ort_backend" in mods and "onnxruntime" in mods and "openvino" in mods
    assert _forbidden(mods) == []


def test_every_runtime_module_imports_without_tensorrt_torch_onnx():
    """Block tensorrt, torch and onnx at import time and import every module under runtime/."""
    modules = sorted(p.stem for p in (ROOT / "runtime").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'tensorrt_rtx', 'torch', 'onnx', 'pycuda', 'cuda'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {['runtime'] + ['runtime.' + m for m in modules]!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert {"ort_backend", "openvino_backend", "loader", "classify", "gpu", "__main__"} <= set(modules)
