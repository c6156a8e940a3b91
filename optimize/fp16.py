"""FP16 with the precision written into the graph: ``<model_dir>/fp16.onnx`` from ``fp32.sim.onnx``.

TensorRT 11 / TensorRT-RTX have no FP16 builder flag, so the ONNX itself carries float16 weights and
activations (onnxruntime.transformers.float16 with keep_io_types=True: float32 inputs/outputs by default)
and keeps overflow-prone ops in float32 via an op block list (LayerNormalization, Softmax, ReduceMean/Pow
chains, Exp, ...). If the result shows NaN/Inf or drops accuracy beyond the budget, a wider block list is
tried next (``Fp16Options.block_tiers``).

The check runs the converted graph on real samples in a CHILD PROCESS per ONNX Runtime optimisation level
(all -> extended -> basic -> disable): ORT 1.32 CPU segfaults on FP16 ViT-B/16 at ORT_ENABLE_ALL, and a
crash must not take the pipeline down. The first level that runs is recorded in the manifest
(``fp16.ort_opt_level``) for verify/bench; crashed levels are listed with their signal.

Each tier is judged by verify's verdict (judge.budget.reasons on judge.figures' figures) with the spec's fp16
budget (``Fp16Options.budget``: the spec's tolerance, the user's explicit overrides on top), on the stage's whole
evaluation set by default. This module also holds the ORT evaluation helpers optimize.quantize uses (``ort_logits``,
``run_guarded``). ``python -m optimize.fp16 --child ...`` is the child entry point.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from calibration.evalset import EvalSet
from runtime.child import python_module, run_child
from runtime.errors import EdgeattnError
from judge.budget import Budget, budget_for, reasons
from judge.figures import figures
from runtime.ort_backend import ORT_LEVEL_KEY, OPT_LEVELS, cpu_session, try_levels  # one table of ORT optimisation levels
from zoo.io import (atomic_save_onnx, atomic_write, needs_external_data, prune_external_data, save_onnx,
                    sha256_file)
from optimize.node_scopes import reattach, record

log = logging.getLogger("edgeattn.optimize.fp16")
# Ops kept float32: normalisation statistics, softmax and exponentials overflow or lose too much in fp16.
FP32_OPS = ("LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
            "ReduceLogSumExp", "Pow", "Sqrt", "Reciprocal", "Exp", "Log")
# Tried next if the first conversion is not clean: GELU's Erf and the attention score path.
FP32_OPS_WIDE = FP32_OPS + ("Erf", "Div", "Where", "Tanh", "Sigmoid")


class Fp16Error(EdgeattnError, RuntimeError):
    """FP16 conversion or its check failed; the message names the model and what was expected."""


@dataclass
class Fp16Options:
    keep_io_types: bool = True
    block_tiers: tuple[tuple[str, ...], ...] = (FP32_OPS, FP32_OPS_WIDE)
    check_samples: int | str | None = "auto"  # rows of the NaN/Inf + budget check: judge.budget.loop_rows' setting
    levels: tuple[str, ...] = OPT_LEVELS
    threads: int = 2
    batch_size: int = 64
    timeout_s: float = 900.0
    # the user's overrides of the spec's fp16 tolerance (None: the spec's; runtime.modelspec.DEFAULT_TOLERANCES is the
    # only place defaults live): accuracy points vs fp32, cosine
    max_drop: float | None = None
    min_cosine: float | None = None

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("threads", "timeout_s", "levels"):
            d.pop(k)
        return d

    def budget(self, tolerances: dict[str, Any] | None = None) -> Budget:
        """Verify's fp16 budget: the spec's tolerance (None: the defaults) with these overrides."""
        return budget_for(tolerances, "fp16", max_drop_points=self.max_drop, min_cosine=self.min_cosine)


# ---- ONNX Runtime helpers ----------------------------------------------------------------------------
def ort_logits(model: Any, es: EvalSet, level: str = "all", threads: int = 2, batch_size: int = 64,
               progress: str | None = None) -> np.ndarray:
    """Run ``es`` through a session (or a model path) and concatenate the first output, float32."""
    sess = model if hasattr(model, "run") else cpu_session(model, level, threads)
    out = []
    it = es.batches(batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=-(-len(es) // batch_size), desc=progress, leave=False, dynamic_ncols=True)
    for feed in it:
        out.append(np.asarray(sess.run(None, feed)[0], dtype=np.float32))
    return np.concatenate(out, axis=0)


# ---- crash-guarded child runs -------------------------------------------------------------------------
@dataclass
class GuardedRun:
    level: str
    ok: bool
    returncode: int | None
    seconds: float
    error: str | None = None
    logits: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"level": self.level, "ok": self.ok, "returncode": self.returncode, "seconds": round(self.seconds, 2),
                **({"error": self.error} if self.error else {})}


def child_argv(model: str | os.PathLike, feeds: str | os.PathLike, out: str | os.PathLike, level: str,
               threads: int, batch_size: int) -> list[str]:
    return python_module("optimize.fp16", "--child", "--model", model, "--feeds", feeds, "--out", out, "--level", level,
                         "--threads", threads, "--batch-size", batch_size)


def run_guarded(model: str | os.PathLike, es: EvalSet, level: str, threads: int = 2, batch_size: int = 64,
                timeout_s: float = 900.0, argv_factory: Callable[..., list[str]] | None = None) -> GuardedRun:
    """Run ``model`` on ``es`` in a child process at ORT level ``level``; a crash or timeout is reported, not raised."""
    factory = argv_factory or child_argv
    with tempfile.TemporaryDirectory(prefix="edgeattn-fp16-") as tmp:
        feeds, out = Path(tmp) / "feeds.npz", Path(tmp) / "out.npy"
        es.save_npz(feeds)
        res = run_child(factory(model, feeds, out, level, threads, batch_size), timeout_s)
        if not res.ok or not out.is_file():
            err = res.describe() if not res.ok else "exited with code 0 but wrote no output"
            return GuardedRun(level, False, res.returncode, res.seconds, err)
        dt = res.seconds
        return GuardedRun(level, True, 0, dt, None, np.load(out))


def probe_ort_levels(model: str | os.PathLike, es: EvalSet, levels: Sequence[str] = OPT_LEVELS, threads: int = 2,
                     batch_size: int = 64, timeout_s: float = 900.0,
                     argv_factory: Callable[..., list[str]] | None = None) -> tuple[GuardedRun | None, list[GuardedRun]]:
    """Try ``levels`` in order in child processes; return (first run that worked or None, all attempts)."""
    attempts: list[GuardedRun] = []

    def run(level: str) -> tuple[GuardedRun, str | None]:
        attempts.append(run_guarded(model, es, level, threads, batch_size, timeout_s, argv_factory))
        return attempts[-1], attempts[-1].error

    _, last, _ = try_levels(run, levels, Path(model).name)
    return (last if last.ok else None), attempts


def child_args(argv: Sequence[str]) -> argparse.Namespace:
    """The crash-guarded child's arguments (:func:`child_argv`; optimize.decoder_quant's child takes the same)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model", required=True)
    ap.add_argument("--feeds", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--level", default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    return ap.parse_args(list(argv))


def _child_main(argv: Sequence[str]) -> int:
    a = child_args(argv)
    es = EvalSet.load_npz(a.feeds)
    logits = ort_logits(a.model, es, a.level, a.threads, a.batch_size)
    np.save(a.out, logits)
    return 0


# ---- conversion --------------------------------------------------------------------------------------
def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, op_block_list: Sequence[str] = FP32_OPS,
                 keep_io_types: bool | Sequence[str] = True, node_block_list: Sequence[str] = ()) -> dict[str, Any]:
    """fp32 ONNX -> fp16 ONNX (atomic write); returns node/cast counts and how many nodes carry a PyTorch module
    scope (``scopes``: the converter's Casts get the scope of the node they feed, optimize.node_scopes).
    ``keep_io_types``: True (every float input/output stays float32) or the names that stay float32;
    ``node_block_list``: nodes kept float32 by name (e.g. a decoder's residual sums)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16


    model = onnx.load(str(src))
    scope_table = record(model)  # before the converter rewrites the graph in place
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    keep = keep_io_types if isinstance(keep_io_types, bool) else list(keep_io_types)
    # the converter's own shape inference serialises the model: over the protobuf limit it reads the value_info the
    # export stage inferred on the file instead
    fp16 = convert_float_to_float16(model, keep_io_types=keep, op_block_list=block,
                                    node_block_list=list(node_block_list) or None,
                                    disable_shape_infer=needs_external_data(model))
    toposort(fp16.graph)  # the converter appends its input Casts at the end; checkers and parsers want order
    scopes = reattach(fp16, scope_table)  # its Casts get the scope of the node they feed (verify.localize)
    # The converter leaves some value_info with stale element types; re-infer them from the graph (on the file: a
    # model over the protobuf limit cannot be inferred in memory).
    del fp16.graph.value_info[:]

    def _write(tmp: Path) -> None:
        save_onnx(fp16, tmp, name=Path(dst).name)  # external data when over the protobuf limit
        onnx.shape_inference.infer_shapes_path(str(tmp), str(tmp), check_type=True, strict_mode=True)
        onnx.checker.check_model(str(tmp))

    atomic_write(dst, _write)
    prune_external_data(dst)
    kept = sorted({n.op_type for n in fp16.graph.node if n.op_type in set(op_block_list)})
    return {"nodes": len(fp16.graph.node), "casts": sum(n.op_type == "Cast" for n in fp16.graph.node),
            "fp32_ops_present": kept, "op_block_list": list(op_block_list), "keep_io_types": keep,
            **({"node_block_list": list(node_block_list)} if node_block_list else {}), "scopes": scopes}


def toposort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs (stable)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    ordered, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in known})[:5]
            raise Fp16Error(f"graph: cannot order {len(rest)} node(s); inputs never produced: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def io_types(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
            for v in list(m.graph.input) + list(m.graph.output)}


def stamp_ort_level(path: Path, level: str) -> None:
    """Record in the file (metadata ``runtime.ort_backend.ORT_LEVEL_KEY``) the most aggressive ONNX Runtime level
    that ran it, so the thin runtime opens it there by default instead of crashing at 'all'."""
    import onnx

    m = onnx.load(str(path))
    props = {p.key: p for p in m.metadata_props}
    entry = props.get(ORT_LEVEL_KEY) or m.metadata_props.add()
    entry.key, entry.value = ORT_LEVEL_KEY, level
    atomic_save_onnx(m, path)


def build_fp16(model_dir: str | os.PathLike, es: EvalSet, ref_logits: np.ndarray, opts: Fp16Options | None = None,
               argv_factory: Callable[..., list[str]] | None = None, src_name: str = "fp32.sim.onnx",
               dst_name: str = "fp16.onnx", budget: Budget | None = None) -> dict[str, Any]:
    """Convert, then check on ``es`` (real samples) in crash-guarded children; return the manifest section.

    Tiers of block lists are tried until one passes verify's verdict for ``budget`` (None: ``opts.budget()`` on the
    default tolerances); if none does, the last tier's file is kept and the section says ``passed: false`` with the
    reasons.
    """
    opts = opts or Fp16Options()
    budget = budget or opts.budget()
    model_dir = Path(model_dir)
    src, dst = model_dir / src_name, model_dir / dst_name
    t0 = time.perf_counter()
    tiers = []
    section: dict[str, Any] = {}
    for ti, block in enumerate(opts.block_tiers):
        conv = convert_fp16(src, dst, block, opts.keep_io_types)
        chosen, attempts = probe_ort_levels(dst, es, opts.levels, opts.threads, opts.batch_size, opts.timeout_s,
                                            argv_factory)
        tier = {"tier": ti, **conv, "attempts": [a.summary() for a in attempts]}
        if chosen is None:
            tier["passed"] = False
            tier["problem"] = "ONNX Runtime failed at every optimisation level"
        else:
            cmp = figures(ref_logits, chosen.logits, es.y, budget.neighbour_k)
            why = reasons(cmp, budget, es.y is not None)
            tier.update(ort_opt_level=chosen.level, check=cmp, passed=not why, reasons=why)
        tiers.append(tier)
        log.info("fp16 %s tier %d: %s", model_dir.name, ti, {k: tier.get(k) for k in ("ort_opt_level", "passed")})
        if tier["passed"]:
            break
    best = tiers[-1]
    crashed = {a["level"]: a["error"] for a in best["attempts"] if not a["ok"]}
    if crashed and best.get("ort_opt_level"):
        stamp_ort_level(dst, best["ort_opt_level"])
    section = {
        "file": dst.name, "sha256": sha256_file(dst), "source": src.name, "source_sha256": sha256_file(src),
        "keep_io_types": opts.keep_io_types, "io_types": io_types(dst), "op_block_list": best["op_block_list"],
        "fp32_ops_present": best["fp32_ops_present"], "casts": best["casts"], "nodes": best["nodes"],
        "ort_opt_level": best.get("ort_opt_level"), "ort_crashed_levels": crashed, "passed": best["passed"],
        "check": {**(best.get("check") or {}), "data": es.description}, "tiers_tried": len(tiers),
        "scopes": best.get("scopes"),
        "tiers": [{k: v for k, v in t.items() if k not in ("nodes",)} for t in tiers[:-1]],
        "seconds": round(time.perf_counter() - t0, 2),
        "options": {k: v for k, v in opts.key().items() if k != "block_tiers"}, "budget": budget.to_dict(),
        "reasons": best.get("reasons") or ([best["problem"]] if best.get("problem") else []),
    }
    return section


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return _child_main(argv)
    print("optimize.fp16 is run through 'python -m optimize quantize' (it writes fp16.onnx and the int8 "
          "artifacts); '--child' is its crash-guarded worker.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
