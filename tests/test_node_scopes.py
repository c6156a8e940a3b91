"""PyTorch module scopes survive simplify, fp16 and int8 (optimize.node_scopes): every node of every artifact of a
tiny vit / text_transformer carries one, only metadata changes, and the localiser names the module of a weight
broken in the fp16, TensorRT Q/DQ and CPU int8 graphs."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from optimize.node_scopes import MODULE_SCOPE, NAME_SCOPES, SCOPE_FROM, carry, coverage, module_scope, record, \
    reattach, strip  # noqa: E402

# (model, module broken in the tests, that module's Linear in PyTorch)
BROKEN = {"vit": ("blocks.0.mlp.0", lambda m: m.blocks[0].mlp[0]),
          "text_transformer": ("encoder.layers.0.linear1", lambda m: m.encoder.layers[0].linear1)}
QUANTISED = ("int8.qdq.onnx", "int8.cpu.dynamic.onnx", "int8.cpu.qoperator.onnx", "int8.cpu.qdq_u8s8.onnx")
ARTIFACTS = ("fp32.sim.onnx", "fp16.onnx") + QUANTISED


def _build(d, name, reports):
    from calibration import CalibrationData
    from export.onnx_export import export_model
    from optimize.fp16 import convert_fp16
    from optimize.int8_build import calibrate_ranges, quantize_dynamic_matmul, quantize_static_cached
    from optimize.qdq_graph import quantizable_nodes
    from optimize.simplify import simplify_file

    built = tiny_model(name)
    export_model(built, d / "fp32.onnx")
    reports["fp32.sim.onnx"] = simplify_file(d / "fp32.onnx", d / "fp32.sim.onnx")["scopes"]
    reports["fp16.onnx"] = convert_fp16(d / "fp32.sim.onnx", d / "fp16.onnx")["scopes"]
    sim = d / "fp32.sim.onnx"
    x = built.spec.example_inputs({"batch": 16}, seed=0)
    ranges, _ = calibrate_ranges(sim, CalibrationData.from_arrays(x, batch_size=8), "MinMax")
    nodes = [n.name for n in quantizable_nodes(onnx.load(str(sim)))]
    for flavour, f in (("trt", "int8.qdq.onnx"), ("qoperator", "int8.cpu.qoperator.onnx"),
                       ("qdq_u8s8", "int8.cpu.qdq_u8s8.onnx")):
        reports[f] = quantize_static_cached(sim, d / f, ranges, "MinMax", nodes, flavour)
    quantize_dynamic_matmul(sim, d / "int8.cpu.dynamic.onnx")
    return built


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Each tiny model exported, simplified, converted to fp16 and quantised (TensorRT Q/DQ and three CPU forms)
    by the pipeline's own functions; with the coverage reports they returned."""
    root = tmp_path_factory.mktemp("scopes")
    out = {}
    for name in BROKEN:
        d = root / name
        d.mkdir()
        reports: dict = {}
        out[name] = (_build(d, name, reports), d, reports)
    return out


@pytest.mark.parametrize("name", list(BROKEN))
def test_every_node_of_every_artifact_carries_a_scope(artifacts, name):
    _, d, reports = artifacts[name]
    assert coverage(onnx.load(str(d / "fp32.onnx")))[0] == len(onnx.load(str(d / "fp32.onnx")).graph.node)
    for f in ARTIFACTS:
        m = onnx.load(str(d / f))
        scoped, total = coverage(m)
        assert scoped == total, f"{f}: {[(n.op_type, n.name) for n in m.graph.node if module_scope(n) is None]}"
    for f, rep in reports.items():  # the stages report it; before: onnxsim/onnxslim left none
        assert rep["scoped_after"] == rep["nodes"] > rep["scoped_before"], (f, rep)
    assert reports["fp32.sim.onnx"]["scoped_before"] == 0
    m = onnx.load(str(d / "int8.qdq.onnx"))
    kinds = {n.op_type for n in m.graph.node if any(p.key == SCOPE_FROM for p in n.metadata_props)}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    module = BROKEN[name][0]
    assert module in {module_scope(n) for n in m.graph.node if n.op_type == "DequantizeLinear"}


