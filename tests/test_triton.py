"""serve/: the Triton model repository, the bundled tritonserver, the client, the load test.

A repository is built for two tiny exported models (text and image, the fixtures of test_runtime_cli) with verify
rows written as verify would, then served by the real tritonserver from the nvidia-pytriton wheel on 127.0.0.1: one
request per model over HTTP and gRPC, outputs equal to the direct runtime's (and PyTorch's), batch statistics, a
1-second load test, `edgeattn serve` stopping on SIGINT. The configs of the entries the bundled server cannot load
(onnxruntime_onnx, tensorrt_plan) are parsed with Triton's own ModelConfig schema (tritonclient's model_config_pb2).
Tests that need the server skip only where the wheel or its Python environment is not installed.
"""
from __future__ import annotations

import hashlib

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from test_runtime_cli import CORPUS, SENTENCE, image_model, text_model, torch_probs  # noqa: F401 (fixtures)

TEXT, IMAGE = "text_transformer", "attention_cnn"


# ---- helpers ------------------------------------------------------------------------------------------------
def verify_row(model: str, artifact: str, passed: bool = True, mode: str = "all", **kw) -> dict:
    """A verify.json row as verify writes it (only the fields serve.pick reads)."""
    row = {"model": model, "artifact": artifact, "precision": "int8" if "int8" in artifact else
           ("fp16" if artifact.startswith("fp16") else "fp32"), "backend": "onnxruntime", "mode": mode,
           "role": "artifact", "gating": True, "passed": passed, "cpu_isa": "avx512_vnni",
           "execution_provider": "CPUExecutionProvider"}
    row.update(kw)
    return row


def parse_config(path: Path):
    """config.pbtxt -> Triton's ModelConfig message (raises on anything Triton's parser would reject)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def server_missing() -> str | None:
    """Why the bundled server cannot run here (None: it can). Only a genuine absence skips: the wheel's server or the
    Python backend's environment not installed; a broken install (wrong numpy, no libpython) fails the test."""
    from serve.errors import ServerError
    from serve.server import DEFAULT_PYENV, PYENV_ENV, find_distribution, find_python_env

    try:
        find_distribution()
    except ServerError as e:
        return str(e)
    env = Path(os.environ.get(PYENV_ENV) or DEFAULT_PYENV)
    if not (env / "bin" / "python").exists():
        return f"no Python environment for the Python backend at {env} (scripts/setup.sh makes it)"
    find_python_env()  # raises on a broken one
    return None


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, text_model, image_model):  # noqa: F811
    """An artifacts folder as the pipeline leaves it: each tiny model's fp32.onnx, fp32.sim.onnx (a copy), spec.json,
    tokenizer.json; a stand-in TensorRT 10 engine for the text model; verify.json with passed rows."""
    root = tmp_path_factory.mktemp("triton_artifacts")
    for name, src in ((TEXT, text_model[1]), (IMAGE, image_model[1])):
        d = root / name
        d.mkdir()
        for f in src.parent.iterdir():
            if f.suffix in (".onnx", ".json"):
                shutil.copy2(f, d / f.name)
        shutil.copy2(d / "fp32.onnx", d / "fp32.sim.onnx")
    (root / TEXT / "fp32.trt10.engine").write_bytes(b"stand-in engine bytes")  # only copied, never deserialised
    rows = [verify_row(m, a) for m in (TEXT, IMAGE) for a in ("fp32.onnx", "fp32.sim.onnx")]
    (root / "verify.json").write_text(json.dumps(rows))
    return root


@pytest.fixture(scope="module")
def repository(artifacts):
    from pipeline.artifacts import resolve_models
    from serve.repository import Options, build

    out = artifacts / "triton"
    manifest = build(resolve_models(f"{TEXT},{IMAGE}", artifacts), out, Options())
    return out, manifest


