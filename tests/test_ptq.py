"""Outlier-aware PTQ (optimize.smoothquant, optimize.ptq): smoothing keeps the float graph, folds into a LayerNorm only
where exact, cuts the int8 error of outlier channels; the calibration method is chosen per tensor and the nodes are
ranked in one pass."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from calibration import CalibrationData  # noqa: E402
from optimize.fp16 import ort_logits  # noqa: E402
from optimize.int8_budget import QuantOptions, budget_search, evaluate_inprocess  # noqa: E402
from optimize.int8_build import quantize_static_cached  # noqa: E402
from optimize.ptq import outlier_aware  # noqa: E402
from optimize.qdq_graph import quantizable_nodes  # noqa: E402
from optimize.qdq_rules import check_qdq_rules  # noqa: E402
from optimize.smoothquant import apply_smoothing, capture_rows, choose_alphas, smoothing_groups  # noqa: E402
from calibration.evalset import EvalSet  # noqa: E402

D, F = 16, 32


def _block(path, outlier: float = 40.0):
    """x(D) -> LayerNorm ln0 -> {q, k} MatMuls only (foldable) -> q + k -> LayerNorm ln1 -> up MatMul and a residual
    Add (not foldable: Mul) -> Relu -> down MatMul -> + residual -> head Gemm -> 4 logits. ln1's gamma has outlier
    channels 2 and 9 (x ``outlier``): per-tensor int8 of ln1's output rounds the other channels to a few levels."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    g1 = np.ones(D, np.float32)
    g1[[2, 9]] = outlier
    arrays = dict(g0=np.ones(D, np.float32) + 0.1 * rng.standard_normal(D).astype(np.float32),
                  b0=0.1 * rng.standard_normal(D).astype(np.float32), g1=g1, b1=np.zeros(D, np.float32),
                  wq=rng.standard_normal((D, D)).astype(np.float32) * 0.3,
                  wk=rng.standard_normal((D, D)).astype(np.float32) * 0.3,
                  wu=rng.standard_normal((D, F)).astype(np.float32) * 0.3,
                  wd=rng.standard_normal((F, D)).astype(np.float32) * 0.3,
                  wh=rng.standard_normal((4, D)).astype(np.float32) * 0.5, bh=np.zeros(4, np.float32))
    arrays["wu"][[2, 9]] *= 0.05  # the outlier channels matter little to the output (as in a real LayerNorm)
    nodes = [helper.make_node("LayerNormalization", ["x", "g0", "b0"], ["ln0"], name="ln0", axis=-1),
             helper.make_node("MatMul", ["ln0", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["ln0", "wk"], ["k"], name="k"),
             helper.make_node("Add", ["q", "k"], ["qk"], name="qk"),
             helper.make_node("LayerNormalization", ["qk", "g1", "b1"], ["ln1"], name="ln1", axis=-1),
             helper.make_node("MatMul", ["ln1", "wu"], ["u"], name="up"),
             helper.make_node("Relu", ["u"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "wd"], ["d"], name="down"),
             helper.make_node("Add", ["d", "ln1"], ["res"], name="residual"),
             helper.make_node("Gemm", ["res", "wh", "bh"], ["logits"], name="head", transB=1)]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", D])],
                          [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def test_groups_fold_only_where_exact_and_smoothing_keeps_fp32_outputs(tmp_path):
    src = _block(tmp_path / "block.onnx")
    model = onnx.load(str(src))
    groups = smoothing_groups(model, quantizable_nodes(model))
    by = {g.tensor: g for g in groups}
    assert sorted(by) == ["ln0", "ln1", "r", "res"]
    assert by["ln0"].nodes == ["q", "k"] and by["ln0"].fold == "ln0"  # read by the two MatMuls only
    assert by["ln1"].fold is None  # also read by the residual Add: folding would change it
    assert by["r"].fold is None and by["res"].nodes == ["head"]
    rng = np.random.default_rng(1)
    for g in groups:  # arbitrary positive scales, including large ones
        g.alpha, g.s = 0.5, np.exp(rng.uniform(-3, 3, F if g.tensor == "r" else D)).astype(np.float32)
    smoothed = apply_smoothing(model, groups)
    ops = [n.op_type for n in smoothed.graph.node]
    assert ops.count("Mul") == 3 and ops.count("LayerNormalization") == 2  # ln1, r, res: Mul; ln0: folded
    x = _data(64, 2)
    es = EvalSet({"x": x})
    a = ort_logits(src, es)
    p = tmp_path / "smoothed.onnx"
    onnx.save(smoothed, str(p))
    b = ort_logits(p, es)
    assert np.abs(a).max() > 1.0
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    # the folded LayerNorm really carries 1/s: its outputs are ln0 / s
    g0 = next(gr for gr in groups if gr.tensor == "ln0")
    _, rows_before = capture_rows(src, [g0], [{"x": x}], max_rows=64)
    _, rows_after = capture_rows(p, [g0], [{"x": x}], max_rows=64)
    np.testing.assert_allclose(rows_after["ln0"] * g0.s, rows_before["ln0"], rtol=1e-4, atol=1e-5)


def test_smoothing_cuts_the_int8_error_of_outlier_channels(tmp_path):
    """The chosen alpha lowers the layer error of the outlier group several-fold, and the float simulation of the
    whole int8 Q/DQ graph moves closer to fp32."""
    src = _block(tmp_path / "block.onnx")
    model = onnx.load(str(src))
    nodes = quantizable_nodes(model)
    groups = smoothing_groups(model, nodes)
    calib = [{"x": _data(64, s)} for s in range(4)]
    absmax, rows = capture_rows(src, groups, calib, max_rows=256)
    assert absmax["ln1"].argsort()[-2:].tolist() in ([2, 9], [9, 2])  # the outlier channels
    choose_alphas(model, groups, absmax, rows)
    g1 = next(g for g in groups if g.tensor == "ln1")
    assert g1.alpha is not None and g1.errors[f"{g1.alpha:g}"] < g1.errors["none"] / 4
    assert all(g.errors[f"{g.alpha:g}" if g.alpha is not None else "none"] <= g.errors["none"] for g in groups)

    es = EvalSet({"x": _data(512, 9)})
    ref = ort_logits(src, es)
    err = {}
    opts = QuantOptions(threads=1, calib_choice=(), method="MinMax", ptq_rows=256)
    cal = CalibrationData.from_arrays({"x": np.concatenate([c["x"] for c in calib])}, batch_size=64)
    for mode in ("off", "auto"):
        plan = outlier_aware(src, nodes, cal, QuantOptions(**{**opts.__dict__, "smoothing": mode}), tmp_path, tmp_path)
        q = tmp_path / f"q_{mode}.onnx"
        quantize_static_cached(plan.src, q, plan.ranges, "MinMax", [n.name for n in nodes], "trt")
        assert check_qdq_rules(q) == []
        err[mode] = evaluate_inprocess(q, es, ref, 1)[0]["logit_rel_mse"]
        smoothed = plan.record["smoothing"]["smoothed_groups"]
        assert smoothed == 0 if mode == "off" else smoothed >= 1
    assert err["auto"] < err["off"] / 2, err


def test_calibration_method_chosen_per_tensor_and_one_pass_ranking_drives_the_search(tmp_path):
    """Each quantised input takes the range (of MinMax, Percentile) with the least error at its consumers' outputs, so
    tensors can leave the default method; the ranking holds every weight node once, most harmful first, and the
    budget search uses it (no per-node evaluation)."""
    src = _block(tmp_path / "block.onnx", outlier=1.0)
    model = onnx.load(str(src))
    nodes = quantizable_nodes(model)
    x = _data(512, 3)
    x[::97] *= 30.0  # rare large rows
    cal = CalibrationData.from_arrays({"x": x}, batch_size=128)
    opts = QuantOptions(threads=1, smoothing="off", calib_choice=("MinMax", "Percentile"), method="Percentile",
                        ptq_samples=512, ptq_rows=512)
    plan = outlier_aware(src, nodes, cal, opts, tmp_path, tmp_path)
    ch = plan.record["calibration_choice"]
    assert set(ch["tensors"]) == {"ln0", "ln1", "r", "res"}
    for t, c in ch["tensors"].items():  # each choice is the least error of those measured
        assert c["error_" + c["method"]] == min(v for k, v in c.items() if k.startswith("error_"))
        assert plan.ranges[t].amax == pytest.approx(c["amax"], rel=1e-5)
    assert sum(ch["chosen_counts"].values()) == 4 and ch["chosen_counts"]["MinMax"] >= 1  # not only the default
    errs = [r["output_rel_mse"] for r in plan.rows]
    assert sorted(r["node"] for r in plan.rows) == sorted(n.name for n in nodes) and errs == sorted(errs, reverse=True)

    es = EvalSet({"x": _data(400, 5)})
    ref = ort_logits(src, es)
    es.y = ref.argmax(1)
    calls = []

    def rank():
        calls.append(1)
        return plan.rows

    res = budget_search(plan.src, plan.ranges, "Percentile", nodes, es, ref, es, None,
                        QuantOptions(threads=1, max_drop=0.0, min_agreement=1.0, sweep="always"), tmp_path, False,
                        rank=rank)
    assert calls == [1] and [r["node"] for r in res["sensitivity"]] == [r["node"] for r in plan.rows]
    assert res["full_evaluations"] <= 2 + int(np.ceil(np.log2(len(nodes))))
    kept = [e["node"] for e in res["excluded"]]
    assert kept == [r["node"] for r in plan.rows][:len(kept)]  # the most harmful first


def test_models_with_convs_keep_the_plain_path(tmp_path):
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "c",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 5, 5])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    p = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    cal = CalibrationData.from_arrays({"x": np.ones((2, 1, 5, 5), np.float32)}, batch_size=1)
    assert outlier_aware(p, quantizable_nodes(onnx.load(str(p))), cal, QuantOptions(threads=1), tmp_path,
                         tmp_path) is None
    assert outlier_aware(p, [], cal, QuantOptions(threads=1, ptq="off"), tmp_path, tmp_path) is None


