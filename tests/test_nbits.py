"""Weight-only MatMulNBits weights (optimize.nbits) and activation-aware scales (optimize.awq), by value: numpy's
round-to-nearest blocks equal ONNX Runtime's quantiser's bit for bit, zero points fit a skewed block better than the
symmetric rule, the clipping search never loses to round-to-nearest on any block, every packed layout runs in ONNX
Runtime as the numpy weights say, and AWQ's folded scales leave the float graph's logits unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from test_generate import exported, onnx_path, texts, tiny_dir  # noqa: F401 - pytest fixtures

pytest.importorskip("onnxruntime")


def _matmul(path, w):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                          [numpy_helper.from_array(w.astype(np.float32), "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _deq(w, bits, block, symmetric, clip=False, importance=None):
    from optimize.awq import dequantized

    return dequantized(w, bits, block, symmetric, clip, importance)


@pytest.mark.parametrize("bits,block,symmetric", [(4, 32, True), (4, 16, False), (8, 32, False), (8, 16, True)])
def test_numpy_blocks_are_onnxruntimes_round_to_nearest_and_run_as_packed(tmp_path, bits, block, symmetric):
    """K = 80 gives an odd number of 16-blocks (zero points padded to a byte) and a padded last 32-block."""
    import onnxruntime as ort

    from optimize.nbits import dequantized_weights, matmul_nbits

    rng = np.random.default_rng(bits + block)
    w = (rng.standard_normal((80, 24)) * 0.1 + 0.03).astype(np.float32)
    src = _matmul(tmp_path / "mm.onnx", w)
    x = rng.standard_normal((5, 80)).astype(np.float32)
    for clip in (False, True):
        dst = tmp_path / f"q{int(clip)}.onnx"
        s = matmul_nbits(src, dst, bits, block, accuracy_level=0, symmetric=symmetric, clip=clip)
        assert (s["nodes"], s["symmetric"], s["clip"]) == (1, symmetric, clip)
        got = dequantized_weights(dst)["mm"]
        assert np.array_equal(got, _deq(w, bits, block, symmetric, clip))  # ORT's own values (clip: ours, packed)
        y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(y - x @ got).max() < 1e-4 * np.abs(x @ got).max()  # float compute: the packed weights


def test_zero_points_fit_a_skewed_block_better_than_the_symmetric_rule():
    rng = np.random.default_rng(1)
    w = (0.5 + 0.1 * rng.random((32, 8))).astype(np.float32)  # every value in [0.5, 0.6]: one-sided blocks
    sym, asym = _deq(w, 4, 32, True), _deq(w, 4, 32, False)
    e_sym, e_asym = np.square(sym - w).mean(), np.square(asym - w).mean()
    # zero points: steps of 0.6 / 15 over [0, 0.6] (0 stays in the range); symmetric: 0.6 / 8, half its codes unused
    assert e_asym < e_sym / 2.5
    assert np.abs(asym - w).max() <= w.max() / 15 / 2 + 1e-6 < np.abs(sym - w).max()


def test_the_clipping_search_never_loses_to_round_to_nearest_on_any_block():
    from optimize.nbits import quantize_blocks

    rng = np.random.default_rng(2)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    w[rng.integers(0, 256, 40), rng.integers(0, 64, 40)] *= 6  # outliers: a block's range is worth shrinking
    for symmetric in (True, False):
        rtn, clip = _deq(w, 4, 32, symmetric), _deq(w, 4, 32, symmetric, clip=True)
        per_block = lambda d: np.square(d - w).reshape(8, 32, 64).sum(axis=1)  # noqa: E731 - (blocks, N)
        assert (per_block(clip) <= per_block(rtn) + 1e-6).all()
        assert per_block(clip).sum() < 0.95 * per_block(rtn).sum()  # 7 % (symmetric) on these weights
    imp = np.ones(256, np.float32)
    imp[:32] = 100.0  # the first block's channels matter most: the weighted search trades error into the others
    q, _, _ = quantize_blocks(w, 4, 32, True, clip=True, importance=imp)
    assert q.shape == (64, 8, 32) and q.dtype == np.uint8 and q.max() <= 15
    weighted = _deq(w, 4, 32, True, True, imp)
    assert np.square(weighted - w)[:32].sum() <= np.square(_deq(w, 4, 32, True, True) - w)[:32].sum() + 1e-6


def test_awq_scales_fold_into_the_layernorms_and_leave_the_float_logits_unchanged(onnx_path, tmp_path):  # noqa: F811
    """On the tiny GPT-2 (its Gemms read a Reshape of a LayerNorm): the groups behind a LayerNorm fold through the
    Reshape (no op added), the float graph's logits are unchanged, each group's chosen alpha has no more error than
    no scaling, and a Mul is inserted only where asked (``with_mul``)."""
    import json

    import onnx

    from calibration.windows import prefill_feed
    from optimize.awq import awq_graph
    from optimize.decoder_quant import DecoderQuantOptions, _windows, prepare, sweep_feeds
    from optimize.qdq_graph import quantizable_nodes
    from runtime.generate import DecoderInfo
    from runtime.ort_backend import cpu_session
    from zoo.io import save_onnx
    from zoo.spec import load_spec

    folder = onnx_path.parent
    prepared = tmp_path / "p.onnx"
    prepare(onnx_path, prepared)
    spec = load_spec(onnx_path)
    info = DecoderInfo.from_spec(spec.to_dict(), "tiny")
    calib = _windows(spec, folder, "train", 512, DecoderQuantOptions(block=32))
    nodes = quantizable_nodes(onnx.load(str(prepared)))
    model, groups = awq_graph(prepared, nodes, sweep_feeds(info, calib, 4), 4, 32, threads=1)
    assert groups and all(g["how"] in (None, "layernorm_fold") for g in groups)
    assert any(g["alpha"] is not None for g in groups)  # something was worth scaling on these weights
    for g in groups:
        assert g["error_chosen"] <= g["error_none"] + 1e-12
    src = onnx.load(str(prepared))
    assert len(model.graph.node) == len(src.graph.node)  # folded: no Mul
    save_onnx(model, tmp_path / "awq.onnx")
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    feed = prefill_feed(info, calib.inputs["input_ids"][:2])
    a = cpu_session(str(prepared), "all", 1).run(["logits"], feed)[0]
    b = cpu_session(str(tmp_path / "awq.onnx"), "all", 1).run(["logits"], feed)[0]
    assert np.abs(a - b).max() < 1e-4 * np.sqrt(np.mean(a ** 2))
    muls, _ = awq_graph(prepared, nodes, sweep_feeds(info, calib, 4), 4, 32, with_mul=True, threads=1)
    assert len(muls.graph.node) > len(src.graph.node)  # the attention and MLP output projections get a Mul


def test_a_float_tied_head_reads_the_embedding_table_once(onnx_path, tmp_path):  # noqa: F811
    """The head-float 4-bit form of the tiny GPT-2 (tied LM head): the head reads the Gather's table through one
    Transpose, so the file is smaller by the table's bytes than with the folded copy, and its logits are identical."""
    import onnx

    from calibration.windows import prefill_feed
    from optimize.decoder_quant import fold_constant_transposes, prepare
    from optimize.nbits import lm_head, matmul_nbits
    from optimize.qdq_graph import quantizable_nodes
    from runtime.generate import DecoderInfo
    from runtime.ort_backend import cpu_session
    from zoo.io import save_onnx
    from zoo.spec import load_spec

    prepared = tmp_path / "p.onnx"
    assert prepare(onnx_path, prepared)["folded_transposes"] == 1  # the tied head: MatMul(x, Transpose(wte))
    src = onnx.load(str(prepared))
    head = lm_head(src, quantizable_nodes(src))
    shared = tmp_path / "head_fp32.onnx"
    s = matmul_nbits(prepared, shared, 4, 32, exclude=[head])
    assert s["tied_weights_shared"] == 1 and s["float_matmuls"] == 1
    m = onnx.load(str(shared))
    table = next(n.input[0] for n in m.graph.node if n.op_type == "Gather")
    v, d = next(t.dims for t in m.graph.initializer if t.name == table)
    assert not [t.name for t in m.graph.initializer if tuple(t.dims) == (d, v)]  # no transposed copy stored
    fold_constant_transposes(m)  # the form as it was written before: the transposed table stored as well
    save_onnx(m, tmp_path / "copy.onnx")
    saved = (tmp_path / "copy.onnx").stat().st_size - shared.stat().st_size
    assert abs(saved - v * d * 4) < 1024, (saved, v * d * 4)
    (tmp_path / "spec.json").write_text(onnx_path.with_name("spec.json").read_text())
    info = DecoderInfo.from_spec(load_spec(onnx_path).to_dict(), "tiny")
    feed = prefill_feed(info, np.arange(2 * 9, dtype=np.int64).reshape(2, 9) % info.vocab_size)
    a = cpu_session(str(shared), "all", 1).run(["logits"], feed)[0]
    b = cpu_session(str(tmp_path / "copy.onnx"), "all", 1).run(["logits"], feed)[0]
    assert np.array_equal(a, b)


