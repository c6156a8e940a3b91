"""FP16 + INT8 artifacts under an accuracy budget: ``python -m optimize quantize --models ... --artifacts DIR``.

Per model folder (``<artifacts>/<folder>/``, source ``fp32.sim.onnx``) it writes:

- ``fp16.onnx``: precision in the graph (optimize.fp16), checked on real validation samples in a
  crash-guarded child process; manifest section ``fp16`` (incl. ``ort_opt_level``).
- ``int8.qdq.onnx`` for TensorRT: explicit Q/DQ, symmetric int8 (zero points 0), weights per-channel on
  the output-channel axis, bias float, activations per-tensor, Q/DQ on the inputs of Conv/Gemm/MatMul
  projections and FFNs only (attention BMMs, Softmax and LayerNorm stay float by default). Calibrated on
  the TRAINING split (calibration/). Graphs whose quantised nodes are all MatMul/Gemm (transformers) go through
  optimize.ptq first: SmoothQuant-style smoothing with alpha chosen per input group, the calibration method chosen
  per tensor, and the nodes ranked in one pass over cached activations; other graphs (Conv) are ranked by a
  per-node sweep on the VALIDATION split. A bisection over the ranking keeps the fewest of the most sensitive nodes
  float that bring the float simulation within the budget (``--max-drop`` points, ``--min-agreement``, cosine; the
  judge's verdict on the VALIDATION split). Checked by optimize.qdq_rules.
- ``int8.cpu.onnx`` for the CPU: the fastest candidate that is within the same budget, measured here on its own
  backend (ONNX Runtime: dynamic int8 MatMul, static QDQ u8s8, static QOperator, the TensorRT Q/DQ graph itself, the
  fused form; OpenVINO, where installed: the TensorRT Q/DQ graph on its int8 kernels); optimize.cpu_int8.
- ``calib.<method>.json``: the range cache (reused while data, model and method are unchanged).

Manifest section ``int8`` records calibration, the ``ptq`` choices (alpha and LayerNorm fold or Mul per group, the
calibration method per tensor), budget, sensitivity, the nodes kept float and what each cost, every candidate's accuracy and latency, and which CPU method won. Up-to-date artifacts are skipped.
Models without a dataset (e.g. torchvision:vit_b_16) are calibrated on seeded natural-ish images and
judged by parity only (logit cosine vs fp32).

A decoder (its task's handler: optimize.decoder_quant) takes ``--kv-cache float16``: its weight-only CPU forms' cache
I/O narrowed to float16 where that stays within the budget. A model without a KV cache given ``--kv-cache`` is
refused (one ``error: quantize <model>: ...`` line, exit 2, its files untouched; the other models go on).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration import CalibrationData, RangeCache
from calibration.evalset import EvalSet, load_eval_set
from calibration.user_data import data_digest, data_path, load_user_data
from optimize.cpu_int8 import ALL_CPU_CANDIDATES, backend_record, build_cpu_candidates, candidate_backend, choose_cpu, \
    default_cpu_candidates, write_cpu_artifact
from optimize.fp16 import Fp16Options, build_fp16, ort_logits
from optimize.int8_budget import QuantOptions, brief_figures, miss_reason, budget_search
from judge.budget import Budget, check_resolution, delta_statement, loop_rows
from optimize.int8_build import QuantizeError, calibrate_ranges, quantize_static_cached
from optimize.qdq_fp16 import mix_fp16
from optimize.ptq import outlier_aware
from optimize.qdq_graph import ensure_node_names, quantizable_nodes
from optimize.qdq_rules import check_qdq_rules, qdq_counts
from runtime.cpu import cpu_info, int8_isa
from runtime.errors import ModelLoadError
from runtime.modelspec import SPEC_FILE
from optimize.kv_cache import CACHE_TYPES
from pipeline.args import (ArgumentsError, add_artifacts, add_force, add_kv_cache, add_max_drop, add_models,
                           add_threads, choice_list, non_negative_int, non_negative_number, positive_int, rows_setting,
                           stage_parser)
from pipeline.artifacts import resolve_models
from pipeline.quiet import fold_repeats
from pipeline.stage import PhaseClock, StageErrors, cli
from zoo.data import load_dataset
from zoo.io import (copy_onnx, digest, peak_rss_mb, read_json, save_onnx, section_up_to_date,
                    sha256_file, update_manifest)
from zoo.spec import load_spec
from zoo.tasks import task_of_dir

log = logging.getLogger("edgeattn.optimize.quantize")
CODE_VERSION = "int8/6"  # 3: module scopes carried into fp16/int8 graphs; 4: fp16 records its safe ORT level;
# 5: candidates judged by verify's verdict (judge.budget: cosine too), fp16 on the whole evaluation set; 6: outlier-
# aware PTQ of MatMul graphs (optimize.ptq: smoothing, calibration method per tensor, one-pass ranking)


# ---- one model ---------------------------------------------------------------------------------------




def quantize_model(model_dir: str | os.PathLike, opts: QuantOptions | None = None, force: bool = False,
                   progress: bool = True, **handler_kw: Any) -> dict[str, Any]:
    """FP16 + INT8 artifacts for one model folder; returns {"fp16": section, "int8": section} (as written), by the
    handler of the folder's task (zoo.tasks: :func:`quantize_outputs`, or a decoder's optimize.decoder_quant).
    ``handler_kw``: options only that handler takes (:func:`cache_options`)."""
    return task_of_dir(model_dir).run("quantize", model_dir, opts, force, progress, **handler_kw)


def cache_options(model_dir: Path, name: str, kv_cache: str | None) -> dict[str, Any]:
    """``--kv-cache`` -> the keyword the quantize handler of a model with a KV cache takes (``dopts``: the decoder
    options, optimize.decoder_quant); {} when not given. A model whose spec lists no past inputs has no cache to
    narrow: refused (ArgumentsError) before any of its files is written."""
    if kv_cache is None:
        return {}
    spec = read_json(Path(model_dir) / SPEC_FILE, {}) or {}
    if not (spec.get("preprocess") or {}).get("past_inputs"):
        raise ArgumentsError(f"--kv-cache {kv_cache}: model '{name}' has no KV cache (its {SPEC_FILE} lists no past "
                             "inputs); expected a decoder exported with its cache (leave --kv-cache out for this "
                             "model)")
    from optimize.decoder_quant import DecoderQuantOptions

    return {"dopts": DecoderQuantOptions(kv_cache=kv_cache)}


@fold_repeats("edgeattn.optimize.quantize")  # ONNX Runtime's per-candidate hints: once each, counted
def quantize_outputs(model_dir: str | os.PathLike, opts: QuantOptions | None = None, force: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """:func:`quantize_model` for a model judged by its outputs (classifiers, custom, sequence-to-sequence)."""
    opts = opts or QuantOptions()
    isa = int8_isa()
    if opts.cpu_candidates is None:
        opts = replace(opts, cpu_candidates=default_cpu_candidates(isa))
    model_dir = Path(model_dir)
    src = model_dir / "fp32.sim.onnx"
    if not src.is_file():
        raise QuantizeError(f"{src}: not found; run 'make optimize' (python -m optimize simplify) first")
    try:
        spec = load_spec(src)
    except ModelLoadError as e:
        raise QuantizeError(str(e)) from e
    labelled = spec.dataset is not None
    manifest = read_json(model_dir / "manifest.json", {}) or {}
    src_sha = sha256_file(src)
    dataset = user = None
    if labelled:
        dataset = load_dataset(spec.dataset)
    udp = None if labelled else data_path(manifest, model_dir.name)
    if udp:  # the user's own data (export --data): calibrate on one half, judge on the other
        user, es_all = user_eval_set(udp, spec, model_dir)
    else:
        es_all = load_eval_set(spec, model_dir, "val", None, opts.seed, opts.parity_eval_size, dataset=dataset)
    labelled = es_all.y is not None  # unlabelled user data; a feature extractor's dataset gives sentences only
    data_key = data_digest(udp) if udp else None
    result: dict[str, Any] = {}
    ref = ref16 = None
    clock = PhaseClock()  # where the time went, per phase: each section's "phases_s"
    # the budgets verify judges with (the spec's tolerances, the user's overrides); refused before anything is
    # written when the evaluation set cannot resolve them (judge.budget)
    # the rows each check judges (judge.budget.loop_rows; --eval-samples): the int8 rows are drawn from the fp16
    # check's rows where they fit, so one fp32 reference pass serves both
    f16 = Fp16Options(threads=opts.threads)
    b16 = f16.budget(spec.tolerances)
    es16 = es_all.subset(loop_rows(b16, len(es_all), labelled, f16.check_samples), opts.seed)
    n8 = loop_rows(opts.budget(spec.tolerances), len(es_all), labelled, opts.eval_samples)
    pool = es16 if opts.fp16 and n8 <= len(es16) else es_all
    es = pool.subset(n8, opts.seed)
    b8 = opts.loop_budget(spec.tolerances, labelled, len(es))
    if opts.fp16:
        check_resolution(b16, len(es16), labelled, f"quantize {model_dir.name} fp16")
    if opts.int8:
        check_resolution(b8, len(es), labelled, f"quantize {model_dir.name} int8")

    # -- fp16
    if opts.fp16:
        key = digest({"src": src_sha, "opts": f16.key(), "budget": b16.to_dict(), "code": CODE_VERSION,
                      **({"user_data": data_key} if udp else {})})
        if not force and section_up_to_date(model_dir, manifest.get("fp16"), key, ["fp16.onnx"]):
            print(f"quantize {model_dir.name}: fp16.onnx up to date")
            result["fp16"] = manifest["fp16"]
        else:
            with clock("fp32_reference"):
                ref16 = ort_logits(src, es16, "all", opts.threads,
                                   progress=f"fp32 {model_dir.name}" if progress else None)
            with clock("fp16"):
                sec = build_fp16(model_dir, es16, ref16, f16, budget=b16)
            sec.update(key=key, files_sha256={"fp16.onnx": sec["sha256"]},
                       phases_s={k: clock.seconds[k] for k in ("fp32_reference", "fp16")})
            update_manifest(model_dir, "fp16", {**sec, "peak_rss_mb": peak_rss_mb()})
            result["fp16"] = sec

    # -- int8
    if opts.int8:
        if user is not None:
            cal = user.half("calibration")
            calib = CalibrationData.from_arrays(cal.inputs, min(8, opts.calib_batch), es.pad_id,
                                                {"kind": "user_data", "source": cal.source})
        elif dataset is not None:
            calib = CalibrationData.from_dataset(spec, dataset, model_dir, opts.calib_size, opts.calib_batch, opts.seed)
        else:
            calib = CalibrationData.synthetic(spec, opts.parity_calib_size, min(8, opts.calib_batch), opts.seed)
        # the CPU's int8 class is part of the key: int8.cpu.onnx is chosen and verified for the CPU at hand
        key = digest({"src": src_sha, "data": calib.sha256, "dataset": getattr(dataset, "sha256", None),
                       "eval": es.description, "opts": opts.key(), "budget": b8.to_dict(), "code": CODE_VERSION,
                       "cpu_isa": isa,
                       **({"user_data": data_key} if udp else {})})
        old = manifest.get("int8") or {}
        if not force and section_up_to_date(model_dir, old, key, list(old.get("files_sha256", {})) or ["int8.qdq.onnx"]):
            print(f"quantize {model_dir.name}: {' and '.join(old['files_sha256'])} up to date"
                  + ("" if (old.get("cpu") or {}).get("file") else " (CPU: fp32 kept, no int8.cpu.onnx)"))
            result["int8"] = old
            return result
        clock = PhaseClock()
        with clock("fp32_reference"):  # a subset of the fp16 check's rows: its fp32 pass (one pass for both)
            if ref16 is not None and pool is es16:
                ref = ref16[es16.subset_index(n8, opts.seed)]
            else:
                ref = ort_logits(src, es, "all", opts.threads,
                                 progress=f"fp32 {model_dir.name} val" if progress else None)
        split = "user data (evaluation half)" if udp else ("val" if dataset is not None else "synthetic")
        sec = build_int8(model_dir, src, calib, es, ref, opts, progress, isa, spec.tolerances, previous=old,
                         clock=clock, split=split)
        if "last_run" not in sec:  # a section kept from the previous run keeps its key: the next run tries again
            sec.update(key=key, source_sha256=src_sha)
        if dataset is not None:
            tj = read_json(model_dir / "train.json", {}) or {}
            sec["pytorch_val_accuracy"] = tj.get("val_accuracy")
        update_manifest(model_dir, "int8", {**sec, "peak_rss_mb": peak_rss_mb()})
        result["int8"] = sec
    return result


def user_eval_set(path: str, spec, model_dir: Path):
    """(the user's data, its evaluation half as an EvalSet of every model input)."""
    user = load_user_data(path, spec, model_dir)
    ev = user.half("evaluation")
    return user, EvalSet(dict(ev.inputs), ev.labels, spec.trim_pad_id(), ev.source)


def build_int8(model_dir: Path, src: Path, calib: CalibrationData, es: EvalSet, ref: np.ndarray,
               opts: QuantOptions, progress: bool = True, isa: str | None = None,
               tolerances: dict[str, Any] | None = None, previous: dict[str, Any] | None = None,
               clock: PhaseClock | None = None, split: str | None = None) -> dict[str, Any]:
    """Calibrate, budget-search the TensorRT Q/DQ graph (judged by its float simulation), pick the CPU graph for
    this CPU (judged on its integer kernels); write both atomically. When no int8 form is both within the budget
    and faster than fp32 here, no int8.cpu.onnx is written and fp32 is the CPU artifact (a stale one is moved aside).
    Every candidate is judged by verify's verdict on the spec's ``tolerances`` (judge.budget; None: the defaults)
    with ``opts``' overrides. A run that does worse than ``previous`` (the manifest's int8 section, passed, files
    intact) writes and deletes nothing: the previous section is returned with ``last_run`` saying what this run
    missed. ``clock``: the stage's phase clock (its seconds go into the section's ``phases_s``); ``split``: where
    ``es`` comes from, for the record (None: "val" when labelled, else "synthetic")."""
    import onnx

    clock = clock or PhaseClock()
    isa = isa or int8_isa()
    t0 = time.perf_counter()
    labelled = es.y is not None
    vb, budget = opts.budget(tolerances), opts.loop_budget(tolerances, labelled, len(es))
    with tempfile.TemporaryDirectory(prefix=f"edgeattn-int8-{model_dir.name}-") as tmpd:
        work = Path(tmpd)
        model = onnx.load(str(src))
        qsrc = src
        if ensure_node_names(model):
            qsrc = work / "named.onnx"
            save_onnx(model, qsrc)
        nodes = quantizable_nodes(model, opts.quantize_attention)
        del model
        if not nodes:
            raise QuantizeError(f"{src}: no Conv/Gemm/MatMul node with a constant weight to quantise")
        with clock("ptq"):
            plan = outlier_aware(qsrc, nodes, calib, opts, model_dir, work, progress)  # None: not all MatMul/Gemm
        es_sweep = es.subset(opts.sweep_samples, opts.seed + 1)
        cpu_src = qsrc
        if plan is not None and plan.unsmoothed is not None:  # the CPU forms' graph and ranges: unsmoothed, one
            ranges, cinfo = plan.unsmoothed  # method, calibrated in the smoothed graph's pass (optimize.calib_shared)
        elif plan is None:
            cache = RangeCache(model_dir / f"calib.{opts.method.lower()}.json")
            with clock("calibrate"):
                ranges, cinfo = calibrate_ranges(qsrc, calib, opts.method, cache, progress=progress)
        cpu_ranges = ranges if plan is None or plan.src != qsrc else plan.ranges
        if plan is None:
            ref_sweep = ref if es_sweep is es else ort_logits(src, es_sweep, "all", opts.threads)
            rank = None
        else:  # the smoothed graph (float-equivalent to src), ranges chosen per tensor, nodes ranked in one pass
            qsrc, ranges, cinfo, ref_sweep = plan.src, plan.ranges, plan.calibration, None
            rank = lambda: plan.rows  # noqa: E731
        cand = work / "candidate.onnx"
        mixed = None
        if opts.fp16_mix and opts.sweep != "always":  # the shipped graph first: all INT8, the rest FP16
            with clock("qdq_mixed_first"):
                mixed = mixed_first(qsrc, ranges, nodes, cand, work, model_dir, es, ref, budget, opts)
        if mixed is not None:
            search, scopes, (qdq_file, fp16_mix) = mixed
        else:
            with clock("qdq_search"):
                search = budget_search(qsrc, ranges, opts.method, nodes, es, ref, es_sweep, ref_sweep, opts, work,
                                       progress, budget=budget, rank=rank)
            scopes = quantize_static_cached(qsrc, cand, ranges, opts.method, search["quantized"], "trt",
                                            opts.quantize_attention)  # module scopes carried for the localiser
        violations = check_qdq_rules(cand)
        qdq_dst = model_dir / "int8.qdq.onnx"
        excluded = [e["node"] for e in search["excluded"]]
        # the CPU forms stay unsmoothed: smoothing moves outliers into the weights, which ORT's dynamic form quantises
        # per tensor (MiniLM classifier, dynamic on the smoothed graph: agreement 0.77, -10 points)
        with clock("cpu_build"):
            cands = build_cpu_candidates(cpu_src, cpu_ranges, opts.method, search["quantized"], excluded, cand, work,
                                         opts)
        feed = next(es.subset(opts.bench_batch, opts.seed).batches(opts.bench_batch))
        with clock("cpu_choose"):
            cpu = choose_cpu(src, cands, es, ref, feed, opts, budget)
        cpu_dst = model_dir / "int8.cpu.onnx"
        win = cpu["winner"]
        if previous and did_worse(search["passed"], win, previous) and previous_intact(model_dir, previous):
            return kept_previous(previous, search, cpu, opts, budget, labelled)
        if mixed is None:
            with clock("fp16_mix"):
                qdq_file, fp16_mix = mix_fp16(cand, work, model_dir, es, ref, budget, opts.fp16_mix, opts.threads)
        copy_onnx(qdq_file, qdq_dst)
        write_cpu_artifact(cands[win] if win is not None else None, cpu_dst, isa,
                           candidate_backend(win) if win is not None else None)
    qdq_lat = cpu["candidates"].get("qdq_s8s8", {}).get("latency_ms")
    wrow = cpu["candidates"].get(win, {}) if win else {}
    files = {qdq_dst.name: sha256_file(qdq_dst), **({cpu_dst.name: sha256_file(cpu_dst)} if win else {})}
    miss = None if search["passed"] else miss_reason(search["final"], budget, labelled)
    sec = {
        "artifacts": {"qdq": qdq_dst.name, "cpu": cpu_dst.name if win else None},
        "files_sha256": files,
        "source": src.name, "calibration": cinfo,
        "budget": {"split": split or ("val" if labelled else "synthetic"), "data": es.description, "n": len(es),
                   "max_drop_points": vb.max_drop_points if labelled else None,
                   "min_top1_agreement": vb.min_top1_agreement, "min_cosine": vb.min_cosine,
                   "cosine_on": vb.cosine_on, "loop_min_cosine": budget.min_cosine,
                   "fp32_ort_accuracy": float((ref.argmax(1) == es.y).mean()) if labelled else None},
        "qdq": {"file": qdq_dst.name, "passed": search["passed"], "rules_ok": not violations,
                "judged_by": "float simulation of its Q/DQ (ONNX Runtime, graph optimisations off): what TensorRT "
                             "computes up to rounding, the same on every CPU",
                "miss": miss, "fallback": None if search["passed"] else
                "int8.qdq.onnx kept (most accurate found) and marked failed; deploy fp16.onnx / the fp16 engine",
                "rule_violations": violations, "counts": qdq_counts(qdq_dst), "scopes": scopes,
                "quantized_nodes": search["quantized"], "excluded_nodes": search["excluded"],
                "val": brief_figures(search["final"]), "steps": search["steps"], "sensitivity": search["sensitivity"],
                "latency_ms": qdq_lat, "format": "QDQ int8 symmetric, per-channel weights, float bias"
                + (", unquantised layers float16" if fp16_mix["used"] else ""), "fp16_mix": fp16_mix},
        "cpu": {"file": cpu_dst.name if win else None, "method": win or "fp32", "why": cpu["why"],
                "judge_order": cpu["order"], "judged": cpu["judged"],
                **backend_record(win), "cpu_isa": isa, "cpu_model": cpu_info().get("model"),
                "fallback": None if win else "fp32.sim.onnx",
                "passed": True if win is None else wrow["passed"],
                "val": wrow.get("val"),
                "latency_ms": wrow.get("latency_ms"),
                "fp32_latency_ms": cpu["fp32_latency_ms"], "candidates": cpu["candidates"], "bench": cpu["bench"],
                "excluded_nodes": excluded},
        "ptq": plan.record if plan is not None else {"applied": False, "why": "quantised nodes other than "
                                                     "MatMul/Gemm with 2-D weights, or ptq off: one method, sweep"},
        "options": opts.key(), "seconds": round(time.perf_counter() - t0, 1), "phases_s": clock.seconds,
    }
    if violations:
        log.error("int8 %s: Q/DQ rule violations: %s", model_dir.name, violations)
    return sec


def mixed_first(src: Path, ranges: dict[str, Any], nodes: Sequence[Any], cand: Path, work: Path, model_dir: Path,
                es: EvalSet, ref: np.ndarray, budget: Budget, opts: QuantOptions):
    """The TensorRT graph as it ships when every node is INT8: Q/DQ on all ``nodes`` (``cand``), the rest FP16
    (optimize.qdq_fp16.mix_fp16), judged by its float simulation on ``es``. Within the budget: (the search's record
    of that one evaluation, the scopes, mix_fp16's result), so the all-FP32 Q/DQ graph is never evaluated; None
    (outside the budget, or the mix not possible): the caller runs the budget search on the FP32 Q/DQ graph, then
    the mix."""
    names = [n.name for n in nodes]
    scopes = quantize_static_cached(src, cand, ranges, opts.method, names, "trt", opts.quantize_attention)
    qdq_file, rec = mix_fp16(cand, work, model_dir, es, ref, budget, True, opts.threads, warn=False)
    if not rec.get("used"):
        log.info("int8 %s: the all-INT8 mixed graph is not the answer (%s); budget search on the FP32 Q/DQ graph",
                 model_dir.name, rec.get("why"))
        return None
    v = rec["val"]
    search = {"excluded": [], "steps": [{"excluded": None, "kept_float": 0, **v}], "sensitivity": [], "final": v,
              "budget": budget.to_dict(), "passed": True, "quantized": names, "full_evaluations": 1,
              "judged": "the mixed INT8/FP16 graph with every node INT8 (what ships), one evaluation"}
    return search, scopes, (qdq_file, rec)


def did_worse(passed: bool, winner: str | None, previous: dict[str, Any]) -> bool:
    """This run missed its budget, or found no CPU form where the previous run had one."""
    return not passed or (winner is None and bool((previous.get("cpu") or {}).get("file")))


def previous_intact(model_dir: Path, previous: dict[str, Any]) -> bool:
    """The previous int8 run passed and its files are still the ones it wrote (sha256 as recorded)."""
    files = previous.get("files_sha256") or {}
    passed = (previous.get("qdq") or {}).get("passed") and (previous.get("cpu") or {}).get("passed", True)
    return bool(files) and bool(passed) and all(
        (model_dir / f).is_file() and sha256_file(model_dir / f) == h for f, h in files.items())


def kept_previous(previous: dict[str, Any], search: dict[str, Any], cpu: dict[str, Any], opts: QuantOptions,
                  budget: Budget, labelled: bool) -> dict[str, Any]:
    """The previous section, unchanged, with ``last_run``: what this run missed (its files were not written)."""
    why = (miss_reason(search["final"], budget, labelled) if not search["passed"]
           else f"no CPU int8 form within the budget and faster than fp32 here ({cpu['why']})")
    log.warning("int8: this run did worse than the previous one (%s); the previous run's %s are kept, nothing was "
                "rewritten or deleted", why, ", ".join(previous.get("files_sha256", {})))
    return {**previous, "last_run": {"passed": False, "why": why, "options": opts.key(),
                                     "kept": sorted(previous.get("files_sha256", {}))}}


# ---- CLI ---------------------------------------------------------------------------------------------
def print_tables(name: str, res: dict[str, Any]) -> None:
    f16 = res.get("fp16")
    if f16:
        c = f16.get("check", {})
        print(f"\n{name}: fp16.onnx  ORT level {f16.get('ort_opt_level')}  crashed {list(f16.get('ort_crashed_levels', {}))}"
              f"  nan/inf {c.get('nonfinite')}  delta {delta_statement(c)}  agree {c.get('top1_agreement')}"
              f"  cos {c.get('cosine_mean', float('nan')):.6f}  passed {f16.get('passed')}")
    i8 = res.get("int8")
    if not i8:
        return
    q, cpu = i8["qdq"], i8["cpu"]
    v = q["val"]
    print(f"{name}: int8.qdq.onnx  {len(q['quantized_nodes'])} nodes int8, {len(q['excluded_nodes'])} float  "
          f"delta {delta_statement(v)}  agree {_f(v.get('top1_agreement'), 4)}  "
          f"cos {_f(v.get('cosine_mean'), 5)}  "
          + (f"nn@{v['neighbour_k']} {_f(v.get('neighbour_overlap'), 4)}  " if v.get("neighbour_k") else "")
          + f"rules {'ok' if q['rules_ok'] else q['rule_violations']}  passed {q['passed']}  (float-simulated Q/DQ: "
          f"the TensorRT reference)" + (f"\n  MISSED: {q['miss']}; {q['fallback']}" if q.get("miss") else ""))
    ptq = i8.get("ptq") or {}
    if ptq.get("smoothing"):
        sm, ch = ptq["smoothing"], ptq["calibration_choice"]
        alphas = sorted({g["alpha"] for g in sm["groups"] if g["alpha"] is not None})
        print(f"  ptq: smoothed {sm['smoothed_groups']}/{len(sm['groups'])} input groups (alpha {alphas}; "
              f"{sm['layernorm_folds']} LayerNorm folds, {sm['muls_inserted']} Muls), calibration per tensor "
              f"{ch['chosen_counts']}, nodes ranked in one pass")
    if q["excluded_nodes"]:
        print(f"  {'kept float':<40}{'op':<8}{'alone delta':>11}{'alone err':>11}{'recovered':>11}")
        for e in q["excluded_nodes"]:
            print(f"  {e['node']:<40}{e['op_type']:<8}{_f(e['alone_accuracy_delta'], 2):>11}"
                  f"{_e(e.get('alone_logit_rel_mse', e.get('alone_output_rel_mse'))):>11}"
                  f"{_f(e['recovered_points'], 2):>11}")
    print(f"  {'cpu candidate':<24}{'backend':>12}{'ran':>5}{'int8 w':>8}{'delta pts':>10}{'agree':>8}{'cosine':>10}"
          f"{'ms':>10}{'x fp32':>8}  passed")
    print(f"  {'fp32':<24}{'onnxruntime':>12}{'':>5}{'':>8}{'':>10}{'':>8}{'':>10}{_f(cpu['fp32_latency_ms'], 3):>10}"
          f"{'1.00':>8}")
    for k, r in cpu["candidates"].items():
        vv = r.get("val") or {}
        mark = " <- int8.cpu.onnx" if k == cpu["method"] else ""
        mark += " (7-bit weights)" if k.endswith("_rr") else ""
        if r.get("skipped"):
            mark += f" (not judged: {r['skipped']})"
        ran = "-" if r["ran"] is None else str(r["ran"])
        print(f"  {k:<24}{r.get('backend') or 'onnxruntime':>12}{ran:>5}"
              f"{_f(r.get('int8_weight_coverage'), 2):>8}{_f(vv.get('accuracy_delta'), 2):>10}"
              f"{_f(vv.get('top1_agreement'), 4):>8}{_f(vv.get('cosine_mean'), 5):>10}{_f(r.get('latency_ms'), 3):>10}"
              f"{_f(r.get('speedup_vs_fp32'), 2):>8}  {'-' if r['ran'] is None else r['passed']}{mark}")
    print(f"  CPU ({cpu.get('cpu_isa')}): " + (f"int8.cpu.onnx = {cpu['method']} on {cpu.get('backend')}: {cpu['why']}"
                                              if cpu.get("file")
                                              else f"no int8.cpu.onnx, {cpu['why']}"))


def _f(v: Any, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _e(v: Any) -> str:
    """A sensitivity score (a logit error from the sweep, an output error from the one-pass ranking)."""
    return "-" if v is None else f"{v:.2e}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    d = QuantOptions()
    ap = stage_parser("quantize", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=True)
    add_max_drop(ap)
    ap.add_argument("--min-agreement", type=non_negative_number, default=d.min_agreement)
    ap.add_argument("--min-cosine", type=non_negative_number, default=d.min_cosine, help="cosine bar override (default: the spec's)")
    ap.add_argument("--method", choices=("MinMax", "Entropy", "Percentile"), default=d.method)
    ap.add_argument("--calib-size", type=positive_int, default=d.calib_size)
    ap.add_argument("--calib-batch", type=positive_int, default=d.calib_batch)
    ap.add_argument("--seed", type=non_negative_int, default=d.seed)
    ap.add_argument("--sweep", choices=("auto", "always", "never"), default=d.sweep)
    ap.add_argument("--sweep-samples", type=positive_int, default=d.sweep_samples, help="validation rows to rank nodes")
    ap.add_argument("--eval-samples", type=rows_setting, default=d.eval_samples,
                    help="validation rows the INT8 budget is judged on: a number, 'all', or 'auto' (default: 1,000, "
                         "or what the budget needs to resolve when more; unlabelled sets: all)")
    ap.add_argument("--quantize-attention", action="store_true", help="Q/DQ on attention BMMs too")
    ap.add_argument("--cpu-candidates", type=choice_list(ALL_CPU_CANDIDATES), default=None,
                    help=f"comma-separated subset of {','.join(ALL_CPU_CANDIDATES)} (default: the forms for this "
                         "CPU: the 7-bit '_rr' ones are added where int8 kernels saturate, i.e. without VNNI/AMX)")
    ap.add_argument("--min-speedup", type=non_negative_number, default=d.min_speedup,
                    help="int8.cpu.onnx must be this much faster than fp32 here, else fp32 is kept")
    ap.add_argument("--bench-runs", type=positive_int, default=d.bench_runs)
    ap.add_argument("--cpu-judge", choices=("fastest_first", "all"), default=d.cpu_judge,
                    help="CPU candidates: time all, then judge the fastest first and stop when no other can win "
                         "(default), or judge every one (slower; the manifest then has every form's figures)")
    add_threads(ap, default=os.environ.get("EDGEATTN_THREADS", str(d.threads)))
    ap.add_argument("--only", choices=("fp16", "int8"), help="build only one precision")
    add_kv_cache(ap, CACHE_TYPES)
    add_force(ap, help="rebuild even if up to date")
    args = ap.parse_args(argv)
    # onnxruntime.quantization logs hints ("please pre-process") on the root logger at WARNING: keep root at
    # ERROR and our own loggers at INFO.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    opts = replace(d, method=args.method, calib_size=args.calib_size, calib_batch=args.calib_batch, seed=args.seed,
                   max_drop=args.max_drop, min_agreement=args.min_agreement, min_cosine=args.min_cosine,
                   sweep=args.sweep, sweep_samples=args.sweep_samples, eval_samples=args.eval_samples,
                   quantize_attention=args.quantize_attention,
                   cpu_candidates=args.cpu_candidates or None, min_speedup=args.min_speedup, bench_runs=args.bench_runs,
                   cpu_judge=args.cpu_judge,
                   threads=args.threads, fp16=args.only != "int8", int8=args.only != "fp16")
    missed = []
    errors = StageErrors("quantize")
    for ref in resolve_models(args.models, args.artifacts):
        name, model_dir = ref.name, ref.folder
        mopts = opts
        if ref.source.policy.heavy:  # big parity-only model: keep it to a few minutes on 2 cores
            mopts = replace(opts, bench_runs=min(opts.bench_runs, 10))
        t0 = time.perf_counter()
        with errors.model(name):
            res = quantize_model(model_dir, mopts, force=args.force, **cache_options(model_dir, name, args.kv_cache))
            task_of_dir(model_dir).run("quantize_tables", name, res)
            bad = [k for k, s in res.items() if not (s.get("passed", True) if k == "fp16" else
                                                       s["qdq"]["passed"] and s["cpu"]["passed"]
                                                       and s["qdq"]["rules_ok"] and not s.get("last_run"))]
            if bad:
                print(f"quantize {name}: {', '.join(bad)} outside the budget (see manifest.json)", file=sys.stderr)
                missed.append(name)
            print(f"quantize {name}: done in {time.perf_counter() - t0:.1f} s")
    # 2: a model could not be quantised at all (error line above); 1: an artifact missed its budget (recorded)
    return errors.finish() or (1 if missed else 0)


if __name__ == "__main__":
    raise SystemExit(cli("quantize", main))
