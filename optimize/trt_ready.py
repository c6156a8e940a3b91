"""TensorRT-ready graphs: ask the installed TensorRT(-RTX) ONNX parser which nodes it rejects, and rewrite what can
be rewritten without changing the numbers.

Why: a graph can export, check and simplify cleanly and still build no engine. torchvision ``maxvit_t`` writes
``torch.einsum("B G H I D, B G H J D -> B G H I J", ...)``; the dynamo exporter keeps that equation verbatim and
TensorRT's parser (onnx-tensorrt ``checkEinsum``) takes lower-case letters only ("Invalid character(s) in Einsum
equation: B,G,H,I,D,..."). A static op list (export.checks.TRT_UNSUPPORTED_OPS) cannot see that; only the parser
can, so it runs here, at simplify time, when one is installed (tensorrt_rtx parses without a GPU).

Passes (each ``proto -> (proto, nodes changed)``, numbers unchanged, returns the SAME object when it changes
nothing so an untouched graph stays byte-identical):

- ``einsum_lowercase``: every Einsum equation with an upper-case letter gets lower-case letters (whitespace
  dropped; ``,``, ``->`` and ``...`` kept). Einsum -> MatMul/Transpose is not needed: TensorRT-RTX 1.7 accepts the
  lower-cased equations (and builds them).

``make_trt_ready`` runs the passes and checks parity with optimize.graph_parity.parity, the check simplify itself uses.
"""
from __future__ import annotations

import contextlib
import logging
import string
from pathlib import Path
from typing import Any, Callable

from optimize.graph_parity import parity
from runtime import engine_manifest as em
from runtime.errors import BackendError, EdgeattnError
from runtime.tensorrt_backend import log as tensorrt_log
from runtime.tensorrt_backend import tensorrt_logger

log = logging.getLogger("edgeattn.trt_ready")

NO_PARSER = "skipped: no TensorRT parser installed (pip install tensorrt-rtx parses without a GPU)"
# What to do about a rejected op that a pass here fixes (said once after the parser's own messages).
FIX_HINTS = {  # (op, a fragment of the parser's message) -> hint
    ("Einsum", "Invalid character"): "TensorRT takes lower-case Einsum equations only: the simplify stage rewrites "
                                     "them (edgeattn simplify --models NAME --force), then rebuild fp16.onnx/"
                                     "int8.qdq.onnx from the new fp32.sim.onnx",
}


class TrtReadyError(EdgeattnError, RuntimeError):
    """A rewrite could not be made, or changed the graph's numbers; the message says which and by how much."""


# ---- the parser -----------------------------------------------------------------------------------
def installed_parser(flavor: str = "auto"):
    """``(trt_module, 'tensorrt_rtx 1.7.1.116')`` for the TensorRT that parses here, or None.

    'auto' tries ``tensorrt`` first (what the engines stage builds with when a GPU is present), then
    ``tensorrt_rtx``; a module whose Builder cannot be created here (full TensorRT without a GPU) is passed over.
    """
    for name in (["trt", "rtx"] if flavor == "auto" else [flavor]):
        try:
            trt, _, version = em.import_tensorrt(name)
        except BackendError as e:
            log.debug("parser check: %s", e)
            continue
        try:
            if trt.Builder(tensorrt_logger(trt)):
                return trt, f"{trt.__name__} {version}"
        except Exception as e:  # noqa: BLE001 - TensorRT raises TypeError/RuntimeError when it cannot start
            log.debug("parser check: %s %s cannot create a Builder here: %s", trt.__name__, version, e)
    return None


@contextlib.contextmanager
def _quiet_tensorrt_log():
    """The shared TensorRT logger also logs each parser error at ERROR; here they come back as entries (and a
    rejected graph may be one a pass then fixes), so they are kept off the log while we parse."""
    tensorrt_log.addFilter(_drop_record)
    try:
        yield
    finally:
        tensorrt_log.removeFilter(_drop_record)


def _drop_record(record: logging.LogRecord) -> bool:
    return False


