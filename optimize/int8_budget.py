"""The accuracy budget of the TensorRT Q/DQ graph: the stage's options (QuantOptions), the per-node sensitivity sweep
and the search that keeps the fewest of the most sensitive nodes float that bring the float simulation of the graph
within the budget: a bisection over the ranked nodes (:func:`bisect_cut`, at most 2 + ceil(log2 n) full evaluations
for n nodes; MatMul graphs (optimize.ptq) and decoders rank their nodes in one pass over cached activations,
optimize.layer_error; graphs with Convs by one evaluation per node, :func:`sensitivity_sweep`).

The budget and the verdict are the judge's (judge.budget): ``QuantOptions.budget`` builds it from the spec's int8
tolerance with the user's explicit overrides (``--max-drop``, ``--min-agreement``, ``--min-cosine``; None: the spec's),
and every candidate is judged by judge.budget.reasons on judge.figures' figures, exactly as verify judges the written
file. Parity-only models (no labels) get a guard band on the cosine bar (``parity_margin``), because the loop chooses
on other images than verify judges on: stricter than verify, never looser."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from calibration import TensorRange
from calibration.evalset import EvalSet, PARITY_SAMPLES
from judge.budget import Budget, budget_for, passes, reasons
from judge.figures import figures
from optimize.fp16 import ort_logits
from optimize.int8_build import quantize_static_cached
from optimize.qdq_graph import NodeInfo
from runtime.ort_backend import QDQ_REFERENCE_LEVEL

log = logging.getLogger("edgeattn.optimize.int8_budget")


@dataclass
class QuantOptions:
    method: str = "Percentile"  # calibration: MinMax | Entropy | Percentile
    calib_size: int = 256
    calib_batch: int = 32
    seed: int = 0
    # the user's overrides of the spec's int8 tolerance (None: the spec's; runtime.modelspec.DEFAULT_TOLERANCES is
    # the only place defaults live): accuracy points vs fp32, top-1 agreement, cosine (its statistic: the spec's)
    max_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    # parity-only models: the loop aims this share of the way from min_cosine to 1 (0.5: 0.995 for 0.99), because
    # verify judges on other images than the loop chose on (efficientnet_b0 random-init: 0.9903 on the loop's 32
    # images, 0.9855 on verify's 32)
    parity_margin: float = 0.5
    quantize_attention: bool = False  # Q/DQ on attention BMMs (MatMul of two activations) too
    # int8.qdq.onnx with its unquantised layers in FP16 (optimize.qdq_fp16), when that graph is within the budget too
    fp16_mix: bool = True
    # outlier-aware PTQ of MatMul/Gemm-only graphs (optimize.ptq): "auto" | "off" (one method, sweep ranking)
    ptq: str = "auto"
    smoothing: str = "auto"  # per-group SmoothQuant alpha chosen by layer error (optimize.smoothquant) | "off"
    # per-tensor calibration candidates besides ``method`` (optimize.ptq). Entropy is not among the defaults: ONNX
    # Runtime's entropy calibrator (2048 bins) took more than 15 minutes on MiniLM's 256 calibration sentences on
    # loaded shared cores, where MinMax took 2 and Percentile 8
    calib_choice: tuple[str, ...] = ("MinMax",)
    ptq_samples: int = 64  # calibration samples of the one capture pass (alpha, method choice, ranking)
    ptq_rows: int = 1024  # activation rows kept per tensor from that pass
    sweep: str = "auto"  # auto: only when the fully quantised model misses the budget | always | never
    sweep_samples: int = 1000  # validation rows used to rank nodes
    eval_samples: int | str | None = "auto"  # validation rows for the budget: judge.budget.loop_rows' setting
    max_excluded: int | None = None
    cpu_candidates: tuple[str, ...] | None = None  # None: default_cpu_candidates() for the CPU at hand
    # int8.cpu.onnx must be at least this much faster than fp32 here, else fp32 is kept: 5 % is the timing noise of
    # these shared 2-core machines (bench's INT8 guard margin), so a tie never ships an int8 artifact
    min_speedup: float = 1.05
    bench_runs: int = 30  # interleaved rounds at least (optimize.cpu_int8.bench_inprocess)
    tie_tolerance: float = 0.05  # CPU candidates this close to the fastest count as equally fast
    search_margin: float = 0.15  # a CPU form's keep-float search runs when its best case is this much faster than
    # the fastest form within the budget as built (optimize.cpu_int8.judge_fastest_first)
    # "fastest_first": every CPU candidate timed, then judged in order of speed until the fastest within the budget
    # (optimize.cpu_int8.judge_fastest_first); "all": every candidate judged (the manifest then has all figures)
    cpu_judge: str = "fastest_first"
    min_int8_coverage: float = 0.5  # a CPU candidate must hold >= this share of Conv/Gemm/MatMul weights in int8
    bench_batch: int = 1
    threads: int = 2
    parity_calib_size: int = 32  # models without a dataset: synthetic calibration images
    parity_eval_size: int = PARITY_SAMPLES  # as many held-out images as verify judges parity-only models on
    fp16: bool = True
    int8: bool = True

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("threads", "bench_runs", "bench_batch", "fp16", "int8", "tie_tolerance", "search_margin",
                  "cpu_judge"):
            d.pop(k)
        return d

    def budget(self, tolerances: dict[str, Any] | None = None) -> Budget:
        """Verify's int8 budget: the spec's tolerance (None: the defaults) with this stage's explicit overrides."""
        return budget_for(tolerances, "int8", max_drop_points=self.max_drop, min_top1_agreement=self.min_agreement,
                          min_cosine=self.min_cosine)

    def loop_budget(self, tolerances: dict[str, Any] | None, labelled: bool, n: int | None = None) -> Budget:
        """What the loop accepts: verify's budget, with the parity guard band where there are no labels. The band
        (``parity_margin``, set on PARITY_SAMPLES images) guards against the loop's rows and verify's differing by
        chance, which shrinks as 1/sqrt(n): judged on ``n`` > PARITY_SAMPLES rows (a feature extractor on its
        validation split), it is scaled by sqrt(PARITY_SAMPLES / n), the same number of standard errors."""
        b = self.budget(tolerances)
        if labelled:
            return b
        share = self.parity_margin * (1.0 if n is None or n <= PARITY_SAMPLES else math.sqrt(PARITY_SAMPLES / n))
        return b.tightened(share)


