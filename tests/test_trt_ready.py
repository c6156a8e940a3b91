"""TensorRT-ready graphs (optimize/trt_ready.py): the real tensorrt_rtx parser (CPU-only) names the nodes it
rejects, the Einsum lower-case pass fixes the maxvit_t case without changing a number, simplify_file applies it
and records it, and the engines stage names each rejected node.

maxvit_t's attention writes ``torch.einsum("B G H I D, B G H J D -> B G H I J", ...)``; TensorRT's parser takes
lower-case equations only. The graphs here are tiny (onnx.helper, or a two-einsum torch module).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.trt_ready import (NO_PARSER, TrtReadyError, einsum_lowercase, fix_hints, format_parser_error,
                                lowercase_equation, make_trt_ready, parser_check)
from runtime.modelspec import SPEC_METADATA_KEY
from zoo.spec import DimRange, ModelSpec, TensorSpec

UPPER = "BHID,BHJD->BHIJ"


def _spec() -> ModelSpec:
    return ModelSpec("einsum_tiny", "custom",
                     [TensorSpec("a", "float32", ("batch", 2, 3, 4)), TensorSpec("b", "float32", ("batch", 2, 5, 4))],
                     [TensorSpec("y", "float32", ("batch", 2, 3, 5))], {"batch": DimRange(1, 2, 4)}, [])


def _einsum_model(equation: str = UPPER) -> onnx.ModelProto:
    """One Einsum (named 'attn_scores') then a Relu, dynamic batch, the spec in the metadata like an export."""
    spec = _spec()
    ins = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape)) for t in spec.inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 3, 5])
    nodes = [helper.make_node("Einsum", ["a", "b"], ["s"], name="attn_scores", equation=equation),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    m = helper.make_model(helper.make_graph(nodes, "einsum_tiny", ins, [out]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    meta = m.metadata_props.add()
    meta.key, meta.value = SPEC_METADATA_KEY, spec.to_json()
    onnx.checker.check_model(m, full_check=True)
    return m


def _ort(model: onnx.ModelProto, feed) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _feeds():
    spec = _spec()
    return [spec.example_inputs({"batch": n}, seed=n) for n in (1, 3, 4)]


def _rtx():
    return pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


# ---- equations ------------------------------------------------------------------------------------
@pytest.mark.parametrize("eq,want", [
    ("BHID,BHJD->BHIJ", "bhid,bhjd->bhij"),
    ("B G H I D, B G H J D -> B G H I J", "bghid,bghjd->bghij"),  # torchvision maxvit_t, verbatim in the export
    ("...ID,...JD->...IJ", "...id,...jd->...ij"),
    ("bhid,bhjd->bhij", "bhid,bhjd->bhij"),  # already lower case: untouched
    ("b h i d, b h j d -> b h i j", "b h i d, b h j d -> b h i j"),  # lower case with spaces: the parser takes it
    ("aB", "ba"),  # mixed case: renamed in ASCII order (B < a), so the implicit output order is kept
    ("Bb,bA->AB", "bc,ca->ab"),  # lower() would merge B and b: renamed a, b, c in ASCII order (A B b)
])
def test_lowercase_equation(eq, want):
    assert lowercase_equation(eq) == want


def test_too_many_letters_is_refused():
    import string

    eq = string.ascii_uppercase + "ab->a"
    with pytest.raises(TrtReadyError, match="28 distinct letters, expected <= 26"):
        lowercase_equation(eq)


@pytest.mark.parametrize("eq", ["aB", "Bb,bA->AB", "Ab,bC"])
def test_mixed_case_rewrite_keeps_the_numbers(eq):
    """Implicit-mode output order and merged letters are where a naive lower() would change the result. numpy's
    einsum is the reference: ONNX Runtime 1.32 cannot run an implicit equation whose output has an upper-case
    letter ('aB': "The only subscript labels allowed are lower-cased letters (a-z) and upper-cased letters")."""
    rng = np.random.default_rng(0)
    ins = eq.split("->")[0].replace(" ", "").split(",")
    sizes = {c: 2 + i for i, c in enumerate(sorted(set("".join(ins))))}
    feed = {f"x{i}": rng.standard_normal([sizes[c] for c in t]).astype(np.float32) for i, t in enumerate(ins)}
    vis = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feed.items()]
    node = helper.make_node("Einsum", list(feed), ["y"], name="e", equation=eq)
    m = helper.make_model(helper.make_graph([node], "g", vis, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                             None)]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    new, n = einsum_lowercase(m)
    assert n == 1 and not any(c.isupper() for c in new.graph.node[0].attribute[0].s.decode())
    want, got = np.einsum(eq, *feed.values()), _ort(new, feed)[0]
    assert want.shape == got.shape and np.allclose(want, got, rtol=1e-6, atol=1e-6)


# ---- the parser and the pass ------------------------------------------------------------------------
def test_parser_rejects_upper_case_einsum_and_lowercase_fixes_it():
    _rtx()
    m = _einsum_model()
    before = parser_check(m)
    assert len(before) == 1
    e = before[0]
    assert (e["node"], e["name"], e["op"], e["code"]) == (0, "attn_scores", "Einsum", "INVALID_NODE")
    assert e["message"] == "Invalid character(s) in Einsum equation: B,H,I,D,B,H,J,D,B,H,I,J"
    assert format_parser_error(e).startswith("node 'attn_scores' (op Einsum) at index 0: Invalid character(s)")
    assert "lower-case Einsum" in fix_hints(before)

    new, n = einsum_lowercase(m)
    assert n == 1 and new is not m
    assert helper.get_attribute_value(new.graph.node[0].attribute[0]) == b"bhid,bhjd->bhij"
    assert helper.get_attribute_value(m.graph.node[0].attribute[0]) == UPPER.encode()  # the input is not modified
    assert parser_check(new) == []
    for feed in _feeds():
        assert all(np.array_equal(x, y) for x, y in zip(_ort(m, feed), _ort(new, feed)))


def test_parser_check_reads_a_path_and_refuses_a_missing_one(tmp_path):
    _rtx()
    p = tmp_path / "m.onnx"
    onnx.save(_einsum_model(), str(p))
    assert [e["name"] for e in parser_check(p)] == ["attn_scores"]
    assert [e["name"] for e in parser_check(p.read_bytes())] == ["attn_scores"]
    with pytest.raises(TrtReadyError, match="is not a file"):
        parser_check(tmp_path / "nosuch.onnx")


def test_make_trt_ready_reports_passes_parity_and_parser_errors():
    _rtx()
    m = _einsum_model()
    new, rep = make_trt_ready(m, _spec())
    assert rep["passes"] == {"einsum_lowercase": 1} and rep["parity_max_rel_diff"] == 0.0
    assert rep["parser"].startswith("tensorrt_rtx ")
    assert [e["name"] for e in rep["parser_errors_before"]] == ["attn_scores"] and rep["parser_errors_after"] == []
    assert "dropped" not in rep and parser_check(new) == []


def test_graph_without_einsum_is_left_byte_identical():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "plain", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref = m.SerializeToString()
    same, n = einsum_lowercase(m)
    assert same is m and n == 0 and same.SerializeToString() == ref
    spec = ModelSpec("plain", "custom", [TensorSpec("x", "float32", ("batch", 4))],
                     [TensorSpec("y", "float32", ("batch", 3))], {"batch": DimRange(1, 2, 4)}, [])
    out, rep = make_trt_ready(m, spec)
    assert out is m and out.SerializeToString() == ref
    assert rep["passes"] == {"einsum_lowercase": 0} and rep["parity_max_rel_diff"] is None
    lower, _ = einsum_lowercase(_einsum_model("bhid,bhjd->bhij"))  # an Einsum already in lower case: untouched too
    assert lower.SerializeToString() == _einsum_model("bhid,bhjd->bhij").SerializeToString()


def _bad_pass(proto):
    """A 'rewrite' that changes the numbers but not the shapes (Relu -> Sigmoid): parity must catch it."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.node[1].op_type = "Sigmoid"
    return out, 1


