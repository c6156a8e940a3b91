"""Export, simplify, verify compare and the localiser, on tiny seeded models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.checks import ExportCheckError, pre_export_check
from export.onnx_export import ExportError, check_against_torch, export_model
from optimize.simplify import simplify_file
from zoo.spec import load_spec
from tests.conftest import tiny_model
from judge.figures import compare
from verify.localize import localize
from zoo.spec import DEFAULT_TOLERANCES


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each tiny model exported and simplified once for the module."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in ("text_transformer", "attention_cnn", "vit"):
        b = tiny_model(name)
        sec = export_model(b, root / name / "fp32.onnx")
        sim = simplify_file(root / name / "fp32.onnx", root / name / "fp32.sim.onnx")
        out[name] = (b, root / name, sec, sim)
    return out


@pytest.mark.parametrize("name", ["text_transformer", "attention_cnn", "vit"])
def test_export_graph_properties(exported, name):
    b, d, sec, _ = exported[name]
    m = onnx.load(str(d / "fp32.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert [i.name for i in m.graph.input] == [t.name for t in b.spec.inputs]
    assert [o.name for o in m.graph.output] == ["logits"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch
    if name == "text_transformer":
        assert dims[1].dim_param  # dynamic sequence
    else:
        ops = {n.op_type for n in m.graph.node}
        if name == "vit":
            assert "LayerNormalization" in ops  # one op, not a decomposition
    assert load_spec(m).name == name
    assert sec["sha256"] and sec["nodes"] == len(m.graph.node)


@pytest.mark.parametrize("name", ["text_transformer", "attention_cnn", "vit"])
@pytest.mark.parametrize("which", ["fp32.onnx", "fp32.sim.onnx"])
def test_parity_at_dynamic_sizes(exported, name, which):
    import onnxruntime as ort

    b, d, _, _ = exported[name]
    sess = ort.InferenceSession(str(d / which), providers=["CPUExecutionProvider"])
    sizes = [{"batch": 1}, {"batch": 7}]
    if name == "text_transformer":
        sizes += [{"batch": 2, "sequence": 1}, {"batch": 3, "sequence": b.spec.dynamic["sequence"].max}]
    for i, s in enumerate(sizes):
        feed = b.spec.example_inputs(s, seed=i)
        with torch.no_grad():
            ref = b.module(torch.from_numpy(feed[b.spec.inputs[0].name])).numpy()
        got = sess.run(None, feed)[0]
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_simplify_records_counts_and_parity(exported):
    for name, (_, d, _, sim) in exported.items():
        assert sim["nodes_before"] == len(onnx.load(str(d / "fp32.onnx")).graph.node)
        assert sim["nodes_after"] == len(onnx.load(str(d / "fp32.sim.onnx")).graph.node)
        assert sim["nodes_after"] <= sim["nodes_before"]
        assert sim["parity_max_rel_diff"] <= 1e-5
        assert load_spec(d / "fp32.sim.onnx").name == name  # metadata survives simplification


def test_pre_export_check_rejects_low_opset():
    b = tiny_model("vit")
    rep = pre_export_check(b.module, opset=16)
    with pytest.raises(ExportCheckError, match="opset 16 < 17: LayerNormalization"):
        rep.raise_if_errors("export 'vit'")
    with pytest.raises(ExportCheckError, match="opset 16"):
        export_model(b, "/nonexistent/never-written.onnx", opset=16)


def test_baked_shape_is_caught(tmp_path):
    """The TorchScript exporter bakes the sequence length into MHA reshapes; our parity check says so."""
    b = tiny_model("text_transformer")
    with pytest.raises(ExportError, match=r"fails at (min|max) sizes"):
        export_model(b, tmp_path / "ts.onnx", exporters=("torchscript",))
    assert not (tmp_path / "ts.onnx").exists()  # atomic: nothing half-written is left behind


def test_check_against_torch_detects_a_wrong_graph(exported, tmp_path):
    b, d, _, _ = exported["vit"]
    m = onnx.load(str(d / "fp32.onnx"))
    for t in m.graph.initializer:
        if t.name == "head.bias":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, t.name))
    onnx.save(m, str(tmp_path / "bad.onnx"))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_against_torch(b, tmp_path / "bad.onnx")


def test_compare_values():
    ref = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    same = compare(ref, ref.copy(), labels, DEFAULT_TOLERANCES["fp32"])
    assert same and same.max_abs_diff == 0 and same.top1_agreement == 1.0
    assert same.accuracy == pytest.approx(2 / 3) and same.accuracy_delta == 0
    flipped = ref.copy()
    flipped[2] = [0.0, 1.0]  # third sample now predicts 1 = correct label
    c = compare(ref, flipped, labels, DEFAULT_TOLERANCES["int8"])
    assert c.top1_agreement == pytest.approx(2 / 3) and c.accuracy_delta == pytest.approx(100 / 3)  # points
    assert not c and any("top1_agreement" in r for r in c.reasons)
    nan = ref.copy()
    nan[0, 0] = np.nan
    c = compare(ref, nan, labels, DEFAULT_TOLERANCES["fp16"])
    assert not c and c.nonfinite == 1 and "NaN/Inf" in c.reasons[0]


@pytest.mark.parametrize("name,init,module", [
    ("vit", "blocks.0.mlp.0.bias", "blocks.0.mlp.0"),
    ("text_transformer", "encoder.layers.0.linear1.bias", "encoder.layers.0.linear1"),
    ("attention_cnn", "attention.value.weight", "attention.value"),
])
def test_localiser_finds_injected_fault(exported, tmp_path, name, init, module):
    b, d, _, _ = exported[name]
    feed = b.spec.example_inputs({"batch": 1}, seed=3)
    assert localize(b, d / "fp32.onnx", feed) is None  # the clean graph has no divergence
    m = onnx.load(str(d / "fp32.onnx"))
    hit = [t for t in m.graph.initializer if t.name == init]
    assert hit, f"initializer {init} not in graph"
    hit[0].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(hit[0]) + 0.5, init))
    onnx.save(m, str(tmp_path / "bad.onnx"))
    rep = localize(b, tmp_path / "bad.onnx", feed)
    assert rep is not None and rep.module == module
    assert rep.rel_error > 1e-3 and rep.onnx_node
