"""PyTorch module scopes on ONNX nodes, carried through the graph rewrites (simplify, fp16, Q/DQ, dynamic int8).

The dynamo exporter writes each node's module scope into its metadata (``pkg.torch.onnx.name_scopes``,
``pkg.torch.onnx.class_hierarchy``, ``namespace``); the TorchScript exporter writes it into the node name
(``/encoder/layers.0/norm1/LayerNormalization``). verify.localize needs it to name the PyTorch module where an
artifact diverges. onnxsim and onnxslim drop node metadata, and the fp16 converter and ORT's quantisers add Cast,
QuantizeLinear / DequantizeLinear (and QLinear*, MatMulInteger, ...) nodes without any, so the quantised graphs
reached the localiser with no scope at all.

:func:`record` keeps, for every scoped node of a source graph, its metadata keyed by what survives the rewrites
(the tensors it produces, its name); :func:`reattach` gives each node of the rewritten graph that has no scope:

1. the metadata of the source node that produced the same output tensor (the rewrites keep the names of the
   tensors that survive; a DequantizeLinear that restores a quantised node's float output produces its name),
2. else that of the source node with the same name,
3. else the scope its consumers share (an input Cast, a Q/DQ pair or a weight DequantizeLinear belongs to the
   node it feeds; nodes fed by several modules get their common parent),
4. else the scope its producers share (an output Cast before a graph output).

Only node ``metadata_props`` are written: the computation, names and order of the graph are untouched.
"""
from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass, field
from typing import Any

NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # ['', 'blocks', 'blocks.0', 'blocks.0.mlp', '<fx node>']
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"  # the module classes along name_scopes, then the aten op
NAMESPACE = "namespace"  # ': Root/blocks: Sequential/.../<fx node>: <aten op>'
MODULE_SCOPE = "edgeattn.module_scope"  # the module path, where the source scope came from a TorchScript node name
SCOPE_FROM = "edgeattn.scope_from"  # how a rewritten node got its scope (reattach): output/name/consumers/producers
SCOPE_KEYS = (NAME_SCOPES, CLASS_HIERARCHY, NAMESPACE, MODULE_SCOPE)


def _props(node) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _name_scopes(props: dict[str, str]) -> list[str] | None:
    raw = props.get(NAME_SCOPES)
    if raw is None:
        return None
    try:
        v = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    return [str(s) for s in v] if isinstance(v, (list, tuple)) else None


def module_scope(node) -> str | None:
    """PyTorch module path of an ONNX node ('' = the root module), or None when unknown."""
    props = _props(node)
    if NAME_SCOPES in props:
        scopes = _name_scopes(props)
        if scopes is None:
            return None
        return scopes[-2] if len(scopes) >= 2 else ""
    if MODULE_SCOPE in props:
        return props[MODULE_SCOPE]
    name = node.name or ""
    if name.startswith("/"):
        parts = name.strip("/").split("/")
        return ".".join(parts[:-1])
    return None


def coverage(model) -> tuple[int, int]:
    """(nodes with a module scope, nodes) of the main graph."""
    nodes = model.graph.node
    return sum(module_scope(n) is not None for n in nodes), len(nodes)


@dataclass
class ScopeTable:
    """Scope metadata of a source graph's scoped nodes, by output tensor and by node name."""
    by_output: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # tensor -> (node, props)
    by_name: dict[str, dict[str, str]] = field(default_factory=dict)
    scoped: int = 0
    nodes: int = 0

    def __bool__(self) -> bool:
        return self.scoped > 0


def _scope_props(node) -> dict[str, str] | None:
    """What a node's scope is written as: its own metadata (minus our provenance), or the module path of a
    TorchScript-style name."""
    scope = module_scope(node)
    if scope is None:
        return None
    props = {k: v for k, v in _props(node).items() if k != SCOPE_FROM}
    if not any(k in props for k in SCOPE_KEYS):
        props[MODULE_SCOPE] = scope
    return props


def record(model) -> ScopeTable:
    """The scope metadata of every scoped node of ``model``'s main graph."""
    table = ScopeTable(nodes=len(model.graph.node))
    for n in model.graph.node:
        props = _scope_props(n)
        if props is None:
            continue
        table.scoped += 1
        for o in n.output:
            if o:
                table.by_output.setdefault(o, (n.name, props))
        if n.name:
            table.by_name.setdefault(n.name, props)
    return table


@functools.lru_cache(maxsize=4)
def _record_file_cached(path: str, mtime_ns: int, size: int) -> ScopeTable:
    import onnx

    return record(onnx.load(path, load_external_data=False))


def record_file(path: str | os.PathLike) -> ScopeTable:
    """:func:`record` of an ONNX file, cached while the file is unchanged (the int8 budget search quantises the
    same source many times)."""
    st = os.stat(path)
    return _record_file_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _set(node, props: dict[str, str], origin: str) -> None:
    for k, v in props.items():
        p = node.metadata_props.add()
        p.key, p.value = k, v
    p = node.metadata_props.add()
    p.key, p.value = SCOPE_FROM, origin


