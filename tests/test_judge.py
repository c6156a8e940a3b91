"""The judge (judge/): one budget from the spec's tolerances, one verdict, its resolution rule and interval, the verify
row schema; and the proof that the quantize stage's loop and verify judge a candidate identically."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from judge.budget import Budget, BudgetError, budget_for, check_resolution, loop_rows, passes, reasons, \
    samples_needed
from judge.figures import compare, compare_outputs, figures
from judge.interval import delta_interval
from judge.rows import VerifyRow, split_mode
from runtime.modelspec import DEFAULT_TOLERANCES, Tolerance


# ---- the interval -------------------------------------------------------------------------------------------------
def test_paired_bootstrap_interval_on_a_known_case():
    """1000 samples, 50 lost and none gained: delta -5 points; the bootstrap's spread is the binomial one,
    sqrt(1000 * 0.05 * 0.95) / 1000 = 0.689 points, so the 95 % interval is about -5 -+ 1.35."""
    ref = np.ones(1000)
    got = ref.copy()
    got[:50] = 0
    lo, hi = delta_interval(got, ref)
    assert lo == pytest.approx(-5 - 1.96 * 0.689, abs=0.15) and hi == pytest.approx(-5 + 1.96 * 0.689, abs=0.15)
    assert (lo, hi) == delta_interval(got, ref)  # seeded: the same figures, the same interval, on every machine
    # paired: both wrong on the same 300 samples is no evidence of a difference at all
    both = ref.copy()
    both[:300] = 0
    assert delta_interval(both, both) == (0.0, 0.0)


def test_bootstrap_by_counts_matches_resampling_indices():
    """The multinomial shortcut draws from the same distribution as resampling sample indices."""
    rng = np.random.default_rng(5)
    got, ref = (rng.random(300) < 0.8).astype(float), (rng.random(300) < 0.85).astype(float)
    idx = np.random.default_rng(9).integers(0, 300, size=(4000, 300))
    direct = np.percentile(100 * (got[idx] - ref[idx]).mean(1), [2.5, 97.5])
    lo, hi = delta_interval(got, ref, resamples=4000)
    assert lo == pytest.approx(direct[0], abs=0.5) and hi == pytest.approx(direct[1], abs=0.5)


def test_figures_state_n_and_the_interval():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 3))
    got = ref.copy()
    got[:4] = got[:4, ::-1]  # 4 samples predict another class
    labels = ref.argmax(1)
    f = figures(ref, got, labels)
    flipped = int((got.argmax(1) != labels).sum())
    assert f["n_samples"] == 200 and f["accuracy_delta"] == pytest.approx(-100 * flipped / 200)
    lo, hi = f["accuracy_delta_ci95"]
    assert lo <= f["accuracy_delta"] <= hi <= 0.0 and lo < hi
    assert figures(ref, got, None)["accuracy_delta_ci95"] is None  # parity only: no accuracy


# ---- one budget, defaults in one place ----------------------------------------------------------------------------
def test_the_budget_comes_from_the_spec_and_the_stages_restate_no_default():
    from optimize.fp16 import Fp16Options
    from optimize.int8_budget import QuantOptions

    i8, f16 = DEFAULT_TOLERANCES["int8"], DEFAULT_TOLERANCES["fp16"]
    assert QuantOptions().budget() == Budget("int8", None, i8.min_cosine, i8.min_top1_agreement, i8.max_drop_points,
                                             i8.cosine_on, i8.max_ppl_increase_pct)
    assert Fp16Options().budget() == Budget.from_tolerance(f16, "fp16")
    assert (QuantOptions().max_drop, QuantOptions().min_agreement, Fp16Options().max_drop) == (None, None, None)
    spec_tols = {**DEFAULT_TOLERANCES, "int8": Tolerance(None, 0.95, 0.98, 1.0, "mean")}  # a spec of its own
    b = QuantOptions(max_drop=0.8).budget(spec_tols)
    assert (b.min_cosine, b.min_top1_agreement, b.max_drop_points) == (0.95, 0.98, 0.8)  # the user's value wins
    assert b.max_ppl_increase_pct == i8.max_ppl_increase_pct  # an older spec without the perplexity bar
    with pytest.raises(BudgetError, match="got max_drop_points -3, expected >= 0"):
        budget_for(None, "int8", max_drop_points=-3.0)


def test_verify_reads_the_budget_the_artifact_was_built_under(tmp_path):
    from optimize.int8_budget import QuantOptions
    from verify.plan import tolerance_for

    spec = SimpleNamespace(tolerances=dict(DEFAULT_TOLERANCES))
    built = QuantOptions(max_drop=1.0, min_agreement=0.98).budget(spec.tolerances)
    (tmp_path / "manifest.json").write_text(json.dumps({"int8": {"budget": {
        "max_drop_points": built.max_drop_points, "min_top1_agreement": built.min_top1_agreement,
        "min_cosine": built.min_cosine}}}))
    assert tolerance_for(spec, "int8", tmp_path) == built
    assert tolerance_for(spec, "fp32", tmp_path) == budget_for(spec.tolerances, "fp32")


# ---- the resolution rule ------------------------------------------------------------------------------------------
def test_a_budget_finer_than_the_evaluation_set_is_refused_with_what_it_needs():
    i8, f16, f32 = budget_for(None, "int8"), budget_for(None, "fp16"), budget_for(None, "fp32")
    with pytest.raises(BudgetError) as e:
        check_resolution(i8, 300, True, "quantize bert int8")
    msg = str(e.value)
    assert msg.startswith("quantize bert int8: int8 budget does not resolve on 300 samples")
    assert "0.5 points is 1.5 samples" in msg and "needs >= 400 samples" in msg
    assert samples_needed(i8) == 400 and samples_needed(f16) == 2000 and samples_needed(f32) == 0
    check_resolution(i8, 400, True, "x")  # exactly 2 samples of budget
    check_resolution(i8, 32, False, "x")  # parity only: cosine and max-abs are not counts
    check_resolution(f32, 1, True, "x")  # exact bars resolve at any n
    with pytest.raises(BudgetError, match="needs >= 2000 samples"):
        check_resolution(f16, 1999, True, "x")


def test_the_loops_rows_resolve_their_budget_and_follow_the_users_setting():
    """judge.budget.loop_rows: 1,000 labelled rows by default, or what the budget needs when that is more (FP16 at
    0.1 points: 2,000), never more than there are; unlabelled sets keep every row; 'all', None and a number as given;
    the default rows always resolve the budget."""
    i8, f16 = budget_for(None, "int8"), budget_for(None, "fp16")
    assert loop_rows(i8, 2490, True) == 1000 and loop_rows(f16, 2490, True) == 2000
    assert loop_rows(f16, 1500, True) == 1500 and loop_rows(i8, 700, True) == 700  # fewer than the floor: all
    assert loop_rows(i8, 2490, False) == 2490  # parity / embeddings: the guard band is set by n
    assert loop_rows(i8, 2490, True, "all") == 2490 and loop_rows(i8, 2490, True, None) == 2490
    assert loop_rows(i8, 2490, True, 1500) == 1500 and loop_rows(i8, 300, True, 1500) == 300
    wide = budget_for(None, "int8", max_drop_points=0.05)  # needs 4,000: more than the floor
    assert loop_rows(wide, 5000, True) == 4000 and loop_rows(wide, 3000, True) == 3000
    for b in (i8, f16, wide):  # the default rows resolve wherever the whole set does
        for n in (2490, 5000, 10000):
            if n >= samples_needed(b):
                check_resolution(b, loop_rows(b, n, True), True, "x")


@pytest.mark.parametrize("n_eval, n_verify", [(2490, 2490), (5000, 10000)])  # IMDB val/test, Fashion-MNIST
def test_the_demos_sizes_resolve(n_eval, n_verify):
    """Every labelled demo model's data (IMDB 80/10/10 of ~24.9k reviews; Fashion-MNIST 5k val, 10k test) resolves
    the default INT8 and FP16 budgets in the stage and in verify; GPT-2's 16k teacher-forced tokens too."""
    for precision in ("int8", "fp16", "fp32"):
        b = budget_for(None, precision)
        for n in (n_eval, n_verify, 16_384):
            check_resolution(b, n, True, precision)