def test_build_int8_writes_the_smoothed_graph_and_records_the_choices(tmp_path):
    """optimize.quantize.build_int8 on the outlier block: the written int8.qdq.onnx holds the smoothing Muls under
    the TensorRT Q/DQ rules, is float-equivalent where unquantised, and the section records alpha, fold or Mul, the
    calibration method per tensor, and the one-pass ranking."""
    from optimize.quantize import build_int8

    md = tmp_path / "block"
    md.mkdir()
    src = _block(md / "fp32.sim.onnx")
    cal = CalibrationData.from_arrays({"x": _data(256, 11)}, batch_size=64)
    es = EvalSet({"x": _data(400, 12)})
    ref = ort_logits(src, es)
    es.y = ref.argmax(1)
    opts = QuantOptions(threads=1, max_drop=2.0, min_agreement=0.97, sweep="always", cpu_candidates=("qdq_s8s8",),
                        min_speedup=0.0, bench_runs=2, ptq_samples=256, ptq_rows=256)
    sec = build_int8(md, src, cal, es, ref, opts, progress=False, isa="avx2")
    ptq = sec["ptq"]
    assert ptq["smoothing"]["smoothed_groups"] >= 1
    assert ptq["smoothing"]["muls_inserted"] + ptq["smoothing"]["layernorm_folds"] == ptq["smoothing"]["smoothed_groups"]
    assert set(ptq["calibration_choice"]["methods"]) == {"Percentile", "MinMax"}
    assert {g["tensor"] for g in ptq["smoothing"]["groups"]} == {"ln0", "ln1", "r", "res"}
    assert sec["qdq"]["rules_ok"] and check_qdq_rules(md / "int8.qdq.onnx") == []
    assert all(r["output_rel_mse"] is not None for r in sec["qdq"]["sensitivity"])  # ranked in one pass
    ops = [n.op_type for n in onnx.load(str(md / "int8.qdq.onnx")).graph.node]
    assert ops.count("Mul") == ptq["smoothing"]["muls_inserted"]
    assert sec["qdq"]["passed"] and sec["qdq"]["val"]["top1_agreement"] >= 0.97
    # the smoothed graph's ranges and the unsmoothed graph's (the CPU forms') are cached apart
    assert (md / "calib.smoothed.percentile.json").is_file() and (md / "calib.smoothed.minmax.json").is_file()
    assert (md / "calib.percentile.json").is_file()


