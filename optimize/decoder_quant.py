"""FP16 and INT8 for decoders with a KV cache (zoo.gpt2, export.decoder_export): the quantize stage's path for a
``text_generation`` spec (``python -m optimize quantize --models gpt2_imdb``; optimize.quantize routes here).

Source: ``fp32.sim.onnx`` when the simplify stage wrote one, else the export's ``fp32.onnx``. Every verdict uses
decoder figures (judge.teacher_forced.teacher_forced_figures) on windows of the VALIDATION split, each window one
prefill, against the fp32 graph (itself within 1e-4 of PyTorch, export.decoder_export's parity check; verify
judges the artifacts against PyTorch on the test split): teacher-forced next-token top-1 agreement, next-token
accuracy change in points (the one budget unit) and perplexity change in percent
(judge.budget: the spec's tolerance for the precision, perplexity bar included, with the user's overrides; the verdict
is judge.budget.reasons, the one verify's decoder rows use).

- ``fp16.onnx``: optimize.fp16.convert_fp16 with the FP32 op block list (LayerNorm, Softmax, Pow, ...); the past and
  present cache in float16 (``DecoderQuantOptions.fp16_cache``: half the cache memory; the logits stay float32).
  Tiers, first that is within the budget wins: the op block list; + the residual sums (:func:`residual_adds`) in
  fp32; the wide block list + residual sums. Each tier runs in crash-guarded children per ONNX Runtime level
  (optimize.fp16.probe_ort_levels) and must keep a fully padded row finite in prefill and decode
  (:func:`padded_row_check`: the export's finite -1e4 mask, not -1e20, survives float16). Manifest ``fp16``.
- ``int8.qdq.onnx`` (TensorRT): explicit Q/DQ, judged by its float simulation (QDQ_REFERENCE_LEVEL: the same on
  every CPU). Schemes: ``w8a8`` (optimize.int8_build's TensorRT flavour: int8 per-channel weights, per-tensor
  activations calibrated on TRAINING windows, attention BMMs/Softmax/LayerNorm float) under
  optimize.int8_budget.budget_search with the decoder figures (nodes ranked by the error each alone adds, the fewest
  of the most sensitive kept float that bring it within the budget: **Search cost** below); ``weight_only`` (int8 per-channel weights behind DequantizeLinear,
  activations float: TensorRT's weight-only path; :func:`weight_only_qdq`). W8A8 is chosen when within the budget
  with >= ``min_int8_coverage`` of the weights int8 (int8 GEMMs on TensorRT), else weight-only when within it,
  else the more accurate of the two is kept and marked failed (deploy fp16).
- ``int8.cpu.onnx`` and ``int4.cpu.onnx`` (ONNX Runtime CPU; pipeline.artifacts.CPU_WEIGHT_FORMS), one per weight
  width, each written when one of its forms is within the budget and >= ``min_speedup`` faster than fp32 in decode
  tokens/s at batch 1 (:func:`decode_bench`, interleaved; optimize.cpu_int8.pick_cpu among the forms of that width,
  :func:`form_bits`), so a user picks size against quality. 8-bit forms: ``dynamic`` (DynamicQuantizeMatMul),
  ``nbits8`` and ``qdq_s8s8`` (the TensorRT graph); 4-bit: ``nbits4``. ``nbits<b>`` is optimize.nbits' MatMulNBits
  weight-only, block ``nbits_block`` (``nbits4_block``) along K, round-to-nearest, symmetric at 8 bits and with zero
  points at 4 (``nbits_symmetric``, ``nbits4_symmetric``; a per-block clipping search and AWQ scales are options:
  :class:`DecoderQuantOptions`, recorded per form as its ``scheme``), at ``accuracy_level`` 4 (int8 activations and
  integer kernels where the CPU has them), the LM head quantised (at 8 bits in ``nbits4``: ``nbits4_head_bits``),
  and when that needs nodes kept float, also ``<form>_head_fp32`` with the head float (a tied head then reads the
  embedding table, stored once). Each width is judged by its own budget (:func:`cpu_form_budgets`: int8.cpu by the
  spec's int8 tolerance, int4.cpu by its int4 one, chiefly perplexity; the budgets verify reads), on this CPU's
  kernels, and chosen for this CPU (none of a width: no file of that width; a stale one is moved aside).
  ``kv_cache='float16'`` (:class:`DecoderQuantOptions`): each chosen form's past/present I/O narrowed to float16
  (optimize.kv_cache) and judged again by calibration.windows.ort_teacher_forced_cached (each window's second half read
  through the cache its first half wrote) against the fp32 graph's same figures; kept when within the budget, else the
  float32-cache form is written and the reason recorded. Manifest ``int8`` (``cpu``: int8.cpu.onnx's section,
  ``cpu_forms``: one section per CPU file).

**Search cost.** W8A8 and MatMulNBits alike: judged with every node quantised; only when that misses, the nodes are
ranked ONCE by the error each alone adds at its output (optimize.layer_error: one forward pass over the sweep
windows with every node's input activation cached, the quantised weights applied in numpy), and the fewest of the
most sensitive to keep float is found by bisection (optimize.int8_budget.bisect_cut): <= 2 + ceil(log2 n) full
evaluations for n nodes, not n + (kept float).

``python -m optimize.decoder_quant --child ...`` is the crash-guarded worker (teacher-forced figures of one graph).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration import CalibrationData, RangeCache
from calibration.evalset import EvalSet
from optimize.fp16 import FP32_OPS, FP32_OPS_WIDE, Fp16Options, child_args, convert_fp16, io_types, \
    probe_ort_levels, run_guarded, stamp_ort_level
from optimize.cpu_int8 import write_cpu_artifact
from optimize.int8_budget import QuantOptions, bisect_cut, brief_figures, budget_search
from optimize.int8_build import QuantizeError, calibrate_ranges, quantize_dynamic_matmul, quantize_static_cached
from optimize.layer_error import block_int8, float_weight, layer_errors, per_channel_int8, per_tensor_int8
from optimize.kv_cache import CACHE_TYPES, narrow_cache
from optimize.nbits import INTEGER_LEVEL, dequantized_weights, lm_head, matmul_nbits, weight_coverage
from pipeline.artifacts import CPU_WEIGHT_FORMS, PRECISION_FILES, cpu_form_for_bits
from optimize.qdq_graph import NodeInfo, drop_unused_initializers, ensure_node_names, int8_weight_coverage, \
    quantizable_nodes, quantizable_weight_elements
from optimize.qdq_rules import check_qdq_rules, qdq_counts
from runtime.child import python_module
from runtime.cpu import cpu_info, int8_isa
from runtime.files import read_json
from runtime.generate import DecoderInfo
from runtime.ort_backend import QDQ_REFERENCE_LEVEL, cpu_session
from calibration.windows import ort_teacher_forced, ort_teacher_forced_cached, prefill_feed, text_windows
from pipeline.quiet import fold_repeats
from judge.budget import Budget, budget_for, check_resolution, passes, reasons as budget_reasons
from judge.teacher_forced import TeacherForced, teacher_forced_figures
from zoo.tasks.text_generation import TASK as GENERATION
from zoo.io import (copy_onnx, digest, peak_rss_mb, save_onnx, section_up_to_date, sha256_file,
                    update_manifest)

log = logging.getLogger("edgeattn.optimize.decoder_quant")

TASK = GENERATION.name
SOURCES = ("fp32.sim.onnx", "fp32.onnx")  # the simplified graph when there is one
CODE_VERSION = "decoder/5"  # 5: int4 budget, 4-bit forms' head at 8 bits, weight options, a float tied head shared
CPU_FORMS = ("dynamic", "nbits8", "nbits4", "qdq_s8s8")
NBITS_FORMS = {"nbits8": 8, "nbits4": 4}  # weight-only MatMulNBits (optimize.nbits); "<form>_head_fp32": LM head float
SCORE = "nll_rel_mse"  # the figure that ranks nodes in the sensitivity sweep


@dataclass
class DecoderQuantOptions:
    """Token budgets of the decoder path (the rest comes from the stage's QuantOptions / Fp16Options)."""

    block: int = 128  # tokens per window (capped by the position table)
    calib_tokens: int = 4096  # training split: activation ranges
    eval_tokens: int = 16_384  # validation split: the budget
    sweep_tokens: int = 4096  # validation subset that ranks nodes
    batch_size: int = 8
    fp16_cache: bool = True  # fp16.onnx's past/present in float16 (the logits stay float32)
    nbits_block: int = 32  # MatMulNBits block size along K (8-bit)
    nbits4_block: int = 32  # 4-bit block size along K
    # the LM head's width in the 4-bit forms: 8 (llama.cpp's Q4 mixes do the same with the output weight) because on
    # gpt2_imdb the 4-bit head alone cost the teacher-forced agreement 0.918 -> 0.983 with it at 8 bits, the body at 4
    nbits4_head_bits: int = 8
    nbits_symmetric: bool = True  # 8-bit; False: a zero point per block (MatMulNBits' zero_points input)
    # 4-bit: zero points by default: on gpt2_imdb (head at 8 bits) the logits' NLL error fell 29 % (agreement 0.983 ->
    # 0.986) for 1 % more file; at 8 bits they bought nothing
    nbits4_symmetric: bool = False
    nbits_clip: bool = False  # each block's range by the least weight error (optimize.nbits.quantize_blocks)
    nbits_awq: bool = False  # 4-bit: activation-aware scales folded into the LayerNorms (optimize.awq)
    nbits_level: int = INTEGER_LEVEL  # MatMulNBits accuracy_level (4: int8 activations, integer kernels; 0: float)
    bench_prompt: int = 16  # decode benchmark: prompt tokens, new tokens, interleaved rounds
    bench_new_tokens: int = 32
    bench_rounds: int = 5
    kv_cache: str = "float32"  # the CPU forms' cache I/O: float32, or float16 (optimize.kv_cache) when within budget

    def __post_init__(self) -> None:
        if self.nbits4_head_bits not in (4, 8):
            raise QuantizeError(f"decoder nbits4_head_bits: got {self.nbits4_head_bits}, expected 4 or 8")
        if self.kv_cache not in CACHE_TYPES:
            raise QuantizeError(f"decoder kv_cache: got '{self.kv_cache}', expected one of {CACHE_TYPES}")

    def nbits_scheme(self, bits: int) -> dict[str, Any]:
        """How the ``bits``-bit MatMulNBits forms are built (optimize.nbits.matmul_nbits' options, AWQ or not): what
        the manifest records per form."""
        four = bits == 4
        return {"block_size": self.nbits4_block if four else self.nbits_block,
                "symmetric": self.nbits4_symmetric if four else self.nbits_symmetric,
                "clip": self.nbits_clip, "awq": self.nbits_awq and bits == 4,
                "head_bits": self.nbits4_head_bits if bits == 4 else bits}

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("batch_size", "bench_prompt", "bench_new_tokens", "bench_rounds"):
            d.pop(k)
        return d


# ---- which folders, which source ------------------------------------------------------------------------------------
def decoder_source(model_dir: str | os.PathLike) -> Path:
    d = Path(model_dir)
    for name in SOURCES:
        if (d / name).is_file():
            return d / name
    raise QuantizeError(f"{d}: no {' or '.join(SOURCES)}; expected an exported decoder (python -m "
                        f"export.decoder_export --models {d.name} --artifacts {d.parent})")


# ---- graph pieces -------------------------------------------------------------------------------------------------
def fold_constant_transposes(model) -> int:
    """Replace Transpose(initializer) by the transposed initializer (a tied LM head: MatMul(x, Transpose(wte))), so
    the MatMul has a constant weight the quantisers see. Returns how many were folded."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    keep, done = [], 0
    for n in model.graph.node:
        if n.op_type == "Transpose" and n.input[0] in inits:
            perm = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "perm"), None)
            arr = numpy_helper.to_array(inits[n.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(
                arr.transpose(perm) if perm is not None else arr.T), n.output[0]))
            done += 1
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return done


def prepare(src: Path, dst: Path) -> dict[str, Any]:
    """The int8 source: node names made unique and stable, constant transposes folded."""
    import onnx

    model = onnx.load(str(src))
    named = ensure_node_names(model)
    folded = fold_constant_transposes(model)
    save_onnx(model, dst)
    return {"named_nodes": named, "folded_transposes": folded}


def residual_adds(model) -> list[str]:
    """Names of the residual-stream Add nodes of a pre-norm decoder: from the embedding sum (an Add of two
    Gathers), each next Add that takes the current residual as one input and an activation as the other."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consts = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node
                                                          if n.op_type == "Constant"}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    start = next((n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2 and all(
        getattr(producer.get(i), "op_type", None) == "Gather" for i in n.input)), None)
    if start is None:
        return []
    chain, cur = [], start
    while cur is not None:
        chain.append(cur.name)
        cur = next((c for c in consumers.get(cur.output[0], []) if c.op_type == "Add" and len(c.input) == 2
                    and not any(i in consts for i in c.input)), None)
    return chain