def test_verify_fails_a_row_whose_budget_does_not_resolve():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((100, 4))
    c = compare(ref, ref.copy(), ref.argmax(1), budget_for(None, "int8"))  # identical: still no verdict on 100
    assert not c and c.reasons == ["int8 budget does not resolve on 100 samples (0.5 points is 0.5 samples; "
                                   "agreement 0.99 allows 1); expected >= 2 samples of budget: needs >= 400 "
                                   "samples (or a wider budget)"]
    assert compare(ref, ref.copy(), None, budget_for(None, "int8"))  # parity only: judged on cosine


# ---- stage and verify judge alike ---------------------------------------------------------------------------------
def _edge_logits(n_flipped: int, n: int = 400):
    """(ref, got, labels): labels = the reference's top-1 (fp32 accuracy 100 %), ``got`` swaps the two logits of the
    first ``n_flipped`` samples."""
    ref = np.random.default_rng(2).standard_normal((n, 2)) * 0.5 + 3.0
    got = ref.copy()
    got[:n_flipped] = got[:n_flipped, ::-1]
    return ref, got, ref.argmax(1)


@pytest.mark.parametrize("flipped, verdict", [(0, True), (2, True), (3, False)])
def test_a_candidate_at_the_edge_is_judged_identically_by_the_loop_and_verify(tmp_path, flipped, verdict):
    """400 samples, INT8 defaults (0.5 points = 2 samples, 0.99 agreement): 2 flips sit exactly on the budget and
    pass both, 3 fail both; the loop's search (optimize.int8_budget.budget_search) and verify's comparison
    (verify.plan.tolerance_for + judge.figures.compare_outputs) give the same verdict on the same figures."""
    pytest.importorskip("onnxruntime")
    from calibration import CalibrationData
    from calibration.evalset import EvalSet
    from optimize.int8_budget import QuantOptions, budget_search
    from optimize.int8_build import calibrate_ranges
    from optimize.qdq_graph import quantizable_nodes
    from tests.test_quantize import _outlier_mlp
    from verify.plan import tolerance_for
    import onnx

    ref, got, labels = _edge_logits(flipped)
    src = _outlier_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    ranges, _ = calibrate_ranges(src, CalibrationData.from_arrays({"x": x[:64]}, batch_size=32), "MinMax")
    es = EvalSet({"x": x}, labels)
    opts = QuantOptions(sweep="never", threads=1)
    seen = []

    def evaluate(path, es_, ref_, threads):  # the loop's figures of its candidate: these logits, judged as usual
        seen.append(figures(ref, got, labels))
        return seen[-1], got

    res = budget_search(src, ranges, "MinMax", quantizable_nodes(onnx.load(str(src))), es, ref, es, ref, opts,
                        tmp_path, progress=False, evaluate=evaluate)
    verify_budget = tolerance_for(SimpleNamespace(tolerances=dict(DEFAULT_TOLERANCES)), "int8", tmp_path)
    c = compare_outputs({"logits": ref}, {"logits": got}, labels, verify_budget)
    assert res["passed"] is c.passed is verdict
    assert res["final"]["accuracy_delta"] == c.accuracy_delta == pytest.approx(-100 * flipped / 400)
    assert res["budget"] == verify_budget.to_dict()
    assert reasons(res["final"], verify_budget, True) == c.reasons


