"""int8.cpu.onnx as a (form, backend) pair: the OpenVINO form (the TensorRT Q/DQ graph on OpenVINO's int8 kernels) is
judged and timed on OpenVINO, the winner's backend is stamped into the file and the manifest, the thin runtime's
``auto`` opens it there, and verify / bench run it there. Nothing here asserts which form is faster on this CPU."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from calibration.evalset import EvalSet  # noqa: E402
from judge.budget import budget_for  # noqa: E402
from optimize.cpu_int8 import (ORT_CPU, artifact_backend, backend_record, build_cpu_candidates,  # noqa: E402
                               candidate_backend, choose_cpu, default_cpu_candidates, write_cpu_artifact)
from optimize.fp16 import ort_logits  # noqa: E402
from optimize.int8_budget import QuantOptions  # noqa: E402
from runtime.cpu import CPU_BACKEND_METADATA_KEY, ISA_METADATA_KEY, recorded_backend  # noqa: E402
from runtime.openvino_backend import available as openvino_available  # noqa: E402
from tests.test_cpu_int8 import tiny_bert_art  # noqa: E402,F401 - the module's fixture

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")


def test_each_form_names_its_backend_and_the_openvino_form_needs_openvino():
    assert "qdq_openvino" in default_cpu_candidates("avx512_vnni", openvino=True)
    assert "qdq_openvino" not in default_cpu_candidates("avx512_vnni", openvino=False)
    assert candidate_backend("qdq_openvino") == ("openvino", "f32")
    assert candidate_backend("fused_dynamic") == candidate_backend("qdq_s8s8") == ORT_CPU == ("onnxruntime", "all")
    assert backend_record("qdq_openvino") == {"backend": "openvino", "mode": "f32",
                                              "judged_by": "OpenVINO's int8 kernels on this CPU"}
    assert backend_record(None)["backend"] == "onnxruntime"  # fp32 kept: the ORT default
    # verify and bench read it back; a section from before backends were recorded ran on ONNX Runtime
    assert artifact_backend({"method": "qdq_openvino", **backend_record("qdq_openvino")}) == ("openvino", "f32")
    assert artifact_backend({"method": "dynamic", "ort_opt_level": "all"}) == ORT_CPU
    assert artifact_backend(None) == ORT_CPU
    assert recorded_backend({CPU_BACKEND_METADATA_KEY: "openvino:f32"}) == ("openvino", "f32")
    for bad in ({}, {CPU_BACKEND_METADATA_KEY: "openvino"}, {CPU_BACKEND_METADATA_KEY: ":f32"}):
        assert recorded_backend(bad) is None


def _qdq_graph(art, dst):
    """The TensorRT Q/DQ graph of the tiny BERT, every MatMul with a constant weight in int8 (MinMax ranges)."""
    from calibration import CalibrationData
    from optimize.int8_build import calibrate_ranges, quantize_static_cached
    from optimize.qdq_graph import ensure_node_names, quantizable_nodes
    from zoo.spec import load_spec

    m = onnx.load(str(art / "fp32.sim.onnx"))
    ensure_node_names(m)
    named = dst.parent / "named.onnx"
    onnx.save(m, str(named))
    spec = load_spec(art / "fp32.sim.onnx")
    calib = CalibrationData.from_arrays(spec.example_inputs({"batch": 32, "sequence": 16}, seed=3), batch_size=16)
    ranges, _ = calibrate_ranges(named, calib, "MinMax")
    quantize_static_cached(named, dst, ranges, "MinMax", [n.name for n in quantizable_nodes(m)], "trt")
    return named, spec


@needs_openvino
def test_openvino_form_is_judged_and_timed_on_openvino(tiny_bert_art, tmp_path):  # noqa: F811
    qdq = tmp_path / "qdq.onnx"
    named, spec = _qdq_graph(tiny_bert_art, qdq)
    opts = QuantOptions(cpu_candidates=("qdq_s8s8", "qdq_openvino"), bench_runs=3, threads=1, min_speedup=0.0,
                        cpu_judge="all")  # both judged, whichever is faster
    cands = build_cpu_candidates(named, {}, "MinMax", [], [], qdq, tmp_path, opts)
    assert set(cands) == {"qdq_s8s8", "qdq_openvino"}
    es = EvalSet({"input_ids": spec.example_inputs({"batch": 24, "sequence": 16}, seed=5)["input_ids"]})
    ref = ort_logits(named, es)
    feed = next(es.subset(1, 0).batches(1))
    budget = budget_for(None, "int8", min_cosine=0.0, min_top1_agreement=0.0)
    res = choose_cpu(named, cands, es, ref, feed, opts, budget)
    ov, ort_row = res["candidates"]["qdq_openvino"], res["candidates"]["qdq_s8s8"]
    assert (ov["backend"], ov["mode"]) == ("openvino", "f32") and (ort_row["backend"], ort_row["mode"]) == ORT_CPU
    assert ov["ran"] and ort_row["ran"], (ov, ort_row)
    # the same graph on two backends' int8 kernels: both close to fp32 (random logits: a loose bar), not identical
    assert ov["val"]["cosine_mean"] > 0.9 and ort_row["val"]["cosine_mean"] > 0.9
    assert ov["int8_weight_coverage"] == ort_row["int8_weight_coverage"] == 1.0
    # timed on its own backend next to fp32 on that backend, and against fp32 on ONNX Runtime (the pick's baseline)
    assert ov["latency_ms"] > 0 and res["fp32_other_backends_ms"]["openvino"] > 0
    assert ov["speedup_vs_fp32"] == pytest.approx(res["fp32_latency_ms"] / ov["latency_ms"], rel=1e-2)
    assert ov["speedup_vs_fp32_same_backend"] == pytest.approx(
        res["fp32_other_backends_ms"]["openvino"] / ov["latency_ms"], rel=1e-2)
    assert ort_row["speedup_vs_fp32_same_backend"] == ort_row["speedup_vs_fp32"]


@needs_openvino
def test_int8_cpu_artifact_opens_on_the_backend_it_was_chosen_on(tiny_bert_art, tmp_path, monkeypatch, caplog):  # noqa: F811
    import runtime.openvino_backend as ovb
    from runtime.loader import open_runner

    qdq = tmp_path / "qdq.onnx"
    _, spec = _qdq_graph(tiny_bert_art, qdq)
    dst = tmp_path / "int8.cpu.onnx"
    write_cpu_artifact(qdq, dst, "avx512_vnni", candidate_backend("qdq_openvino"))
    props = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    assert props[CPU_BACKEND_METADATA_KEY] == "openvino:f32" and props[ISA_METADATA_KEY] == "avx512_vnni"
    feed = spec.example_inputs({"batch": 2, "sequence": 16}, seed=1)
    with open_runner(dst, threads=1) as r:
        assert r.backend == "openvino" and r.precision_hint == "f32"
        out_ov = r.infer(feed)["logits"]
    with open_runner(dst, opt_level="all", threads=1) as r:  # an ONNX Runtime option asked for: ONNX Runtime
        assert r.backend == "onnxruntime"
        out_ort = r.infer(feed)["logits"]
    scale = float(np.abs(out_ort).max())
    assert np.abs(out_ov - out_ort).max() < 0.1 * scale  # the same int8 graph on two backends
    monkeypatch.setattr(ovb, "available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="edgeattn.runtime.loader"), open_runner(dst, threads=1) as r:
        assert r.backend == "onnxruntime"
    assert "chosen and verified on OpenVINO" in caplog.text and "not installed" in caplog.text
    # rewritten without a backend (an ONNX Runtime form), a stale stamp does not survive
    write_cpu_artifact(dst, dst, "avx512_vnni")
    props = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    assert CPU_BACKEND_METADATA_KEY not in props


def test_verify_and_bench_run_int8_cpu_on_the_recorded_backend(tmp_path, monkeypatch):
    import verify.plan as vp

    monkeypatch.setattr(vp, "openvino_available", lambda: True)
    (tmp_path / "manifest.json").write_text(json.dumps({"int8": {"cpu": {"method": "dynamic", "ort_opt_level": "all"}}}))
    assert vp.backend_plan(tmp_path, "int8.cpu.onnx") == [("onnxruntime", "all", "int8", vp.ROLE_ARTIFACT)]
    sec = {"method": "qdq_openvino", **backend_record("qdq_openvino")}
    (tmp_path / "manifest.json").write_text(json.dumps({"int8": {"cpu": sec}}))
    # gating where it was chosen, ONNX Runtime's kernels on the same file advisory
    assert vp.backend_plan(tmp_path, "int8.cpu.onnx") == [("openvino", "f32", "int8", vp.ROLE_ARTIFACT),
                                                          ("onnxruntime", "all", "int8", vp.ROLE_CPU_KERNELS)]


@needs_openvino
def test_openvino_session_is_called_like_an_onnxruntime_session(tiny_bert_art):  # noqa: F811
    from runtime.errors import BackendError
    from runtime.openvino_backend import openvino_session
    from zoo.spec import load_spec

    src = tiny_bert_art / "fp32.sim.onnx"
    feed = load_spec(src).example_inputs({"batch": 3, "sequence": 11}, seed=2)
    s = openvino_session(src, "f32", 1)
    out = s.run(None, feed)
    ref = ort_logits(src, EvalSet(feed))
    assert len(out) == 1 and out[0].shape == ref.shape
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    with pytest.raises(BackendError, match=r"got output names \['logits'\], expected None"):
        s.run(["logits"], feed)
    with pytest.raises(BackendError, match="precision_hint 'int4': unknown"):
        openvino_session(src, "int4", 1)


def test_attention_inputs_get_qdq_softmax_unsigned_the_rest_symmetric(tiny_bert_art, tmp_path):  # noqa: F811
    from calibration import CalibrationData
    from optimize.cpu_int8 import SOFTMAX_SCALE, quantize_attention_inputs
    from optimize.int8_build import QuantizeError, calibrate_ranges
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL

    qdq = tmp_path / "qdq.onnx"
    named, spec = _qdq_graph(tiny_bert_art, qdq)
    calib = CalibrationData.from_arrays(spec.example_inputs({"batch": 32, "sequence": 16}, seed=3), batch_size=16)
    ranges, _ = calibrate_ranges(named, calib, "MinMax")
    dst = tmp_path / "attn.onnx"
    assert quantize_attention_inputs(qdq, dst, ranges) == 8  # 2 layers x (Q, K^T, softmax, V)
    m = onnx.load(str(dst))
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    dqs = [n for n in m.graph.node if n.name.endswith(".attention_DQ")]
    assert len(dqs) == 8
    for dq in dqs:
        tensor = producer[dq.input[0]].input[0]  # DQ <- Q <- the attention input
        scale, zp = float(inits[dq.input[1]]), inits[dq.input[2]]
        if producer[tensor].op_type == "Softmax":
            assert zp.dtype == np.uint8 and zp == 0 and scale == pytest.approx(SOFTMAX_SCALE)
        else:
            assert zp.dtype == np.int8 and zp == 0 and scale == pytest.approx(ranges[tensor].scale)
    bmm = [n for n in m.graph.node if n.op_type == "MatMul" and all(i.endswith(".attention_dq") for i in n.input)]
    assert len(bmm) == 4  # both inputs of each attention BMM
    # its arithmetic (Q/DQ as float ops) stays close to fp32
    es = EvalSet({"input_ids": spec.example_inputs({"batch": 16, "sequence": 16}, seed=7)["input_ids"]})
    ref, out = ort_logits(named, es), ort_logits(dst, es, QDQ_REFERENCE_LEVEL)
    assert float(np.mean((out - ref) ** 2) / np.mean(ref ** 2)) < 0.05
    assert quantize_attention_inputs(dst, tmp_path / "again.onnx", ranges) == 0  # nothing left to quantise
    with pytest.raises(QuantizeError, match="has no calibrated range"):
        quantize_attention_inputs(qdq, tmp_path / "x.onnx", {})