def weight_only_qdq(src: Path, dst: Path, nodes: Sequence[NodeInfo]) -> dict[str, Any]:
    """Int8 weight-only Q/DQ: each node's constant weight as int8 (symmetric, per output channel, zero point 0)
    behind a DequantizeLinear; activations stay float. What TensorRT's parser takes for weight-only quantisation
    (optimize.qdq_rules' weight rules hold)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    dq_nodes, done = [], {}
    for nd in nodes:
        node = by_name.get(nd.name)
        if node is None or nd.weight not in inits:
            raise QuantizeError(f"{src.name}: node '{nd.name}' with constant weight '{nd.weight}' not found; expected "
                                "the nodes of optimize.qdq_graph.quantizable_nodes on this graph")
        trans_b = any(a.name == "transB" and helper.get_attribute_value(a) for a in node.attribute)
        axis = 0 if node.op_type == "Gemm" and trans_b else 1  # output channels: MatMul B[K, N] / Gemm B[N, K]
        if nd.weight not in done:
            w = numpy_helper.to_array(inits[nd.weight]).astype(np.float32)
            amax = np.abs(w).max(axis=1 - axis)
            scale = (np.maximum(amax, 1e-12) / 127.0).astype(np.float32)
            q = np.clip(np.rint(w / (scale[None, :] if axis == 1 else scale[:, None])), -127, 127).astype(np.int8)
            base = nd.weight
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{base}_wq"),
                                            numpy_helper.from_array(scale, f"{base}_wscale"),
                                            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_wzp")])
            dq_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_wq", f"{base}_wscale", f"{base}_wzp"],
                                             [f"{base}_wdq"], name=f"{nd.name}_weight_DequantizeLinear", axis=axis))
            done[nd.weight] = f"{base}_wdq"
        node.input[1] = done[nd.weight]
    nodes_all = dq_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes_all)
    drop_unused_initializers(model)
    onnx.checker.check_model(model)
    save_onnx(model, dst)
    return {"weights": len(done), "nodes": len(nodes)}


# ---- evaluation ---------------------------------------------------------------------------------------------------
def child_argv(model: str | os.PathLike, feeds: str | os.PathLike, out: str | os.PathLike, level: str, threads: int,
               batch_size: int) -> list[str]:
    """optimize.fp16.run_guarded's child: the teacher-forced figures of ``model`` on the windows in ``feeds``."""
    return python_module("optimize.decoder_quant", "--child", "--model", model, "--feeds", feeds, "--out", out,
                         "--level", level, "--threads", threads, "--batch-size", batch_size)