@pytest.fixture(scope="module")
def server(repository):
    why = server_missing()
    if why:
        pytest.skip(f"bundled tritonserver not installed here: {why}")
    from serve.server import TritonServer

    out, _ = repository
    srv = TritonServer(out, [TEXT, IMAGE], ready_timeout_s=120)
    srv.start()
    cmd = " ".join(srv.command(Path("backends")))  # loopback only, no metrics / SageMaker / Vertex AI endpoints
    assert "--http-address 127.0.0.1" in cmd and "--grpc-address 127.0.0.1" in cmd and "--allow-metrics false" in cmd
    try:
        yield srv
    finally:
        rc = srv.stop()
        assert rc is not None and srv.proc is None


def direct_logits(path: Path, feed_fn) -> np.ndarray:
    from runtime.classify import Classifier

    with Classifier(path) as clf:
        x = feed_fn(clf)
        return clf.runner.infer({clf.input_name: x})[clf.output_name]


# ---- pure parts --------------------------------------------------------------------------------------------
def test_pbtxt_writes_what_triton_parses():
    from serve.pbtxt import Enum, key_values, parameters, to_pbtxt

    text = to_pbtxt({"name": "m \"q\"", "max_batch_size": 4, "input": [
        {"name": "x", "data_type": Enum("TYPE_FP32"), "dims": [-1, 3]}], "output": [
        {"name": "y", "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 100},
        "instance_group": [{"count": 2, "kind": Enum("KIND_CPU")}], "parameters": parameters({"a": 1}),
        "optimization": {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": key_values({"precision_mode": "FP16"})}]}}, "skipped": None})
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.name == 'm "q"' and cfg.max_batch_size == 4 and list(cfg.input[0].dims) == [-1, 3]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32 and cfg.output[0].data_type == model_config_pb2.TYPE_STRING
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4] and cfg.instance_group[0].count == 2
    assert cfg.parameters["a"].string_value == "1"
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"
    with pytest.raises(TypeError, match="expected str, Enum"):
        to_pbtxt({"x": object()})


def test_pick_rules(tmp_path):
    from pipeline.artifacts import ModelRef
    from serve.errors import RepositoryError
    from serve.pick import cpu_choice, engine_choice, gpu_onnx_choice

    ref = ModelRef("m", tmp_path / "m")
    ref.folder.mkdir()
    for f in ("fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx", "int8.cpu.onnx", "fp16.rtx.engine",
              "fp16.trt10.engine", "int8.trt10.engine"):
        (ref.folder / f).write_bytes(b"x")
    rows = [verify_row("m", a) for a in ("fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.cpu.onnx")]
    rows += [verify_row("m", "fp16.onnx", mode="extended (all: crashed)"),
             verify_row("m", "int8.qdq.onnx", mode="disable", role="tensorrt-reference"),
             verify_row("m", "int8.qdq.onnx", passed=False, role="cpu-int8-kernels", gating=False)]
    c = cpu_choice(ref, rows, isa="avx512_vnni")
    assert (c.artifact, c.mode, c.precision) == ("int8.cpu.onnx", "all", "int8")
    assert cpu_choice(ref, rows, isa="avx2").artifact == "fp32.sim.onnx"  # int8.cpu was chosen for another CPU
    bench = [{"model": "m", "batch": 1, "verified": True, "backend": "onnxruntime", "device": "cpu", "p50_ms": p,
              "artifact": a, "mode": "all"} for a, p in (("fp32.sim.onnx", 1.0), ("int8.cpu.onnx", 2.0))]
    c = cpu_choice(ref, rows, bench, isa="avx512_vnni")
    assert c.artifact == "fp32.sim.onnx" and "bench.json" in c.reason
    assert cpu_choice(ref, rows, isa="avx512_vnni", only="fp32.onnx").artifact == "fp32.onnx"
    with pytest.raises(RepositoryError, match="--python-artifact int8.qdq.onnx is missing .* or has no passed gating"):
        cpu_choice(ref, rows, only="int8.qdq.onnx")  # only its TensorRT reference row passed: not a CPU deployment
    g = gpu_onnx_choice(ref, rows)
    assert (g.artifact, g.precision) == ("int8.qdq.onnx", "int8")  # judged by its TensorRT reference row
    failed_gpu = rows + [verify_row("m", "int8.qdq.onnx", passed=False, mode="tensorrt-ep")]
    assert gpu_onnx_choice(ref, failed_gpu).artifact == "fp16.onnx"
    e, why = engine_choice(ref, failed_gpu, "fp16")
    assert e is not None and e.artifact == "fp16.trt10.engine" and "fp16.onnx" in why  # never the RTX engine
    e, why = engine_choice(ref, rows, "int8", flavor="trt11")
    assert e is None and "make engines FLAVOR=trt" in why and "fp16.rtx.engine" in why
    with pytest.raises(RepositoryError, match="cannot load TensorRT-RTX"):
        engine_choice(ref, rows, "fp16", flavor="rtx")
    with pytest.raises(RepositoryError, match=r"no artifact .* passed verify on ONNX Runtime's CPU"):
        cpu_choice(ref, [verify_row("m", "fp32.onnx", passed=False)])


def test_pick_serves_int8_cpu_on_the_backend_it_was_verified_on(tmp_path, monkeypatch):
    """int8.cpu.onnx chosen on OpenVINO: verify gates it there (its ONNX Runtime row is advisory), so the Python entry
    serves it on OpenVINO where openvino is installed, with that backend and precision hint in its config; without
    openvino, the verified fp32 graph."""
    import runtime.openvino_backend as ovb
    from pipeline.artifacts import ModelRef
    from serve import configs
    from serve.pick import cpu_choice
    from runtime.modelspec import DimRange, ModelSpec, TensorSpec

    ref = ModelRef("m", tmp_path / "m")
    ref.folder.mkdir()
    for f in ("fp32.onnx", "fp32.sim.onnx", "int8.cpu.onnx"):
        (ref.folder / f).write_bytes(b"x")
    rows = [verify_row("m", a) for a in ("fp32.onnx", "fp32.sim.onnx")]
    rows += [verify_row("m", "int8.cpu.onnx", backend="openvino", mode="f32", execution_provider="CPU"),  # as verify
             verify_row("m", "int8.cpu.onnx", gating=False, role="advisory")]  # the same file on ORT's kernels
    bench = [{"model": "m", "batch": 1, "verified": True, "backend": b, "device": "cpu", "p50_ms": p, "artifact": a,
              "mode": m} for a, b, m, p in (("fp32.sim.onnx", "onnxruntime", "all", 80.0),
                                           ("int8.cpu.onnx", "openvino", "f32", 15.0),
                                           ("int8.cpu.onnx", "onnxruntime", "all", 5.0))]  # not the verified backend
    monkeypatch.setattr(ovb, "available", lambda: True)
    c = cpu_choice(ref, rows, bench, isa="avx512_vnni")
    assert (c.artifact, c.backend, c.mode) == ("int8.cpu.onnx", "openvino", "f32") and "15 ms p50 on openvino" in c.reason
    assert cpu_choice(ref, rows, isa="avx512_vnni").backend == "openvino"  # first of CPU_ORDER without a bench
    spec = ModelSpec("m", "text_classification", [TensorSpec("input_ids", "int64", ("batch", "sequence"))],
                     [TensorSpec("logits", "float32", ("batch", 2))],
                     {"batch": DimRange(1, 1, 8), "sequence": DimRange(1, 16, 32)}, ["neg", "pos"], {"kind": "text"})
    cfg = configs.python_config("m", spec, c.artifact, c.mode, configs.Batching(), runtime_backend=c.backend)
    params = {p["key"]: p["value"]["string_value"] for p in cfg["parameters"]}
    assert params["runtime_backend"] == "openvino" and params["mode"] == "f32" and params["ort_opt_level"] == ""
    monkeypatch.setattr(ovb, "available", lambda: False)
    c = cpu_choice(ref, rows, bench, isa="avx512_vnni")
    assert (c.artifact, c.backend, c.mode) == ("fp32.sim.onnx", "onnxruntime", "all")


def test_loopback_only():
    from serve.errors import LoadTestError
    from serve.loadtest import check_loopback

    for ok in ("127.0.0.1:8000", "localhost:8001", "[::1]:8000", "http://127.0.0.1:1"):
        check_loopback(ok)
    with pytest.raises(LoadTestError, match="host '10.1.2.3' is not loopback; expected 127.0.0.1"):
        check_loopback("10.1.2.3:8000")


def test_check_responses_judges_like_verify():
    """fp32: every response within max-abs; int8 (cosine on the mean): one outlier is reported, not failed."""
    from runtime.modelspec import DEFAULT_TOLERANCES
    from serve.loadtest import Level, check_responses

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 4)).astype(np.float32)
    labels = ["a", "b", "c", "d"]
    level = Level(2, responses=[(k % 8, ref[k % 8] + 1e-7, labels[int(ref[k % 8].argmax())]) for k in range(40)])
    r = check_responses(level, ref, DEFAULT_TOLERANCES["fp32"], labels)
    assert r["matched"] and r["checked"] == 40 and r["outside_per_sample"] == 0 and r["label_mismatches"] == 0
    off = ref[3] * np.array([1, 1, 0.3, 1.7], np.float32)  # one response far off
    level.responses.append((3, off, labels[int(off.argmax())]))
    r = check_responses(level, ref, DEFAULT_TOLERANCES["fp32"], labels)
    assert not r["matched"] and r["outside_per_sample"] == 1 and r["first_outside"] == [3]
    assert "max_abs_diff" in r["reasons"][0]
    r = check_responses(level, ref, DEFAULT_TOLERANCES["int8"], labels)
    assert r["outside_per_sample"] == 1 and r["top1_agreement"] >= 40 / 41 and r["matched"] == (r["top1_agreement"] >= 0.99)
    level.responses.append((5, ref[5], "wrong label"))
    assert check_responses(level, ref, DEFAULT_TOLERANCES["int8"], labels)["label_mismatches"] == 1


# ---- the repository ------------------------------------------------------------------------------------------
def test_repository_entries_and_configs(repository, artifacts):
    from runtime.modelspec import ModelSpec
    from tritonclient.grpc import model_config_pb2 as pb

    out, manifest = repository
    spec = ModelSpec.from_json((artifacts / TEXT / "spec.json").read_text())
    bmax, seq = spec.dynamic["batch"], spec.dynamic["sequence"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        [TEXT, f"{TEXT}_onnx", f"{TEXT}_trt", IMAGE, f"{IMAGE}_onnx"])
    assert {"README.md", "edgeattn-triton.json", f"perf-{TEXT}.json", f"perf-{TEXT}_onnx.json"} <= {
        p.name for p in out.iterdir()}
    # the Python entry: self-contained version folder, BYTES in, logits + label out
    v = out / TEXT / "1"
    assert {"model.py", "fp32.sim.onnx", "spec.json", "tokenizer.json", "runtime"} <= {p.name for p in v.iterdir()}
    assert (v / "runtime" / "loader.py").read_text() == (ROOT / "runtime" / "loader.py").read_text()
    py = parse_config(out / TEXT / "config.pbtxt")
    assert py.backend == "python" and py.max_batch_size == bmax.max
    assert [(i.name, i.data_type, list(i.dims)) for i in py.input] == [("TEXT", pb.TYPE_STRING, [1])]
    assert [(o.name, list(o.dims)) for o in py.output] == [("logits", [2]), ("label", [1])]
    assert py.parameters["artifact"].string_value == "fp32.sim.onnx"
    assert list(py.dynamic_batching.preferred_batch_size) == sorted({bmax.opt, bmax.max})
    assert py.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert (out / TEXT / "warmup" / "TEXT").read_bytes()[4:].decode().startswith("a warm-up")
    img = parse_config(out / IMAGE / "config.pbtxt")
    assert img.input[0].name == "IMAGE" and list(img.output[0].dims) == [10]
    # ONNX Runtime entry: dims without batch, TensorRT accelerator at the graph's precision with the spec's profile
    onnx = parse_config(out / f"{TEXT}_onnx" / "config.pbtxt")
    assert onnx.platform == "onnxruntime_onnx" and onnx.max_batch_size == bmax.max
    assert [(i.name, i.data_type, list(i.dims)) for i in onnx.input] == [("input_ids", pb.TYPE_INT64, [-1])]
    trt_acc = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt_acc.name == "tensorrt" and trt_acc.parameters["precision_mode"] == "FP32"
    assert trt_acc.parameters["trt_profile_max_shapes"] == f"input_ids:{bmax.max}x{seq.max}"
    sha = hashlib.sha256((out / f"{TEXT}_onnx" / "1" / "model.onnx").read_bytes()).hexdigest()
    assert trt_acc.parameters["trt_engine_cache_path"] == f"/tmp/edgeattn_trt_cache/{TEXT}_onnx/{sha}"  # #22 item 1
    assert onnx.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    w = onnx.model_warmup[0].inputs["input_ids"]
    ids = np.frombuffer((out / f"{TEXT}_onnx" / "warmup" / w.input_data_file).read_bytes(), np.int64)
    assert list(w.dims) == [seq.opt] and ids.size == seq.opt and ids[0] == spec.preprocess["cls_id"]
    assert ids.max() < spec.preprocess["vocab_size"]
    assert (out / f"{TEXT}_onnx" / "1" / "model.onnx").read_bytes() == (artifacts / TEXT / "fp32.sim.onnx").read_bytes()
    # TensorRT entry: the TensorRT 10 engine as model.plan on profile 0
    trt = parse_config(out / f"{TEXT}_trt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and list(trt.instance_group[0].profile) == ["0"]
    assert (out / f"{TEXT}_trt" / "1" / "model.plan").read_bytes() == b"stand-in engine bytes"
    assert (out / IMAGE / "1" / "fp32.sim.onnx").is_file() and not (out / f"{IMAGE}_trt").exists()
    recs = {r["name"]: r for r in manifest["models"]}
    assert "make engines FLAVOR=trt" in recs[IMAGE]["trt"]["skipped"] and "trtexec" in recs[IMAGE]["trt"]["build"]
    perf = json.loads((out / f"perf-{TEXT}.json").read_text())
    assert perf == {"data": [{"TEXT": ["a warm-up sentence for the model"]}]}
    perf = json.loads((out / f"perf-{IMAGE}.json").read_text())
    assert list(perf["data"][0]["IMAGE"]) == ["b64"]
    perf = json.loads((out / f"perf-{TEXT}_trt.json").read_text())["data"][0]["input_ids"]
    assert perf["shape"] == [seq.opt] and perf["content"] == ids.tolist()
    readme = (out / "README.md").read_text()
    assert f"perf_analyzer -m {TEXT}_trt" in readme and "docker run" in readme and "make serve" in readme


def test_triton_stage_errors_one_line(artifacts, tmp_path, capsys):
    from edgeattn.__main__ import main

    out = tmp_path / "repo"
    assert main(["triton", "--models", f"{TEXT},nonexistent", "--artifacts", str(artifacts), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: triton nonexistent: model 'nonexistent': no spec.json in" in err and (out / TEXT / "config.pbtxt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["triton", "--models", TEXT, "--artifacts", str(empty)]) == 2
    assert "run `make verify` (or `make demo`) first" in capsys.readouterr().err


# ---- the server ----------------------------------------------------------------------------------------------
def test_one_request_per_model_equals_direct_runtime(server, repository, text_model, image_model):  # noqa: F811
    from serve.client import TritonClassifier, batch_sizes

    out, _ = repository
    built_t, _ = text_model
    built_i, _, png, _ = image_model
    want_t = direct_logits(out / TEXT / "1" / "fp32.sim.onnx", lambda c: c.encode_text([SENTENCE]))
    want_i = direct_logits(out / IMAGE / "1" / "fp32.sim.onnx", lambda c: c.load_images([png]))
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with TritonClassifier(url, TEXT, protocol) as c:
            logits, labels = c.infer([SENTENCE])
        np.testing.assert_allclose(logits, want_t, rtol=0, atol=1e-5)
        assert labels == [built_t.spec.labels[int(want_t.argmax())]]
        with TritonClassifier(url, IMAGE, protocol) as c:
            logits, labels = c.classify_images([png])
            stats = c.statistics()
        np.testing.assert_allclose(logits, want_i, rtol=0, atol=1e-5)
        assert labels == [built_i.spec.labels[int(want_i.argmax())]]
        assert sum(batch_sizes(stats).values()) >= 1
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    from runtime.preprocess import load_image

    np.testing.assert_allclose(probs[0], torch_probs(built_i, {"pixels": load_image(png, built_i.spec.preprocess)})[0],
                               atol=1e-5)


def test_bad_requests_get_errors_others_go_on(server):
    from serve.client import TritonClassifier
    from serve.errors import ClientError

    with TritonClassifier(server.http_url, IMAGE) as c:
        with pytest.raises(ClientError, match="cannot decode"):
            c.infer([b"not an image"])
        logits, _ = c.infer([_png()])  # the same connection and model instance go on
        assert logits.shape == (1, 10)
    with pytest.raises(ClientError, match=r"inputs \['input_ids'\]|not found|unknown model|Request for unknown model"):
        TritonClassifier(server.http_url, f"{TEXT}_onnx")


def _png() -> bytes:
    from serve.loadtest import png_bytes

    return png_bytes(np.full((28, 28), 128, np.uint8))


def test_loadtest_tiny(server, repository, tmp_path):
    from serve.loadtest import Settings, passed, run

    from serve.loadtest import synthetic_texts

    out, _ = repository
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(CORPUS[:5] + synthetic_texts(out / TEXT / "1" / "tokenizer.json", 3)) + "\n")
    doc = run(out, [TEXT], Settings([1, 3], 1.0, "http", pool=6, data=str(data), url=server.http_url), tmp_path / "lt")
    assert passed(doc), json.dumps(doc["models"][0]["levels"], indent=1)[:3000]
    m = doc["models"][0]
    assert m["inputs"] == {"n": 6, "source": str(data)} and [r["concurrency"] for r in m["levels"]] == [1, 3]
    for r in m["levels"]:
        formed = {int(k): v for k, v in r["batches"].items()}
        assert r["requests"] > 0 and sum(k * v for k, v in formed.items()) >= r["requests"]  # + the level's warm-up
        assert r["checked"] == r["requests"] and r["errors"] == 0
        assert r["matched"] and r["outside_per_sample"] == 0 and r["top1_agreement"] == 1.0  # fp32: every response
    assert len(m["direct"]) == 2 and m["direct"][0]["items_per_s"] > 0
    assert {"loadtest.json", "loadtest.md", "loadtest.png"} <= {p.name for p in (tmp_path / "lt").iterdir()}
    assert "| 3 |" in (tmp_path / "lt" / "loadtest.md").read_text()


def test_numpy2_in_the_backend_is_refused_at_load(repository):
    """The bundled stub misreads numpy 2 arrays: model.py's bridge check must fail the load with a clear error."""
    why = server_missing()
    if why:
        pytest.skip(f"bundled tritonserver not installed here: {why}")
    import numpy

    from serve.errors import ServerError
    from serve.server import PythonEnv, TritonServer, find_python_env

    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip(f"this venv has numpy {numpy.__version__}: nothing to refuse")
    base = find_python_env()
    env = PythonEnv(Path(sys.prefix), base.version, base.libdir, numpy.__version__)  # .venv: numpy 2
    out, _ = repository
    srv = TritonServer(out, [IMAGE], python_env=env, ready_timeout_s=60)
    with pytest.raises(ServerError, match=r"exited with code|not ready") as e:
        srv.start()
    assert "came back as" in str(e.value) and "numpy<2" in str(e.value)
    assert srv.proc is None


def test_serve_cli_stops_on_sigint(repository):
    why = server_missing()
    if why:
        pytest.skip(f"bundled tritonserver not installed here: {why}")
    from serve.server import http_status

    out, _ = repository
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "edgeattn", "serve", "--repository", str(out), "--models", TEXT,
                          "--ready-timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=ROOT)
    try:
        lines, deadline, url = [], time.monotonic() + 150, None
        while time.monotonic() < deadline and url is None:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serve: ") and " on HTTP " in line:
                url = line.split(" on HTTP ")[1].split()[0]
        assert url and url.startswith("127.0.0.1:"), "".join(lines)
        assert http_status(f"http://{url}/v2/models/{TEXT}/ready") == 200
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 0, "".join(lines) + rest
    assert "tritonserver stopped (exit code 0)" in rest
    assert http_status(f"http://{url}/v2/health/live", timeout_s=1) is None