def logit_error(ref: np.ndarray, out: np.ndarray) -> float:
    """Relative mean squared logit error (smooth ranking score for sensitivity)."""
    return float(np.mean((out - ref) ** 2) / max(np.mean(ref ** 2), 1e-12))


def evaluate_inprocess(path: str | os.PathLike, es: EvalSet, ref: np.ndarray, threads: int,
                       neighbour_k: int | None = None) -> tuple[dict, np.ndarray]:
    """A TensorRT Q/DQ graph judged by its float simulation (runtime.ort_backend.QDQ_REFERENCE_LEVEL): the same
    verdict on every CPU, and what TensorRT computes up to rounding. ``neighbour_k``: the budget's (embeddings)."""
    out = ort_logits(path, es, QDQ_REFERENCE_LEVEL, threads)
    cmp = figures(ref, out, es.y, neighbour_k)
    cmp["logit_rel_mse"] = logit_error(ref, out)
    return cmp, out


def sensitivity_sweep(src: Path, ranges: dict[str, TensorRange], method: str, nodes: Sequence[NodeInfo],
                      es: EvalSet, ref: Any, opts: QuantOptions, work: Path,
                      progress: bool = True, evaluate: Callable[..., tuple[dict, Any]] | None = None,
                      score_key: str = "logit_rel_mse") -> list[dict[str, Any]]:
    """Quantise ONE node at a time; measure its accuracy drop and error score (``score_key`` of ``evaluate``'s
    figures, default the relative logit MSE) on ``es``. Most harmful first."""
    evaluate = evaluate or evaluate_inprocess
    rows = []
    for nd in tqdm(nodes, desc=f"sensitivity {src.parent.name}", disable=not progress, leave=False, dynamic_ncols=True):
        p = work / "one.onnx"
        quantize_static_cached(src, p, ranges, method, [nd.name], "trt", opts.quantize_attention)
        cmp, _ = evaluate(p, es, ref, opts.threads)
        rows.append({"node": nd.name, "op_type": nd.op_type, "kind": nd.kind, score_key: cmp[score_key],
                     "accuracy_delta": cmp.get("accuracy_delta"), "top1_agreement": cmp["top1_agreement"],
                     "cosine_mean": cmp.get("cosine_mean")})
    rows.sort(key=lambda r: -r[score_key])
    return rows