def _call(obj, method: str):
    """``obj.method()`` where this TensorRT version's error record has it (checked, not assumed), else None."""
    fn = getattr(obj, method, None)
    return fn() if callable(fn) else None


def parser_errors(parser, graph=None) -> list[dict[str, Any]]:
    """One entry per parser error: node index (-1: not a node's), node name, op type, message, error code.

    ``graph`` (an onnx GraphProto) fills in name/op from the node index when this TensorRT's error record lacks them.
    """
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        idx = _call(e, "node")
        idx = -1 if idx is None else int(idx)
        name, op = _call(e, "node_name"), _call(e, "node_operator")
        if graph is not None and 0 <= idx < len(graph.node):
            name, op = name or graph.node[idx].name, op or graph.node[idx].op_type
        code = _call(e, "code")
        out.append({"node": idx, "name": name or "", "op": op or "", "message": str(_call(e, "desc") or e),
                    "code": getattr(code, "name", str(code).split(".")[-1])})
    return out


def format_parser_error(entry: dict[str, Any]) -> str:
    """``node 'attn' (op Einsum) at index 3: <the parser's message> [INVALID_NODE]``."""
    where = f"node '{entry['name']}' (op {entry['op']})" if entry["op"] or entry["name"] else "graph"
    if entry.get("node", -1) >= 0:
        where += f" at index {entry['node']}"
    return f"{where}: {entry['message']} [{entry['code']}]"


def fix_hints(entries: list[dict[str, Any]]) -> str:
    """`` Fix: ...`` for the rejections this module knows how to fix (each hint once), '' for none."""
    hints = [hint for (op, says), hint in FIX_HINTS.items()
             if any(e["op"] == op and says in e["message"] for e in entries)]
    return (" Fix: " + "; ".join(hints)) if hints else ""


def _network_flags(trt) -> int:
    """The engines stage's flags: STRONGLY_TYPED on TensorRT 10 (parse results can depend on typing), 0 elsewhere."""
    if em.flavor_of(trt.__name__, getattr(trt, "__version__", "")) == "trt10":
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def parser_check(model_or_path, flavor: str = "auto") -> list[dict[str, Any]] | None:
    """Parse an ONNX model (ModelProto, serialized bytes or a path) with the installed TensorRT(-RTX) parser.

    Returns one entry per error (``[]``: accepted; see ``parser_errors``), or None when no parser is installed.
    Needs no GPU with tensorrt_rtx. A path is parsed with ``parse_from_file`` (external weights beside it are found).
    """
    found = installed_parser(flavor)
    return None if found is None else _parse(found[0], model_or_path)


def _parse(trt, model_or_path) -> list[dict[str, Any]]:
    graph, path, data = None, None, None
    if hasattr(model_or_path, "graph"):
        graph, data = model_or_path.graph, model_or_path.SerializeToString()
    elif isinstance(model_or_path, (bytes, bytearray)):
        data = bytes(model_or_path)
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise TrtReadyError(f"parser check: '{path}' is not a file; expected an ONNX model path, bytes or a "
                                "ModelProto")
    logger = tensorrt_logger(trt)
    with _quiet_tensorrt_log():
        logger.take_errors()
        builder = trt.Builder(logger)  # builder and network must outlive the parser (TensorRT keeps raw pointers)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(path)) if path is not None else parser.parse(data)
        errors = parser_errors(parser, graph)
        logged = logger.take_errors()
    if not ok and not errors:
        errors = [{"node": -1, "name": "", "op": "", "code": "UNKNOWN",
                   "message": "; ".join(logged) or "parser returned False without an error record"}]
    del parser, network, builder
    return errors


# ---- rewrite passes -------------------------------------------------------------------------------
def _all_nodes(graph):
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _model_nodes(proto):
    yield from _all_nodes(proto.graph)
    for fn in proto.functions:
        yield from fn.node


