"""Simplify fp32.onnx -> fp32.sim.onnx: ``python -m optimize simplify --models a,b --artifacts DIR``.

onnxsim first; onnxslim, then ONNX Runtime's offline basic optimiser, when onnxsim fails or its result does
not match the input graph numerically. Node counts before/after and the parity check go in the model's
manifest (section ``simplify``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from optimize.graph_parity import SimplifyError, parity
from optimize.trt_ready import fix_hints, format_parser_error, make_trt_ready, parser_check
from pipeline.args import add_artifacts, add_force, add_models, stage_parser
from pipeline.artifacts import resolve_models
from runtime.ort_backend import cpu_session
from pipeline.stage import StageErrors, cli
from runtime.onnx_guard import check_external_data
from zoo.io import (atomic_save_onnx, external_data_limit, onnx_files, peak_rss_mb, sha256_file, update_manifest,
                    write_graph_with_data)
from zoo.spec import load_spec
from optimize.node_scopes import carry, summary

log = logging.getLogger("edgeattn.simplify")
CODE_VERSION = "simplify/2"  # 2: TensorRT-ready rewrites, parser check, module scopes carried (a new file)


def _copy_metadata(src, dst) -> None:
    have = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            q = dst.metadata_props.add()
            q.key, q.value = p.key, p.value


def _carry_scopes(src, new_bytes: bytes) -> tuple[bytes, dict[str, Any]]:
    """The chosen graph with the PyTorch module scopes of ``src``'s nodes put back (onnxsim and onnxslim drop node
    metadata; verify.localize needs it): metadata only, after the parity check. Returns (bytes, coverage report)."""
    import onnx


    new = onnx.load_from_string(new_bytes)
    report = carry(src, new)
    log.info("simplify: %s", summary(report))
    return (new.SerializeToString() if report["scoped_after"] > report["scoped_before"] else new_bytes), report


def _onnxsim(proto):
    import onnxsim

    out, ok = onnxsim.simplify(proto, check_n=0)
    if not ok:
        raise SimplifyError("onnxsim's own check failed")
    return out


def _onnxslim(proto):
    import onnxslim

    return onnxslim.slim(proto)


def _ort_basic(proto):
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "opt.onnx")
        cpu_session(proto.SerializeToString(), "basic", optimized_model_path=out)
        return onnx.load(out)


SIMPLIFIERS: list[tuple[str, Callable]] = [("onnxsim", _onnxsim), ("onnxslim", _onnxslim), ("ort_basic", _ort_basic)]
# ORT's basic level (constant folding, redundant-node elimination) is what onnxsim already runs through ORT: it is a
# fallback, tried only when neither graph simplifier gave a graph that checks and matches (it never beat onnxsim on
# our models, and on ViT-B/16 it costs 15 s for no node removed).
FALLBACK_ONLY = {"ort_basic"}


def simplify_file(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Simplify ``src`` into ``dst`` with the first simplifier whose result checks and matches numerically.

    Then the TensorRT-ready passes (optimize.trt_ready: e.g. upper-case Einsum equations, which TensorRT's parser
    rejects) run on the chosen graph and are kept only when it still matches ``src``; the written file is parsed
    with the installed TensorRT(-RTX) parser and each node it rejects is named in a warning now, not at engine
    build time. Both go in the returned section under ``trt_ready``.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if sum(f.stat().st_size for f in onnx_files(src)) >= external_data_limit():
        return simplify_external(src, dst)
    proto = onnx.load(str(src))
    spec = load_spec(proto, required=False) or load_spec(src, required=False)
    ref = proto.SerializeToString()
    attempts: list[dict[str, Any]] = []
    best = None  # (nodes, name, bytes, diff, seconds): the smallest graph that checks and matches wins
    for name, fn in SIMPLIFIERS:
        if name in FALLBACK_ONLY and best is not None:
            attempts.append({"tool": name, "ok": None, "skipped": "fallback only: a simplifier already succeeded"})
            continue
        t0 = time.perf_counter()
        try:
            new = fn(onnx.load_from_string(ref))
            _copy_metadata(proto, new)
            onnx.checker.check_model(new, full_check=True)
            new_bytes = new.SerializeToString()
            diff = parity(ref, new_bytes, spec)
        except Exception as e:  # noqa: BLE001 - any simplifier failure means: try the next one
            attempts.append({"tool": name, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log.warning("simplify %s with %s failed: %s", src, name, str(e).splitlines()[0][:200])
            continue
        n = len(new.graph.node)
        attempts.append({"tool": name, "ok": True, "nodes": n, "seconds": round(time.perf_counter() - t0, 2)})
        if best is None or n < best[0]:
            best = (n, name, new_bytes, diff)
    if best is not None:
        n, name, new_bytes, diff = best
        # TensorRT-ready rewrites (optimize.trt_ready), kept only if the result still matches the ORIGINAL graph
        ready, trt_ready = make_trt_ready(onnx.load_from_string(new_bytes), spec)
        if any(trt_ready["passes"].values()) and "dropped" not in trt_ready:
            try:
                ready_bytes = ready.SerializeToString()
                diff, new_bytes = parity(ref, ready_bytes, spec), ready_bytes
            except Exception as e:  # noqa: BLE001 - never write a graph that does not match the source
                trt_ready["dropped"] = f"against the source graph: {type(e).__name__}: {str(e)[:400]}"
                log.warning("simplify %s: TensorRT-ready rewrite dropped, writing the simplified graph as it is: %s",
                            src, trt_ready["dropped"])
        new_bytes, scopes = _carry_scopes(proto, new_bytes)
        atomic_save_onnx(onnx.load_from_string(new_bytes), dst)
        trt_ready["rejected"] = rejected = parser_check(dst)  # the file engines parse: name rejected nodes now
        if rejected:
            log.warning("simplify %s: TensorRT's ONNX parser (%s) rejects %d node(s) of %s, engines will not build: "
                        "%s", src, trt_ready["parser"], len(rejected), dst.name,
                        "; ".join(format_parser_error(e) for e in rejected) + fix_hints(rejected))
        return {"file": dst.name, "code": CODE_VERSION, "source": src.name, "source_sha256": sha256_file(src),
                "sha256": sha256_file(dst),
                "tool": name, "nodes_before": len(proto.graph.node), "nodes_after": n, "parity_max_rel_diff": diff,
                "attempts": attempts, "trt_ready": trt_ready, "scopes": scopes}
    raise SimplifyError(f"simplify '{src}': every simplifier failed: {attempts}")


def simplify_external(src: Path, dst: Path) -> dict[str, Any]:
    """A model too big for one protobuf message (it cannot be serialised in memory, which the other simplifiers and
    the TensorRT-ready passes need): onnxsim on the file (it reads the external data itself and writes its result
    to a file), parity by ONNX Runtime on the two files; when it fails, does not match or gives more nodes, the source
    graph is written as it is (the section says so). The graphs are read without their weights; the chosen one's are
    read once, to write it with external data (``zoo.io.atomic_save_onnx``)."""
    import tempfile

    import onnx
    import onnxsim
    from onnx.external_data_helper import load_external_data_for_model

    proto = onnx.load(str(src), load_external_data=False)  # the graph only: nodes, metadata, scopes
    spec = load_spec(proto, required=False) or load_spec(src, required=False)
    attempts: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".simplify-", dir=dst.parent) as d:
        out = Path(d) / "sim.onnx"
        new, base, tool, diff = proto, src.parent, "none (source graph kept)", 0.0
        try:
            _, ok = onnxsim.simplify(str(src), check_n=0, output_path=str(out))
            if not ok:
                raise SimplifyError("onnxsim's own check failed")
            diff = parity(src, out, spec)
            sim = onnx.load(str(out), load_external_data=False)
            if len(sim.graph.node) > len(proto.graph.node):
                raise SimplifyError(f"onnxsim gave {len(sim.graph.node)} nodes, the source has "
                                    f"{len(proto.graph.node)}: not simpler")
            new, base, tool = sim, out.parent, "onnxsim"
            attempts.append({"tool": tool, "ok": True, "nodes": len(new.graph.node),
                             "seconds": round(time.perf_counter() - t0, 2)})
        except Exception as e:  # noqa: BLE001 - any failure: keep the source graph
            attempts.append({"tool": "onnxsim", "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            log.warning("simplify %s (external data) with onnxsim failed, writing the source graph as it is: %s",
                        src, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            diff = 0.0
        _copy_metadata(proto, new)
        scopes = carry(proto, new) if new is not proto else {"scoped_before": None, "scoped_after": None}
        if len(set(check_external_data(base / ("sim.onnx" if new is not proto else src.name)))) == 1:
            write_graph_with_data(new, base, dst, move=new is not proto)  # the weights stay on disk
        else:
            load_external_data_for_model(new, str(base))
            atomic_save_onnx(new, dst)
        nodes_after = len(new.graph.node)
        del new
    rejected = parser_check(dst)
    return {"file": dst.name, "code": CODE_VERSION, "source": src.name, "source_sha256": sha256_file(src),
            "sha256": sha256_file(dst), "tool": tool, "nodes_before": len(proto.graph.node),
            "nodes_after": nodes_after, "parity_max_rel_diff": diff, "attempts": attempts,
            "external_data": True, "trt_ready": {"skipped": "a model with external data is not rewritten in memory",
                                                  "rejected": rejected}, "scopes": scopes,
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("simplify", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    add_force(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    errors = StageErrors("simplify")
    for ref in resolve_models(args.models, args.artifacts):
        with errors.model(ref.name):
            name, d = ref.name, ref.folder
            src, dst = d / "fp32.onnx", d / "fp32.sim.onnx"
            if not src.is_file():
                raise SimplifyError(f"{src}: missing; expected the export stage's output (run 'edgeattn export "
                                    f"--models {name}' or 'make export' first)")
            prev = ref.manifest().get("simplify", {})
            if (not args.force and dst.is_file() and prev.get("code") == CODE_VERSION
                    and prev.get("source_sha256") == sha256_file(src)
                    and prev.get("sha256") == sha256_file(dst)):
                print(f"simplify {name}: up to date ({dst})")
                continue
            section = simplify_file(src, dst)
            update_manifest(d, "simplify", section)
            print(f"simplify {name}: {section['nodes_before']} -> {section['nodes_after']} nodes with "
                  f"{section['tool']} (parity {section['parity_max_rel_diff']:.2e})")
    return errors.finish()


if __name__ == "__main__":
    raise SystemExit(cli("simplify", main))