def test_a_node_can_hold_another_width_the_head_at_8_bits_in_a_4_bit_graph(onnx_path, tmp_path):  # noqa: F811
    import onnx
    from onnx import helper

    from optimize.decoder_quant import prepare
    from optimize.layer_error import float_weight
    from optimize.nbits import dequantized_weights, lm_head, matmul_nbits
    from optimize.qdq_graph import quantizable_nodes

    prepared = tmp_path / "p.onnx"
    prepare(onnx_path, prepared)
    src = onnx.load(str(prepared))
    nodes = quantizable_nodes(src)
    head = lm_head(src, nodes)
    s = matmul_nbits(prepared, tmp_path / "mixed.onnx", 4, 32, node_bits={head: 8})
    assert (s["nodes"], s["bits"], s["float_matmuls"]) == (9, [4, 8], 0)
    m = onnx.load(str(tmp_path / "mixed.onnx"))
    bits = {n.name: next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")
            for n in m.graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop(head) == 8 and set(bits.values()) == {4}
    w = float_weight(src, next(nd for nd in nodes if nd.name == head))
    err8 = np.abs(dequantized_weights(m)[head] - w).max()
    err4 = np.abs(dequantized_weights(tmp_path / "mixed.onnx")[nodes[0].name]
                  - float_weight(src, nodes[0])).max()
    assert err8 < np.abs(w).max() / 127 and err4 > err8  # 8-bit steps on the head, 4-bit elsewhere
    assert matmul_nbits(prepared, tmp_path / "x.onnx", 4, 32, exclude=[head], node_bits={head: 8})["bits"] == [4]