def lowercase_equation(equation: str) -> str:
    """An Einsum equation with lower-case letters only and the same meaning; unchanged if it has no upper case.

    The mapping keeps the letters' ASCII order: in implicit mode (no ``->``) the output axes are the letters seen
    once, sorted, so a mapping that reordered them (``aB`` -> ``ab``) would transpose the result. Plain ``lower()``
    is used when it keeps that order and maps no two letters together (``BHID`` -> ``bhid``); otherwise the
    letters are renamed a, b, c, ... in their sorted order. Whitespace is dropped.
    """
    letters = sorted({c for c in equation if c in string.ascii_letters})
    if not any(c.isupper() for c in letters):
        return equation
    lowered = [c.lower() for c in letters]
    if len(set(lowered)) == len(letters) and lowered == sorted(lowered):
        mapping = dict(zip(letters, lowered))
    elif len(letters) <= 26:
        mapping = dict(zip(letters, string.ascii_lowercase))
    else:
        raise TrtReadyError(f"Einsum equation '{equation}': {len(letters)} distinct letters, expected <= 26 to "
                            "write it in lower case")
    return "".join(mapping.get(c, c) for c in equation if not c.isspace())


def einsum_lowercase(proto):
    """Rewrite every Einsum equation that has upper-case letters (TensorRT rejects them) to lower case.

    Returns ``(proto, nodes changed)``: a changed copy, or ``proto`` itself when nothing needed changing.
    """
    import onnx

    todo = [n for n in _model_nodes(proto) if n.op_type == "Einsum"
            and any(a.name == "equation" and lowercase_equation(a.s.decode()) != a.s.decode() for a in n.attribute)]
    if not todo:
        return proto, 0
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    changed = 0
    for node in _model_nodes(out):
        for a in node.attribute:
            if node.op_type == "Einsum" and a.name == "equation":
                new = lowercase_equation(a.s.decode())
                if new != a.s.decode():
                    a.s = new.encode()
                    changed += 1
    return out, changed


PASSES: list[tuple[str, Callable]] = [("einsum_lowercase", einsum_lowercase)]


def make_trt_ready(src_proto, spec, flavor: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Run every pass over ``src_proto``; return ``(proto, report)``.

    report: ``passes`` {name: nodes changed}, ``parity_max_rel_diff`` against ``src_proto`` at the spec's
    min/opt/max sizes (optimize.graph_parity.parity; None when nothing changed), ``parser`` (module and version, or why
    it was skipped), ``parser_errors_before``/``parser_errors_after`` (None without a parser). A rewrite that fails
    onnx.checker or parity is never handed back: ``src_proto`` itself comes back with the reason under ``dropped``
    (and a warning); so does an untouched graph, without one.
    """
    found = installed_parser(flavor)
    before = _parse(found[0], src_proto) if found else None
    report: dict[str, Any] = {"passes": {}, "parity_max_rel_diff": None, "parser": found[1] if found else NO_PARSER,
                              "parser_errors_before": before, "parser_errors_after": before}
    try:
        proto = _rewrite(src_proto, spec, report)
    except TrtReadyError as e:
        log.warning("TensorRT-ready rewrite dropped: %s", e)
        report["dropped"] = str(e)[:500]
        return src_proto, report
    if proto is not src_proto and found:
        report["parser_errors_after"] = _parse(found[0], proto)
    return proto, report


def _rewrite(src_proto, spec, report: dict[str, Any]):
    """The passes in order, then onnx.checker and parity against ``src_proto``; raises TrtReadyError."""
    import onnx


    proto = src_proto
    for name, fn in PASSES:
        proto, report["passes"][name] = fn(proto)
    if proto is src_proto:
        return proto
    try:
        onnx.checker.check_model(proto, full_check=True)
        report["parity_max_rel_diff"] = parity(src_proto.SerializeToString(), proto.SerializeToString(), spec)
    except Exception as e:  # noqa: BLE001 - checker, ORT and parity failures all mean: the rewrite is not safe
        raise TrtReadyError(f"rewrites {report['passes']} broke the graph: {type(e).__name__}: {e}") from e
    return proto