def _shared(node, reps: list[Any]) -> dict[str, str]:
    """Scope metadata for ``node`` from the scoped nodes ``reps`` it is attached to: theirs when they are one op's
    (equal name_scopes), else their deepest common module (the root module when they share none)."""
    props = [_props(r) for r in reps]
    lists = [_name_scopes(p) for p in props]
    if all(x is not None for x in lists):
        first = lists[0]
        if all(x == first for x in lists):  # one op's inputs/outputs: copy its scope keys verbatim
            return {k: v for k, v in props[0].items() if k in SCOPE_KEYS}
        k = 0  # deepest common module, then this node as the op
        while all(len(x) > k + 1 and x[k] == first[k] for x in lists):
            k += 1
        label = node.name or node.op_type
        if k == 0:  # no module in common (e.g. torch's '_empty_nn_module_stack' nodes): the root module
            return {NAME_SCOPES: repr(["", label])}
        out = {NAME_SCOPES: repr(first[:k] + [label])}
        try:
            classes = ast.literal_eval(props[0].get(CLASS_HIERARCHY, "None"))
        except (ValueError, SyntaxError):
            classes = None
        if isinstance(classes, (list, tuple)) and len(classes) >= k:
            out[CLASS_HIERARCHY] = repr([str(c) for c in classes[:k]] + [node.op_type])
        ns = props[0].get(NAMESPACE)
        if ns is not None and len(ns.split("/")) >= k:
            out[NAMESPACE] = "/".join(ns.split("/")[:k] + [f"{label}: {node.op_type}"])
        return out
    scopes = [module_scope(r) for r in reps]
    parts = [s.split(".") if s else [] for s in scopes]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return {MODULE_SCOPE: ".".join(common)}


def reattach(model, table: ScopeTable) -> dict[str, Any]:
    """Give every node of ``model``'s main graph that has no module scope one (rules in the module docstring), in
    place; metadata only. Returns counts: nodes, scoped before/after, how many came from each rule."""
    nodes = list(model.graph.node)
    scoped = [module_scope(n) is not None for n in nodes]
    report: dict[str, Any] = {"nodes": len(nodes), "scoped_before": sum(scoped),
                              "source_scoped": table.scoped, "source_nodes": table.nodes,
                              "from": {"output": 0, "name": 0, "consumers": 0, "producers": 0}}
    if table:
        for i, n in enumerate(nodes):
            if scoped[i]:
                continue
            hit = next(((o, table.by_output[o]) for o in n.output if o in table.by_output), None)
            if hit is not None:
                _set(n, hit[1][1], f"output {hit[0]} of {hit[1][0]}")
                report["from"]["output"] += 1
            elif n.name in table.by_name:
                _set(n, table.by_name[n.name], f"name {n.name}")
                report["from"]["name"] += 1
            else:
                continue
            scoped[i] = True
    if any(scoped) and not all(scoped):
        _propagate(nodes, scoped, report["from"])
    report["scoped_after"] = sum(scoped)
    return report


def _propagate(nodes, scoped: list[bool], counts: dict[str, int]) -> None:
    """Rules 3 and 4: consumers first (to a fixed point), then producers, until nothing changes."""
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)

    def attach(i: int, reps: list[int], how: str) -> None:
        _set(nodes[i], _shared(nodes[i], [nodes[j] for j in reps]), how)
        scoped[i] = True
        counts[how] += 1

    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(nodes))):  # consumers come later in a sorted graph: one sweep mostly suffices
            if scoped[i]:
                continue
            cons = sorted({j for o in nodes[i].output for j in consumers.get(o, ())})
            if cons and all(scoped[j] for j in cons):
                attach(i, cons, "consumers")
                changed = True
        if changed:
            continue
        for i in range(len(nodes)):
            if scoped[i]:
                continue
            prods = sorted({producer[t] for t in nodes[i].input if t in producer})
            if prods and all(scoped[j] for j in prods):
                attach(i, prods, "producers")
                changed = True
                break  # back to the consumer rule, which is preferred


def carry(src_model, dst_model) -> dict[str, Any]:
    """:func:`reattach` ``dst_model`` from the scopes of ``src_model`` (both protos, dst changed in place)."""
    return reattach(dst_model, record(src_model))


def carry_file(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Reattach the scopes of the ONNX file ``src`` to the ONNX file ``dst`` (see :func:`reattach_file`)."""
    return reattach_file(dst, record_file(src))


def reattach_file(dst: str | os.PathLike, table: ScopeTable) -> dict[str, Any]:
    """:func:`reattach` on the ONNX file ``dst``, rewritten in place only when a node gained a scope. Not even
    read when ``table`` has no scope (a source graph without any: nothing to carry)."""
    import onnx

    if not table:
        return {"nodes": None, "scoped_before": None, "scoped_after": None, "source_scoped": 0,
                "source_nodes": table.nodes, "from": {}}
    model = onnx.load(str(dst), load_external_data=False)  # metadata only: external weights stay where they are
    report = reattach(model, table)
    if report["scoped_after"] > report["scoped_before"]:
        onnx.save(model, str(dst))
    return report


def strip(model) -> None:
    """Remove every node's metadata_props, in place (tests: a graph equals its source but for metadata)."""
    for n in model.graph.node:
        del n.metadata_props[:]


def summary(report: dict[str, Any]) -> str:
    return (f"{report['scoped_before']}/{report['nodes']} -> {report['scoped_after']}/{report['nodes']} nodes carry a "
            f"module scope")