def _without_scopes(monkeypatch, d, name, tmp_path):
    """The same artifacts written with the scope carrying turned off (the graphs as the tools leave them)."""
    import optimize.node_scopes as ns
    import optimize.simplify as simplify

    monkeypatch.setattr(simplify, "_carry_scopes", lambda src, b: (b, {}))
    monkeypatch.setattr(ns, "reattach", lambda model, table: {})
    monkeypatch.setattr(ns, "reattach_file", lambda dst, table: {})
    monkeypatch.setattr(ns, "carry_file", lambda src, dst: {})
    raw = tmp_path / name
    raw.mkdir()
    _build(raw, name, {})
    return raw


def test_only_metadata_changes(artifacts, monkeypatch, tmp_path):
    """Stripped of node metadata, each artifact is byte-identical to the one written without the scope carrying;
    nodes that had metadata keep it unchanged."""
    name = "vit"
    _, d, _ = artifacts[name]
    raw_dir = _without_scopes(monkeypatch, d, name, tmp_path)
    for f in ARTIFACTS:
        got, raw = onnx.load(str(d / f)), onnx.load(str(raw_dir / f))
        assert coverage(raw)[0] < coverage(got)[0] == len(got.graph.node), f
        for a, b in zip(got.graph.node, raw.graph.node):
            if b.metadata_props:
                assert list(a.metadata_props) == list(b.metadata_props), f
        strip(got)
        strip(raw)
        assert got.SerializeToString() == raw.SerializeToString(), f


def test_reattach_rules_on_a_hand_made_graph():
    """Output name, node name, consumers (common parent for several), producers; a graph without any scope in its
    source is left alone; reattach never touches a node that has a scope."""
    from onnx import TensorProto, helper

    def scoped(node, scopes):
        p = node.metadata_props.add()
        p.key, p.value = NAME_SCOPES, repr(scopes)
        return node

    src_nodes = [scoped(helper.make_node("Relu", ["x"], ["a"], name="r"), ["", "enc", "enc.0", "relu"]),
                 scoped(helper.make_node("Neg", ["a"], ["b"], name="n"), ["", "enc", "enc.1", "neg"]),
                 scoped(helper.make_node("Abs", ["a"], ["c"], name="abs"), ["", "enc", "enc.2", "abs"]),
                 scoped(helper.make_node("Add", ["b", "c"], ["y"], name="add"), ["", "head", "add"])]
    vi = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [2]) for t in ("x", "y")]
    src = helper.make_model(helper.make_graph(src_nodes, "g", vi[:1], vi[1:]))
    dst_nodes = [helper.make_node("Identity", ["x"], ["x2"], name="in_cast"),  # feeds r2: consumers rule
                 helper.make_node("Relu", ["x2"], ["a"], name="r2"),  # output 'a': output rule
                 helper.make_node("Identity", ["a"], ["a2"], name="fan"),  # feeds enc.1 and enc.2: common 'enc'
                 helper.make_node("Neg", ["a2"], ["b2"], name="n"),  # renamed output, same name: name rule
                 helper.make_node("Abs", ["a2"], ["c"], name="abs_new"),
                 helper.make_node("Add", ["b2", "c"], ["y0"], name="add_new"),  # new output and name: consumers
                 helper.make_node("Identity", ["y0"], ["y"], name="out_cast")]  # output 'y' of 'add'
    dst = helper.make_model(helper.make_graph(dst_nodes, "g", vi[:1], vi[1:]))
    rep = carry(src, dst)
    scopes = {n.name: module_scope(n) for n in dst.graph.node}
    assert scopes == {"in_cast": "enc.0", "r2": "enc.0", "fan": "enc", "n": "enc.1", "abs_new": "enc.2",
                      "add_new": "head", "out_cast": "head"}
    assert rep["from"] == {"output": 3, "name": 1, "consumers": 3, "producers": 0}
    assert rep["scoped_before"] == 0 and rep["scoped_after"] == 7
    again = carry(src, dst)  # idempotent: everything already has a scope
    assert again["scoped_before"] == again["scoped_after"] == 7 and not any(again["from"].values())

    # producers rule: a node fed by scoped nodes whose output only leaves the graph
    tail = helper.make_model(helper.make_graph(
        [scoped(helper.make_node("Relu", ["x"], ["a"], name="r"), ["", "m", "relu"]),
         helper.make_node("Identity", ["a"], ["y"], name="out")], "g", vi[:1], vi[1:]))
    assert reattach(tail, record(tail))["from"]["producers"] == 1
    assert module_scope(tail.graph.node[1]) == "m"

    # TorchScript-style scopes (node names) travel as edgeattn.module_scope
    ts = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/enc/layers.0/Relu")],
                                             "g", vi[:1], vi[1:]))
    renamed = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="Relu_0")],
                                                  "g", vi[:1], vi[1:]))
    carry(ts, renamed)
    assert module_scope(renamed.graph.node[0]) == "enc.layers.0"
    assert any(p.key == MODULE_SCOPE for p in renamed.graph.node[0].metadata_props)

    bare = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", vi[:1],
                                               vi[1:]))
    assert carry(bare, bare)["scoped_after"] == 0 and not bare.graph.node[0].metadata_props


