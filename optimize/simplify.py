"""Simplify fp32.onnx -> fp32.sim.onnx: ``python -m optimize simplify --models a,b --artifacts DIR``.

onnxsim first; onnxslim, then ONNX Runtime's offline basic optimiser, when onnxsim fails or its result does
not match the input graph numerically. Node counts before/after and the parity check go in the model's
manifest (section ``simplify``).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.modelspec import load_spec, resolve_models
from runtime.ort_backend import cpu_session
from zoo.io import atomic_write, sha256_file, update_manifest
from zoo.spec import ModelSpec

log = logging.getLogger("edgeattn.simplify")


class SimplifyError(RuntimeError):
    """No simplifier produced a graph that matches the input numerically."""


def _copy_metadata(src, dst) -> None:
    have = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in have:
            q = dst.metadata_props.add()
            q.key, q.value = p.key, p.value


def _run(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return cpu_session(model_bytes, "disable").run(None, feed)


def parity(ref_bytes: bytes, new_bytes: bytes, spec: ModelSpec | None, rtol: float = 1e-5) -> float:
    """Max abs difference between the two graphs' outputs, over min/opt/max input sizes (relative to the
    output scale); raises SimplifyError when it exceeds ``rtol``."""
    sizes_list = [{k: getattr(r, w) for k, r in spec.dynamic.items()} for w in ("min", "opt", "max")] if spec else [{}]
    worst = 0.0
    for i, sizes in enumerate(sizes_list):
        feed = spec.example_inputs(sizes, seed=i) if spec else {}
        a, b = _run(ref_bytes, feed), _run(new_bytes, feed)
        for x, y in zip(a, b):
            if x.shape != y.shape:
                raise SimplifyError(f"output shape changed: {x.shape} -> {y.shape} at sizes {sizes}")
            scale = max(1.0, float(np.abs(x).max()))
            worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) / scale)
    if worst > rtol:
        raise SimplifyError(f"simplified graph differs from the input by {worst:.3g} (relative), expected <= {rtol}")
    return worst


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
    """Simplify ``src`` into ``dst`` with the first simplifier whose result checks and matches numerically."""
    import onnx

    src, dst = Path(src), Path(dst)
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
        atomic_write(dst, lambda p: p.write_bytes(new_bytes))
        return {"file": dst.name, "source": src.name, "source_sha256": sha256_file(src), "sha256": sha256_file(dst),
                "tool": name, "nodes_before": len(proto.graph.node), "nodes_after": n, "parity_max_rel_diff": diff,
                "attempts": attempts}
    raise SimplifyError(f"simplify '{src}': every simplifier failed: {attempts}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", required=True)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    failed = 0
    for ref in resolve_models(args.models, args.artifacts):
        name, d = ref.name, ref.folder
        src, dst = d / "fp32.onnx", d / "fp32.sim.onnx"
        if not src.is_file():
            print(f"simplify {name}: {src} missing, run 'make export' first; skipped")
            failed += 1
            continue
        prev = ref.manifest().get("simplify", {})
        if (not args.force and dst.is_file() and prev.get("source_sha256") == sha256_file(src)
                and prev.get("sha256") == sha256_file(dst)):
            print(f"simplify {name}: up to date ({dst})")
            continue
        section = simplify_file(src, dst)
        update_manifest(d, "simplify", section)
        print(f"simplify {name}: {section['nodes_before']} -> {section['nodes_after']} nodes with {section['tool']} "
              f"(parity {section['parity_max_rel_diff']:.2e})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