def bisect_cut(limit: int, within_at: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """The fewest of the ranked nodes to keep float, k in 0..``limit``, for which ``within_at(k)`` holds (k: the k
    most sensitive kept float), by bisection: within_at(0), then within_at(limit), then halving the interval between
    the last k that missed and the first that passed, so at most 2 + ceil(log2(limit)) calls. Assumes that keeping
    more of them float never makes it worse (the ranking's premise). Returns (k or None when even ``limit`` misses,
    the k evaluated, in order)."""
    seen: list[int] = []

    def at(k: int) -> bool:
        seen.append(k)
        return within_at(k)

    if at(0):
        return 0, seen
    if limit <= 0 or not at(limit):
        return None, seen
    lo, hi = 0, limit  # lo misses, hi passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid):
            hi = mid
        else:
            lo = mid
    return hi, seen


def budget_search(src: Path, ranges: dict[str, TensorRange], method: str, nodes: Sequence[NodeInfo],
                  es: EvalSet, ref: Any, es_sweep: EvalSet, ref_sweep: Any, opts: QuantOptions,
                  work: Path, progress: bool = True, evaluate: Callable[..., tuple[dict, Any]] | None = None,
                  budget: Budget | None = None, score_key: str = "logit_rel_mse",
                  labelled: bool | None = None,
                  rank: Callable[[], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Fully quantise; when outside the budget, rank the nodes by sensitivity and find by bisection
    (:func:`bisect_cut`) the fewest of the most sensitive to keep float: O(log n) full evaluations. Returns the
    excluded nodes (with what each cost alone), every step, the sensitivity table and the final evaluation.

    Every candidate is judged by judge.budget.passes(figures, ``budget``, labelled): verify's verdict (``budget``
    None: ``opts.loop_budget`` on the default tolerances). ``evaluate(path, es, ref, threads) -> (figures, outputs)``
    and ``score_key`` (the figure that ranks nodes) default to the classifiers' (logits vs ``ref``, the relative
    logit MSE); a decoder passes its own (optimize.decoder_quant: teacher-forced figures). ``rank()``: the sensitivity
    rows, most harmful first (optimize.layer_error's one pass over cached activations); None: one evaluation per node
    on ``es_sweep`` (:func:`sensitivity_sweep`)."""
    labelled = es.y is not None if labelled is None else labelled
    budget = budget or opts.loop_budget(None, labelled)
    evaluate = evaluate or partial(evaluate_inprocess, neighbour_k=budget.neighbour_k)

    def within(cmp: dict[str, Any]) -> bool:
        return passes(cmp, budget, labelled)

    names = [n.name for n in nodes]
    p = work / "candidate.onnx"
    evaluated: dict[int, dict[str, Any]] = {}
    order: list[str] = []

    def run(k: int) -> dict[str, Any]:
        if k not in evaluated:
            keep = set(order[:k])
            quantize_static_cached(src, p, ranges, method, [n for n in names if n not in keep], "trt",
                                   opts.quantize_attention)
            evaluated[k], _ = evaluate(p, es, ref, opts.threads)
            if k:
                log.info("int8 %s: %d most sensitive kept float -> %s", src.parent.name, k,
                         brief_figures(evaluated[k]))
        return evaluated[k]

    need = not within(run(0))
    sens: list[dict[str, Any]] = []
    if opts.sweep == "always" or (need and opts.sweep == "auto"):
        sens = rank() if rank is not None else sensitivity_sweep(src, ranges, method, nodes, es_sweep, ref_sweep,
                                                                  opts, work, progress, evaluate, score_key)
    k = 0
    if need and sens:
        order[:] = [r["node"] for r in sens]
        limit = min(opts.max_excluded if opts.max_excluded is not None else len(nodes) - 1, len(order))
        cut, _ = bisect_cut(limit, lambda j: within(run(j)))
        k = limit if cut is None else cut
    steps = [{"excluded": None if j == 0 else order[j - 1], "kept_float": j, **brief_figures(evaluated[j])}
             for j in evaluated]
    rows = {r["node"]: r for r in sens}
    excluded = [_cost(rows[n], score_key) for n in order[:k]]
    if k and k - 1 in evaluated:  # the last one kept float: what it recovered, measured (the others: jointly)
        prev, cmp = evaluated[k - 1], evaluated[k]
        excluded[-1].update(
            recovered_points=None if not labelled else round(cmp["accuracy_delta"] - prev["accuracy_delta"], 4),
            recovered_agreement=round(cmp["top1_agreement"] - prev["top1_agreement"], 4))
    final = evaluated[k]
    return {"excluded": excluded, "steps": steps, "sensitivity": sens, "final": final, "budget": budget.to_dict(),
            "passed": within(final), "quantized": [n for n in names if n not in set(order[:k])],
            "full_evaluations": len(evaluated)}


def _cost(row: dict[str, Any], score_key: str) -> dict[str, Any]:
    """An excluded node's record: what it cost alone in the ranking (recovered_*: filled when measured)."""
    return {"node": row["node"], "op_type": row["op_type"], "alone_accuracy_delta": row.get("accuracy_delta"),
            **{f"alone_{k}": row[k] for k in (score_key, "output_rel_mse") if k in row},
            "recovered_points": None, "recovered_agreement": None}


def miss_reason(cmp: dict[str, Any], budget: Budget, labelled: bool) -> str:
    """What missed the budget and by how much, in words (judge.budget.reasons, joined)."""
    return "; ".join(reasons(cmp, budget, labelled)) or "within the budget"


def brief_figures(cmp: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_samples", "n_tokens", "accuracy", "accuracy_delta", "accuracy_delta_ci95", "top1_agreement",
            "cosine_mean", "cosine_min", "logit_rel_mse", "nonfinite",
            "perplexity", "perplexity_delta_pct", "nll_rel_mse",  # decoders' figures
            "neighbour_k", "neighbour_overlap", "neighbour_overlap_min", "neighbour_top1_agreement")  # embeddings
    return {k: (round(cmp[k], 6) if isinstance(cmp.get(k), float) else cmp.get(k)) for k in keys if k in cmp}
