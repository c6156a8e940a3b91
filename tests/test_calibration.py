"""Calibration data (train split only, deterministic, rewindable), the ONNX Runtime reader, and the range cache."""
from __future__ import annotations


import numpy as np
import pytest

from calibration import (
    CacheKey,
    CalibrationData,
    CalibrationError,
    OrtCalibrationReader,
    RangeCache,
    TensorRange,
)
from calibration.evalset import load_eval_set
from zoo.data import Dataset, Split
from zoo.spec import DimRange, ModelSpec, TensorSpec

TRAIN_MAX, VAL_VALUE, TEST_VALUE = 100, 200, 255


def image_spec(dataset: str | None = "fake") -> ModelSpec:
    return ModelSpec(
        name="fake", task="image_classification", inputs=[TensorSpec("pixels", "float32", ("batch", 1, 28, 28))],
        outputs=[TensorSpec("logits", "float32", ("batch", 3))], dynamic={"batch": DimRange(1, 8, 64)},
        labels=["a", "b", "c"], dataset=dataset,
        preprocess={"kind": "image", "size": [28, 28], "channels": 1, "mean": 0.0, "std": 1.0})


def fake_dataset(n_train: int = 300) -> Dataset:
    """Train pixels <= 100; validation pixels all 200; test pixels all 255: any leak is visible in the values."""
    rng = np.random.default_rng(0)
    tr = rng.integers(0, TRAIN_MAX + 1, size=(n_train, 28, 28), dtype=np.uint8)
    va = np.full((50, 28, 28), VAL_VALUE, np.uint8)
    te = np.full((50, 28, 28), TEST_VALUE, np.uint8)
    y = lambda n: np.arange(n, dtype=np.int64) % 3  # noqa: E731
    return Dataset("fake", "test", "0" * 64, ["a", "b", "c"], Split(tr, y(n_train)), Split(va, y(50)), Split(te, y(50)))


def test_calibration_draws_only_from_training_split():
    data = CalibrationData.from_dataset(image_spec(), fake_dataset(), size=256, batch_size=32)
    assert data.n_samples == 256 and len(data) == 8
    allpix = np.concatenate([b["pixels"] for b in data])
    assert allpix.dtype == np.float32 and allpix.shape == (256, 1, 28, 28)
    assert allpix.max() <= TRAIN_MAX / 255.0 + 1e-6  # no 200/255 (val) or 1.0 (test) pixel anywhere
    assert data.describe()["split"] == "train"
    for bad in ("test", "val"):
        with pytest.raises(CalibrationError, match=f"got '{bad}', expected 'train'"):
            CalibrationData.from_dataset(image_spec(), fake_dataset(), split=bad)


def test_calibration_size_is_capped_by_the_training_split():
    data = CalibrationData.from_dataset(image_spec(), fake_dataset(n_train=40), size=256, batch_size=16)
    assert data.n_samples == 40 and [len(b["pixels"]) for b in data] == [16, 16, 8]


def test_selection_is_seeded_and_deterministic():
    ds = fake_dataset()
    a = CalibrationData.from_dataset(image_spec(), ds, size=64, batch_size=16, seed=0)
    b = CalibrationData.from_dataset(image_spec(), ds, size=64, batch_size=16, seed=0)
    c = CalibrationData.from_dataset(image_spec(), ds, size=64, batch_size=16, seed=1)
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["pixels"], y["pixels"])


def test_ort_reader_rewinds_to_identical_batches():
    data = CalibrationData.from_dataset(image_spec(), fake_dataset(), size=100, batch_size=32)
    reader = OrtCalibrationReader(data)
    first = []
    while (feed := reader.get_next()) is not None:
        first.append(feed)
    assert len(first) == 4 and reader.get_next() is None
    reader.rewind()
    second = list(iter(reader.get_next, None))
    assert len(second) == 4
    for x, y in zip(first, second):
        assert list(x) == ["pixels"]
        np.testing.assert_array_equal(x["pixels"], y["pixels"])
    # the arrays handed out are read-only: a consumer cannot change the next pass
    with pytest.raises(ValueError):
        first[0]["pixels"][0, 0, 0, 0] = 1.0
    reader.set_range(1, 3)
    assert len(list(iter(reader.get_next, None))) == 2


