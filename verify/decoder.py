"""The verify stage for decoders with a KV cache (task ``text_generation``: gpt2_imdb, hf:<gpt2 dir>): one
verify.json row per decoder artifact x CPU backend, from verify.generation (greedy tokens of the thin runtime vs
transformers' ``generate`` on IMDB test prompts, ties reported with their gap).

An fp32 row gates like every other: it passes when no prompt mismatches (a tie, where PyTorch's own top two logits
are within the fp32 tolerance, is counted and listed, not failed); :func:`decoder_plan` says which: fp32.onnx on
ONNX Runtime, fp32.sim.onnx on every CPU backend. The FP16/INT8 decoders optimize.decoder_quant wrote (fp16.onnx,
int8.qdq.onnx judged by its float simulation, int8.cpu.onnx and int4.cpu.onnx on this CPU's kernels: advisory) get one row each from
verify.generation.precision_rows, on the same prompts and PyTorch tokens: teacher-forced next-token agreement and
perplexity change on the test split against their budget (int4.cpu.onnx: the spec's int4 tolerance, the one the
quantize stage chose it by), and the mean matching greedy prefix (reported).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from runtime.cpu import int8_isa
from runtime.modelspec import precision_of
from pipeline.artifacts import CPU_WEIGHT_FORMS, PRECISION_FILES, ModelRef
from zoo.tasks.text_generation import TASK as GENERATION
from verify.plan import ROLE_ARTIFACT, ROLE_CPU_KERNELS, ROLE_REFERENCE, artifact_files, openvino_available, verify_key

log = logging.getLogger("edgeattn.verify.decoder")

TASK = GENERATION.name
CODE_VERSION = "verify-decoder/1"
PROMPT_TOKENS_MAX = 16  # verify.generation.prompt_rows: prompts of 4..16 tokens
NEW_TOKENS = 64
PROMPTS = 100
MODES = {"onnxruntime": "all", "openvino": "f32"}  # TextGenerator's: ORT with I/O binding, OpenVINO's f32 hint
JUDGED_AS = "greedy tokens vs transformers generate (token-exact; ties counted)"
PRECISION_ROLES = {"fp16": ROLE_ARTIFACT, "int8": ROLE_REFERENCE, **{p: ROLE_CPU_KERNELS for p in CPU_WEIGHT_FORMS}}
# the reduced-precision decoders a CPU runs (int8.qdq.onnx is TensorRT's): fp16.onnx, int8.cpu.onnx, int4.cpu.onnx
BENCHED = (PRECISION_FILES["fp16"].file, *(pf.file for pf in CPU_WEIGHT_FORMS.values()))


def decoder_files(model_dir: Path) -> list[str]:
    """The decoder graphs of a model folder, in pipeline order (verify.plan.artifact_files' ONNX files)."""
    return [f for f in artifact_files(model_dir, gpu_present=False) if f.endswith(".onnx")]


def cpu_backends() -> tuple[str, ...]:
    return ("onnxruntime", "openvino") if openvino_available() else ("onnxruntime",)


def decoder_plan(model_dir: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(fp32 artifact, CPU backends) whose greedy tokens verify compares, as verify.plan does for classifiers: the
    raw export fp32.onnx on ONNX Runtime only when a simplified graph is there to deploy, fp32.sim.onnx on every CPU
    backend."""
    files = [f for f in decoder_files(model_dir) if precision_of(f) == "fp32"]
    return [(f, ("onnxruntime",) if f == "fp32.onnx" and "fp32.sim.onnx" in files else cpu_backends()) for f in files]


def reduced_precisions(model_dir: Path) -> list[str]:
    """The verify.generation precision rows whose file is in the folder (fp16, int8 = int8.qdq.onnx, int8.cpu,
    int4.cpu)."""
    from verify.generation import PRECISION_ARTIFACTS

    return [p for p, (file, *_) in PRECISION_ARTIFACTS.items() if (model_dir / file).is_file()]


def bench_plan(model_dir: Path) -> list[tuple[str, tuple[str, ...]]]:
    """What bench times: :func:`decoder_plan`, and :data:`BENCHED` (fp16.onnx, int8.cpu.onnx, int4.cpu.onnx) on ONNX
    Runtime where present."""
    return decoder_plan(model_dir) + [(f, ("onnxruntime",)) for f in BENCHED if (model_dir / f).is_file()]


def new_tokens(ref: ModelRef) -> int:
    """64 new tokens, fewer where the position table is short (a prompt of up to 16 tokens must fit with them)."""
    spec = json.loads(ref.file("spec.json").read_text(encoding="utf-8"))
    return max(1, min(NEW_TOKENS, int(spec["preprocess"]["max_positions"]) - PROMPT_TOKENS_MAX))


def decoder_verify_key(ref: ModelRef, limit: int | None) -> str:
    """verify.plan.verify_key (artifact bytes, spec, tokenizer, CPU class, backend versions) plus what only a decoder's
    rows depend on: the source model folder (manifest export.source) and verify.generation's own code."""
    import verify.generation as vg

    blob = {"code": CODE_VERSION, "key": verify_key(ref, limit), "plan": decoder_plan(ref.folder),
            "source": (ref.manifest().get("export") or {}).get("source"),
            "generation": hashlib.sha256(Path(vg.__file__).read_bytes()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _row(name: str, artifact: str, backend: str, mode: str, n_new: int, key: str | None, **kw: Any) -> dict[str, Any]:
    row = {"model": name, "artifact": artifact, "precision": precision_of(artifact), "backend": backend, "mode": mode,
           "role": ROLE_ARTIFACT, "gating": True, "task": TASK, "judged_as": JUDGED_AS, "dataset": "imdb test prompts",
           "max_new_tokens": n_new, "cpu_isa": int8_isa(), **kw}
    if key:
        row["verify_key"] = key
    return row


def to_row(name: str, artifact: str, backend: str, b: dict[str, Any], n_new: int, key: str | None) -> dict[str, Any]:
    """One verify.json row from verify.generation's per-backend report ``b`` (an fp32 decoder's greedy tokens)."""
    row = _row(name, artifact, backend, MODES.get(backend, "-"), n_new, key)
    if "error" in b:
        row.update(passed=False, error=b["error"], reasons=[b["error"]], n_samples=None)
    else:
        ties, bad = b.get("ties") or [], b.get("mismatches") or []
        row.update(n_samples=b.get("prompts"), token_identical=b.get("identical"), n_ties=len(ties), ties=ties,
                   n_mismatches=len(bad), mismatches=bad[:20], max_scaled_logit_diff=b.get("max_scaled_logit_diff"),
                   passed=bool(b.get("passed")), seconds=b.get("seconds"))
        row["reasons"] = [] if row["passed"] else [
            f"{len(bad)} of {b.get('prompts')} prompts part from PyTorch's greedy tokens at a step that is not a tie "
            f"(first: prompt {bad[0]['prompt']} step {bad[0]['step']}, gap {bad[0]['gap']:.3g}), expected 0"
            if bad else "verify.generation did not pass this backend"]
    return row


def precision_row(name: str, p: dict[str, Any], n_new: int, key: str | None) -> dict[str, Any]:
    """One verify.json row from a verify.generation.precision_rows row (fp16 / int8 / int8.cpu / int4.cpu)."""
    row = _row(name, p["artifact"], p.get("backend", "onnxruntime"), p.get("ort_opt_level", "-"), n_new, key,
               role=PRECISION_ROLES.get(p["precision"], ROLE_ARTIFACT), gating=bool(p.get("gating", True)),
               judged_as=p.get("judged_by", "-"), budget=p.get("budget"))
    if p.get("skipped"):
        return {**row, "passed": False, "error": p["skipped"], "reasons": [p["skipped"]]}
    tf, g = p["teacher_forced"], p["generation"]
    row.update(n_samples=g["prompts"], token_identical=g["identical"], n_tokens=tf["n_tokens"],
               teacher_forced_agreement=tf["top1_agreement"], accuracy_delta=tf["accuracy_delta"],
               perplexity=tf["perplexity"], reference_perplexity=tf["reference_perplexity"],
               perplexity_delta_pct=tf["perplexity_delta_pct"], mean_matching_prefix=g["mean_matching_prefix"],
               mean_reference_length=g["mean_reference_length"], passed=bool(p["passed"]),
               reasons=list(p.get("reasons") or []), seconds=p.get("seconds"))
    return row


def verify_decoder(ref: ModelRef, limit: int | None = None, threads: int | None = None,
                   key: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Rows for every decoder artifact of ``ref`` on every CPU backend (see the module docstring)."""
    from tqdm import tqdm

    from verify.generation import verify_generation

    plan = decoder_plan(ref.folder)
    if not plan:
        log.warning("verify %s: no ONNX decoder in %s; run 'edgeattn export --models %s' first", ref.name, ref.folder,
                    ref.name)
        return []
    n_new, n_prompts = new_tokens(ref), min(limit or PROMPTS, PROMPTS)
    precisions = reduced_precisions(ref.folder)
    rows = []
    for i, (art, backends) in enumerate(tqdm(plan, desc=f"verify {ref.name}", unit="artifact", disable=not progress,
                                             leave=False)):
        rep = verify_generation(ref.name, ref.artifacts, artifact=art, backends=backends, n_prompts=n_prompts,
                                max_new_tokens=n_new, threads=threads, write=False,
                                precisions=precisions if i == 0 else ())  # on the first one's prompts and tokens
        new = [to_row(ref.name, art, backend, b, n_new, key) for backend, b in rep["backends"].items()]
        new += [precision_row(ref.name, p, n_new, key) for p in rep.get("precisions", [])]
        for row in new:
            tqdm.write(row_line(row))
        rows += new
        log.info("verify %s %s: PyTorch greedy reference %.1f s", ref.name, art, rep.get("torch_seconds", 0.0))
    return rows


def row_line(r: dict[str, Any]) -> str:
    """One printed line per row."""
    head = f"  {r['model']:<18} {r['artifact']:<15} {r['backend']:<12} {r['precision']:<5}"
    if r.get("error"):
        return f"{head} FAILED to run: {r['error']}"
    verdict = "PASS" if r["passed"] else ("FAIL" if r["gating"] else "MISS (advisory: CPU kernels)")
    if "teacher_forced_agreement" in r:
        return (f"{head} teacher-forced agreement {r['teacher_forced_agreement']:.4f}, perplexity "
                f"{r['perplexity_delta_pct']:+.3f} %, greedy prefix {r['mean_matching_prefix']:.1f}/"
                f"{r['mean_reference_length']:.1f} tokens ({r['token_identical']}/{r['n_samples']} identical): "
                f"{verdict}" + ("" if r["passed"] else f"  {r['reasons']}"))
    ties = ", ".join(f"prompt {t['prompt']} step {t['step']} gap {t['gap']:.2g}" for t in r.get("ties") or [])
    return (f"{head} {r['token_identical']}/{r['n_samples']} token-identical ({r['max_new_tokens']} new tokens), "
            f"{r['n_ties']} tie(s){' (' + ties + ')' if ties else ''}, {r['n_mismatches']} mismatch(es), max scaled "
            f"logit diff {r['max_scaled_logit_diff']:.2g}: {verdict}")


def markdown_lines(model: str, rows: list[dict[str, Any]]) -> list[str]:
    """verify.md's section for a decoder."""
    n_new = next((r.get("max_new_tokens") for r in rows if r.get("max_new_tokens")), NEW_TOKENS)
    lines = [f"## {model} (text generation)", "",
             f"Greedy generation of {n_new} tokens from IMDB test-split prompts (4-16 tokens), the thin runtime "
             "(runtime.generate) vs transformers' generate. A tie: the first differing step is one where PyTorch's "
             "own top two logits differ by less than the fp32 tolerance x the RMS of that step's logits.", "",
             "| artifact | backend | precision | prompts | token-identical | ties (prompt, step, gap) | mismatches | "
             "max scaled logit diff | passed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if "teacher_forced_agreement" not in r):
        if r.get("error"):
            lines.append(f"| {r['artifact']} | {r['backend']} | {r['precision']} | - | - | - | - | - | NO |")
            continue
        ties = "; ".join(f"{t['prompt']}, {t['step']}, {t['gap']:.2g}" for t in r.get("ties") or []) or "0"
        lines.append(f"| {r['artifact']} | {r['backend']} | {r['precision']} | {r['n_samples']} | "
                     f"{r['token_identical']} | {ties} | {r['n_mismatches']} | {r['max_scaled_logit_diff']:.2g} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    reduced = [r for r in rows if "teacher_forced_agreement" in r]
    if reduced:
        lines += ["", "Reduced precision vs PyTorch fp32 (verify.generation.precision_rows): teacher-forced next-token "
                  "top-1 agreement and perplexity change on test-split windows (gating, within the budget), mean "
                  "length of the greedy prefix that matches PyTorch's (reported).", "",
                  "| artifact | judged as | teacher-forced agreement | next-token acc. delta pts | perplexity | "
                  "change % | matching prefix | identical | passed |", "|---|---|---|---|---|---|---|---|---|"]
        for r in reduced:
            verdict = "yes" if r["passed"] else ("NO" if r["gating"] else "no (advisory)")
            lines.append(f"| {r['artifact']} | {r['judged_as'].split(':')[0]} | {r['teacher_forced_agreement']:.4f} | "
                         f"{r['accuracy_delta']:+.2f} | {r['perplexity']:.2f} vs {r['reference_perplexity']:.2f} | "
                         f"{r['perplexity_delta_pct']:+.3f} | {r['mean_matching_prefix']:.1f}/"
                         f"{r['mean_reference_length']:.1f} | {r['token_identical']}/{r['n_samples']} | {verdict} |")
    for r in rows:
        if not r.get("passed"):
            what = "failed" if r.get("gating", True) else "missed (advisory: this CPU's integer kernels)"
            lines.append(f"\n- **{r['artifact']} on {r['backend']} {what}**: {'; '.join(r.get('reasons') or [])}")
    return lines + [""]
