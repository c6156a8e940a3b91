"""FP16 / INT8 / engines for a decoder with KV cache (optimize.decoder_quant, verify.generation's teacher-forced
figures, optimize.engines' prefill and decode profiles), on test_generate's tiny random GPT-2 (2 layers, d=32), by
value: fp16 logits close to fp32 with the cache in float16 and a fully padded row finite, the int8 Q/DQ graph's
figures reproduced from the file at the reference level, weight-only int8 weights that dequantise to the fp32 ones,
the budget's verdict and its reasons, and a TensorRT-RTX engine with two profiles where tensorrt_rtx imports."""
from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

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
    forms = sec["cpu_forms"]
    assert sec["cpu"] == forms["int8.cpu"] and set(forms) == {"int8.cpu", "int4.cpu"}
    cands = {k: r for f in forms.values() for k, r in f["candidates"].items()}
    nbits = {k: v for f in forms.values() for k, v in f["nbits"].items()}
    for form, cpu in forms.items():  # one file per weight width, each written when one of its forms won
        file = {"int8.cpu": "int8.cpu.onnx", "int4.cpu": "int4.cpu.onnx"}[form]
        assert cpu["method"] in ("fp32", *cpu["candidates"]) and cpu["weight_bits"] == (8 if form == "int8.cpu" else 4)
        assert (folder / file).is_file() == (cpu["method"] != "fp32") == (sec["artifacts"][form] == file)
        assert (cpu["file"] in sec["files_sha256"]) == (cpu["method"] != "fp32") and cpu["kv_cache"]["type"] == "float32"
        assert all(nb["bits"] == cpu["weight_bits"] for nb in cpu["nbits"].values())
        if cpu["method"] != "fp32":
            from optimize.nbits import nbits_summary

            s = nbits_summary(folder / file)
            assert s["bits"] in ([cpu["weight_bits"]], [4, 8], []) and cpu["candidates"][cpu["method"]]["passed"]
            assert (4 in s["bits"]) == (form == "int4.cpu")  # a 4-bit form's head may be 8-bit
    assert set(forms["int4.cpu"]["candidates"]) <= {"nbits4", "nbits4_head_fp32"}
    assert {"dynamic", "nbits8", "nbits4", "qdq_s8s8"} <= set(cands)
    assert set(cands) - {"dynamic", "qdq_s8s8"} == set(nbits)  # + any <form>_head_fp32
    assert all(r["latency_ms"] > 0 for r in cands.values() if r["ran"])
    n = len(q["quantized_nodes"]) + len(q["excluded_nodes"]) if q["scheme"] == "w8a8" else 9
    assert q["full_evaluations"] <= 2 + int(np.ceil(np.log2(n)))  # bisection, not one evaluation per node
    for name, nb in nbits.items():
        head_quantized = not nb["lm_head_float"] and "node_linear" not in nb["kept_float"]  # the tied head
        body = nb["graph"]["nodes"] - head_quantized  # body nodes at the form's width, the head at head_bits
        assert nb["graph"]["accuracy_levels"] == [4] and nb["graph"]["bits"] == sorted(
            ({nb["bits"]} if body else set()) | ({nb["scheme"]["head_bits"]} if head_quantized else set())), name
        assert nb["graph"]["nodes"] + nb["graph"]["float_matmuls"] == 9  # 4 per layer + the LM head
        assert len(nb["kept_float"]) == nb["graph"]["float_matmuls"] and nb["full_evaluations"] <= 2 + 4
        row = cands[name]
        assert row["int8_weight_coverage"] > 0 and (row["passed"] == (nb["passed"] and row[
            "int8_weight_coverage"] >= 0.5))


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
    from judge.budget import budget_for
    from verify.generation import format_precision_row, precision_rows

    name, art, _ = exported
    rows = precision_rows(name, art, ("fp16", "int8", "int8.cpu", "int4.cpu"), n_prompts=4, max_new_tokens=6, batch=4,
                          threads=1, tf_tokens=2048, progress=False)  # fp16's 0.1 points resolve on 2000
    by = {r["precision"]: r for r in rows}
    assert by["fp16"]["passed"] and by["fp16"]["gating"] and not by["int8.cpu"]["gating"] | by["int4.cpu"]["gating"]
    assert by["int4.cpu"]["artifact"] == "int4.cpu.onnx"
    assert by["int4.cpu"]["budget"] == budget_for(None, "int4").to_dict()  # each width's own budget, as quantize's
    assert by["int8.cpu"]["budget"] == budget_for(None, "int8").to_dict()
    assert by["int8"]["ort_opt_level"] == "disable"
    for r in rows:
        if r.get("skipped"):
            assert r["precision"] in ("int8.cpu", "int4.cpu") and r["artifact"] in r["skipped"]
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