def test_one_calibration_pass_gives_the_ranges_of_three_separate_calibrations(tmp_path):
    """optimize.calib_shared: the smoothed graph's Percentile and MinMax ranges and the unsmoothed graph's Percentile
    ranges from one forward pass are the ones ORT's calibrator gives graph by graph, method by method (the
    unsmoothed graph has a LayerNorm output that smoothing folded 1/s into, and the input of an inserted Mul, which
    the smoothed graph does not calibrate); the caches then serve all three without a pass."""
    from calibration import RangeCache
    from optimize.calib_shared import RangeRequest, calibrate_shared
    from optimize.int8_build import calibrate_ranges

    src = _block(tmp_path / "block.onnx")
    model = onnx.load(str(src))
    groups = smoothing_groups(model, quantizable_nodes(model))
    rng = np.random.default_rng(1)
    for g in groups:
        g.alpha, g.s = 0.5, np.exp(rng.uniform(-2, 2, F if g.tensor == "r" else D)).astype(np.float32)
    ssrc = tmp_path / "smoothed.onnx"
    onnx.save(apply_smoothing(model, groups), str(ssrc))
    x = _data(256, 7)
    x[::31] *= 8.0  # a tail for the percentile to cut
    cal = CalibrationData.from_arrays({"x": x}, batch_size=64)
    fold = {g.tensor: g.s for g in groups if g.fold}
    assert list(fold) == ["ln0"]
    reqs = [RangeRequest(ssrc, "Percentile", RangeCache(tmp_path / "s.p.json")),
            RangeRequest(ssrc, "MinMax", RangeCache(tmp_path / "s.m.json")),
            RangeRequest(src, "Percentile", RangeCache(tmp_path / "u.p.json"), scale=fold)]
    shared = calibrate_shared(ssrc, cal, reqs)
    alone = [calibrate_ranges(ssrc, cal, "Percentile"), calibrate_ranges(ssrc, cal, "MinMax"),
             calibrate_ranges(src, cal, "Percentile")]
    assert "ln1" in shared[2][0] and "ln1" not in shared[0][0]  # the Mul's input: fetched for the unsmoothed graph
    assert "ln1__smoothed" in shared[0][0]
    for (got, info), (want, _), tol in zip(shared, alone, (1e-6, 1e-6, 2e-3)):
        assert info["cache"] == "computed" and set(got) == set(want)
        for t in want:
            assert got[t].lowest == pytest.approx(want[t].lowest, rel=tol, abs=1e-6), t
            assert got[t].highest == pytest.approx(want[t].highest, rel=tol, abs=1e-6), t
    # the folded tensor really differs between the graphs, and MinMax is not symmetric
    assert shared[2][0]["ln0"].amax != pytest.approx(shared[0][0]["ln0"].amax, rel=1e-2)
    assert shared[1][0]["r__smoothed"].lowest >= 0.0 and shared[1][0]["ln0"].lowest < 0.0
    again = calibrate_shared(ssrc, cal, reqs)
    assert [i["cache"] for _, i in again] == ["hit"] * 3
    assert all(again[k][0] == shared[k][0] for k in range(3))
    # MinMax alone: each graph calibrated by ORT's MinMax calibrator (no histogram pass), the unsmoothed one directly
    (mm, info), = calibrate_shared(ssrc, cal, [RangeRequest(src, "MinMax", scale=fold)])
    assert "shared_pass" not in info and mm == calibrate_ranges(src, cal, "MinMax")[0]