def test_the_loops_accepted_candidate_passes_verify_on_the_same_figures(tmp_path):
    """The real loop on the outlier MLP (all-int8 misses; gemm2 kept float passes), its accepted file then run the
    way verify runs int8.qdq.onnx (ONNX Runtime at the Q/DQ reference level) and judged by verify's function with
    the budget the manifest records: the same figures, number for number, and it passes."""
    pytest.importorskip("onnxruntime")
    import onnx

    from optimize.fp16 import ort_logits
    from optimize.int8_budget import QuantOptions, budget_search
    from optimize.int8_build import quantize_static_cached
    from optimize.qdq_graph import quantizable_nodes
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL
    from tests.test_quantize import outlier_mlp_case
    from verify.plan import tolerance_for

    src, ranges, es, ref = outlier_mlp_case(tmp_path)
    opts = QuantOptions(max_drop=2.0, min_agreement=0.97, threads=1)
    res = budget_search(src, ranges, "MinMax", quantizable_nodes(onnx.load(str(src))), es, ref, es, ref, opts,
                        tmp_path, progress=False)
    assert res["passed"] and res["excluded"]  # it had to keep a node float: an accepted, non-trivial candidate
    final = tmp_path / "int8.qdq.onnx"
    quantize_static_cached(src, final, ranges, "MinMax", res["quantized"], "trt")
    vb = opts.budget()  # what quantize records in the manifest, what verify reads back
    (tmp_path / "manifest.json").write_text(json.dumps({"int8": {"budget": {
        "max_drop_points": vb.max_drop_points, "min_top1_agreement": vb.min_top1_agreement,
        "min_cosine": vb.min_cosine}}}))
    got = ort_logits(final, es, QDQ_REFERENCE_LEVEL, 1)
    c = compare_outputs({"logits": ref}, {"logits": got}, es.y,
                        tolerance_for(SimpleNamespace(tolerances=dict(DEFAULT_TOLERANCES)), "int8", tmp_path))
    assert c.passed, c.reasons
    for k in ("n_samples", "accuracy_delta", "accuracy_delta_ci95", "top1_agreement", "cosine_mean", "cosine_min"):
        assert c.to_dict()[k] == pytest.approx(res["final"][k]), k
    assert passes(res["final"], tolerance_for(SimpleNamespace(tolerances=dict(DEFAULT_TOLERANCES)), "int8",
                                              tmp_path), True)