# ---- weight-only MatMulNBits (optimize.nbits) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nbits_graphs(onnx_path, tmp_path_factory):  # noqa: F811
    """The prepared tiny decoder and its 8-bit and 4-bit MatMulNBits forms (block 32, accuracy level 4)."""
    import onnx

    from optimize.decoder_quant import prepare
    from optimize.nbits import matmul_nbits
    from optimize.qdq_graph import quantizable_nodes

    d = tmp_path_factory.mktemp("nbits")
    prepare(onnx_path, d / "p.onnx")
    nodes = quantizable_nodes(onnx.load(str(d / "p.onnx")))
    out = {bits: (d / f"nb{bits}.onnx", matmul_nbits(d / "p.onnx", d / f"nb{bits}.onnx", bits, 32)) for bits in (8, 4)}
    return d / "p.onnx", nodes, out


def test_nbits_graphs_hold_every_weight_at_the_integer_accuracy_level(nbits_graphs, tmp_path):
    import onnx
    from onnx import helper

    from optimize.nbits import lm_head, matmul_nbits, weight_coverage
    from optimize.qdq_graph import quantizable_weight_elements

    prepared, nodes, graphs = nbits_graphs
    src = onnx.load(str(prepared))
    assert len(nodes) == 9 and {n.op_type for n in nodes} == {"Gemm", "MatMul"}  # 4 Gemms per layer, tied head
    total = quantizable_weight_elements(src)
    for bits, (path, summary) in graphs.items():
        m = onnx.load(str(path))
        nb = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
        assert len(nb) == 9 and not any(n.op_type == "Gemm" for n in m.graph.node)  # Gemm rewritten, then packed
        attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nb]
        assert all(a["accuracy_level"] == 4 and a["bits"] == bits and a["block_size"] == 32 for a in attrs)
        assert {n.name for n in nb} == {n.name for n in nodes}  # the MatMuls' names kept
        assert summary == {"nodes": 9, "bits": [bits], "block_sizes": [32], "accuracy_levels": [4],
                           "weight_elements": total, "float_matmuls": 0, "symmetric": True, "clip": False,
                           "importance": False, "tied_weights_shared": 0}
        assert weight_coverage(path, total) == 1.0  # 4-bit packs two per byte: K x N counted, not bytes
    head = lm_head(src, nodes)
    assert head == nodes[-1].name and next(n for n in src.graph.node if n.name == head).output[0] == "logits"
    s = matmul_nbits(prepared, tmp_path / "nohead.onnx", 4, 32, exclude=[head])
    assert s["nodes"] == 8 and s["float_matmuls"] == 1 and s["accuracy_levels"] == [4]
    assert 0.0 < weight_coverage(tmp_path / "nohead.onnx", total) < 1.0


def test_nbits_weights_unpack_to_the_fp32_weights_within_one_step(nbits_graphs):
    import onnx

    from optimize.layer_error import float_weight
    from optimize.nbits import dequantized_weights

    prepared, nodes, graphs = nbits_graphs
    src = onnx.load(str(prepared))
    for bits, (path, _) in graphs.items():
        wq = dequantized_weights(path)
        for nd in nodes:
            w = float_weight(src, nd)  # (K, N)
            blocks = w.reshape(-1, 32, w.shape[1])  # block 32 along K
            step = np.abs(blocks).max(axis=1, keepdims=True) / (2 ** (bits - 1) - 1)  # symmetric: >= amax / qmax
            err = np.abs(wq[nd.name].reshape(blocks.shape) - blocks)
            assert (err <= step * (1 + 1e-3) + 1e-7).all(), (bits, nd.name, float((err / step).max()))
            assert err.max() > 0.1 * step.min()  # really quantised (ONNX Runtime's rounding: within one step)


