"""INT8 that holds on every x86 CPU: the float-simulated reference of a Q/DQ graph, ISA detection, the 7-bit CPU
forms built where int8 kernels saturate, the fp32 fallback of the CPU choice, the ISA warning of the runtime, and
the budget loop on parity-only models. Nothing here asserts what this CPU's integer kernels compute."""
from __future__ import annotations

import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from calibration import CalibrationData  # noqa: E402
from calibration.evalset import EvalSet  # noqa: E402
from optimize.fp16 import ort_logits  # noqa: E402
from optimize.cpu_int8 import RR_CANDIDATES, default_cpu_candidates, pick_cpu  # noqa: E402
from judge.budget import passes  # noqa: E402
from optimize.int8_budget import QuantOptions, budget_search  # noqa: E402
from optimize.int8_build import calibrate_ranges, quantize_dynamic_matmul, quantize_static_cached  # noqa: E402
from optimize.qdq_graph import quantizable_nodes  # noqa: E402
from runtime.cpu import ISA_METADATA_KEY, cpu_info, int8_saturates, isa_class, isa_mismatch  # noqa: E402
from runtime.ort_backend import QDQ_REFERENCE_LEVEL  # noqa: E402
from tests.test_quantize import _outlier_mlp  # noqa: E402

AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
AVX512_VNNI = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
AVX512 = "processor\t: 0\nmodel name\t: Intel Xeon Skylake\nflags\t\t: avx2 avx512f avx512bw avx512dq\n"
AMX = "processor\t: 0\nmodel name\t: Intel Xeon SPR\nflags\t\t: avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"
AVX_VNNI = "processor\t: 0\nmodel name\t: Intel Core i7-12700\nflags\t\t: avx2 avx_vnni\n"


# ---- ISA ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,cls,saturates", [(AVX2, "avx2", True), (AVX512, "avx512", True),
                                                (AVX512_VNNI, "avx512_vnni", False), (AMX, "amx", False),
                                                (AVX_VNNI, "avx_vnni", False)])
def test_isa_class_from_cpuinfo(text, cls, saturates):
    info = cpu_info(text)
    if info["machine"] not in ("x86_64", "AMD64"):
        pytest.skip(f"x86 flag parsing; this machine is {info['machine']}")
    assert info["int8_isa"] == cls and int8_saturates(cls) is saturates
    assert isa_class({}, "aarch64") == "arm64" and not int8_saturates("arm64")


def test_isa_mismatch_says_both_and_why():
    assert isa_mismatch("avx512_vnni", "avx512_vnni") is None and isa_mismatch(None, "avx2") is None
    msg = isa_mismatch("avx512_vnni", "avx2")
    assert "'avx512_vnni'" in msg and "'avx2'" in msg and "saturate" in msg and "make quantize" in msg
    msg = isa_mismatch("avx2", "amx")
    assert "'avx2'" in msg and "'amx'" in msg and "saturate" not in msg


def test_cpu_candidates_follow_the_isa():
    assert not set(RR_CANDIDATES) & set(default_cpu_candidates("avx512_vnni"))
    assert not set(RR_CANDIDATES) & set(default_cpu_candidates("amx"))
    for isa in ("avx2", "avx512"):
        assert set(RR_CANDIDATES) <= set(default_cpu_candidates(isa))


# ---- the reference: Q/DQ as float ops ----------------------------------------------------------------------
def _qdq_matmul(path, x_scale: float, w: np.ndarray, w_scale: np.ndarray):
    """y = DQ(Q(x)) @ DQ(w_int8): symmetric int8 activation (per tensor) and weight (per output channel)."""
    from onnx import helper, numpy_helper

    wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w.shape[1], np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", w.shape[0]])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", w.shape[1]])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return wq


def test_reference_level_is_the_float_simulation_of_the_qdq(tmp_path):
    """Large activations and weights: where integer kernels without VNNI saturate int16 pair sums. The reference
    level must give exactly the Q/DQ arithmetic (numpy, float64), whatever this CPU is."""
    rng = np.random.default_rng(0)
    k, n = 256, 32
    x = rng.uniform(-4, 4, (16, k)).astype(np.float32)
    x[:, :8] = 4.0  # activations at the top of the int8 range
    w = rng.standard_normal((k, n)).astype(np.float32)
    w_scale = np.abs(w).max(0) / 127
    x_scale = 4.0 / 127
    wq = _qdq_matmul(tmp_path / "qdq.onnx", x_scale, w, w_scale)
    xq = np.clip(np.round(x.astype(np.float64) / x_scale), -128, 127)
    expected = (xq * x_scale) @ (wq.astype(np.float64) * w_scale)
    got = ort_logits(tmp_path / "qdq.onnx", EvalSet({"x": x}), QDQ_REFERENCE_LEVEL, threads=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())


