"""pipeline.quiet.fold_repeats: a third-party warning repeated inside comes out once, with its count; the project's
own records pass at once; logging is as it was afterwards. ONNX Runtime's real quantizer hint is folded too."""
from __future__ import annotations

import logging
import warnings

import numpy as np

from pipeline.quiet import fold_repeats

LOG = "edgeattn.test_quiet"


def _lines(caplog, name: str = LOG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_a_repeated_warning_comes_out_once_with_its_count(caplog):
    caplog.set_level(logging.INFO)
    lib = logging.getLogger("somelib.quant")
    root = logging.getLogger()
    level, n_filters = root.level, len(root.filters)
    with warnings.catch_warnings(), fold_repeats(LOG) as seen:
        warnings.filterwarnings("ignore", category=FutureWarning)  # an ignored category stays ignored
        for i in range(5):
            warnings.warn("ignored", FutureWarning)
            lib.warning("please pre-process   the model")  # whitespace folded: one message
            warnings.warn("calibration range is empty", RuntimeWarning)
            logging.getLogger("edgeattn.mine").warning("own %d", i)  # ours: passes at once
        lib.error("one error")
        lib.info("info is not held")
        assert not _lines(caplog)  # nothing summarised before the exit
    got = _lines(caplog)
    assert got == ["somelib.quant (x5): please pre-process the model", "somelib.quant: one error",
                   "test_quiet RuntimeWarning (x5): calibration range is empty"], got
    assert [r.levelno for r in caplog.records if r.name == LOG] == [logging.WARNING, logging.ERROR, logging.WARNING]
    assert [r.getMessage() for r in caplog.records if r.name == "edgeattn.mine"] == [f"own {i}" for i in range(5)]
    assert not [r for r in caplog.records if r.name == "somelib.quant" and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in caplog.records if r.name == "somelib.quant"] == ["info is not held"]
    assert sum(seen.counts.values()) == 11
    assert (root.level, len(root.filters)) == (level, n_filters)
    caplog.clear()
    lib.warning("after the block")  # not held any more
    assert [r.getMessage() for r in caplog.records] == ["after the block"]


def test_root_at_error_still_counts_and_is_restored(caplog):
    """quantize's CLI keeps the root logger at ERROR: the hints are still counted, and the level comes back."""
    caplog.set_level(logging.INFO, logger=LOG)
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with fold_repeats(LOG):
            for _ in range(3):
                logging.warning("hint on the root logger")
        assert root.level == logging.ERROR
    finally:
        root.setLevel(old)
    assert _lines(caplog) == ["test_quiet (x3): hint on the root logger"]


def test_onnxruntime_quantizer_hint_once_per_stage(tmp_path, caplog):
    """Three quantize_dynamic runs on a tiny MatMul graph: ONNX Runtime's 'Please consider to run pre-processing'
    hint (root logger, once per run) comes out once, counted 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    caplog.set_level(logging.INFO, logger=LOG)
    with fold_repeats(LOG):
        for i in range(3):
            quantize_dynamic(str(src), str(tmp_path / f"q{i}.onnx"), weight_type=QuantType.QInt8)
    hints = [m for m in _lines(caplog) if "pre-processing" in m]
    assert len(hints) == 1 and hints[0].startswith("onnxruntime.quantization.quantize (x3): Please consider"), hints
    assert not [r for r in caplog.records if r.name == "root"]