def test_the_loop_now_judges_cosine_as_verify_does():
    """The reported failure: the loop accepted agreement/accuracy while verify failed cosine_mean 0.9893 < 0.99."""
    f = {"n_samples": 2500, "top1_agreement": 0.996, "accuracy_delta": -0.2, "accuracy_delta_ci95": [-0.5, 0.1],
         "cosine_mean": 0.9893, "cosine_min": 0.5, "nonfinite": 0, "degenerate_reference": False}
    from optimize.int8_budget import QuantOptions

    assert reasons(f, QuantOptions().loop_budget(None, labelled=True), True) == ["cosine_mean 0.989300 < 0.99"]


# ---- the verify row schema ----------------------------------------------------------------------------------------
def test_verify_row_round_trip_and_old_rows():
    row = VerifyRow("vit", "fp16.onnx", "fp16", "onnxruntime", "extended", mode_asked="all",
                    fallback_reason="worker killed by SIGSEGV", role="artifact", n_samples=24, passed=True,
                    figures={"cosine_min": 0.9999, "accuracy_delta_ci95": [-0.1, 0.1]})
    d = row.to_dict()
    assert d["mode"] == "extended" and d["mode_asked"] == "all" and d["cosine_min"] == 0.9999
    assert "precision_asked" not in d and "error" not in d and "figures" not in d  # optional, unset: absent
    assert VerifyRow.from_dict(json.loads(json.dumps(d))) == row
    old = {"model": "vit", "artifact": "fp16.onnx", "precision": "fp16", "backend": "onnxruntime",
           "mode": "extended (all: worker exit -11)", "passed": True, "cosine_min": 0.99995}
    r = VerifyRow.from_dict(old)
    assert (r.mode, r.mode_asked, r.fallback_reason) == ("extended", "all", "worker exit -11")
    assert r.figures == {"cosine_min": 0.99995} and r.gating
    assert VerifyRow.from_dict({"model": "m", "mode": "disable"}).mode_asked is None
    assert split_mode("bf16") == ("bf16", None, None)


def test_bench_matches_new_and_old_rows_alike():
    from bench.results import find_verify_row, verified_mode

    new = VerifyRow("m", "fp16.onnx", "fp16", "onnxruntime", "extended", mode_asked="all",
                    fallback_reason="worker exit -11", passed=True).to_dict()
    assert verified_mode([new], "m", "fp16.onnx", "onnxruntime", "all") == "extended"
    assert find_verify_row([new], "m", "fp16.onnx", "onnxruntime", "extended")["passed"] is True
