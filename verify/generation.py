"""Greedy generation, token for token: the thin runtime (``runtime.generate``) vs PyTorch (transformers'
``model.generate(do_sample=False)``), on every CPU backend.

    python -m verify.generation --models gpt2_imdb --artifacts artifacts            # 100 test prompts, 64 tokens

Prompts: the first 4..16 tokens (seeded) of the first N reviews of the IMDB test split (never trained on), encoded
by the runtime's own tokenizer (runtime.bpe; its ids equal transformers' on these texts, tests/test_generate.py).
PyTorch and the runtime get the same batches (left-padded alike) and the same stop token (the model's eos).

A row passes when its tokens are the same as PyTorch's. Where they first differ, the step is a **tie** when
PyTorch's own top two logits there differ by less than the fp32 tolerance (``spec.tolerances['fp32'].max_abs``
times the RMS of that step's logits, the unit judge.figures uses for fp32 parity): either token is a correct
greedy choice, so the row is counted as tied (with its gap) and the rest of it is not compared (the texts have
parted). Any other difference fails the row. Also reported per backend: the largest logit difference over the
steps both took (scaled by the reference RMS, as judge.figures does).

Reduced precision (``--precisions fp16,int8``, :func:`precision_rows`): fp16.onnx, int8.qdq.onnx (judged by its
float simulation, the TensorRT reference, at runtime.ort_backend.QDQ_REFERENCE_LEVEL: the same figures on every CPU)
int8.cpu.onnx and int4.cpu.onnx (this CPU's 8-bit / 4-bit weight kernels: advisory; files: pipeline.artifacts.
PRECISION_FILES) against PyTorch fp32: **teacher-forced** next-token top-1 agreement and perplexity change on windows
of the test split (judge.teacher_forced; each window's second half read through the cache its first half wrote,
calibration.windows.ort_teacher_forced_cached, so a float16 cache is judged too), and the mean length
of the greedy prefix that matches PyTorch's (64 new tokens on the same prompts). A row passes judge.budget's verdict
for its precision's budget (judge.budget.budget_for on the spec's tolerance named by pipeline.artifacts.PRECISION_FILES:
int8.cpu by ``int8``, int4.cpu by ``int4``, chiefly perplexity; a spec without it: the default; ``min_top1_agreement``,
``max_drop_points`` on next-token accuracy, ``max_ppl_increase_pct``); the matching prefix is reported, not gated (one flipped near-tie ends
it, and the texts part after that). optimize.decoder_quant runs the same figures and verdict in its budget loop.

Writes ``<artifacts>/<model>/generation.json`` and exits 1 when a row fails (``--strict`` is the default).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.windows import TF_TOKENS, ort_teacher_forced_cached, text_windows
from judge.budget import budget_for, delta_statement, reasons as budget_reasons
from judge.teacher_forced import TeacherForced, teacher_forced_figures, teacher_forced_run
from pipeline.artifacts import CPU_WEIGHT_FORMS, PRECISION_FILES
from runtime.errors import EdgeattnError, InputError

log = logging.getLogger("edgeattn.verify.generation")

CPU_BACKENDS = ("onnxruntime", "openvino")
REPORT_FILE = "generation.json"
JUDGED_BY = {
    "fp16": "ONNX Runtime CPU at the level the quantize stage recorded",
    "int8": "float simulation of its Q/DQ (ONNX Runtime, graph optimisations off): what TensorRT computes up to "
            "rounding, the same on every CPU",
    "int8.cpu": "ONNX Runtime's integer kernels on this CPU (advisory)",
    "int4.cpu": "ONNX Runtime's 4-bit MatMulNBits kernels on this CPU (advisory)",
}
# precision row -> (file in the model folder, tolerance key, how it is judged): pipeline.artifacts.PRECISION_FILES
PRECISION_ARTIFACTS = {p: (pf.file, pf.tolerance, JUDGED_BY[p]) for p, pf in PRECISION_FILES.items()}


class GenerationMismatch(EdgeattnError, AssertionError):
    """A backend's greedy tokens differ from PyTorch's at a step that is not a tie."""


def prompt_rows(tokenizer, n: int = 100, min_tokens: int = 4, max_tokens: int = 16, seed: int = 0,
                 dataset: str = "imdb") -> list[list[int]]:
    """The first k tokens (k seeded in min..max) of the first ``n`` reviews of the test split."""
    from zoo.data import load_dataset

    texts = list(load_dataset(dataset).test.x[:n])
    rng = np.random.default_rng(seed)
    rows = []
    for t in texts:
        ids = tokenizer.encode(t)
        k = int(rng.integers(min_tokens, max_tokens + 1))
        rows.append(ids[:k] if len(ids) >= 1 else ids)
    return [r for r in rows if r]


def _batches(rows: Sequence, size: int):
    for i in range(0, len(rows), size):
        yield i, rows[i:i + size]


def _cut(tokens: Sequence[int], stops: set[int]) -> list[int]:
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in stops:
            break
    return out


def torch_greedy(lm, rows: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int,
                 batch: int = 10) -> list[tuple[list[int], np.ndarray]]:
    """transformers' greedy generate on left-padded batches -> per row (tokens up to and with eos, logits of those
    steps (steps, V))."""
    import torch

    from runtime.generate import left_pad

    out: list[tuple[list[int], np.ndarray]] = []
    for _, chunk in _batches(rows, batch):
        ids, mask = left_pad(chunk, pad_id)
        with torch.no_grad():
            res = lm.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                              max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                              output_logits=True, return_dict_in_generate=True)
        new = res.sequences[:, ids.shape[1]:].numpy()
        logits = torch.stack(res.logits, dim=1).float().numpy()  # (B, steps, V)
        for i in range(len(chunk)):
            toks = _cut(new[i], {eos_id})
            out.append((toks, logits[i, : len(toks)]))
    return out


def runtime_greedy(model_path: str | Path, backend: str, rows: list[list[int]], max_new_tokens: int,
                   batch: int = 10, threads: int | None = None,
                   opt_level: str | None = None) -> tuple[list[tuple[list[int], np.ndarray]], float]:
    """runtime.generate's greedy on the same batches -> per row (tokens, logits (steps, V)), and the seconds.
    ``opt_level``: the ONNX Runtime level (e.g. the Q/DQ reference level); None: the decoder's default."""
    from runtime.generate import TextGenerator

    out: list[tuple[list[int], np.ndarray]] = []
    t0 = time.perf_counter()
    kw = {"opt_level": opt_level} if opt_level else {}
    with TextGenerator(model_path, backend=backend, threads=threads, **kw) as g:
        for _, chunk in _batches(rows, batch):
            for r in g.generate(chunk, max_new_tokens=max_new_tokens, output_logits=True, decode=False):
                out.append((r.tokens, r.logits if r.logits is not None else np.zeros((0, g.info.vocab_size))))
    return out, time.perf_counter() - t0


