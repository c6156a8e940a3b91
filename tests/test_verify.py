"""verify: the TensorRT Q/DQ graph is judged by its float simulation (gating) and separately, advisory, on this CPU's
integer kernels; rows say the precision that ran; an unchanged model is not verified twice."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def vit_artifacts(tmp_path_factory):
    from zoo.data import DataError, load_dataset

    try:
        load_dataset("fashion_mnist")
    except DataError as e:
        pytest.skip(str(e))
    from calibration import CalibrationData
    from export.onnx_export import export_model
    from optimize.int8_build import calibrate_ranges, quantize_static_cached
    from optimize.qdq_graph import quantizable_nodes
    from zoo.registry import save_checkpoint

    root = tmp_path_factory.mktemp("verify") / "artifacts"
    d = root / "vit"
    d.mkdir(parents=True)
    built = tiny_model("vit")
    save_checkpoint(built, d / "model.pt")
    export_model(built, d / "fp32.onnx")
    shutil.copyfile(d / "fp32.onnx", d / "fp32.sim.onnx")
    x = built.spec.example_inputs({"batch": 32}, seed=0)
    ranges, _ = calibrate_ranges(d / "fp32.sim.onnx", CalibrationData.from_arrays(x, batch_size=8), "MinMax")
    nodes = [n.name for n in quantizable_nodes(onnx.load(str(d / "fp32.sim.onnx")))]
    quantize_static_cached(d / "fp32.sim.onnx", d / "int8.qdq.onnx", ranges, "MinMax", nodes, "trt")
    from optimize.fp16 import convert_fp16

    convert_fp16(d / "fp32.sim.onnx", d / "fp16.onnx")
    return root


def test_backend_plan_judges_the_qdq_graph_by_its_float_simulation(vit_artifacts):
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL
    from verify.plan import ROLE_ARTIFACT, ROLE_CPU_KERNELS, ROLE_REFERENCE, backend_plan

    d = vit_artifacts / "vit"
    plan = backend_plan(d, "int8.qdq.onnx")
    assert plan[0] == ("onnxruntime", QDQ_REFERENCE_LEVEL, "int8", ROLE_REFERENCE)
    assert ("onnxruntime", "all", "int8", ROLE_CPU_KERNELS) in plan
    assert all(role == ROLE_CPU_KERNELS for _, _, _, role in plan[1:])
    assert all(role == ROLE_ARTIFACT for _, _, _, role in backend_plan(d, "fp32.sim.onnx"))


def test_gpu_rows_are_planned_only_where_a_gpu_runs_them(vit_artifacts, monkeypatch, tmp_path):
    """Like against like: on a GPU machine verify (and so bench) also checks the engines and the ONNX Runtime GPU
    providers, each as its own row; on a CPU machine an engine is not run and no GPU row is planned."""
    import onnxruntime as ort

    import runtime.gpu
    from verify.plan import ROLE_ARTIFACT, artifact_files, backend_plan

    d = tmp_path / "vit"
    d.mkdir()
    for f in ("fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"):
        (d / f).write_bytes((vit_artifacts / "vit" / f).read_bytes())
    (d / "fp16.trt10.engine").write_bytes(b"engine bytes")
    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: False)
    assert artifact_files(d) == ["fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"]
    assert not [m for _, m, _, _ in backend_plan(d, "fp16.onnx") if m.endswith("-ep")]
    monkeypatch.setattr(runtime.gpu, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert artifact_files(d) == ["fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx", "fp16.trt10.engine"]
    assert backend_plan(d, "fp16.trt10.engine") == [("tensorrt", "engine", "fp16", ROLE_ARTIFACT)]
    assert ("onnxruntime", "cuda-ep", "fp16", ROLE_ARTIFACT) in backend_plan(d, "fp16.onnx")
    assert not [m for _, m, _, _ in backend_plan(d, "fp16.onnx") if m == "tensorrt-ep"]  # that EP is not installed
    assert ("onnxruntime", "cuda-ep", "int8", ROLE_ARTIFACT) in backend_plan(d, "int8.qdq.onnx")


def test_exit_code_counts_gating_rows_only():
    from verify.plan import exit_code

    adv_fail = {"passed": False, "gating": False}
    assert exit_code([{"passed": True, "gating": True}, adv_fail], strict=True) == 0
    assert exit_code([{"passed": False, "gating": True}, adv_fail], strict=True) == 1
    assert exit_code([{"passed": False}], strict=False) == 0
    assert exit_code([{"passed": False}], strict=True) == 1  # rows without the field count as gating


def test_verify_rows_roles_precision_and_reuse(vit_artifacts, capsys):
    from runtime.modelspec import precision_of
    from verify.__main__ import main
    from verify.plan import ROLE_CPU_KERNELS, ROLE_REFERENCE

    art = vit_artifacts
    argv = ["--models", "vit", "--artifacts", str(art), "--limit", "24", "--threads", "1"]
    assert main(argv) == 0
    rows = json.loads((art / "verify.json").read_text())
    qdq = [r for r in rows if r["artifact"] == "int8.qdq.onnx"]
    ref = [r for r in qdq if r["role"] == ROLE_REFERENCE]
    assert len(ref) == 1 and ref[0]["gating"] and ref[0]["mode"] == "disable" and ref[0]["n_samples"] == 24
    assert ref[0]["cosine_mean"] > 0.9 and np.isfinite(ref[0]["max_abs_diff"])
    assert all(not r["gating"] for r in qdq if r["role"] == ROLE_CPU_KERNELS) and len(qdq) >= 2
    fp32 = next(r for r in rows if r["artifact"] == "fp32.sim.onnx" and r["backend"] == "onnxruntime")
    assert fp32["passed"] and fp32["gating"] and fp32["max_abs_diff"] < 1e-4
    for r in rows:
        assert r["cpu_isa"] and r["verify_key"]
        if r["backend"] == "onnxruntime":  # pinned to the CPU provider, on a GPU machine too
            assert r["execution_provider"] == "CPUExecutionProvider"
        if r["backend"] == "openvino":  # the precision the compiled model reports, not the hint
            assert r["precision_ran"] in ("fp32", "bf16")
            if r["mode"] == "bf16" and r["precision_ran"] == "fp32":
                assert r["precision"] == "fp32" and r["precision_asked"] == "bf16"
            elif r["mode"] != "bf16":  # fp16.onnx runs f32 arithmetic on fp16 weights: still judged as fp16
                assert r["precision"] == precision_of(r["artifact"]) and "precision_asked" not in r
    f16 = [r for r in rows if r["artifact"] == "fp16.onnx"]
    assert f16 and all(r["precision"] == "fp16" for r in f16)
    md = (art / "verify.md").read_text()
    assert "TensorRT reference" in md and "advisory" in md
    capsys.readouterr()

    assert main(argv) == 0  # nothing changed: rows reused, not re-run
    assert "vit: up to date" in capsys.readouterr().out
    assert json.loads((art / "verify.json").read_text()) == rows

    m = onnx.load(str(art / "vit" / "fp32.sim.onnx"))
    m.producer_name = "changed"
    onnx.save(m, str(art / "vit" / "fp32.sim.onnx"))
    assert main(argv) == 0  # an artifact changed: verified again
    assert "up to date" not in capsys.readouterr().out
    assert main(argv + ["--force"]) == 0
    assert "up to date" not in capsys.readouterr().out