def test_nbits_decode_is_close_to_fp32(nbits_graphs, quantized):
    """Prefill with a past and one decode step: 8-bit and 4-bit logits and cache against fp32 (a random tiny model
    with wide weights: 8-bit measured 0.11 x RMS worst, cosine 0.9995; 4-bit 0.99 x RMS, cosine 0.964; at level 4
    activations are int8 too, on a CPU without the integer kernels the error is smaller)."""
    from runtime.ort_backend import cpu_session

    folder, _ = quantized
    prepared, _, graphs = nbits_graphs
    info, feed = _feed(folder, past=4)
    mask = feed["attention_mask"][:, 4:].astype(bool)
    ref = cpu_session(prepared).run(None, feed)
    a = ref[0][mask]
    rms = float(np.sqrt(np.mean(a ** 2)))
    worst = {}
    for bits, (path, _) in graphs.items():
        out = cpu_session(path).run(None, feed)
        b = out[0][mask]
        worst[bits] = float(np.abs(a - b).max() / rms)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > (0.998 if bits == 8 else 0.9), (bits, cos.min())
        assert (a.argmax(1) == b.argmax(1)).mean() >= (0.9 if bits == 8 else 0.4), bits
        cache = max(float(np.sqrt(np.mean((r - o) ** 2) / np.mean(r ** 2))) for r, o in zip(ref[1:], out[1:]))
        assert cache < (0.03 if bits == 8 else 0.3), (bits, cache)  # the cache too: relative RMS error
    assert worst[8] < 0.2 and worst[4] < 2 and worst[8] < worst[4], worst


# ---- one-pass sensitivity and bisection ------------------------------------------------------------------------------
def test_bisection_finds_the_exhaustive_cut_in_log_evaluations():
    """A synthetic sensitivity with a known answer: n nodes, each adding a known error; the budget passes when the
    error of the nodes still quantised is within it. The bisection finds the exhaustive scan's cut, calling the
    verdict at most 2 + ceil(log2 n) times."""
    from optimize.int8_budget import bisect_cut

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 49, 200):
        errors = np.sort(rng.exponential(size=n))[::-1]  # ranked: most harmful first
        left = np.concatenate([np.cumsum(errors[::-1])[::-1], [0.0]])  # left[k]: k most harmful kept float
        for budget in (left[0] + 1, left[0] * 0.5, left[min(n, 3)] + 1e-9, left[n - 1] * 0.99, -1.0):
            calls = []

            def within(k):
                calls.append(k)
                return left[k] <= budget

            exhaustive = next((k for k in range(n) if left[k] <= budget), None)
            cut, seen = bisect_cut(n - 1, within)
            assert cut == exhaustive, (n, budget, cut, exhaustive)
            assert seen == calls and len(calls) <= 2 + int(np.ceil(np.log2(max(n, 2)))), (n, len(calls))
    calls = []
    assert bisect_cut(48, lambda k: calls.append(k) or k >= 17) == (17, calls) and len(calls) <= 8