def test_onnxruntime_accepts_the_reader_protocol():
    from onnxruntime.quantization import CalibrationDataReader

    data = CalibrationData.from_arrays({"x": np.zeros((4, 2), np.float32)}, batch_size=2)
    assert isinstance(OrtCalibrationReader(data), CalibrationDataReader)


def test_text_calibration_batches_are_trimmed_token_ids(tmp_path):
    from zoo.tokenizer import train_tokenizer

    sentences = [f"a {'good ' * (i % 7)}movie number {i}" for i in range(60)]
    train_tokenizer(sentences, 200, 16, tmp_path / "tokenizer.json")
    spec = ModelSpec(
        name="t", task="text_classification", inputs=[TensorSpec("input_ids", "int64", ("batch", "sequence"))],
        outputs=[TensorSpec("logits", "float32", ("batch", 2))],
        dynamic={"batch": DimRange(1, 8, 64), "sequence": DimRange(1, 16, 16)}, labels=["n", "p"], dataset="fake",
        preprocess={"kind": "text", "tokenizer": "tokenizer.json", "max_len": 16, "pad_id": 0, "cls_id": 2})
    y = np.zeros(60, np.int64)
    ds = Dataset("fake", "t", "0", ["n", "p"], Split(sentences, y), Split(["val"] * 5, y[:5]), Split(["test"] * 5, y[:5]))
    data = CalibrationData.from_dataset(spec, ds, tmp_path, size=32, batch_size=8)
    widths = {b["input_ids"].shape[1] for b in data}
    assert len(widths) == 1 and widths.pop() <= 16  # one width: histogram calibrators stack batches
    ids = np.concatenate([b["input_ids"] for b in data])
    assert ids.dtype == np.int64 and (ids[:, 0] == 2).all()  # [CLS] first
    assert (ids[:, -1] != 0).any()  # columns that are padding in every sentence are trimmed