def test_rewrite_that_changes_the_numbers_is_dropped(monkeypatch, caplog):
    import optimize.trt_ready as tr

    monkeypatch.setattr(tr, "PASSES", [("bad_pass", _bad_pass)])
    m = _einsum_model()
    with caplog.at_level(logging.WARNING, logger="edgeattn.trt_ready"):
        out, rep = make_trt_ready(m, _spec())
    assert out is m and rep["passes"] == {"bad_pass": 1} and "broke the graph" in rep["dropped"]
    assert "differs from the input" in rep["dropped"] and "rewrite dropped" in caplog.text


def test_simplify_never_writes_a_rewrite_that_does_not_match(monkeypatch, tmp_path):
    import optimize.trt_ready as tr
    from optimize.simplify import simplify_file

    monkeypatch.setattr(tr, "PASSES", [("bad_pass", _bad_pass)])
    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp32.sim.onnx"
    onnx.save(_einsum_model(), str(src))
    sec = simplify_file(src, dst)
    assert "broke the graph" in sec["trt_ready"]["dropped"]
    assert [n.op_type for n in onnx.load(str(dst)).graph.node] == ["Einsum", "Relu"]


def test_no_parser_installed_is_said(monkeypatch):
    import optimize.trt_ready as tr

    monkeypatch.setattr(tr, "installed_parser", lambda flavor="auto": None)
    assert parser_check(_einsum_model()) is None
    new, rep = make_trt_ready(_einsum_model(), _spec())
    assert rep["parser"] == NO_PARSER and rep["parser_errors_before"] is None and rep["parser_errors_after"] is None
    assert rep["passes"] == {"einsum_lowercase": 1}  # the passes run without a parser


