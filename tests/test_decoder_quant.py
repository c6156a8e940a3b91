"""FP16 / INT8 / engines for a decoder with KV cache (optimize.decoder_quant, verify.generation's teacher-forced
figures, optimize.engines' prefill and decode profiles), on test_generate's tiny random GPT-2 (2 layers, d=32), by
value: fp16 logits close to fp32 with the cache in float16 and a fully padded row finite, the int8 Q/DQ graph's
figures reproduced from the file at the reference level, weight-only int8 weights that dequantise to the fp32 ones,
the budget's verdict and its reasons, and a TensorRT-RTX engine with two profiles where tensorrt_rtx imports."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from test_generate import exported, onnx_path, texts, tiny_dir  # noqa: F401 - pytest fixtures

SMALL = dict(block=32, calib_tokens=1024, eval_tokens=4096, sweep_tokens=1024, bench_rounds=2, bench_new_tokens=8)


@pytest.fixture(scope="module")
def quantized(exported):  # noqa: F811
    """optimize.decoder_quant on the exported tiny decoder with small token budgets: (folder, sections)."""
    from optimize.decoder_quant import DecoderQuantOptions, quantize_decoder
    from optimize.int8_budget import QuantOptions

    _, art, _ = exported
    folder = art / "tiny_gpt2"
    return folder, quantize_decoder(folder, QuantOptions(threads=1), progress=False,
                                    dopts=DecoderQuantOptions(**SMALL))


def test_the_quantize_stage_routes_a_decoder_folder_to_the_decoder_path(exported, monkeypatch, tmp_path):  # noqa: F811
    import optimize.decoder_quant as dq
    from optimize.quantize import quantize_model

    _, art, _ = exported
    seen = []
    monkeypatch.setattr(dq, "quantize_decoder", lambda d, *a, **k: seen.append(d) or {"fp16": {"routed": True}})
    assert quantize_model(art / "tiny_gpt2")["fp16"] == {"routed": True} and seen == [art / "tiny_gpt2"]
    from zoo.tasks import task_of_dir

    (tmp_path / "spec.json").write_text(json.dumps({"task": "text_classification"}))
    assert task_of_dir(tmp_path).name == "text_classification"
    assert task_of_dir(art / "tiny_gpt2").name == "text_generation"


def _feed(folder, batch=3, seq=7, past=0, seed=3, dtype=np.float32):
    from runtime.generate import DecoderInfo, decoder_feed

    info = DecoderInfo.from_spec(json.loads((folder / "spec.json").read_text()))
    feed = decoder_feed(info, batch, seq, past, seed=seed)
    for n in info.past_inputs:
        feed[n] = feed[n].astype(dtype)
    return info, feed


# ---- figures and budget -------------------------------------------------------------------------------------------
def test_teacher_forced_figures_and_the_budget_say_what_missed():
    from judge.budget import Budget, passes, reasons
    from judge.teacher_forced import TeacherForced, teacher_forced_figures

    labels = np.array([[1, 2, 3, 4]])
    ref = TeacherForced(np.array([[1, 2, 0, 4]]), np.log(np.array([[2.0, 2.0, 2.0, 2.0]])))
    got = TeacherForced(np.array([[1, 2, 0, 0]]), np.log(np.array([[2.0, 2.0, 2.0, 4.0]])))
    f = teacher_forced_figures(ref, got, labels)
    assert f["top1_agreement"] == 0.75 and f["accuracy"] == 0.5 and f["reference_accuracy"] == 0.75
    assert f["accuracy_delta"] == pytest.approx(-25.0)
    assert f["reference_perplexity"] == pytest.approx(2.0)
    assert f["perplexity"] == pytest.approx(2.0 * 2 ** 0.25)  # exp(mean log) of (2, 2, 2, 4)
    assert f["perplexity_delta_pct"] == pytest.approx(100 * (2 ** 0.25 - 1))
    assert f["n_tokens"] == 4 and f["n_windows"] == 1 and f["accuracy_delta_ci95"] == [-25.0, -25.0]  # one window

    def budget(agree, drop, ppl):
        return Budget("int8", None, 0.99, agree, drop, "mean", ppl)

    why = reasons(f, budget(0.99, 0.5, 1.0), labelled=True)
    assert any("agreement 0.7500 < 0.99" in r for r in why)
    assert any("accuracy_delta -25.00 points (n 4 tokens" in r and "0.5-point budget" in r for r in why)
    assert any("perplexity +18.921 %, budget +1 %" in r for r in why)
    assert any("does not resolve on 4 tokens" in r and "needs >= 400 tokens" in r for r in why)  # 0.5 pts of 4
    assert passes(f, budget(0.5, 50, 20), labelled=True)  # 50 points and 50 % disagreement of 4 tokens: 2, resolves
    nan = TeacherForced(got.top1, np.array([[np.nan, 1.0, 1.0, 1.0]]))
    assert reasons(teacher_forced_figures(ref, nan, labels), budget(0.0, 100, 100), labelled=True) == [
        "1 NaN/Inf values in the output, expected none", "perplexity +inf %, budget +100 %"]


def test_residual_chain_and_folded_head(onnx_path, tmp_path):  # noqa: F811
    import onnx

    from optimize.decoder_quant import prepare, residual_adds
    from optimize.qdq_graph import quantizable_nodes

    m = onnx.load(str(onnx_path))
    chain = residual_adds(m)
    assert len(chain) == 1 + 2 * 2  # the embedding sum, then attention and MLP residual per layer
    ops = {n.name: n for n in m.graph.node}
    assert all(ops[c].op_type == "Add" for c in chain)
    assert sum(n.op_type == "LayerNormalization" and n.input[0] in {ops[c].output[0] for c in chain}
               for n in m.graph.node) == 5  # every LayerNorm reads the residual stream
    from optimize.fp16 import FP32_OPS, convert_fp16

    conv = convert_fp16(onnx_path, tmp_path / "r16.onnx", FP32_OPS, ["logits"], chain)  # the residual-sum tier
    r16 = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "r16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(r16.graph.value_info) + list(r16.graph.output)}
    outs = {n.name: n.output[0] for n in r16.graph.node}
    assert conv["node_block_list"] == chain and all(types[outs[c]] == onnx.TensorProto.FLOAT for c in chain)
    assert types["present.0.key"] == onnx.TensorProto.FLOAT16 and types["logits"] == onnx.TensorProto.FLOAT
    before = [n.name for n in quantizable_nodes(m)]
    info = prepare(onnx_path, tmp_path / "p.onnx")
    after = [n.name for n in quantizable_nodes(onnx.load(str(tmp_path / "p.onnx")))]
    assert info["folded_transposes"] == 1 and len(after) == len(before) + 1  # the tied LM head gets a constant


# ---- fp16 ---------------------------------------------------------------------------------------------------------
def test_fp16_decoder_is_close_to_fp32_with_a_float16_cache_and_a_padded_row_stays_finite(quantized):
    import onnx
    from onnx import numpy_helper

    from runtime.ort_backend import cpu_session

    folder, res = quantized
    sec = res["fp16"]
    assert sec["passed"], sec["reasons"]
    assert sec["padded_row"]["finite"] and sec["check"]["nonfinite"] == 0
    assert sec["check"]["top1_agreement"] >= 0.99 and abs(sec["check"]["perplexity_delta_pct"]) <= 0.1
    assert sec["io_types"]["past_key_values.0.key"] == "FLOAT16" and sec["io_types"]["logits"] == "FLOAT"
    m = onnx.load(str(folder / "fp16.onnx"))
    assert {"LayerNormalization", "Softmax"} <= {n.op_type for n in m.graph.node}
    for t in m.graph.initializer:  # the -1e4 mask survives: no -inf/inf constant (a -1e20 mask would be one)
        assert np.isfinite(numpy_helper.to_array(t).astype(np.float32)).all(), t.name

    info, feed = _feed(folder, past=4)
    f32 = cpu_session(folder / "fp32.onnx").run(None, feed)
    f16 = cpu_session(folder / "fp16.onnx", sec["ort_opt_level"]).run(
        None, {k: v.astype(np.float16) if k in info.past_inputs else v for k, v in feed.items()})
    mask = feed["attention_mask"][:, 4:].astype(bool)
    a, b = f32[0][mask], f16[0][mask].astype(np.float32)
    rms = float(np.sqrt(np.mean(a ** 2)))
    assert np.abs(a - b).max() < 0.02 * rms, (np.abs(a - b).max(), rms)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9

    feed16 = {k: v.astype(np.float16) if k in info.past_inputs else v for k, v in feed.items()}
    feed16["attention_mask"][1] = 0  # a row that sees nothing at all (past included)
    out = cpu_session(folder / "fp16.onnx", sec["ort_opt_level"]).run(None, feed16)
    assert all(np.isfinite(o.astype(np.float32)).all() for o in out)


# ---- int8 ---------------------------------------------------------------------------------------------------------
def test_int8_qdq_is_within_the_budget_or_says_why_and_its_figures_come_from_the_file(quantized):
    from optimize.decoder_quant import DecoderQuantOptions, _windows
    from optimize.qdq_rules import check_qdq_rules
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL
    from calibration.windows import ort_teacher_forced
    from judge.teacher_forced import teacher_forced_figures
    from zoo.spec import load_spec

    folder, res = quantized
    sec = res["int8"]
    q = sec["qdq"]
    assert q["rules_ok"] and check_qdq_rules(folder / "int8.qdq.onnx") == []
    assert q["counts"]["DequantizeLinear"] > 0
    if q["passed"]:
        assert q["val"]["top1_agreement"] >= sec["budget"]["min_top1_agreement"]
        assert q["val"]["perplexity_delta_pct"] <= sec["budget"]["max_ppl_increase_pct"]
    else:  # the reason names the figure and the budget
        assert q["miss"] and ("agreement" in q["miss"] or "perplexity" in q["miss"] or "points" in q["miss"])
    assert q["schemes"]["weight_only"]["int8_weight_coverage"] == 1.0
    assert q["schemes"]["weight_only"]["val"]["top1_agreement"] > 0.95
    # the verdict's figures, recomputed from the written file at the reference level (CPU-independent arithmetic)
    spec = load_spec(folder / "fp32.onnx")
    val = _windows(spec, folder, "val", SMALL["eval_tokens"], DecoderQuantOptions(**SMALL))
    ref = ort_teacher_forced(folder / "fp32.onnx", val, "all", 1)
    got = ort_teacher_forced(folder / "int8.qdq.onnx", val, QDQ_REFERENCE_LEVEL, 1)
    f = teacher_forced_figures(ref, got, val.inputs["labels"])
    assert f["top1_agreement"] == pytest.approx(q["val"]["top1_agreement"], abs=1e-6)
    cpu = sec["cpu"]
    assert cpu["method"] in ("fp32", "dynamic", "matmul_nbits8", "qdq_s8s8")
    assert (folder / "int8.cpu.onnx").is_file() == (cpu["method"] != "fp32")
    assert set(cpu["candidates"]) == {"dynamic", "matmul_nbits8", "qdq_s8s8"}
    assert all(r["latency_ms"] > 0 for r in cpu["candidates"].values() if r["ran"])


def test_weight_only_weights_dequantise_to_the_fp32_weights(onnx_path, tmp_path):  # noqa: F811
    import onnx
    from onnx import numpy_helper

    from optimize.decoder_quant import prepare, weight_only_qdq
    from optimize.qdq_graph import quantizable_nodes
    from optimize.qdq_rules import check_qdq_rules

    prepare(onnx_path, tmp_path / "p.onnx")
    src = onnx.load(str(tmp_path / "p.onnx"))
    nodes = quantizable_nodes(src)
    weight_only_qdq(tmp_path / "p.onnx", tmp_path / "wo.onnx", nodes)
    assert check_qdq_rules(tmp_path / "wo.onnx") == []
    w = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    q = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "wo.onnx")).graph.initializer}
    for nd in nodes:
        wq, s = q[f"{nd.weight}_wq"], q[f"{nd.weight}_wscale"]
        assert wq.dtype == np.int8 and s.shape == (w[nd.weight].shape[1],)  # per output channel of B[K, N]
        assert np.abs(wq.astype(np.float32) * s - w[nd.weight]).max() <= s.max() / 2 + 1e-7
        assert np.abs(wq).max() == 127


# ---- verify rows ------------------------------------------------------------------------------------------------
def test_precision_rows_report_teacher_forced_figures_and_the_matching_prefix(quantized, exported):  # noqa: F811
    from verify.generation import format_precision_row, precision_rows

    name, art, _ = exported
    rows = precision_rows(name, art, ("fp16", "int8", "int8.cpu"), n_prompts=4, max_new_tokens=6, batch=4,
                          threads=1, tf_tokens=2048, progress=False)  # fp16's 0.1 points resolve on 2000
    by = {r["precision"]: r for r in rows}
    assert by["fp16"]["passed"] and by["fp16"]["gating"] and not by["int8.cpu"]["gating"]
    assert by["int8"]["ort_opt_level"] == "disable"
    for r in rows:
        if r.get("skipped"):
            assert "int8.cpu.onnx" in r["skipped"]
            continue
        tf, g = r["teacher_forced"], r["generation"]
        assert tf["n_tokens"] == 2048 and 0.9 <= tf["top1_agreement"] <= 1.0
        assert 0 <= g["mean_matching_prefix"] <= 6 and g["prompts"] == 4
        assert g["identical"] <= 4 and (g["identical"] < 4 or g["mean_matching_prefix"] == g["mean_reference_length"])
        assert "teacher-forced agreement" in format_precision_row(name, r)


# ---- engines ------------------------------------------------------------------------------------------------------
def test_profile_rows_are_the_decoders_prefill_and_decode_or_one_for_other_models(exported):  # noqa: F811
    from optimize.engines import profile_rows
    from zoo.spec import load_spec

    _, art, _ = exported
    spec = load_spec(art / "tiny_gpt2" / "fp32.onnx")
    rows = dict(profile_rows(spec))
    assert list(rows) == ["prefill", "decode"]
    assert rows["prefill"]["min"]["past_key_values.0.key"] == (1, 2, 0, 16)  # an empty past
    assert rows["decode"]["max"]["input_ids"] == (32, 1)
    mx = rows["decode"]["max"]
    assert mx["attention_mask"][1] == mx["past_key_values.1.value"][2] + mx["input_ids"][1] == 64  # total = past + 1
    spec.preprocess.pop("profiles")
    assert [n for n, _ in profile_rows(spec)] == ["default"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
def test_rtx_engines_build_with_the_prefill_and_decode_profiles(quantized, tmp_path):
    from optimize.engines import build_engine
    from zoo.spec import load_spec

    folder, _ = quantized
    for src in ("fp32.onnx", "fp16.onnx", "int8.qdq.onnx"):
        spec = load_spec(folder / src)
        man = build_engine(folder / src, tmp_path / f"{src}.rtx.engine", spec, flavor="rtx")
        assert man["profile_names"] == ["prefill", "decode"] and len(man["profiles"]) == 2
        pre, dec = man["profiles"]
        assert pre["past_key_values.0.key"]["max"][2] == 0 and dec["input_ids"]["max"] == [32, 1]
        assert man["cli"].count("--minShapes=") == 2
        assert (tmp_path / f"{src}.rtx.engine").stat().st_size == man["engine_bytes"] > 0