def test_synthetic_images_for_parity_only_models():
    spec = image_spec(dataset=None)
    a = CalibrationData.synthetic_images(spec, size=12, batch_size=4, seed=0)
    b = CalibrationData.synthetic_images(spec, size=12, batch_size=4, seed=0)
    assert a.sha256 == b.sha256 and len(a) == 3
    x = np.concatenate(list(b["pixels"] for b in a))
    assert x.shape == (12, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    ev = load_eval_set(spec, ".", synthetic_n=6)
    assert ev.y is None and len(ev) == 6 and not np.array_equal(ev.inputs["pixels"], x[:6])  # different seed from calibration


def test_eval_set_refuses_training_split():
    with pytest.raises(CalibrationError, match="train"):
        load_eval_set(image_spec(), ".", split="train", dataset=fake_dataset())
    ev = load_eval_set(image_spec(), ".", split="val", dataset=fake_dataset())
    assert len(ev) == 50 and np.allclose(ev.inputs["pixels"], VAL_VALUE / 255.0)


def test_range_cache_roundtrip(tmp_path):
    key = CacheKey("m" * 64, "d" * 64, "MinMax", {"op_types": ["Conv"]})
    rc = RangeCache(tmp_path / "c.json")
    assert rc.load(key) is None and rc.last_miss == "no cache file"
    ranges = {"a": TensorRange(-2.0, 1.0), "b": TensorRange(0.0, 0.0)}
    rc.save(key, ranges)
    got = RangeCache(tmp_path / "c.json").load(key)
    assert got == ranges and got["a"].amax == 2.0 and got["a"].scale == pytest.approx(2.0 / 127)
    assert got["b"].scale > 0
    for other, field in [(CacheKey("x" * 64, "d" * 64, "MinMax", {"op_types": ["Conv"]}), "model_sha256"),
                         (CacheKey("m" * 64, "e" * 64, "MinMax", {"op_types": ["Conv"]}), "data_sha256"),
                         (CacheKey("m" * 64, "d" * 64, "Entropy", {"op_types": ["Conv"]}), "method")]:
        assert rc.load(other) is None and field in rc.last_miss


# ---- calibration against a real (tiny) graph: the cache is reused and invalidated --------------------------
def _tiny_onnx(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


def test_calibration_cache_reused_and_invalidated(tmp_path):
    from optimize.int8_build import calibrate_ranges

    model = _tiny_onnx(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    data = CalibrationData.from_arrays({"x": x}, batch_size=16)
    cache = RangeCache(tmp_path / "calib.json")
    r1, i1 = calibrate_ranges(model, data, "MinMax", cache)
    assert i1["cache"] == "computed" and i1["batches_served"] == 4
    assert r1["x"].lowest == pytest.approx(float(x.min())) and r1["x"].highest == pytest.approx(float(x.max()))
    r2, i2 = calibrate_ranges(model, data, "MinMax", cache)
    assert i2["cache"] == "hit" and i2["batches_served"] == 0 and r2 == r1  # no recomputation
    data2 = CalibrationData.from_arrays({"x": x * 2}, batch_size=16)
    r3, i3 = calibrate_ranges(model, data2, "MinMax", cache)
    assert i3["cache"] == "computed" and "data_sha256" in i3["cache_miss_reason"]
    assert r3["x"].highest == pytest.approx(2 * r1["x"].highest)
    _, i4 = calibrate_ranges(model, data2, "Percentile", cache)
    assert i4["cache"] == "computed" and "method" in i4["cache_miss_reason"]


@pytest.mark.parametrize("method", ["Entropy", "Percentile"])
def test_histogram_methods_give_ranges_inside_minmax(tmp_path, method):
    from optimize.int8_build import calibrate_ranges

    model = _tiny_onnx(tmp_path)
    x = np.random.default_rng(1).standard_normal((128, 8)).astype(np.float32)
    data = CalibrationData.from_arrays({"x": x}, batch_size=32)
    mm, _ = calibrate_ranges(model, data, "MinMax")
    hist, info = calibrate_ranges(model, data, method)
    assert info["method"] == method and set(hist) == set(mm)
    for k in mm:
        assert 0 < hist[k].amax <= mm[k].amax * 1.0001


def test_eval_subset_rows_are_its_index():
    """A reference computed on the whole evaluation set serves a subset through subset_index (quantize computes the
    fp32 reference once for the fp16 check and the int8 loop)."""
    from calibration.evalset import EvalSet

    x = np.arange(50 * 3, dtype=np.int64).reshape(50, 3)
    es = EvalSet({"input_ids": x}, np.arange(50) % 2, 0, "toy")
    sub, idx = es.subset(20, seed=4), es.subset_index(20, seed=4)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    assert np.array_equal(sub.inputs["input_ids"], x[idx]) and np.array_equal(sub.y, (np.arange(50) % 2)[idx])
    assert es.subset(None) is es and np.array_equal(es.subset_index(None), np.arange(50))


def test_uniform_histogram_collector_matches_onnxruntimes():
    """The Percentile calibrator's histogram binned by numpy's uniform path (optimize.int8_build): the same
    thresholds as ONNX Runtime's own collector on batches whose range grows, and the same counts up to values at
    an edge's float rounding."""
    from types import SimpleNamespace

    from onnxruntime.quantization.calibrate import HistogramCollector

    from optimize.int8_build import uniform_histogram_collector

    kw = dict(method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=128, percentile=99.99,
              scenario="symmetric")
    ort_c, ours = HistogramCollector(**kw), uniform_histogram_collector(SimpleNamespace(**kw))
    rng = np.random.default_rng(0)
    for i in range(4):  # heavy tails, a range that grows batch by batch
        batch = {f"t{j}": (rng.standard_t(3, size=(8, 64, 96)) * (1 + 0.5 * i * j)).astype(np.float32)
                 for j in range(3)}
        ort_c.collect(batch)
        ours.collect(batch)
    a, b = ort_c.compute_collection_result(), ours.compute_collection_result()
    for k in a:
        assert np.allclose(np.asarray(a[k][:2], np.float64), np.asarray(b[k][:2], np.float64), rtol=1e-4), (k, a[k], b[k])
        ha, hb = ort_c.histogram_dict[k][0], ours.histogram_dict[k][0]
        assert len(ha) == len(hb) and np.abs(ha - hb).sum() <= 1e-2 * ha.sum()  # float32 vs float64 edges