def test_one_pass_sensitivity_ranks_the_harmful_node_first_and_the_search_keeps_it_float(tmp_path):
    """test_quantize's outlier MLP (gemm2's input range is set by a constant 500): one pass over cached activations
    ranks gemm2 first, and budget_search with that ranking keeps it float after 1 + 2 full evaluations."""
    import onnx

    from optimize.int8_budget import QuantOptions, budget_search, evaluate_inprocess
    from optimize.layer_error import float_weight, layer_errors, per_channel_int8, per_tensor_int8
    from optimize.qdq_graph import quantizable_nodes
    from test_quantize import outlier_mlp_case

    src, ranges, es, ref = outlier_mlp_case(tmp_path)
    m = onnx.load(str(src))
    nodes = quantizable_nodes(m)
    first = {n.name: n.input[0] for n in m.graph.node}
    wq = {nd.name: per_channel_int8(float_weight(m, nd)) for nd in nodes}
    act = {nd.name: per_tensor_int8(ranges[first[nd.name]].amax) for nd in nodes}
    feeds = [{"x": es.inputs["x"][i:i + 100]} for i in range(0, 400, 100)]
    rows = layer_errors(src, nodes, wq, feeds, act, threads=1)
    assert [r["node"] for r in rows][0] == "gemm2" and rows[0]["output_rel_mse"] > 10 * rows[1]["output_rel_mse"]
    # the score is the node's own output error: recomputed directly for gemm3 (weight only, float activations)
    x3 = np.maximum(np.maximum(es.inputs["x"] @ float_weight(m, nodes[0]) + np.where(np.arange(32) == 31, 500, 0),
                               0) @ float_weight(m, nodes[1]), 0)
    w3 = float_weight(m, nodes[2])
    direct = np.square(x3 @ wq["gemm3"] - x3 @ w3).sum() / np.square(x3 @ w3).sum()
    alone = layer_errors(src, nodes[2:], {"gemm3": wq["gemm3"]}, feeds, None, threads=1)
    assert alone[0]["output_rel_mse"] == pytest.approx(direct, rel=1e-3)

    calls = []

    def evaluate(path, es_, ref_, threads):
        calls.append(path)
        return evaluate_inprocess(path, es_, ref_, threads)

    res = budget_search(src, ranges, "MinMax", nodes, es, ref, es, ref, QuantOptions(max_drop=2.0, min_agreement=0.97,
                        threads=1), tmp_path, progress=False, evaluate=evaluate, rank=lambda: rows)
    assert res["passed"] and res["quantized"] == ["gemm1", "gemm3"] and res["sensitivity"] is rows
    assert [e["node"] for e in res["excluded"]] == ["gemm2"] and res["excluded"][0]["recovered_points"] > 5
    assert len(calls) == res["full_evaluations"] == 3  # all int8, then the cut by bisection (k = 2, then k = 1)


def test_the_lm_head_float_search_runs_only_where_it_can_find_something(nbits_graphs, monkeypatch, tmp_path):
    """nbits_forms: 8-bit passed with every node quantised -> no head-float search; 4-bit needed two nodes float
    but not the head -> the head-float search runs (same ranking list handed on); a search that kept only the head
    float -> none; the head and another -> it runs. Each width searched under its own budget and scheme (4-bit: the
    head at 8 bits by default)."""
    import optimize.decoder_quant as dq
    from optimize.int8_budget import QuantOptions

    prepared, nodes, _ = nbits_graphs
    head = nodes[-1].name
    calls = []
    kept = {(8, False): [], (4, False): [nodes[0].name, nodes[1].name], (4, True): [head]}

    def fake(prepared_, bits, nodes_, fixed, ranked, windows, ref, budget, feeds, work, opts_, dopts, scheme):
        calls.append((bits, list(fixed), id(ranked)))
        assert budget.precision == {8: "int8", 4: "int4"}[bits]  # each width searched under its own budget
        assert (scheme["head"], scheme["head_bits"], scheme["block_size"]) == (head, {8: 8, 4: 8}[bits], 32)
        k = kept.get((bits, bool(fixed)), [*fixed])
        return {"passed": True, "kept_float": k, "file": None, "figures": None}

    monkeypatch.setattr(dq, "search_nbits", fake)
    opts = QuantOptions(threads=1)
    budgets = dq.cpu_form_budgets(None, opts)
    out = dq.nbits_forms(prepared, nodes, None, None, budgets, None, tmp_path, opts, dq.DecoderQuantOptions())
    assert sorted(out) == ["nbits4", "nbits4_head_fp32", "nbits8"]
    assert [(b, f) for b, f, _ in calls] == [(8, []), (4, []), (4, [head])]
    assert calls[1][2] == calls[2][2]  # one ranking per bit width, shared by its two searches
    kept[(4, False)] = [head]  # the head alone kept float: the head-float search would build the same graph
    calls.clear()
    out = dq.nbits_forms(prepared, nodes, None, None, budgets, None, tmp_path, opts, dq.DecoderQuantOptions())
    assert sorted(out) == ["nbits4", "nbits8"] and len(calls) == 2
    kept[(4, False)] = [head, nodes[0].name]  # the head and more: starting from the head float may need fewer
    calls.clear()
    out = dq.nbits_forms(prepared, nodes, None, None, budgets, None, tmp_path, opts, dq.DecoderQuantOptions())
    assert sorted(out) == ["nbits4", "nbits4_head_fp32", "nbits8"] and len(calls) == 3