def _weight_name(model, w: np.ndarray) -> str:
    """The initializer holding PyTorch weight ``w`` (or its transpose) in a float graph: found by value, not scope."""
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        for v in (w, w.T):
            if a.shape == v.shape and np.allclose(a, v, atol=1e-6):
                return t.name
    raise AssertionError("weight not found in the graph")


def _break_weight(src, dst, weight: str, factor: float = 10.0) -> str:
    """Scale the weight ``weight`` by ``factor`` in ``src``: the float16 initializer itself, or in an int8 graph the
    scale of its quantised form (dequantised weight = int8 * scale). Returns the initializer changed."""
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    for cand in (weight, f"{weight}_scale", f"{weight}_T_scale"):
        t = inits.get(cand)
        if t is not None and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((a * factor).astype(a.dtype), t.name))
            onnx.save(m, str(dst))
            return cand
    raise AssertionError(f"no float initializer for weight {weight}: {sorted(inits)[:20]}")


@pytest.mark.parametrize("name", list(BROKEN))
@pytest.mark.parametrize("artifact", ("fp16.onnx",) + QUANTISED)
def test_localiser_names_the_broken_module_in_fp16_and_int8_graphs(artifacts, tmp_path, name, artifact):
    from verify.localize import localize

    built, d, _ = artifacts[name]
    module, linear = BROKEN[name]
    feed = built.spec.example_inputs({"batch": 1}, seed=3)
    assert localize(built, d / artifact, feed) is None  # the clean graph: within its precision's rounding
    w = linear(built.module).weight.detach().numpy()
    changed = _break_weight(d / artifact, tmp_path / "bad.onnx", _weight_name(onnx.load(str(d / "fp32.sim.onnx")), w))
    rep = localize(built, tmp_path / "bad.onnx", feed)
    assert rep is not None, f"{artifact}: {changed} x10 not localised"
    assert rep.module == module, (artifact, changed, rep)
    assert rep.precision == ("fp16" if artifact == "fp16.onnx" else "int8") and rep.rel_error > 1.0


def test_localiser_refuses_a_graph_without_scopes(artifacts, tmp_path):
    """What an int8 graph looked like before the scopes were carried: the localiser says why it cannot localise."""
    from verify.localize import localize

    built, d, _ = artifacts["vit"]
    m = onnx.load(str(d / "int8.qdq.onnx"))
    strip(m)
    onnx.save(m, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="no node carries a PyTorch module scope"):
        localize(built, tmp_path / "bare.onnx", built.spec.example_inputs({"batch": 1}, seed=3))