def _child_main(argv: Sequence[str]) -> int:
    a = child_args(argv)
    tf = ort_teacher_forced(a.model, EvalSet.load_npz(a.feeds), a.level, a.threads, a.batch_size)
    np.save(a.out, tf.pack())
    return 0


def evaluate_guarded(path: Path, windows: EvalSet, ref: TeacherForced, level: str, threads: int,
                     batch_size: int, timeout_s: float = 1800.0) -> tuple[dict[str, Any] | None, str | None]:
    """(figures, None) for ``path`` at ``level`` in a crash-guarded child, or (None, what went wrong)."""
    run = run_guarded(path, windows, level, threads, batch_size, timeout_s, child_argv)
    if not run.ok:
        return None, run.error
    return teacher_forced_figures(ref, TeacherForced.unpack(run.logits), windows.inputs["labels"]), None


def padded_row_check(path: Path, level: str, threads: int | None = None, tokens: int = 6) -> dict[str, Any]:
    """A prefill of two rows, the second fully padded (attention_mask all 0: every score masked), then one decode
    step on its cache: every logit and cache value must be finite (a -1e20 or float32-min mask is -inf in fp16)."""
    sess = cpu_session(path, level, threads)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    from runtime.modelspec import read_spec
    from runtime.ort_backend import ORT_TYPES

    info = DecoderInfo.from_spec(read_spec(Path(path), meta), str(path))
    kv = np.dtype({a.name: ORT_TYPES.get(a.type, "float32") for a in sess.get_inputs()}[info.past_inputs[0]])
    ids = np.full((2, tokens), info.pad_id, np.int64)
    ids[0] = np.arange(1, tokens + 1) % info.vocab_size
    feed = prefill_feed(info, ids, kv)
    feed["attention_mask"][1] = 0
    feed["position_ids"][1] = 0
    names = ["logits", *info.present_outputs]
    out = sess.run(names, feed)
    bad = {n: int((~np.isfinite(o)).sum()) for n, o in zip(names, out) if not np.isfinite(o).all()}
    step = {"input_ids": np.array([[1], [info.pad_id]], np.int64),
            "attention_mask": np.concatenate([feed["attention_mask"], [[1], [0]]], axis=1).astype(np.int64),
            "position_ids": np.array([[tokens], [0]], np.int64)}
    step.update(zip(info.past_inputs, out[1:]))
    out2 = sess.run(names, step)
    bad.update({f"decode {n}": int((~np.isfinite(o)).sum()) for n, o in zip(names, out2) if not np.isfinite(o).all()})
    return {"finite": not bad, "nonfinite": bad, "level": level}


def decode_bench(models: dict[str, Path], levels: dict[str, str] | None = None, prompt: Sequence[int] = (),
                 new_tokens: int = 32, rounds: int = 5, threads: int | None = None) -> dict[str, dict[str, float]]:
    """Greedy decode at batch 1 with runtime.generate (ONNX Runtime, I/O binding, preallocated cache), interleaved
    round-robin over ``models``: per model the median ms per decode step (after the prefill) and tokens/s."""
    from runtime.generate import TextGenerator

    levels = levels or {}
    gens = {k: TextGenerator(p, threads=threads, opt_level=levels.get(k, "all")) for k, p in models.items()}
    prompt = list(prompt) or [1] * 16
    times: dict[str, list[float]] = {k: [] for k in gens}
    try:
        for r in range(rounds + 1):  # round 0 warms up
            for k, g in gens.items():
                it = g.stream([prompt], max_new_tokens=new_tokens, stop_tokens=())
                next(it)  # prefill + first token
                t0 = time.perf_counter()
                for _ in it:
                    pass
                if r:
                    times[k].append((time.perf_counter() - t0) * 1e3 / (new_tokens - 1))
    finally:
        for g in gens.values():
            g.close()
    return {k: {"ms_per_token": round(float(np.median(v)), 4), "tokens_per_s": round(1e3 / float(np.median(v)), 1),
                "rounds": len(v), "new_tokens": new_tokens, "prompt_tokens": len(prompt)} for k, v in times.items()}


# ---- the stage ----------------------------------------------------------------------------------------------------
def _windows(spec, model_dir: Path, split: str, tokens: int, dopts: DecoderQuantOptions) -> EvalSet:
    block = min(dopts.block, int(spec.preprocess["max_positions"]))
    return text_windows(model_dir / spec.preprocess.get("tokenizer", "tokenizer.json"), split, max(tokens, block),
                        block, spec.dataset or "imdb", spec.preprocess.get("eos_id"))


@fold_repeats("edgeattn.optimize.decoder_quant")  # ONNX Runtime's per-candidate hints: once each, counted
def quantize_decoder(model_dir: str | os.PathLike, opts: QuantOptions | None = None, force: bool = False,
                     progress: bool = True, dopts: DecoderQuantOptions | None = None,
                     f16: Fp16Options | None = None) -> dict[str, Any]:
    """fp16.onnx, int8.qdq.onnx and (when one is within the budget and faster here) int8.cpu.onnx for one decoder
    folder; returns {"fp16": section, "int8": section} as written to manifest.json. Up-to-date files are kept."""
    from zoo.spec import load_spec

    opts, dopts = opts or QuantOptions(), dopts or DecoderQuantOptions()
    f16 = f16 or Fp16Options(threads=opts.threads)
    model_dir = Path(model_dir)
    src = decoder_source(model_dir)
    spec = load_spec(src)
    if spec.task != TASK:
        raise QuantizeError(f"{src}: task '{spec.task}', expected '{TASK}' (a decoder exported by "
                            "export.decoder_export)")
    manifest = read_json(model_dir / "manifest.json", {}) or {}
    src_sha = sha256_file(src)
    isa = int8_isa()
    val = _windows(spec, model_dir, "val", dopts.eval_tokens, dopts)
    ref: TeacherForced | None = None
    result: dict[str, Any] = {}

    def reference() -> TeacherForced:
        nonlocal ref
        if ref is None:
            ref = ort_teacher_forced(src, val, "all", opts.threads, dopts.batch_size,
                                     progress=f"fp32 {model_dir.name} val" if progress else None)
        return ref

    b16 = budget_for(spec.tolerances, "fp16", max_drop_points=f16.max_drop)
    b8 = budget_for(spec.tolerances, "int8", max_drop_points=opts.max_drop, min_top1_agreement=opts.min_agreement)
    cpu_budgets = cpu_form_budgets(spec.tolerances, opts)
    for on, b in ((opts.fp16, b16), (opts.int8, b8), *((opts.int8, b) for b in cpu_budgets.values())):
        if on:  # refused before anything is written
            check_resolution(b, val.inputs["labels"].size, True, f"quantize {model_dir.name} {b.precision}", "tokens")
    if opts.fp16:
        budget = b16
        key = digest({"src": src_sha, "opts": f16.key(), "decoder": dopts.key(), "budget": budget.to_dict(),
                       "code": CODE_VERSION})
        if not force and section_up_to_date(model_dir, manifest.get("fp16"), key, ["fp16.onnx"]):
            print(f"quantize {model_dir.name}: fp16.onnx up to date")
            result["fp16"] = manifest["fp16"]
        else:
            sec = build_decoder_fp16(model_dir, src, val, reference(), budget, dopts, f16)
            sec.update(key=key, files_sha256={"fp16.onnx": sec["sha256"]})
            update_manifest(model_dir, "fp16", {**sec, "peak_rss_mb": peak_rss_mb()})
            result["fp16"] = sec

    if opts.int8:
        budget = b8
        calib = _windows(spec, model_dir, "train", dopts.calib_tokens, dopts)
        key = digest({"src": src_sha, "opts": opts.key(), "decoder": dopts.key(), "budget": budget.to_dict(),
                       "cpu_budgets": {k: b.to_dict() for k, b in cpu_budgets.items()},
                       "calib": calib.description, "eval": val.description, "code": CODE_VERSION, "cpu_isa": isa})
        old = manifest.get("int8") or {}
        if not force and section_up_to_date(model_dir, old, key, list(old.get("files_sha256", {})) or ["int8.qdq.onnx"]):
            print(f"quantize {model_dir.name}: {' and '.join(old['files_sha256'])} up to date")
            result["int8"] = old
        else:
            sec = build_decoder_int8(model_dir, src, spec, calib, val, reference(), budget, opts, dopts, progress,
                                     isa, cpu_budgets)
            sec.update(key=key, source_sha256=src_sha)
            update_manifest(model_dir, "int8", {**sec, "peak_rss_mb": peak_rss_mb()})
            result["int8"] = sec
    return result