# ---- the KV cache in float16 (optimize.kv_cache) and its judge (calibration.windows.ort_teacher_forced_cached) -----
def test_a_float16_cache_graph_rounds_only_the_cache_and_the_cached_figures_see_it(exported, tmp_path):  # noqa: F811
    """narrow_cache: the past/present I/O declared float16 with one Cast at each; prefill logits equal fp32's (the
    cache is only rounded on its way out), the cached half-window evaluation reads the rounded cache (figures close
    to fp32, not identical), a float32 graph's cached evaluation equals its one-prefill one, and the runtime's greedy
    decode feeds the past as float16 and stays close to fp32's logits."""
    import onnx

    from calibration.windows import ort_teacher_forced, ort_teacher_forced_cached
    from judge.teacher_forced import teacher_forced_figures
    from optimize.decoder_quant import DecoderQuantOptions, _windows
    from optimize.int8_build import QuantizeError
    from optimize.kv_cache import cache_type, narrow_cache
    from runtime.generate import DecoderInfo, TextGenerator
    from zoo.spec import load_spec

    _, art, _ = exported
    folder = art / "tiny_gpt2"
    src = folder / "fp32.onnx"
    spec = load_spec(src)
    info = DecoderInfo.from_spec(spec.to_dict(), "tiny")
    dst = tmp_path / "fp32.kv16.onnx"
    (tmp_path / "spec.json").write_text((folder / "spec.json").read_text())
    res = narrow_cache(src, dst, info.past_inputs, info.present_outputs)
    assert res["casts"] == 2 * len(info.past_inputs) == 8 and cache_type(dst, info.past_inputs) == "float16"
    m = onnx.load(str(dst))
    assert {o.name: o.type.tensor_type.elem_type for o in m.graph.output}["logits"] == onnx.TensorProto.FLOAT
    with pytest.raises(QuantizeError, match="not float32"):
        narrow_cache(dst, tmp_path / "twice.onnx", info.past_inputs, info.present_outputs)

    val = _windows(spec, folder, "val", 1024, DecoderQuantOptions(**SMALL))
    labels = val.inputs["labels"]
    one = ort_teacher_forced(src, val, "all", 1)
    two = ort_teacher_forced_cached(src, val, "all", 1)
    same = teacher_forced_figures(one, two, labels)
    assert same["top1_agreement"] == 1.0 and abs(same["perplexity_delta_pct"]) < 1e-3
    pre16 = teacher_forced_figures(one, ort_teacher_forced(dst, val, "all", 1), labels)
    assert pre16["top1_agreement"] == 1.0 and abs(pre16["perplexity_delta_pct"]) < 1e-4  # prefill: no cache read
    got = teacher_forced_figures(two, ort_teacher_forced_cached(dst, val, "all", 1), labels)
    assert got["nll_rel_mse"] > 0 and got["top1_agreement"] > 0.97 and abs(got["perplexity_delta_pct"]) < 0.5

    with TextGenerator(src, threads=1) as g32, TextGenerator(dst, threads=1) as g16:
        assert g16.decoder.cache_dtype == np.float16 and g32.decoder.cache_dtype == np.float32
        a = g32.generate([[5, 6, 7]], max_new_tokens=6, output_logits=True, decode=False)[0]
        b = g16.generate([[5, 6, 7]], max_new_tokens=6, output_logits=True, decode=False)[0]
    rms = float(np.sqrt(np.mean(a.logits ** 2)))
    assert np.abs(a.logits[: len(b.logits)] - b.logits[: len(a.logits)]).max() < 0.02 * rms


