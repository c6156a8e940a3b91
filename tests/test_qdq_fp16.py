"""Mixed INT8/FP16 Q/DQ graphs for TensorRT (optimize.qdq_fp16, issue 20 item 3): the unquantised layers of
int8.qdq.onnx in float16, its Q/DQ scales float16, the TensorRT Q/DQ rules kept (optimize.qdq_rules), its outputs
those of the fp32 Q/DQ graph within the fp16 tolerance, and a TensorRT-RTX engine whose GEMMs outside Q/DQ are FP16."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from calibration import CalibrationData  # noqa: E402
from calibration.evalset import EvalSet  # noqa: E402
from judge.budget import budget_for, reasons  # noqa: E402
from judge.figures import figures  # noqa: E402
from optimize.fp16 import ort_logits  # noqa: E402
from optimize.int8_build import calibrate_ranges, quantize_static_cached  # noqa: E402
from optimize.qdq_fp16 import MIXED_NAME, mix_fp16, to_fp16_qdq  # noqa: E402
from optimize.qdq_graph import quantizable_nodes  # noqa: E402
from optimize.qdq_rules import FP16_SCALE_RANGE, check_qdq_rules  # noqa: E402
from runtime.ort_backend import QDQ_REFERENCE_LEVEL  # noqa: E402

MODELS = ("text_transformer", "attention_cnn")
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _feeds(spec, n: int, seed: int) -> dict[str, np.ndarray]:
    parts = [spec.example_inputs({"batch": 8}, seed=seed + i) for i in range(n // 8)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{name: (folder, spec)}: <folder>/{fp32.sim.onnx, q32.onnx (the fp32 Q/DQ graph, every weight layer int8),
    mixed.onnx (to_fp16_qdq of it), mixed.json (what to_fp16_qdq returned)}."""
    from export.onnx_export import export_model

    root = tmp_path_factory.mktemp("qdqfp16")
    out = {}
    for name in MODELS:
        built = tiny_model(name)
        d = root / name
        export_model(built, d / "fp32.onnx")
        shutil.copyfile(d / "fp32.onnx", d / "fp32.sim.onnx")
        src = d / "fp32.sim.onnx"
        nodes = [n.name for n in quantizable_nodes(onnx.load(str(src)))]
        ranges, _ = calibrate_ranges(src, CalibrationData.from_arrays(_feeds(built.spec, 32, 0), batch_size=8),
                                     "MinMax")
        quantize_static_cached(src, d / "q32.onnx", ranges, "MinMax", nodes, "trt")
        info = to_fp16_qdq(d / "q32.onnx", d / "mixed.onnx")
        (d / "mixed.json").write_text(json.dumps(info))
        out[name] = (d, built.spec)
    return out


def _types(model) -> dict[str, int]:
    m = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)
            + list(m.graph.output)}