# ---- 7-bit CPU forms ---------------------------------------------------------------------------------------
def test_reduce_range_forms_have_7bit_weights_and_stay_accurate(tmp_path):
    src = _outlier_mlp(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(1)
    es = EvalSet({"x": rng.standard_normal((64, 16)).astype(np.float32)})
    ref = ort_logits(src, es)
    calib = CalibrationData.from_arrays({"x": rng.standard_normal((64, 16)).astype(np.float32)}, batch_size=32)
    ranges, _ = calibrate_ranges(src, calib, "MinMax")

    def int8_weights(path):
        from onnx import numpy_helper

        m = onnx.load(str(path))
        return [numpy_helper.to_array(t) for t in m.graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]

    dyn = tmp_path / "dyn_rr.onnx"
    quantize_dynamic_matmul(src, dyn, exclude=["gemm2"], reduce_range=True)
    stat = tmp_path / "qdq_rr.onnx"
    # (the u8 static forms also quantise gemm1's output, whose constant-500 unit would ruin it: gemm3 only here)
    quantize_static_cached(src, stat, ranges, "MinMax", ["gemm3"], "qdq_u8s8", reduce_range=True)
    full = tmp_path / "dyn.onnx"
    quantize_dynamic_matmul(src, full, exclude=["gemm2"])
    for p, n_int8 in ((dyn, 2), (stat, 1)):
        ws = int8_weights(p)
        assert len(ws) == n_int8 and all(np.abs(w.astype(int)).max() <= 64 for w in ws), p.name  # 7-bit range
        out = ort_logits(p, es, QDQ_REFERENCE_LEVEL)  # the graph's arithmetic, independent of this CPU
        cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
        assert cos.mean() > 0.99, (p.name, cos.mean())
    assert max(np.abs(w.astype(int)).max() for w in int8_weights(full)) > 64  # the full-range form uses 8 bits
    with pytest.raises(Exception, match="TensorRT graph keeps the full int8 range"):
        quantize_static_cached(src, tmp_path / "x.onnx", ranges, "MinMax", ["gemm1"], "trt", reduce_range=True)


# ---- choosing int8.cpu.onnx --------------------------------------------------------------------------------
def _cand(ms, passed=True, cos=0.999):
    return {"ran": True, "passed": passed, "latency_ms": ms, "val": {"cosine_mean": cos, "top1_agreement": 1.0}}


def test_pick_cpu_keeps_fp32_unless_an_int8_form_is_accurate_and_faster():
    opts = QuantOptions(min_speedup=1.0, tie_tolerance=0.05)
    # fastest within the budget and faster than fp32 wins; a faster form outside the budget never does
    win, why = pick_cpu({"dynamic": _cand(5.0), "dynamic_rr": _cand(6.0), "qdq_s8s8": _cand(2.0, passed=False)},
                        10.0, opts, labelled=False)
    assert win == "dynamic" and why == "fastest within the budget"
    # within the budget but slower than fp32 (an AVX2 CPU's qdq_s8s8 for ViT-B/16): fp32 kept
    win, why = pick_cpu({"qdq_s8s8": _cand(678.0), "dynamic": _cand(400.0, passed=False)}, 335.0, opts, False)
    assert win is None and "faster than fp32" in why and "fp32 kept" in why and "qdq_s8s8" in why
    win, why = pick_cpu({"dynamic": _cand(5.0, passed=False)}, 10.0, opts, False)
    assert win is None and "no int8 form within the budget" in why
    win, why = pick_cpu({"dynamic": _cand(5.0)}, None, opts, False)
    assert win is None and "could not be measured" in why
    # by default "faster" means beyond the 5 % timing noise: 1.03x keeps fp32, 1.10x ships int8
    assert pick_cpu({"dynamic": _cand(9.7)}, 10.0, QuantOptions(), False)[0] is None
    assert pick_cpu({"dynamic": _cand(9.0)}, 10.0, QuantOptions(), False)[0] == "dynamic"
    # ties: the most accurate of the forms within tie_tolerance of the fastest
    win, _ = pick_cpu({"a": _cand(5.0, cos=0.995), "b": _cand(5.1, cos=0.999)}, 10.0, opts, False)
    assert win == "b"


# ---- the runtime warns when int8.cpu.onnx moves to another CPU ---------------------------------------------
def test_ort_runner_warns_when_int8_cpu_artifact_was_chosen_on_another_isa(tmp_path, monkeypatch, caplog):
    import runtime.cpu as rc
    from runtime.ort_backend import OrtRunner

    src = _outlier_mlp(tmp_path / "mlp.onnx")
    m = onnx.load(str(src))
    onnx.helper.set_model_props(m, {ISA_METADATA_KEY: "avx512_vnni"})
    path = tmp_path / "int8.cpu.onnx"
    onnx.save(m, str(path))
    monkeypatch.setattr(rc, "int8_isa", lambda text=None: "avx2")
    with caplog.at_level(logging.WARNING, logger="edgeattn.runtime.cpu"):
        with OrtRunner(path, providers=["CPUExecutionProvider"], threads=1) as r:
            assert r.isa_warning and "'avx512_vnni'" in r.isa_warning and "'avx2'" in r.isa_warning
    warned = [rec.getMessage() for rec in caplog.records if "avx512_vnni" in rec.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]  # one line
    monkeypatch.setattr(rc, "int8_isa", lambda text=None: "avx512_vnni")
    with OrtRunner(path, providers=["CPUExecutionProvider"], threads=1) as r:
        assert r.isa_warning is None


# ---- the budget loop on a parity-only model (no labels: cosine budget) -------------------------------------
def test_budget_loop_on_parity_only_model_keeps_the_harmful_node_float(tmp_path):
    src = _outlier_mlp(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    calib = CalibrationData.from_arrays({"x": rng.standard_normal((128, 16)).astype(np.float32)}, batch_size=32)
    es = EvalSet({"x": rng.standard_normal((64, 16)).astype(np.float32)})  # no labels
    ref = ort_logits(src, es)
    ranges, _ = calibrate_ranges(src, calib, "MinMax")
    nodes = quantizable_nodes(onnx.load(str(src)))
    opts = QuantOptions(min_cosine=0.999, parity_margin=0.0, threads=1)  # sweep "auto": only because all-int8 misses
    res = budget_search(src, ranges, "MinMax", nodes, es, ref, es, ref, opts, tmp_path, progress=False)
    assert res["steps"][0]["cosine_mean"] < 0.9  # all-int8 (simulated) misses the cosine budget
    assert [r["node"] for r in res["sensitivity"]][0] == "gemm2" and len(res["sensitivity"]) == 3
    assert [e["node"] for e in res["excluded"]] == ["gemm2"] and res["excluded"][0]["recovered_points"] is None
    assert res["passed"] and res["final"]["cosine_mean"] >= 0.999 and res["quantized"] == ["gemm1", "gemm3"]


def test_parity_only_budget_aims_above_verifys_bar():
    """The loop chooses on its own images and verify judges on others: a parity-only model must clear min_cosine by
    half the way to 1 in the loop (0.995 for 0.99), so a held-out 0.99 is not left to chance. The guard band only
    tightens verify's budget: what the loop accepts, verify's verdict accepts on the same figures."""
    opts = QuantOptions()
    loop, verify = opts.loop_budget(None, labelled=False), opts.budget()
    assert loop.min_cosine == pytest.approx(0.995) and verify.min_cosine == 0.99 and loop.cosine_on == "mean"
    assert opts.loop_budget(None, labelled=True) == verify  # labelled: the loop judges exactly as verify
    base = {"nonfinite": 0, "degenerate_reference": False, "top1_agreement": 0.5}  # not gated without labels
    assert not passes({**base, "cosine_mean": 0.9903}, loop, labelled=False)  # efficientnet_b0's near miss
    assert passes({**base, "cosine_mean": 0.9903}, verify, labelled=False)
    assert passes({**base, "cosine_mean": 0.9951}, loop, labelled=False)
    assert passes({**base, "cosine_mean": 0.9903}, QuantOptions(parity_margin=0.0).loop_budget(None, False), False)