def compare_row(ref: tuple[list[int], np.ndarray], got: tuple[list[int], np.ndarray], max_abs: float) -> dict[str, Any]:
    """One prompt: 'identical', 'tie' (first difference at a step where PyTorch's top-2 gap < max_abs x RMS) or
    'mismatch'; the step, the gap and its threshold, and the largest scaled logit diff over the common steps."""
    (rt, rl), (gt, gl) = ref, got
    n = min(len(rt), len(gt))
    first = next((i for i in range(n) if rt[i] != gt[i]), None)
    if first is None and len(rt) != len(gt):
        first = n  # one stopped, the other went on: the step where it stopped is the first difference
    upto = n if first is None else min(first + 1, n)
    scaled = 0.0
    for i in range(upto):
        rms = float(np.sqrt(np.mean(rl[i].astype(np.float64) ** 2)))
        scaled = max(scaled, float(np.abs(rl[i] - gl[i]).max()) / rms if rms > 0 else 0.0)
    row: dict[str, Any] = {"steps_ref": len(rt), "steps_got": len(gt), "max_scaled_logit_diff": scaled}
    if first is None:
        return {**row, "verdict": "identical"}
    step_logits = rl[min(first, len(rl) - 1)].astype(np.float64)
    top2 = np.sort(step_logits)[-2:]
    gap = float(top2[1] - top2[0])
    threshold = float(max_abs * np.sqrt(np.mean(step_logits ** 2)))
    verdict = "tie" if gap < threshold else "mismatch"
    return {**row, "verdict": verdict, "step": int(first), "ref_token": int(rt[first]) if first < len(rt) else None,
            "got_token": int(gt[first]) if first < len(gt) else None, "gap": gap, "tie_threshold": threshold}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = [r["verdict"] for r in rows]
    ties = [{"prompt": i, "step": r["step"], "gap": r["gap"], "threshold": r["tie_threshold"]}
            for i, r in enumerate(rows) if r["verdict"] == "tie"]
    bad = [{"prompt": i, "step": r["step"], "gap": r["gap"], "ref_token": r["ref_token"], "got_token": r["got_token"]}
           for i, r in enumerate(rows) if r["verdict"] == "mismatch"]
    return {"prompts": len(rows), "identical": verdicts.count("identical"), "ties": ties, "mismatches": bad,
            "passed": not bad, "max_scaled_logit_diff": max((r["max_scaled_logit_diff"] for r in rows), default=0.0)}