@pytest.mark.parametrize("name", MODELS)
def test_mixed_graph_keeps_the_qdq_rules_with_fp16_scales(graphs, name):
    d, _ = graphs[name]
    info = json.loads((d / "mixed.json").read_text())
    q32, mixed = onnx.load(str(d / "q32.onnx")), onnx.load(str(d / "mixed.onnx"))
    assert check_qdq_rules(q32) == [] and check_qdq_rules(mixed) == [] and info["rule_violations"] == []
    n_qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q32.graph.node)
    assert n_qdq > 0 and info["scales"] == {"float16": n_qdq} and info["qdq_kept_fp32"] == {}
    assert info["opset"][1] >= 19 and info["opset"][0] < 19  # float16 Q/DQ need opset 19
    types = _types(mixed)
    inits = {t.name: t.data_type for t in mixed.graph.initializer}
    dq_out = set()
    for n in mixed.graph.node:
        if n.op_type == "DequantizeLinear":  # its output type is its scale's: float16 straight into the GEMM
            assert inits[n.input[1]] == FLOAT16 and types[n.output[0]] == FLOAT16, n.name
            dq_out.add(n.output[0])
        if n.op_type == "QuantizeLinear":
            assert types[n.input[0]] == FLOAT16 and inits[n.input[1]] == FLOAT16, n.name
    gemms = [n for n in mixed.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    quantised = [n for n in gemms if n.input[0] in dq_out and n.input[1] in dq_out]
    assert quantised and len(quantised) < len(gemms)  # the rest is what must now be FP16 (attention BMMs)
    for n in gemms:  # every GEMM, quantised or not, computes in float16
        assert types[n.output[0]] == FLOAT16, f"{n.op_type} {n.name}: {types[n.output[0]]}"
    for n in mixed.graph.node:  # the FP16 stage's block list: normalisation and softmax stay float32
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert types[n.output[0]] == FLOAT, n.name
    io = {v.name: v.type.tensor_type.elem_type for v in list(mixed.graph.input) + list(mixed.graph.output)}
    io32 = {v.name: v.type.tensor_type.elem_type for v in list(q32.graph.input) + list(q32.graph.output)}
    assert io == io32  # keep_io_types: a caller feeds and reads the same types
    assert {p.key for p in q32.metadata_props} <= {p.key for p in mixed.metadata_props}  # the spec travels


@pytest.mark.parametrize("name", MODELS)
def test_mixed_graph_matches_the_fp32_qdq_graph_within_fp16_tolerance(graphs, name):
    d, spec = graphs[name]
    es = EvalSet(_feeds(spec, 64, 100))
    q32 = ort_logits(d / "q32.onnx", es, QDQ_REFERENCE_LEVEL)
    mixed = ort_logits(d / "mixed.onnx", es, QDQ_REFERENCE_LEVEL)
    f = figures(q32, mixed)
    assert f["nonfinite"] == 0 and f["max_abs_diff"] > 0  # it really computed in float16
    assert reasons(f, budget_for(None, "fp16"), labelled=False) == [], f
    # and it is as close to the fp32 model as the fp32 Q/DQ graph is, within the fp16 bar
    fp32 = ort_logits(d / "fp32.sim.onnx", es, "all")
    assert figures(fp32, mixed)["cosine_min"] >= figures(fp32, q32)["cosine_min"] - (1 - 0.999)


def _set_scale(model, name: str, value: float) -> None:
    from onnx import numpy_helper

    t = next(t for t in model.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(t).copy()
    arr.flat[0] = value
    t.CopyFrom(numpy_helper.from_array(arr.astype(arr.dtype), name))


def test_fp16_scale_rules(graphs, tmp_path):
    """qdq_rules refuses a subnormal float16 scale and float16 Q/DQ below opset 19; to_fp16_qdq keeps a Q/DQ whose
    fp32 scale would be subnormal in float32 (Casts around it), and the result passes the rules."""
    d, _ = graphs["text_transformer"]
    mixed = onnx.load(str(d / "mixed.onnx"))
    inits = {t.name for t in mixed.graph.initializer}
    w_dq = next(n for n in mixed.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    bad = onnx.ModelProto()
    bad.CopyFrom(mixed)
    _set_scale(bad, w_dq.input[1], 1e-6)  # a float16 subnormal
    errs = check_qdq_rules(bad)
    assert len(errs) == 1 and f"float16 scale '{w_dq.input[1]}'" in errs[0] and "normal float16 range" in errs[0]
    old = onnx.ModelProto()
    old.CopyFrom(mixed)
    next(o for o in old.opset_import if o.domain in ("", "ai.onnx")).version = 18
    errs = check_qdq_rules(old)
    assert errs and all("expected opset >= 19" in e for e in errs)

    q32 = onnx.load(str(d / "q32.onnx"))
    _set_scale(q32, w_dq.input[1], FP16_SCALE_RANGE[0] / 4)  # fine in float32, subnormal in float16
    src = tmp_path / "q32_tiny_scale.onnx"
    onnx.save(q32, str(src))
    assert check_qdq_rules(src) == []
    info = to_fp16_qdq(src, tmp_path / "mixed.onnx")
    assert list(info["qdq_kept_fp32"]) == [w_dq.name] and "normal float16 range" in info["qdq_kept_fp32"][w_dq.name]
    total = sum(info["scales"].values())
    assert info["scales"] == {"float": 1, "float16": total - 1} and info["rule_violations"] == []
    out = onnx.load(str(tmp_path / "mixed.onnx"))
    types = _types(out)
    kept = next(n for n in out.graph.node if n.name == w_dq.name)
    assert types[kept.output[0]] == FLOAT  # float32 DQ, then a Cast into the float16 GEMM
    assert any(n.op_type == "Cast" and n.input[0] == kept.output[0] for n in out.graph.node)


def test_mix_fp16_judges_with_the_budget_and_falls_back(graphs, tmp_path):
    """build_int8's call: the mixed graph when it passes the budget (judged as the fp32 Q/DQ graph is), else the fp32
    Q/DQ graph with the reason; off: the fp32 Q/DQ graph."""
    d, spec = graphs["text_transformer"]
    es = EvalSet(_feeds(spec, 32, 200))
    ref = ort_logits(d / "fp32.sim.onnx", es, "all")
    q32 = d / "q32.onnx"
    loose = budget_for(None, "int8", min_top1_agreement=0.0, min_cosine=0.9)
    work = tmp_path / "w"
    work.mkdir()
    path, rec = mix_fp16(q32, work, tmp_path, es, ref, loose)
    assert path == work / MIXED_NAME and rec["used"] is True and rec["rule_violations"] == []
    assert rec["val"]["n_samples"] == 32 and rec["val"]["cosine_mean"] >= 0.9
    got = ort_logits(path, es, QDQ_REFERENCE_LEVEL)
    assert rec["val"]["cosine_min"] == pytest.approx(figures(ref, got)["cosine_min"], abs=1e-6)

    strict = budget_for(None, "int8", min_top1_agreement=0.0, min_cosine=1.0)  # no float16 graph reaches 1.0
    path, rec = mix_fp16(q32, work, tmp_path, es, ref, strict)
    assert path == q32 and rec["used"] is False
    assert rec["why"].startswith("outside the budget: ") and "cosine" in rec["why"] and "< 1" in rec["why"]

    path, rec = mix_fp16(q32, work, tmp_path, es, ref, loose, enabled=False)
    assert path == q32 and rec["used"] is False and "QuantOptions.fp16_mix" in rec["why"]


def test_mix_fp16_takes_the_fp16_stage_block_list_and_safe_ort_level(graphs, tmp_path):
    """The FP16 stage's tier for the model (manifest fp16.op_block_list) is the mixed graph's block list, and the ONNX
    Runtime level it recorded as safe travels into the file (runtime.ort_backend.ORT_LEVEL_KEY)."""
    from optimize.fp16 import FP32_OPS, FP32_OPS_WIDE
    from runtime.ort_backend import ORT_LEVEL_KEY
    from zoo.io import update_manifest

    d, spec = graphs["text_transformer"]
    es = EvalSet(_feeds(spec, 16, 300))
    ref = ort_logits(d / "fp32.sim.onnx", es, "all")
    loose = budget_for(None, "int8", min_top1_agreement=0.0, min_cosine=0.9)
    _, rec = mix_fp16(d / "q32.onnx", tmp_path, tmp_path, es, ref, loose)  # no manifest: the default tier
    assert rec["op_block_list"] == list(FP32_OPS) and "ort_opt_level" not in rec and "Erf" not in FP32_OPS
    update_manifest(tmp_path, "fp16", {"op_block_list": list(FP32_OPS_WIDE), "ort_opt_level": "extended"})
    path, rec = mix_fp16(d / "q32.onnx", tmp_path, tmp_path, es, ref, loose)
    assert rec["used"] and rec["op_block_list"] == list(FP32_OPS_WIDE) and "manifest" in rec["block_list_from"]
    m = onnx.load(str(path))
    assert {p.key: p.value for p in m.metadata_props}[ORT_LEVEL_KEY] == "extended"
    erf = [n for n in m.graph.node if n.op_type == "Erf"]
    assert erf and all(_types(m)[n.output[0]] == FLOAT for n in erf)  # the wide tier keeps GELU's Erf float32


@pytest.mark.parametrize("name", MODELS)
def test_tensorrt_rtx_builds_the_mixed_graph_with_fp16_gemms(graphs, tmp_path, name):
    """Before (fp32 Q/DQ): the GEMMs outside Q/DQ build in FP32 and the build warns; after (mixed): every GEMM is INT8
    or FP16, as many INT8 as before, and no warning."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")
    from optimize.engines import build_engine

    d, spec = graphs[name]
    before = build_engine(d / "q32.onnx", tmp_path / "int8.before.rtx.engine", spec, flavor="rtx", precision="int8")
    after = build_engine(d / "mixed.onnx", tmp_path / "int8.after.rtx.engine", spec, flavor="rtx", precision="int8")
    gb, ga = before["layers"]["gemm_conv"], after["layers"]["gemm_conv"]
    assert gb.get("int8", 0) > 0 and gb.get("float32", 0) > 0 and "float16" not in gb, gb
    assert ga.get("float32", 0) == 0 and ga["int8"] == gb["int8"] and ga["float16"] == gb["float32"], ga
    assert any("not quantised and compute in FP32" in w for w in before["warnings"])
    assert not any("not quantised" in w for w in after["warnings"])
    assert after["layers"]["strongly_typed"] is True and after["builder"]["precision_flags"] == []