def test_float16_cache_forms_are_judged_through_the_cache_and_kept_only_within_the_budget(exported, tmp_path):  # noqa: F811
    """narrow_forms on a 4-bit MatMulNBits graph: the float16-cache form's figures (cached teacher-forced, vs fp32's
    cached figures) sit beside the float32-cache form's and close to them; a loose budget keeps it (its file has a
    float16 cache), a budget that wants perfect agreement refuses it with the figure in the reason."""
    from judge.budget import budget_for, reasons
    from optimize.decoder_quant import DecoderQuantOptions, _windows, narrow_forms
    from optimize.int8_budget import QuantOptions
    from optimize.kv_cache import cache_type
    from optimize.nbits import matmul_nbits
    from runtime.generate import DecoderInfo
    from zoo.spec import load_spec

    _, art, _ = exported
    folder = art / "tiny_gpt2"
    spec = load_spec(folder / "fp32.onnx")
    info = DecoderInfo.from_spec(spec.to_dict(), "tiny")
    (tmp_path / "spec.json").write_text((folder / "spec.json").read_text())
    nb4 = tmp_path / "nb4.onnx"
    matmul_nbits(folder / "fp32.onnx", nb4, 4, 32)
    dopts = DecoderQuantOptions(**{**SMALL, "bench_rounds": 1, "bench_new_tokens": 4}, kv_cache="float16")
    val = _windows(spec, folder, "val", 1024, dopts)
    loose = budget_for(spec.tolerances, "int8", max_drop_points=100.0, min_top1_agreement=0.0,
                       max_ppl_increase_pct=1e9)
    out = narrow_forms(folder / "fp32.onnx", {"int4.cpu": nb4}, spec, val, {"int4.cpu": loose}, tmp_path,
                       QuantOptions(threads=1),
                       dopts)["int4.cpu"]
    assert out["type"] == "float16" and out["reasons"] == [] and cache_type(out["file"], info.past_inputs) == "float16"
    a, b = out["val"], out["float32_cache_val"]
    assert a["n_tokens"] == b["n_tokens"] == val.inputs["labels"].size and a["top1_agreement"] < 1.0
    assert abs(a["top1_agreement"] - b["top1_agreement"]) < 0.02 and set(out["tokens_per_s"]) == {"float32", "float16"}
    strict = budget_for(spec.tolerances, "int8", min_top1_agreement=1.0)
    assert any("agreement" in r for r in reasons(a, strict, True))


def test_cpu_forms_have_one_file_per_weight_width_and_the_cache_option_is_checked():
    from optimize.decoder_quant import DecoderQuantOptions, form_bits
    from optimize.int8_build import QuantizeError
    from pipeline.artifacts import CPU_WEIGHT_FORMS, PRECISION_FILES, cpu_form_for_bits
    from runtime.errors import InputError
    from runtime.modelspec import precision_of

    assert [form_bits(k) for k in ("dynamic", "qdq_s8s8", "nbits8", "nbits8_head_fp32", "nbits4",
                                   "nbits4_head_fp32")] == [8, 8, 8, 8, 4, 4]
    assert {k: v.file for k, v in CPU_WEIGHT_FORMS.items()} == {"int8.cpu": "int8.cpu.onnx", "int4.cpu": "int4.cpu.onnx"}
    assert cpu_form_for_bits(4) == "int4.cpu" and cpu_form_for_bits(8) == "int8.cpu"
    assert [precision_of(v.file) for v in PRECISION_FILES.values()] == ["fp16", "int8", "int8", "int4"]
    with pytest.raises(InputError, match="got 2 bits"):
        cpu_form_for_bits(2)
    with pytest.raises(QuantizeError, match="got 'int8', expected one of"):
        DecoderQuantOptions(kv_cache="int8")
    d = DecoderQuantOptions()  # the defaults the manifest records per form (module docstring: why these)
    assert d.nbits_scheme(8) == {"block_size": 32, "symmetric": True, "clip": False, "awq": False, "head_bits": 8}
    assert d.nbits_scheme(4) == {"block_size": 32, "symmetric": False, "clip": False, "awq": False, "head_bits": 8}
    assert DecoderQuantOptions(nbits4_block=16, nbits_awq=True).nbits_scheme(4)["block_size"] == 16
    assert not DecoderQuantOptions(nbits_awq=True).nbits_scheme(8)["awq"]  # AWQ is a 4-bit option
    with pytest.raises(QuantizeError, match="nbits4_head_bits: got 2, expected 4 or 8"):
        DecoderQuantOptions(nbits4_head_bits=2)