def cpu_form_budgets(tolerances: dict[str, Any] | None, opts: QuantOptions) -> dict[str, Budget]:
    """The budget of each CPU file (pipeline.artifacts.CPU_WEIGHT_FORMS -> its spec tolerance through
    judge.budget.budget_for, as verify reads it): int8.cpu by the int8 tolerance with the stage's --max-drop /
    --min-agreement on top (the int8 budget's overrides, QuantOptions.budget), int4.cpu by the int4 tolerance as the
    spec states it (specs written before it existed: the default)."""
    over = {"max_drop_points": opts.max_drop, "min_top1_agreement": opts.min_agreement}
    return {form: budget_for(tolerances, pf.tolerance, **(over if pf.tolerance == "int8" else {}))
            for form, pf in CPU_WEIGHT_FORMS.items()}


def form_budget(name: str, budgets: dict[str, Budget]) -> Budget:
    """The budget a CPU form (``nbits4``, ``dynamic``, ...) is judged by: its weight width's CPU file's."""
    return budgets[cpu_form_for_bits(form_bits(name))]


def build_decoder_fp16(model_dir: Path, src: Path, windows: EvalSet, ref: TeacherForced, budget: Budget,
                       dopts: DecoderQuantOptions, f16: Fp16Options) -> dict[str, Any]:
    """Convert by tiers (module docstring) until one is within ``budget`` with a finite padded row; the manifest
    section (the last tier's file is kept, ``passed: false``, when none is)."""
    import onnx

    t0 = time.perf_counter()
    dst = model_dir / "fp16.onnx"
    residual = residual_adds(onnx.load(str(src), load_external_data=False))
    keep_io = ["logits"] if dopts.fp16_cache else True
    tiers = [("fp32 ops", FP32_OPS, ()), ("fp32 ops + residual sums", FP32_OPS, residual),
             ("wide fp32 ops + residual sums", FP32_OPS_WIDE, residual)]
    tried: list[dict[str, Any]] = []
    for label, block, nodes in tiers:
        if nodes is residual and not residual:
            continue  # no residual chain found: the tier would repeat the previous one
        conv = convert_fp16(src, dst, block, keep_io, nodes)
        chosen, attempts = probe_ort_levels(dst, windows, f16.levels, f16.threads, dopts.batch_size, f16.timeout_s,
                                            child_argv)
        tier: dict[str, Any] = {"tier": label, **{k: v for k, v in conv.items() if k != "scopes"},
                                "attempts": [a.summary() for a in attempts]}
        if chosen is None:
            tier.update(passed=False, problem="ONNX Runtime failed at every optimisation level")
        else:
            cmp = teacher_forced_figures(ref, TeacherForced.unpack(chosen.logits), windows.inputs["labels"])
            padded = padded_row_check(dst, chosen.level, f16.threads)
            reasons = budget_reasons(cmp, budget, True) + ([] if padded["finite"] else
                                             [f"fully padded row not finite: {padded['nonfinite']}"])
            tier.update(ort_opt_level=chosen.level, check=cmp, padded_row=padded, passed=not reasons, reasons=reasons)
        tried.append(tier)
        log.info("fp16 %s tier '%s': passed %s %s", model_dir.name, label, tier["passed"], tier.get("reasons", ""))
        if tier["passed"]:
            break
    best = tried[-1]
    crashed = {a["level"]: a["error"] for a in best["attempts"] if not a["ok"]}
    if crashed and best.get("ort_opt_level"):
        stamp_ort_level(dst, best["ort_opt_level"])
    return {"file": dst.name, "sha256": sha256_file(dst), "source": src.name, "source_sha256": sha256_file(src),
            "task": TASK, "tier": best["tier"], "keep_io_types": keep_io, "io_types": io_types(dst),
            "op_block_list": best["op_block_list"], "node_block_list": best.get("node_block_list", []),
            "fp32_ops_present": best["fp32_ops_present"], "casts": best["casts"], "nodes": best["nodes"],
            "ort_opt_level": best.get("ort_opt_level"), "ort_crashed_levels": crashed, "passed": best["passed"],
            "reasons": best.get("reasons", [best.get("problem")]),
            "check": {**(best.get("check") or {}), "data": windows.description, "reference": f"{src.name} on "
                      "ONNX Runtime (within 1e-4 of PyTorch: the export's parity check)"},
            "padded_row": best.get("padded_row"), "budget": budget.to_dict(), "tiers_tried": len(tried),
            "tiers": [{k: v for k, v in t.items() if k not in ("nodes",)} for t in tried[:-1]],
            "seconds": round(time.perf_counter() - t0, 2)}


def _calibration(spec, windows: EvalSet, batch: int) -> CalibrationData:
    info = DecoderInfo.from_spec(spec.to_dict(), spec.name)
    x = windows.inputs["input_ids"]
    return CalibrationData.from_arrays(prefill_feed(info, x), batch, None,
                                       {"kind": "text_windows", "source": windows.description})