# ---- teacher-forced figures: reduced precision vs PyTorch fp32 (the figures and the verdict: judge/) ---------------
def torch_teacher_forced(lm, windows, batch_size: int = 8, progress: str | None = None) -> TeacherForced:
    """PyTorch fp32 (the HF LM) on the same windows: the reference."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
        with torch.no_grad():
            return lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()

    return teacher_forced_run(run, windows, batch_size, progress)


def matching_prefix(ref: Sequence[int], got: Sequence[int]) -> int:
    """How many leading tokens of ``got`` equal ``ref``'s."""
    n = min(len(ref), len(got))
    return next((i for i in range(n) if int(ref[i]) != int(got[i])), n)


def _precision_level(ref, precision: str) -> str | None:
    from runtime.ort_backend import QDQ_REFERENCE_LEVEL

    if precision == "int8":
        return QDQ_REFERENCE_LEVEL
    if precision == "fp16":
        return (ref.manifest().get("fp16") or {}).get("ort_opt_level") or None
    return "all"


def precision_rows(name: str, artifacts: str | Path = "artifacts", precisions: Sequence[str] = ("fp16", "int8"),
                   n_prompts: int = 100, max_new_tokens: int = 64, batch: int = 10, threads: int | None = None,
                   tf_tokens: int = TF_TOKENS, lm=None, reference: list[tuple[list[int], np.ndarray]] | None = None,
                   rows_ids: list[list[int]] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """One row per precision (:data:`PRECISION_ARTIFACTS`: fp16, int8 = int8.qdq.onnx's float simulation, int8.cpu /
    int4.cpu = int8.cpu.onnx / int4.cpu.onnx on this CPU) of an exported decoder: teacher-forced figures on the test split vs PyTorch fp32, the
    mean matching greedy prefix vs transformers' greedy generate, the budget and the verdict. A missing file gives a
    row with ``skipped``. ``lm``/``reference``/``rows_ids``: PyTorch's model, greedy tokens and the prompts when the
    caller has them (verify_generation), else made here."""
    from runtime.bpe import BPETokenizer
    from pipeline.artifacts import ModelRef
    from zoo.gpt2 import gpt2_dir, load_lm
    from zoo.spec import load_spec

    unknown = [p for p in precisions if p not in PRECISION_ARTIFACTS]
    if unknown:
        raise InputError(f"precisions: got {unknown}, expected some of {list(PRECISION_ARTIFACTS)}")
    ref = ModelRef.resolve(name, artifacts)
    spec = load_spec(ref.file("fp32.onnx"))
    pre = spec.preprocess
    lm = lm if lm is not None else load_lm(gpt2_dir(name, artifacts), name)
    block = min(128, int(pre["max_positions"]))
    windows = text_windows(ref.file(pre["tokenizer"]), "test", tf_tokens, block, spec.dataset or "imdb",
                           pre.get("eos_id"))
    tf_ref = torch_teacher_forced(lm, windows, progress=f"pytorch {name} teacher-forced" if progress else None)
    if rows_ids is None:
        rows_ids = prompt_rows(BPETokenizer.from_file(ref.file(pre["tokenizer"])), n_prompts,
                               dataset=spec.dataset or "imdb")
    if reference is None:
        reference = torch_greedy(lm, rows_ids, max_new_tokens, int(pre["pad_id"]), int(pre["eos_id"]), batch)
    out = []
    for precision in precisions:
        file, tol_key, judged_by = PRECISION_ARTIFACTS[precision]
        path = ref.file(file)
        budget = budget_for(spec.tolerances, tol_key)
        row: dict[str, Any] = {"precision": precision, "artifact": file, "backend": "onnxruntime",
                               "judged_by": judged_by, "gating": precision not in CPU_WEIGHT_FORMS, "budget": budget.to_dict()}
        if not path.is_file():
            out.append({**row, "skipped": f"no {file} (run the quantize stage)", "passed": None})
            continue
        level = _precision_level(ref, precision)
        t0 = time.perf_counter()
        got = ort_teacher_forced_cached(path, windows, level or "all", threads, spec=spec.to_dict(),
                                        progress=f"{file} teacher-forced" if progress else None)
        tf = teacher_forced_figures(tf_ref, got, windows.inputs["labels"])
        greedy, seconds = runtime_greedy(path, "onnxruntime", rows_ids, max_new_tokens, batch, threads, level)
        prefix = [matching_prefix(r[0], g[0]) for r, g in zip(reference, greedy)]
        identical = sum(list(r[0]) == list(g[0]) for r, g in zip(reference, greedy))
        reasons = budget_reasons(tf, budget, labelled=True)
        out.append({**row, "ort_opt_level": level or "all", "teacher_forced": {**tf, "data": windows.description},
                    "generation": {"prompts": len(prefix), "max_new_tokens": max_new_tokens,
                                   "mean_matching_prefix": float(np.mean(prefix)) if prefix else 0.0,
                                   "mean_reference_length": float(np.mean([len(r[0]) for r in reference])),
                                   "identical": int(identical), "seconds": round(seconds, 2)},
                    "passed": not reasons, "reasons": reasons, "seconds": round(time.perf_counter() - t0, 2)})
    return out


def verify_generation(name: str, artifacts: str | Path = "artifacts", artifact: str = "fp32.onnx",
                      backends: Sequence[str] = CPU_BACKENDS, n_prompts: int = 100, max_new_tokens: int = 64,
                      batch: int = 10, threads: int | None = None, write: bool = True,
                      precisions: Sequence[str] = (), tf_tokens: int = TF_TOKENS) -> dict[str, Any]:
    """Run the comparison for one exported decoder; the report (also written to generation.json). ``precisions``
    (e.g. ("fp16", "int8", "int8.cpu")) adds their rows (:func:`precision_rows`) under ``report['precisions']``,
    on the same prompts and PyTorch tokens; their verdicts count in ``report['passed']`` (gating rows only)."""
    from runtime.bpe import BPETokenizer
    from pipeline.artifacts import ModelRef
    from zoo.gpt2 import gpt2_dir, load_lm
    from zoo.io import atomic_write_json
    from zoo.spec import load_spec

    ref = ModelRef.resolve(name, artifacts)
    path = ref.file(artifact)
    spec = load_spec(path)
    pre = spec.preprocess
    tol = spec.tolerances["fp32"].max_abs or 1e-4
    tok = BPETokenizer.from_file(ref.file(pre["tokenizer"]))
    rows = prompt_rows(tok, n_prompts, dataset=spec.dataset or "imdb")
    lm = load_lm(gpt2_dir(name, artifacts), name)
    t0 = time.perf_counter()
    reference = torch_greedy(lm, rows, max_new_tokens, int(pre["pad_id"]), int(pre["eos_id"]), batch)
    torch_seconds = time.perf_counter() - t0
    report: dict[str, Any] = {"model": name, "artifact": artifact, "prompts": len(rows),
                              "max_new_tokens": max_new_tokens, "batch": batch, "tie_unit": f"{tol:g} x RMS of the "
                              "step's PyTorch logits", "torch_seconds": round(torch_seconds, 2), "backends": {}}
    for backend in backends:
        try:
            got, seconds = runtime_greedy(path, backend, rows, max_new_tokens, batch, threads)
        except EdgeattnError as e:
            report["backends"][backend] = {"passed": False, "error": str(e)}
            continue
        per_row = [compare_row(r, g, tol) for r, g in zip(reference, got)]
        report["backends"][backend] = {**summarize(per_row), "seconds": round(seconds, 2)}
    report["passed"] = all(b.get("passed") for b in report["backends"].values())
    if precisions:
        report["precisions"] = precision_rows(name, artifacts, precisions, n_prompts, max_new_tokens, batch, threads,
                                              tf_tokens, lm=lm, reference=reference, rows_ids=rows)
        report["passed"] = report["passed"] and all(r["passed"] is not False for r in report["precisions"]
                                                    if r["gating"])
    if write:
        atomic_write_json(ref.file(REPORT_FILE), report)
    return report


def format_precision_row(name: str, row: dict[str, Any]) -> str:
    """One line per precision row."""
    head = f"verify {name} {row['artifact']} ({row['precision']}, {row['judged_by'].split(':')[0]})"
    if row.get("skipped"):
        return f"{head}: skipped: {row['skipped']}"
    tf, g = row["teacher_forced"], row["generation"]
    verdict = "PASS" if row["passed"] else "FAIL: " + "; ".join(row["reasons"])
    return (f"{head}: teacher-forced agreement {tf['top1_agreement']:.4f}, next-token accuracy "
            f"{delta_statement(tf)}, perplexity {tf['perplexity']:.2f} vs {tf['reference_perplexity']:.2f} "
            f"({tf['perplexity_delta_pct']:+.3f} %), greedy prefix {g['mean_matching_prefix']:.1f}/"
            f"{g['mean_reference_length']:.1f} tokens ({g['identical']}/{g['prompts']} identical): "
            f"{verdict}{'' if row['gating'] else ' (advisory)'}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.artifacts import model_names
    from pipeline.stage import StageErrors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2_imdb")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--artifact", default="fp32.onnx", help="the decoder file in the model folder")
    ap.add_argument("--backends", default=",".join(CPU_BACKENDS))
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precisions", default="", help="also fp16 / int8 / int8.cpu / int4.cpu rows, e.g. fp16,int8 (teacher-forced "
                    "agreement and perplexity change on the test split, mean matching greedy prefix)")
    ap.add_argument("--tf-tokens", type=int, default=TF_TOKENS, help="teacher-forced test tokens per precision")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    errors = StageErrors("verify")
    failed = False
    for name in model_names(args.models):
        with errors.model(name):
            r = verify_generation(name, args.artifacts, args.artifact, model_names(args.backends), args.prompts,
                                  args.max_new_tokens, args.batch, args.threads,
                                  precisions=[p for p in args.precisions.split(",") if p.strip()],
                                  tf_tokens=args.tf_tokens)
            for backend, b in r["backends"].items():
                if "error" in b:
                    print(f"verify {name} {args.artifact} {backend}: FAILED to run: {b['error']}")
                    continue
                ties = ", ".join(f"prompt {t['prompt']} step {t['step']} gap {t['gap']:.2g}" for t in b["ties"])
                print(f"verify {name} {args.artifact} {backend}: {b['identical']}/{b['prompts']} token-identical, "
                      f"{len(b['ties'])} tie(s){' (' + ties + ')' if ties else ''}, {len(b['mismatches'])} "
                      f"mismatch(es), max scaled logit diff {b['max_scaled_logit_diff']:.2g}: "
                      f"{'PASS' if b['passed'] else 'FAIL'}")
            for row in r.get("precisions", []):
                print(format_precision_row(name, row))
            failed |= not r["passed"]
    code = errors.finish()
    return code or (1 if failed else 0)


if __name__ == "__main__":
    from pipeline.stage import cli

    raise SystemExit(cli("verify", main))
