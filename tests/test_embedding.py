"""Feature extraction (sentence embeddings): judge.embedding's figures on cases with known answers, the judge's
neighbour bar (the verdict the quantize loop and verify share), an ``hf:<dir>`` bare encoder resolved to the task with
mean pooling that ignores padding, and a tiny random BertModel through export, simplify, quantize and verify."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from judge.budget import budget_for, reasons
from judge.embedding import embedding_figures, nearest, neighbour_figures, paired_cosine
from judge.figures import compare, figures
from runtime.modelspec import FEATURE_EXTRACTION, NEIGHBOUR_K, default_tolerances
from tests.test_hf import SENTENCES, tiny_tokenizer


def circle(n: int) -> np.ndarray:
    """(n, 2) points on the unit circle; the gap from point i to i + 1 is 1 + 0.01 i (in units of 2 pi / (n + ...)),
    so every nearest neighbour is unique: point i's is i - 1 (i >= 1), point 0's is 1; its second is the other index
    neighbour (two gaps are always wider than one)."""
    gaps = 1.0 + 0.01 * np.arange(n)
    a = 2 * np.pi * np.concatenate([[0.0], np.cumsum(gaps)[:-1]]) / gaps.sum()
    return np.stack([np.cos(a), np.sin(a)], 1)


# ---- the figures -----------------------------------------------------------------------------------------------
def test_identical_embeddings_give_cosine_one_and_full_overlap():
    e = np.random.default_rng(0).standard_normal((50, 16))
    f = embedding_figures(e, e.copy(), 5)
    assert f["n_samples"] == 50 and f["neighbour_k"] == 5
    assert f["cosine_mean"] == pytest.approx(1.0, abs=1e-12) and f["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    assert f["neighbour_overlap"] == 1.0 and f["neighbour_overlap_min"] == 1.0 and f["neighbour_top1_agreement"] == 1.0
    scaled = embedding_figures(e, 3.0 * e, 5)  # cosine does not see the length
    assert scaled["cosine_min"] == pytest.approx(1.0, abs=1e-12) and scaled["neighbour_overlap"] == 1.0


def test_nearest_neighbours_on_a_circle():
    near = nearest(circle(12), 2)
    assert near[0].tolist() == [1, 11] and near[5].tolist() == [4, 6] and near[11].tolist() == [10, 0]
    with pytest.raises(ValueError, match=r"got k=12 for 12 samples, expected 1 <= k < 12"):
        nearest(circle(12), 12)


def test_swapping_two_samples_changes_exactly_their_neighbourhoods():
    """On the 12 points of :func:`circle` (k=2: each point's two index neighbours), the candidate swaps the
    embeddings of samples 0 and 6. Sample 0 (now at 6's place) has neighbours {5, 7}: 0 of its 2 kept; sample 6:
    {11, 1}, 0 kept; samples 1, 11, 5, 7 each keep one of two; the other 6 keep both. Overlap: (6 + 4 * 0.5) / 12.
    Nearest: 0 -> 5 (was 1), 6 -> 1 (was 5), 1 -> 6 (was 0), 7 -> 0 (was 6); 5 -> 4 and 11 -> 10 as before: 8 of
    12 agree."""
    ref = circle(12)
    got = ref.copy()
    got[[0, 6]] = got[[6, 0]]
    f = neighbour_figures(ref, got, 2)
    assert f["neighbour_k"] == 2 and f["neighbour_overlap"] == pytest.approx(8 / 12)
    assert f["neighbour_overlap_min"] == 0.0
    assert f["neighbour_top1_agreement"] == pytest.approx(8 / 12)
    cos = paired_cosine(ref, got)
    assert cos[1:6] == pytest.approx(1.0) and cos[0] < 0 and cos[6] < 0


def test_k_is_capped_and_one_sample_has_no_neighbours():
    e = np.random.default_rng(1).standard_normal((4, 8))
    assert neighbour_figures(e, e, 5)["neighbour_k"] == 3
    one = neighbour_figures(e[:1], e[:1], 5)
    assert one["neighbour_overlap"] is None and one["neighbour_k"] is None
    with pytest.raises(ValueError, match=r"got embeddings of shape \(4, 7\), expected \(4, 8\)"):
        neighbour_figures(e, e[:, :7], 5)


# ---- the judge -----------------------------------------------------------------------------------------------
def test_the_neighbour_bar_lives_in_the_tolerances_and_is_judged_by_the_one_verdict():
    tols = default_tolerances(FEATURE_EXTRACTION)
    assert tols["int8"].neighbour_k == NEIGHBOUR_K == 5 and tols["int8"].min_neighbour_overlap == 0.95
    assert tols["int8"].min_cosine == 0.99 and tols["int8"].cosine_on == "mean"
    assert tols["fp32"].min_top1_agreement == 0.999  # nearest-neighbour top-1: judged through the overlap only
    assert all(t.min_neighbour_overlap is None for t in default_tolerances("text_classification").values())
    b = budget_for(tols, "int8")
    assert b.neighbour_k == 5 and b.min_neighbour_overlap == 0.95
    assert b.tightened(0.5).min_neighbour_overlap == pytest.approx(0.975)  # the loop's guard band: never looser
    assert b.to_dict()["neighbour_k"] == 5
    assert "neighbour_k" not in budget_for(None, "int8").to_dict()  # a classifier's artifact keys are unchanged

    ref = circle(12)
    got = ref.copy()
    got[[0, 6]] = got[[6, 0]]
    f = figures(ref, got, None, 2)
    assert f["top1_agreement"] == f["neighbour_top1_agreement"] == pytest.approx(8 / 12)  # nearest, not argmax
    assert f["neighbour_overlap"] == pytest.approx(8 / 12)
    why = reasons(f, b, labelled=False)
    assert any(r.startswith("neighbour_overlap@2 0.6667 < 0.95") for r in why), why
    assert not [r for r in reasons(figures(ref, ref, None, 2), b, False) if "neighbour" in r]
    # a budget with the bar never passes figures made without it (a caller that forgot neighbour_k)
    assert any("neighbour_overlap missing" in r for r in reasons(figures(ref, ref), b, False))


def test_compare_judges_an_embedding_row_with_its_figures_flat():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((40, 16))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    b = budget_for(default_tolerances(FEATURE_EXTRACTION), "int8")
    ok = compare(ref, ref + 1e-4 * rng.standard_normal(ref.shape), None, b)
    row = ok.to_dict()
    assert ok and row["neighbour_overlap"] == 1.0 and row["neighbour_k"] == 5 and row["top1_agreement"] == 1.0
    bad = compare(ref, rng.standard_normal(ref.shape), None, b)
    assert not bad and any(r.startswith("neighbour_overlap@5") for r in bad.reasons)
    assert "neighbour_overlap" not in compare(ref, ref, None, budget_for(None, "int8")).to_dict()  # classifiers


# ---- the model -----------------------------------------------------------------------------------------------
def write_tiny_encoder(d: Path, max_len: int = 16, sentence_transformers: bool = False) -> Path:
    """A tiny random ``BertModel`` (no head) written with save_pretrained, with a BERT tokenizer.json. Its word
    embeddings dominate (N(0, 1), no position or token-type embeddings), so a sentence's embedding is close to a
    random projection of its bag of words: sentences sharing words are neighbours, as with a trained encoder (a plain
    random init maps every sentence near one direction, where neighbours are near-ties that any rounding reorders)."""
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer(max_len)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max_len, initializer_range=0.2)
    torch.manual_seed(0)
    model = BertModel(cfg)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.normal_(0.0, 1.0)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    if sentence_transformers:  # what a sentence-transformers folder adds; its config names no architecture
        cfg_json = json.loads((d / "config.json").read_text())
        cfg_json.pop("architectures", None)
        (d / "config.json").write_text(json.dumps(cfg_json))
        (d / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                     "type": "sentence_transformers.models.Transformer"}]))
    return d


@pytest.mark.parametrize("st", [False, True], ids=["BertModel", "sentence-transformers"])
def test_a_bare_encoder_is_feature_extraction_with_mean_pooling_over_real_tokens(tmp_path, monkeypatch, st):
    from transformers import AutoModel, AutoTokenizer

    from pipeline.sources import hf_folder_task
    from zoo.registry import create_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = write_tiny_encoder(tmp_path / "enc", sentence_transformers=st)
    assert hf_folder_task(d) == FEATURE_EXTRACTION
    built = create_model(f"hf:{d}")
    spec = built.spec
    assert spec.task == FEATURE_EXTRACTION and spec.labels == [] and spec.dataset == "imdb"
    assert [(t.name, t.shape) for t in spec.outputs] == [("embeddings", ("batch", 32))]
    assert not spec.scored_on_labels() and spec.tolerances["int8"].min_neighbour_overlap == 0.95

    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    enc = tok(SENTENCES[:4], truncation=True, max_length=16, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # a padded batch
    with torch.no_grad():
        got = built.module(enc["input_ids"])
        alone = torch.cat([built.module(enc["input_ids"][i:i + 1, : int(enc["attention_mask"][i].sum())])
                           for i in range(4)])
        h = AutoModel.from_pretrained(str(d), local_files_only=True).eval()(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)  # sentence-transformers' mean + normalise
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, got, atol=1e-5, rtol=1e-5)  # padded batch = unpadded embeddings
    torch.testing.assert_close(got.norm(dim=1), torch.ones(4))
    assert float(got.std(0).max()) > 1e-2  # the embeddings depend on the sentence


def test_a_classifier_folder_stays_a_classifier(tmp_path):
    from pipeline.sources import hf_folder_task
    from tests.test_hf import write_tiny_bert

    assert hf_folder_task(write_tiny_bert(tmp_path / "clf")) == "text_classification"
    assert hf_folder_task(tmp_path / "nowhere") is None


def test_export_simplify_quantize_verify(tmp_path, monkeypatch):
    """The tiny encoder through every stage, as one task module (zoo/tasks/feature_extraction.py): judged on IMDB
    sentences without their labels, the loop and verify both state the neighbour figures, every gating row passes,
    a TensorRT-RTX engine builds from it, and bench times it beside its PyTorch peer and reports it."""
    from bench.__main__ import main as bench_main
    from bench.report import main as report_main
    from export.__main__ import main as export_main
    from optimize.engines import main as engines_main
    from optimize.quantize import main as quantize_main
    from optimize.simplify import main as simplify_main
    from pipeline.artifacts import ModelRef
    from verify.__main__ import main as verify_main
    from zoo.tasks import task_of

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tiny_encoder(tmp_path / "tiny_enc")
    monkeypatch.chdir(tmp_path)
    args = ["--models", "hf:tiny_enc", "--artifacts", "art"]
    assert task_of(ModelRef.resolve("hf:tiny_enc", "art")).name == "feature_extraction"  # from the folder
    assert export_main(args) == 0
    assert task_of(ModelRef.resolve("hf:tiny_enc", "art")).name == "feature_extraction"  # from the exported spec
    assert simplify_main(args) == 0
    assert quantize_main(args + ["--eval-samples", "400", "--calib-size", "64", "--bench-runs", "5",
                                 "--sweep-samples", "100"]) == 0
    folder = tmp_path / "art" / "tiny_enc"
    man = json.loads((folder / "manifest.json").read_text())
    val = man["int8"]["qdq"]["val"]
    # the loop's guard band on 400 rows: sqrt(32/400) of the half-way-to-1 band above verify's 0.95
    loop_bar = 0.95 + 0.5 * (32 / 400) ** 0.5 * 0.05
    assert val["n_samples"] == 400 and val["neighbour_k"] == 5 and val["neighbour_overlap"] >= loop_bar
    assert man["int8"]["budget"]["max_drop_points"] is None  # no labels: parity and neighbours only
    assert man["int8"]["budget"]["split"] == "val"  # the dataset's validation sentences, not synthetic inputs
    assert man["fp16"]["check"]["neighbour_overlap"] >= 0.98
    assert verify_main(args + ["--limit", "300"]) == 0
    rows = [r for r in json.loads((tmp_path / "art" / "verify.json").read_text()) if r["model"] == "hf:tiny_enc"]
    assert {r["artifact"] for r in rows} >= {"fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"}
    for r in rows:
        assert r["n_samples"] == 300 and r["dataset"] == "imdb" and r["accuracy"] is None
        assert r["neighbour_k"] == 5 and 0.0 <= r["neighbour_overlap"] <= 1.0 and r["cosine_mean"] > 0.9
    gating = [r for r in rows if r.get("gating", True)]
    assert all(r["passed"] for r in gating), [(r["artifact"], r["reasons"]) for r in gating if not r["passed"]]
    fp32 = [r for r in rows if r["artifact"] == "fp32.sim.onnx" and r["backend"] == "onnxruntime"][0]
    assert fp32["neighbour_overlap"] == 1.0 and fp32["cosine_min"] > 0.99999
    pytest.importorskip("tensorrt_rtx")
    assert engines_main(args + ["--flavor", "rtx"]) == 0
    assert (folder / "fp16.rtx.engine").stat().st_size > 0
    assert bench_main(args + ["--quick", "--threads", "1", "--peers", "eager", "--no-plots"]) == 0
    brows = [r for r in json.loads((tmp_path / "art" / "bench.json").read_text())["rows"] if r["model"] == "hf:tiny_enc"]
    assert {r.get("peer_kind") for r in brows if r["is_peer"]} == {"eager"}
    assert ("onnxruntime", "fp32.sim.onnx") in {(r["backend"], r["artifact"]) for r in brows if not r["is_peer"]}
    assert all(r["error"] is None and r["p50_ms"] > 0 for r in brows), brows
    assert report_main(["--artifacts", "art"]) == 0
    assert "tiny_enc" in (tmp_path / "art" / "report.md").read_text()


def test_the_loop_and_verify_state_the_same_neighbour_figures(tmp_path):
    """The real budget loop (its default evaluation: the float-simulated Q/DQ graph) on the outlier MLP's outputs
    taken as embeddings, with verify's feature-extraction budget: its final figures, rebuilt file run as verify runs
    int8.qdq.onnx and compared by verify's function, give the same neighbour figures and the same verdict."""
    pytest.importorskip("onnxruntime")
    import onnx

    from calibration import CalibrationData
    from calibration.evalset import EvalSet
    from judge.figures import compare_outputs
    from optimize.fp16 import ort_logits
    from optimize.int8_budget import QuantOptions, budget_search
    from optimize.int8_build import calibrate_ranges, quantize_static_cached
    from optimize.qdq_graph import quantizable_nodes
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL
    from tests.test_quantize import _outlier_mlp

    src = _outlier_mlp(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    calib = CalibrationData.from_arrays({"x": rng.standard_normal((128, 16)).astype(np.float32)}, batch_size=32)
    es = EvalSet({"x": rng.standard_normal((300, 16)).astype(np.float32)})  # no labels: parity and neighbours
    ref = ort_logits(src, es)
    ranges, _ = calibrate_ranges(src, calib, "MinMax")
    b = budget_for(default_tolerances(FEATURE_EXTRACTION), "int8")
    res = budget_search(src, ranges, "MinMax", quantizable_nodes(onnx.load(str(src))), es, ref, es, ref,
                        QuantOptions(threads=1), tmp_path, progress=False, budget=b)
    assert res["steps"][0]["neighbour_k"] == 5 and res["steps"][0]["neighbour_overlap"] < 0.95  # all-int8 misses
    final = tmp_path / "int8.qdq.onnx"
    quantize_static_cached(src, final, ranges, "MinMax", res["quantized"], "trt")
    c = compare_outputs({"logits": ref}, {"logits": ort_logits(final, es, QDQ_REFERENCE_LEVEL, 1)}, None, b)
    for k in ("neighbour_overlap", "neighbour_top1_agreement", "neighbour_k"):
        assert c.to_dict()[k] == pytest.approx(res["final"][k]), k
    assert c.cosine_mean == pytest.approx(res["final"]["cosine_mean"])
    assert res["passed"] is c.passed is True, c.reasons