# ---- simplify and engines -----------------------------------------------------------------------------
def test_simplify_file_writes_a_graph_the_parser_accepts(tmp_path):
    _rtx()
    from optimize.simplify import simplify_file

    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp32.sim.onnx"
    onnx.save(_einsum_model(), str(src))
    sec = simplify_file(src, dst)
    tr = sec["trt_ready"]
    assert tr["passes"] == {"einsum_lowercase": 1} and tr["rejected"] == [] and "dropped" not in tr
    assert [e["name"] for e in tr["parser_errors_before"]] == ["attn_scores"] and tr["parser_errors_after"] == []
    assert sec["parity_max_rel_diff"] == 0.0
    assert parser_check(dst) == []
    out = onnx.load(str(dst))
    assert [helper.get_attribute_value(a) for n in out.graph.node for a in n.attribute] == [b"bhid,bhjd->bhij"]
    for feed in _feeds():
        assert all(np.array_equal(x, y) for x, y in zip(_ort(onnx.load(str(src)), feed), _ort(out, feed)))


def _uint8_qdq_model() -> onnx.ModelProto:
    """Q/DQ with a uint8 zero point: runs on ONNX Runtime, TensorRT's parser rejects it, no pass here fixes it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="bad_quant"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["y"], name="bad_dequant")]
    m = helper.make_model(helper.make_graph(nodes, "bad", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    spec = ModelSpec("bad", "custom", [TensorSpec("x", "float32", ("batch", 4))],
                     [TensorSpec("y", "float32", ("batch", 4))], {"batch": DimRange(1, 2, 4)}, [])
    meta = m.metadata_props.add()
    meta.key, meta.value = SPEC_METADATA_KEY, spec.to_json()
    return m


def test_simplify_names_nodes_the_parser_still_rejects(tmp_path, caplog):
    _rtx()
    from optimize.simplify import simplify_file

    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp32.sim.onnx"
    onnx.save(_uint8_qdq_model(), str(src))
    with caplog.at_level(logging.WARNING, logger="edgeattn.simplify"):
        sec = simplify_file(src, dst)
    rejected = sec["trt_ready"]["rejected"]
    assert rejected and rejected[0]["name"] == "bad_quant" and rejected[0]["op"] == "QuantizeLinear"
    assert "zero point" in rejected[0]["message"].lower()
    assert sec["trt_ready"]["passes"] == {"einsum_lowercase": 0}
    assert "rejects 1 node(s) of fp32.sim.onnx" in caplog.text and "node 'bad_quant' (op QuantizeLinear)" in caplog.text


def test_engine_build_error_names_each_rejected_node(tmp_path):
    _rtx()
    from optimize.engines import EngineBuildError, build_engine

    src = tmp_path / "fp32.sim.onnx"
    m = _einsum_model()
    m.graph.node[1].CopyFrom(helper.make_node("Einsum", ["s"], ["y"], name="second", equation="BHIJ->BHIJ"))
    onnx.save(m, str(src))
    with pytest.raises(EngineBuildError) as ei:
        build_engine(src, tmp_path / "x.rtx.engine", _spec(), flavor="rtx")
    msg = str(ei.value)
    assert "(2 error(s))" in msg
    assert "node 'attn_scores' (op Einsum) at index 0: Invalid character(s) in Einsum equation: B,H,I,D" in msg
    assert "node 'second' (op Einsum) at index 1: Invalid character(s)" in msg
    assert msg.count("Fix: ") == 1 and "simplify" in msg
    assert not (tmp_path / "x.rtx.engine").exists()


def test_torch_einsum_upper_case_exports_simplifies_and_builds(tmp_path):
    """maxvit_t's two einsums in a tiny module: the dynamo export keeps the equation verbatim (spaces, upper
    case); after simplify the parser accepts the graph and tensorrt_rtx builds an engine (CPU-only)."""
    _rtx()
    import torch

    from export.onnx_export import export_model
    from optimize.engines import build_engine
    from optimize.simplify import simplify_file
    from zoo.registry import BuiltModel

    class Attn(torch.nn.Module):
        def forward(self, q, k):
            s = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
            return torch.einsum("B G H I J, B G H J D -> B G H I D", s.softmax(-1), k)

    shape = ("batch", 2, 2, 3, 4)
    spec = ModelSpec("einsum_attn", "custom", [TensorSpec("q", "float32", shape), TensorSpec("k", "float32", shape)],
                     [TensorSpec("y", "float32", shape)], {"batch": DimRange(1, 2, 4)}, [])
    src, dst = tmp_path / "fp32.onnx", tmp_path / "fp32.sim.onnx"
    export_model(BuiltModel("einsum_attn", Attn().eval(), spec, {}), src)
    eqs = [helper.get_attribute_value(a) for n in onnx.load(str(src)).graph.node if n.op_type == "Einsum"
           for a in n.attribute]
    assert eqs == [b"B G H I D, B G H J D -> B G H I J", b"B G H I J, B G H J D -> B G H I D"]
    assert len(parser_check(src)) == 2
    sec = simplify_file(src, dst)
    assert sec["trt_ready"]["passes"] == {"einsum_lowercase": 2} and sec["trt_ready"]["rejected"] == []
    man = build_engine(dst, tmp_path / "fp32.rtx.engine", spec, flavor="rtx")
    assert man["engine_bytes"] > 0