def build_decoder_int8(model_dir: Path, src: Path, spec, calib_windows: EvalSet, windows: EvalSet,
                       ref: TeacherForced, budget: Budget, opts: QuantOptions, dopts: DecoderQuantOptions,
                       progress: bool = True, isa: str | None = None,
                       cpu_budgets: dict[str, Budget] | None = None) -> dict[str, Any]:
    """Calibrate, search the W8A8 graph under ``budget``, weigh it against weight-only, write int8.qdq.onnx; pick the
    CPU forms for this CPU (or none), each width judged by its own budget (``cpu_budgets``: CPU file -> Budget,
    :func:`cpu_form_budgets`; None: ``budget`` for every width); the manifest section."""
    import onnx

    isa = isa or int8_isa()
    cpu_budgets = cpu_budgets or {form: budget for form in CPU_WEIGHT_FORMS}
    t0 = time.perf_counter()
    threads, bs = opts.threads, dopts.batch_size

    def evaluate(path, es, reference, n_threads):
        got = ort_teacher_forced(path, es, QDQ_REFERENCE_LEVEL, n_threads, bs)
        return teacher_forced_figures(reference, got, es.inputs["labels"]), got

    with tempfile.TemporaryDirectory(prefix=f"edgeattn-int8-{model_dir.name}-") as tmpd:
        work = Path(tmpd)
        prepared = work / "prepared.onnx"
        prep = prepare(src, prepared)
        model = onnx.load(str(prepared))
        nodes = quantizable_nodes(model, opts.quantize_attention)
        quantizable = quantizable_weight_elements(model)
        del model
        if not nodes:
            raise QuantizeError(f"{src}: no Gemm/MatMul node with a constant weight to quantise")
        cache = RangeCache(model_dir / f"calib.{opts.method.lower()}.json")
        ranges, cinfo = calibrate_ranges(prepared, _calibration(spec, calib_windows, bs), opts.method, cache,
                                         progress=progress)
        n_sweep = max(1, dopts.sweep_tokens // windows.inputs["input_ids"].shape[1])
        es_sweep = windows.subset(n_sweep, opts.seed + 1)
        ref_sweep = ref if es_sweep is windows else ort_teacher_forced(src, es_sweep, "all", threads, bs)
        info = DecoderInfo.from_spec(spec.to_dict(), spec.name)
        feeds = lambda: sweep_feeds(info, es_sweep, bs)  # noqa: E731 - one pass over the sweep windows per ranking
        search = budget_search(prepared, ranges, opts.method, nodes, windows, ref, es_sweep, ref_sweep, opts, work,
                               progress, evaluate, budget, SCORE, labelled=True,
                               rank=lambda: rank_w8a8(prepared, nodes, ranges, feeds(), threads))
        w8a8 = work / "w8a8.onnx"
        scopes = quantize_static_cached(prepared, w8a8, ranges, opts.method, search["quantized"], "trt",
                                        opts.quantize_attention)
        wo = work / "weight_only.onnx"
        weight_only_qdq(prepared, wo, nodes)
        wo_cmp, _ = evaluate(wo, windows, ref, threads)
        schemes = {
            "w8a8": {"file": w8a8, "figures": search["final"], "passed": search["passed"],
                     "coverage": int8_weight_coverage(w8a8, quantizable)},
            "weight_only": {"file": wo, "figures": wo_cmp, "passed": passes(wo_cmp, budget, True),
                            "coverage": int8_weight_coverage(wo, quantizable)},
        }
        scheme, why = choose_scheme(schemes, opts.min_int8_coverage)
        chosen = schemes[scheme]
        violations = check_qdq_rules(chosen["file"])
        qdq_dst = model_dir / "int8.qdq.onnx"
        copy_onnx(chosen["file"], qdq_dst)

        excluded = [e["node"] for e in search["excluded"]] if scheme == "w8a8" else []
        cands = build_cpu_forms(prepared, qdq_dst, excluded, work, opts)
        calib_feeds = lambda: sweep_feeds(info, calib_windows, bs)  # noqa: E731 - AWQ's activations (training)
        nbits = nbits_forms(prepared, nodes, windows, ref, cpu_budgets, feeds, work, opts, dopts, calib_feeds)
        cands.update({k: v["file"] for k, v in nbits.items() if v.get("file")})
        cpu = choose_decoder_cpu(src, cands, windows, ref, cpu_budgets, quantizable, opts, dopts,
                                 {k: v["figures"] for k, v in nbits.items() if v.get("figures")})
        won = {form: cands[p["winner"]] for form, p in cpu["picks"].items() if p["winner"]}
        caches = narrow_forms(src, won, spec, windows, cpu_budgets, work, opts, dopts) if dopts.kv_cache == "float16" \
            else {}
        for form, pf in CPU_WEIGHT_FORMS.items():
            write_cpu_artifact((caches.get(form) or {}).get("file") or won.get(form), model_dir / pf.file, isa)
    fig = chosen["figures"]
    forms = {form: {**cpu_section(form, cpu, nbits, caches.get(form), src.name, isa),
                    "budget": cpu_budgets[form].to_dict()} for form in CPU_WEIGHT_FORMS}
    files = {qdq_dst.name: sha256_file(qdq_dst), **{sec["file"]: sha256_file(model_dir / sec["file"])
                                                     for sec in forms.values() if sec["file"]}}
    return {
        "task": TASK, "artifacts": {"qdq": qdq_dst.name, "cpu": forms["int8.cpu"]["file"],
                                    **{form: sec["file"] for form, sec in forms.items()}},
        "files_sha256": files, "source": src.name, "prepare": prep, "calibration": cinfo,
        "budget": {**budget.to_dict(), "split": "val", "data": windows.description,
                   "reference": f"{src.name} on ONNX Runtime (within 1e-4 of PyTorch: the export's parity check)"},
        "qdq": {"file": qdq_dst.name, "scheme": scheme, "why": why, "passed": chosen["passed"],
                "rules_ok": not violations, "rule_violations": violations, "counts": qdq_counts(qdq_dst),
                "judged_by": "float simulation of its Q/DQ (ONNX Runtime, graph optimisations off): what TensorRT "
                             "computes up to rounding, the same on every CPU",
                "miss": None if chosen["passed"] else "; ".join(budget_reasons(fig, budget, True)),
                "fallback": None if chosen["passed"] else
                "int8.qdq.onnx kept (most accurate found) and marked failed; deploy fp16.onnx / the fp16 engine",
                "val": brief_figures(fig), "int8_weight_coverage": chosen["coverage"],
                "schemes": {k: {"passed": v["passed"], "int8_weight_coverage": v["coverage"], "val": brief_figures(v["figures"])}
                            for k, v in schemes.items()},
                "scopes": scopes if scheme == "w8a8" else None,
                "quantized_nodes": search["quantized"] if scheme == "w8a8" else [n.name for n in nodes],
                "excluded_nodes": search["excluded"] if scheme == "w8a8" else [],
                "steps": search["steps"], "sensitivity": search["sensitivity"],
                "full_evaluations": search["full_evaluations"]},
        "cpu": forms["int8.cpu"], "cpu_forms": forms,
        "options": opts.key(), "decoder_options": dopts.key(), "seconds": round(time.perf_counter() - t0, 1),
    }


def cpu_section(form: str, cpu: dict[str, Any], nbits: dict[str, dict[str, Any]], cache: dict[str, Any] | None,
                src_name: str, isa: str) -> dict[str, Any]:
    """The manifest section of one CPU file (``form``: 'int8.cpu' / 'int4.cpu'): its winner among the forms of its
    weight width, or fp32 kept with the reason; the candidates and MatMulNBits searches of that width; the cache type
    written."""
    pf = CPU_WEIGHT_FORMS[form]
    pick = cpu["picks"][form]
    win = pick["winner"]
    wrow = cpu["candidates"].get(win, {}) if win else {}
    same = lambda k: form_bits(k) == pf.weight_bits  # noqa: E731
    kv = {k: v for k, v in (cache or {}).items() if k != "file"}
    return {"file": pf.file if win else None, "precision": form, "weight_bits": pf.weight_bits, "method": win or "fp32",
            "why": pick["why"], "ort_opt_level": "all", "cpu_isa": isa, "cpu_model": cpu_info().get("model"),
            "judged_by": "ONNX Runtime's kernels on this CPU", "fallback": None if win else src_name,
            "passed": True if win is None else wrow["passed"], "val": wrow.get("val"),
            "latency_ms": wrow.get("latency_ms"), "latency_unit": "ms per decode token, batch 1",
            "fp32_latency_ms": cpu["fp32_latency_ms"], "bench": cpu["bench"],
            "candidates": {k: r for k, r in cpu["candidates"].items() if same(k)},
            "nbits": {k: {x: y for x, y in v.items() if x not in ("file", "figures")} for k, v in nbits.items()
                      if same(k)},
            "kv_cache": kv if win and kv else {"type": "float32"}}


def narrow_forms(src: Path, won: dict[str, Path], spec, windows: EvalSet, budgets: dict[str, Budget], work: Path,
                 opts: QuantOptions, dopts: DecoderQuantOptions) -> dict[str, dict[str, Any]]:
    """``kv_cache='float16'``: each chosen CPU form (``won``: CPU file -> graph) with its cache I/O narrowed to
    float16 (optimize.kv_cache.narrow_cache), judged by the cached teacher-forced figures (each window's second half
    read through the cache; calibration.windows.ort_teacher_forced_cached) against the fp32 graph's, beside the same
    form with its float32 cache, and timed beside it (batch-1 decode). Per form: the cache type kept ('float16' when
    within its CPU file's budget in ``budgets``, with ``file``), both figures, the speeds and the reasons."""
    info = DecoderInfo.from_spec(spec.to_dict(), spec.name)
    labels = windows.inputs["labels"]

    def cached(p: Path) -> TeacherForced:
        return ort_teacher_forced_cached(p, windows, "all", opts.threads, dopts.batch_size, spec=spec.to_dict())

    ref = cached(src) if won else None
    prompt = [int(t) for t in windows.inputs["input_ids"][0, :dopts.bench_prompt]]
    out: dict[str, dict[str, Any]] = {}
    for form, path in won.items():
        dst = work / f"{form}.kv16.onnx"
        try:
            narrow_cache(path, dst, info.past_inputs, info.present_outputs)
            f16, f32 = (teacher_forced_figures(ref, cached(p), labels) for p in (dst, path))
            speed = decode_bench({"float32": path, "float16": dst}, None, prompt, dopts.bench_new_tokens,
                                 dopts.bench_rounds, opts.threads)
        except Exception as e:  # noqa: BLE001 - the float32-cache form is written instead
            log.warning("%s float16 cache for %s failed: %s: %s", form, src.parent.name, type(e).__name__, e)
            out[form] = {"type": "float32", "requested": "float16", "error": f"{type(e).__name__}: {e}"}
            continue
        reasons = budget_reasons(f16, budgets[form], True)
        out[form] = {"type": "float32" if reasons else "float16", "requested": "float16",
                     "file": None if reasons else dst, "val": brief_figures(f16), "float32_cache_val": brief_figures(f32),
                     "tokens_per_s": {k: v["tokens_per_s"] for k, v in speed.items()}, "reasons": reasons,
                     "judged_by": "teacher-forced, each window's second half through the cache its first half wrote, "
                                  f"vs {src.name} the same way"}
        log.info("%s %s float16 cache: %s, %s", src.parent.name, form, brief_figures(f16),
                 "kept" if not reasons else "; ".join(reasons))
    return out


def choose_scheme(schemes: dict[str, dict[str, Any]], min_coverage: float) -> tuple[str, str]:
    """W8A8 when within the budget with >= ``min_coverage`` of the weights int8 (int8 GEMMs on TensorRT); else
    weight-only when within the budget; else W8A8 within the budget with fewer int8 weights; else the one with the
    higher teacher-forced agreement (marked failed)."""
    w, wo = schemes["w8a8"], schemes["weight_only"]
    if w["passed"] and w["coverage"] >= min_coverage:
        return "w8a8", f"W8A8 within the budget with {w['coverage']:.0%} of the weights int8"
    if wo["passed"]:
        return "weight_only", ("W8A8 " + ("misses the budget" if not w["passed"] else
                                         f"holds only {w['coverage']:.0%} of the weights int8")
                               + "; weight-only int8 is within it")
    if w["passed"]:
        return "w8a8", (f"W8A8 within the budget with only {w['coverage']:.0%} of the weights int8; weight-only "
                        "misses it")
    best = max(schemes, key=lambda k: schemes[k]["figures"]["top1_agreement"])
    return best, "neither scheme is within the budget; the one with the higher agreement is kept"


def build_cpu_forms(prepared: Path, qdq: Path, excluded: Sequence[str], work: Path,
                    opts: QuantOptions) -> dict[str, Path]:
    """The int8 CPU forms that need no search of their own (``dynamic``, ``qdq_s8s8``; :data:`CPU_FORMS` or the
    stage's --cpu-candidates among them; the MatMulNBits ones: :func:`nbits_forms`); a failing one is logged and
    skipped."""
    out: dict[str, Path] = {}
    for name in wanted_forms(opts):
        if name in NBITS_FORMS:
            continue
        p = work / f"cpu_{name}.onnx"
        try:
            if name == "dynamic":
                quantize_dynamic_matmul(prepared, p, exclude=excluded)
            else:
                shutil.copyfile(qdq, p)
            out[name] = p
        except Exception as e:  # noqa: BLE001 - one failing form must not stop the others
            log.warning("int8 CPU form %s for %s failed: %s: %s", name, prepared.parent.name, type(e).__name__, e)
    return out


def form_bits(name: str) -> int:
    """The weight width a CPU form holds: 4 for ``nbits4`` (and ``nbits4_head_fp32``), else 8."""
    base = name.removesuffix("_head_fp32")
    return NBITS_FORMS.get(base, 8)


def wanted_forms(opts: QuantOptions) -> list[str]:
    """:data:`CPU_FORMS`, or those of the stage's --cpu-candidates that are decoder forms."""
    return [c for c in (opts.cpu_candidates or CPU_FORMS) if c in CPU_FORMS] or list(CPU_FORMS)


# ---- sensitivity: one pass over cached activations ---------------------------------------------------------------
def sweep_feeds(info: DecoderInfo, windows: EvalSet, batch: int):
    """Prefill feeds of the sweep windows, ``batch`` windows at a time."""
    ids = windows.inputs["input_ids"]
    for i in range(0, len(ids), batch):
        yield prefill_feed(info, ids[i:i + batch])


def rank_w8a8(prepared: Path, nodes: Sequence[NodeInfo], ranges: dict[str, Any], feeds, threads: int):
    """The W8A8 graph's nodes ranked by the error each alone adds (optimize.layer_error): int8 per-channel weights,
    activations int8 with their calibrated range; nodes without a constant weight (attention BMMs) last."""
    import onnx

    m = onnx.load(str(prepared))
    first = {n.name: n.input[0] for n in m.graph.node}
    weighted = [nd for nd in nodes if nd.kind == "weight"]
    wq = {nd.name: per_channel_int8(float_weight(m, nd)) for nd in weighted}
    act = {nd.name: per_tensor_int8(ranges[first[nd.name]].amax) for nd in weighted if first[nd.name] in ranges}
    del m
    rows = layer_errors(prepared, weighted, wq, feeds, act, threads)
    return rows + [{"node": nd.name, "op_type": nd.op_type, "kind": nd.kind, "output_rel_mse": None,
                    "accuracy_delta": None, "top1_agreement": None} for nd in nodes if nd.kind != "weight"]


def rank_nbits(prepared: Path, quantized: Path, nodes: Sequence[NodeInfo], block: int, level: int, feeds,
               threads: int) -> list[dict[str, Any]]:
    """The MatMulNBits nodes ranked by the error each alone adds: the weights as ``quantized`` (every node
    MatMulNBits) holds them, the activations int8 per block where ``level`` is 4."""
    wq = dequantized_weights(quantized)
    act = {k: block_int8(block) for k in wq} if level == INTEGER_LEVEL else None
    return layer_errors(prepared, nodes, wq, feeds, act, threads)


# ---- MatMulNBits forms: search by bisection -----------------------------------------------------------------------
def nbits_forms(prepared: Path, nodes: Sequence[NodeInfo], windows: EvalSet, ref: TeacherForced,
                budgets: dict[str, Budget], feeds, work: Path, opts: QuantOptions,
                dopts: DecoderQuantOptions, calib_feeds=None) -> dict[str, dict[str, Any]]:
    """Per bit width of :data:`NBITS_FORMS` the search (:func:`search_nbits`) with the LM head quantised
    (``nbits8``/``nbits4``) and, unless that passed with every node quantised or kept the head float itself, with
    the head float (``<form>_head_fp32``): the fastest passing one is then chosen with the other CPU forms. Each
    width's weights as ``dopts.nbits_scheme`` says (AWQ: on the graph :func:`nbits_source` scales with the
    activations of ``calib_feeds``). A form that fails to build is logged and left out."""
    import onnx

    head = lm_head(onnx.load(str(prepared), load_external_data=False), nodes)
    out: dict[str, dict[str, Any]] = {}
    for name in (f for f in wanted_forms(opts) if f in NBITS_FORMS):
        ranked: list[dict[str, Any]] = []
        try:
            src, scheme = nbits_source(prepared, nodes, NBITS_FORMS[name], calib_feeds, work, opts, dopts)
        except Exception as e:  # noqa: BLE001 - one failing form must not stop the others
            log.warning("int8 CPU form %s for %s failed: %s: %s", name, prepared.parent.name, type(e).__name__, e)
            continue
        for fixed in ([], [head] if head else None):
            if fixed is None or (fixed and name in out and _head_search_moot(out[name], head)):
                continue
            label = name + ("_head_fp32" if fixed else "")
            try:
                out[label] = search_nbits(src, NBITS_FORMS[name], nodes, fixed, ranked, windows, ref,
                                          form_budget(name, budgets), feeds, work / label, opts, dopts,
                                          {**scheme, "head": head})
            except Exception as e:  # noqa: BLE001 - one failing form must not stop the others
                log.warning("int8 CPU form %s for %s failed: %s: %s", label, prepared.parent.name, type(e).__name__, e)
    return out


def nbits_source(prepared: Path, nodes: Sequence[NodeInfo], bits: int, calib_feeds, work: Path, opts: QuantOptions,
                 dopts: DecoderQuantOptions) -> tuple[Path, dict[str, Any]]:
    """(the float graph the ``bits``-bit forms are built from, the scheme record): ``prepared`` itself, or with
    ``nbits_awq`` (4-bit) the same graph with optimize.awq's activation-aware scales folded into its LayerNorms,
    chosen on the calibration (training) windows' activations; the record adds each group's alpha."""
    scheme = dopts.nbits_scheme(bits)
    if not scheme["awq"]:
        return prepared, scheme
    if calib_feeds is None:
        raise QuantizeError(f"{prepared.parent.name} {bits}-bit AWQ: got no calibration feeds, expected the "
                            "training windows' prefill feeds")
    from optimize.awq import awq_graph

    model, groups = awq_graph(prepared, nodes, calib_feeds(), bits, scheme["block_size"], scheme["symmetric"],
                              scheme["clip"], dopts.nbits_level, threads=opts.threads)
    dst = work / f"awq{bits}.onnx"
    save_onnx(model, dst)
    return dst, {**scheme, "awq_groups": groups}


def _head_search_moot(with_head: dict[str, Any], head: str) -> bool:
    """A search with the LM head float adds nothing when the one with the head quantised passed with every node
    quantised (faster cannot be had), or kept only the head float itself (the same graph). When it kept the head
    and others float, the head-float search may need fewer (its first step: only the head float)."""
    return (with_head["passed"] and not with_head["kept_float"]) or with_head["kept_float"] == [head]


def search_nbits(prepared: Path, bits: int, nodes: Sequence[NodeInfo], fixed: Sequence[str],
                 ranked: list[dict[str, Any]], windows: EvalSet, ref: TeacherForced, budget: Budget, feeds,
                 work: Path, opts: QuantOptions, dopts: DecoderQuantOptions,
                 scheme: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every node MatMulNBits but ``fixed``; when that misses ``budget`` (judge.budget on the teacher-forced figures,
    crash-guarded child at ONNX Runtime 'all': this CPU's kernels), the nodes ranked once by :func:`rank_nbits` (kept
    in ``ranked`` for the caller's next search) and the fewest of the most sensitive kept float found by
    optimize.int8_budget.bisect_cut. ``scheme``: :meth:`DecoderQuantOptions.nbits_scheme` (None: that of ``bits``).
    Returns the chosen graph, its figures and the search's record."""
    work.mkdir(parents=True, exist_ok=True)
    scheme = dict(scheme or dopts.nbits_scheme(bits))
    block, head = scheme["block_size"], scheme.pop("head", None)
    head_bits = {head: scheme["head_bits"]} if head and scheme.get("head_bits", bits) != bits else None
    tried: dict[int, dict[str, Any]] = {}
    order: list[str] = []

    def run(k: int) -> bool:
        if k not in tried:
            p = work / f"keep{k}.onnx"
            summary = matmul_nbits(prepared, p, bits, block, [*fixed, *order[:k]], dopts.nbits_level,
                                   scheme["symmetric"], scheme["clip"], node_bits=head_bits)
            cmp, err = evaluate_guarded(p, windows, ref, "all", opts.threads, dopts.batch_size)
            tried[k] = {"file": p, "figures": cmp, "error": err, "summary": summary,
                        "passed": cmp is not None and passes(cmp, budget, True)}
            log.info("int8 %s %d-bit, %d kept float: %s", prepared.parent.name, bits, len(fixed) + k,
                     brief_figures(cmp) if cmp else err)
        return tried[k]["passed"]

    k = 0
    if not run(0) and tried[0]["error"] is None:
        if not ranked:
            ranked[:] = rank_nbits(prepared, tried[0]["file"], nodes, block, dopts.nbits_level, feeds(),
                                   opts.threads)
        order[:] = [r["node"] for r in ranked if r["node"] not in fixed]
        limit = min(opts.max_excluded if opts.max_excluded is not None else len(order) - 1, len(order) - 1)
        cut, _ = bisect_cut(max(limit, 0), run)
        k = limit if cut is None else cut
    best = tried[k]
    return {"file": best["file"] if best["figures"] else None, "figures": best["figures"], "bits": bits,
            "block_size": block, "accuracy_level": dopts.nbits_level, "scheme": scheme, "lm_head_float": bool(fixed),
            "kept_float": [*fixed, *order[:k]], "passed": best["passed"], "error": best["error"],
            "graph": best["summary"], "full_evaluations": len(tried),
            "steps": [{"kept_float": len(fixed) + j, **(brief_figures(t["figures"]) if t["figures"] else
                                                         {"error": t["error"]}), "passed": t["passed"]}
                      for j, t in tried.items()],
            "sensitivity": [{k2: r[k2] for k2 in ("node", "op_type", "output_rel_mse")} for r in ranked]}


def choose_decoder_cpu(src: Path, cands: dict[str, Path], windows: EvalSet, ref: TeacherForced,
                       budgets: dict[str, Budget], quantizable: int, opts: QuantOptions,
                       dopts: DecoderQuantOptions, known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each form's figures on this CPU (crash-guarded child, ONNX Runtime 'all'; ``known``: figures a search already
    measured the same way), decode speed of the survivors and fp32 side by side, then optimize.cpu_int8.pick_cpu per
    CPU file (pipeline.artifacts.CPU_WEIGHT_FORMS) among the forms of its weight width (latency = ms per decode token
    at batch 1): ``picks[<int8.cpu|int4.cpu>] = {"winner": form or None, "why": ...}``. Weights held in 8 or fewer
    bits count toward the coverage."""
    from optimize.cpu_int8 import pick_cpu

    known = known or {}
    rows: dict[str, dict[str, Any]] = {}
    for name, p in cands.items():
        coverage = weight_coverage(p, quantizable)
        cmp, err = (known[name], None) if name in known else evaluate_guarded(p, windows, ref, "all", opts.threads,
                                                                                dopts.batch_size)
        if cmp is None:
            rows[name] = {"ran": False, "error": err, "passed": False, "int8_weight_coverage": coverage}
            continue
        reasons = budget_reasons(cmp, form_budget(name, budgets), True)
        if coverage < opts.min_int8_coverage:
            reasons.append(f"only {coverage:.0%} of the Gemm/MatMul weights are 8-bit or less, expected >= "
                           f"{opts.min_int8_coverage:.0%}")
        rows[name] = {"ran": True, "int8_weight_coverage": coverage, "val": brief_figures(cmp), "passed": not reasons,
                      "reasons": reasons}
    ran = {k: cands[k] for k, r in rows.items() if r["ran"]}
    prompt = [int(t) for t in windows.inputs["input_ids"][0, :dopts.bench_prompt]]
    bench = decode_bench({"fp32": src, **ran}, None, prompt, dopts.bench_new_tokens, dopts.bench_rounds, opts.threads)
    fp32_ms = bench["fp32"]["ms_per_token"]
    for k in ran:
        rows[k].update(latency_ms=bench[k]["ms_per_token"], tokens_per_s=bench[k]["tokens_per_s"],
                       speedup_vs_fp32=round(fp32_ms / bench[k]["ms_per_token"], 3))
    picks = {}
    for form, pf in CPU_WEIGHT_FORMS.items():
        winner, why = pick_cpu({k: r for k, r in rows.items() if form_bits(k) == pf.weight_bits}, fp32_ms, opts,
                               labelled=True)
        picks[form] = {"winner": winner, "why": why}
    return {"picks": picks, "candidates": rows, "fp32_latency_ms": fp32_ms,
            "bench": {"batch": 1, "unit": "ms per decode token", "fp32_tokens_per_s": bench["fp32"]["tokens_per_s"],
                      "prompt_tokens": len(prompt), "new_tokens": dopts.bench_new_tokens,
                      "rounds": dopts.bench_rounds, "threads": opts.threads, "ort_opt_level": "all"}}


def print_tables(name: str, res: dict[str, Any]) -> None:
    """The quantize stage's summary for a decoder."""
    def tf(v: dict | None) -> str:
        v = v or {}
        if "top1_agreement" not in v:
            return "-"
        return (f"agree {v['top1_agreement']:.4f}  next-token {v.get('accuracy_delta', 0):+.2f} pts  ppl "
                f"{v.get('perplexity_delta_pct', float('nan')):+.3f} %")

    f16 = res.get("fp16")
    if f16:
        print(f"\n{name}: fp16.onnx  tier '{f16.get('tier')}'  ORT level {f16.get('ort_opt_level')}  "
              f"{tf(f16.get('check'))}  padded row finite {(f16.get('padded_row') or {}).get('finite')}  "
              f"passed {f16.get('passed')}" + ("" if f16.get("passed") else f"  ({'; '.join(f16.get('reasons') or [])})"))
    i8 = res.get("int8")
    if not i8:
        return
    q, cpu = i8["qdq"], i8["cpu"]
    forms = i8.get("cpu_forms") or {"int8.cpu": cpu}
    print(f"{name}: int8.qdq.onnx  {q['scheme']} ({q['why']})  {tf(q['val'])}  weights int8 "
          f"{q['int8_weight_coverage']:.0%}  rules {'ok' if q['rules_ok'] else q['rule_violations']}  passed "
          f"{q['passed']}  (float-simulated Q/DQ: the TensorRT reference)"
          + (f"\n  MISSED: {q['miss']}; {q['fallback']}" if q.get("miss") else ""))
    for k, v in q["schemes"].items():
        print(f"  scheme {k:<12} {tf(v['val'])}  weights int8 {v['int8_weight_coverage']:.0%}  passed {v['passed']}")
    for e in q["excluded_nodes"]:
        print(f"  kept float: {e['node']} ({e['op_type']})")
    print(f"  {'cpu form':<16}{'ran':>5}{'int8 w':>8}  {'figures':<52}{'ms/token':>9}{'x fp32':>8}  passed")
    print(f"  {'fp32':<16}{'':>5}{'':>8}  {'':<52}{cpu['fp32_latency_ms']:>9.3f}{'1.00':>8}")
    winners = {sec["method"]: f" <- {PRECISION_FILES[form].file}" for form, sec in forms.items() if sec.get("file")}
    for k, r in {k: r for sec in forms.values() for k, r in sec["candidates"].items()}.items():
        mark = winners.get(k, "")
        lat = r.get("latency_ms")
        print(f"  {k:<16}{str(r['ran']):>5}{r.get('int8_weight_coverage', 0):>8.2f}  {tf(r.get('val')):<52}"
              f"{'-' if lat is None else f'{lat:.3f}':>9}{r.get('speedup_vs_fp32') or '-':>8}  {r['passed']}{mark}")
    for k, v in {k: v for sec in forms.values() for k, v in (sec.get("nbits") or {}).items()}.items():
        sc = v.get("scheme") or {}
        print(f"  {k}: {v['bits']}-bit block {v['block_size']} level {v['accuracy_level']} "
              f"{'symmetric' if sc.get('symmetric', True) else 'zero points'}{', clip search' if sc.get('clip') else ''}"
              f"{', AWQ' if sc.get('awq') else ''}, {len(v['kept_float'])} kept float, {v['full_evaluations']} full "
              f"evaluations, passed {v['passed']}")
    for form, sec in forms.items():
        file, kv = PRECISION_FILES[form].file, sec.get("kv_cache") or {}
        print(f"  CPU ({sec.get('cpu_isa')}): " + (f"{file} = {sec['method']}: {sec['why']}" if sec.get("file")
                                                  else f"no {file}, {sec['why']}")
              + (f"; cache {kv['type']} (float16 cache: {tf(kv.get('val')) if kv.get('val') else kv.get('error')}; "
                 f"tokens/s {kv.get('tokens_per_s')}{'; ' + '; '.join(kv['reasons']) if kv.get('reasons') else ''})"
                 if kv.get("requested") else ""))


if __name__ == "__main__":  # the crash-guarded child (child_argv); the stage is 'python -m optimize quantize'
    raise SystemExit(_child_main(sys.argv[1:]))