# ---- the int4 budget: its own bars, the same in quantize and verify ----------------------------------------------
def test_each_cpu_width_is_judged_by_its_own_budget_the_one_verify_reads(monkeypatch, tmp_path):
    """choose_decoder_cpu on two forms with the SAME figures (agreement 0.96, -0.8 points, perplexity +3 %): the 8-bit
    one misses the int8 budget, the 4-bit one is within the int4 budget and becomes int4.cpu.onnx; each row's
    reasons are what verify.generation's budget (pipeline.artifacts' tolerance key through judge.budget.budget_for)
    says of the same figures. A spec written before the int4 tolerance existed gets the default int4 bars; the
    stage's --max-drop is the int8 budget's, not int4's."""
    import optimize.decoder_quant as dq
    from judge.budget import budget_for, reasons
    from optimize.int8_budget import QuantOptions
    from runtime.modelspec import DEFAULT_TOLERANCES
    from verify.generation import PRECISION_ARTIFACTS

    i4 = DEFAULT_TOLERANCES["int4"]
    assert (i4.max_ppl_increase_pct, i4.min_top1_agreement, i4.max_drop_points, i4.min_cosine, i4.cosine_on,
            i4.max_abs) == (5.0, 0.95, 1.0, 0.98, "mean", None)
    old_spec = {k: v for k, v in DEFAULT_TOLERANCES.items() if k != "int4"}  # spec.json from before the int4 entry
    opts = QuantOptions(threads=1, max_drop=2.0, min_speedup=1.0)
    budgets = dq.cpu_form_budgets(old_spec, opts)
    assert budgets["int4.cpu"] == budget_for(None, "int4") == budget_for(old_spec, PRECISION_ARTIFACTS["int4.cpu"][1])
    assert budgets["int4.cpu"].max_drop_points == 1.0 and budgets["int8.cpu"].max_drop_points == 2.0
    assert budgets["int8.cpu"] == budget_for(old_spec, PRECISION_ARTIFACTS["int8.cpu"][1], max_drop_points=2.0)
    budgets = dq.cpu_form_budgets(None, QuantOptions(threads=1, min_speedup=1.0))
    fig = {"n_tokens": 4096, "n_windows": 32, "top1_agreement": 0.96, "accuracy": 0.30, "reference_accuracy": 0.308,
           "accuracy_delta": -0.8, "accuracy_delta_ci95": [-1.2, -0.4], "perplexity": 103.0,
           "reference_perplexity": 100.0, "perplexity_delta_pct": 3.0, "nll_mean_delta": 0.0296, "nll_rel_mse": 1e-3,
           "nonfinite": 0, "reference_nonfinite": 0, "degenerate_reference": False}
    monkeypatch.setattr(dq, "weight_coverage", lambda p, q: 1.0)
    monkeypatch.setattr(dq, "decode_bench", lambda models, *a, **k: {m: {"ms_per_token": 10.0 if m == "fp32" else 5.0,
                                                                          "tokens_per_s": 100.0} for m in models})
    windows = SimpleNamespace(inputs={"input_ids": np.ones((1, 20), np.int64)})
    cands = {"nbits8": tmp_path / "a.onnx", "nbits4": tmp_path / "b.onnx"}
    cpu = dq.choose_decoder_cpu(tmp_path / "fp32.onnx", cands, windows, None, budgets, 1, QuantOptions(
        threads=1, min_speedup=1.0), dq.DecoderQuantOptions(), {k: fig for k in cands})
    assert cpu["picks"]["int4.cpu"]["winner"] == "nbits4" and cpu["picks"]["int8.cpu"]["winner"] is None
    r8, r4 = cpu["candidates"]["nbits8"], cpu["candidates"]["nbits4"]
    assert r4["passed"] and r4["reasons"] == []
    assert not r8["passed"] and any("top1_agreement 0.9600 < 0.99" in r for r in r8["reasons"])
    assert any("perplexity +3.000 %, budget +1 %" in r for r in r8["reasons"])
    for name, row in (("nbits8", r8), ("nbits4", r4)):  # verify's verdict on the same figures, row for row
        form = "int4.cpu" if name == "nbits4" else "int8.cpu"
        assert reasons(fig, budget_for(None, PRECISION_ARTIFACTS[form][1]), True) == row["reasons"]
    worse = {**fig, "perplexity_delta_pct": 5.5}  # beyond the int4 bar: perplexity decides
    assert reasons(worse, budgets["int4.cpu"], True) == ["perplexity +5.500 %, budget +5 %"]
