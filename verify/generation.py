"""Greedy generation, token for token: the thin runtime (``runtime.generate``) vs PyTorch (transformers'
``model.generate(do_sample=False)``), on every CPU backend.

    python -m verify.generation --models gpt2_imdb --artifacts artifacts            # 100 test prompts, 64 tokens

Prompts: the first 4..16 tokens (seeded) of the first N reviews of the IMDB test split (never trained on), encoded
by the runtime's own tokenizer (runtime.bpe; its ids equal transformers' on these texts, tests/test_generate.py).
PyTorch and the runtime get the same batches (left-padded alike) and the same stop token (the model's eos).

A row passes when its tokens are the same as PyTorch's. Where they first differ, the step is a **tie** when
PyTorch's own top two logits there differ by less than the fp32 tolerance (``spec.tolerances['fp32'].max_abs``
times the RMS of that step's logits, the unit verify.compare uses for fp32 parity): either token is a correct
greedy choice, so the row is counted as tied (with its gap) and the rest of it is not compared (the texts have
parted). Any other difference fails the row. Also reported per backend: the largest logit difference over the
steps both took (scaled by the reference RMS, as verify.compare does).

Writes ``<artifacts>/<model>/generation.json`` and exits 1 when a row fails (``--strict`` is the default).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import EdgeattnError

log = logging.getLogger("edgeattn.verify.generation")

CPU_BACKENDS = ("onnxruntime", "openvino")
REPORT_FILE = "generation.json"


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
                   batch: int = 10, threads: int | None = None) -> tuple[list[tuple[list[int], np.ndarray]], float]:
    """runtime.generate's greedy on the same batches -> per row (tokens, logits (steps, V)), and the seconds."""
    from runtime.generate import TextGenerator

    out: list[tuple[list[int], np.ndarray]] = []
    t0 = time.perf_counter()
    with TextGenerator(model_path, backend=backend, threads=threads) as g:
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


def verify_generation(name: str, artifacts: str | Path = "artifacts", artifact: str = "fp32.onnx",
                      backends: Sequence[str] = CPU_BACKENDS, n_prompts: int = 100, max_new_tokens: int = 64,
                      batch: int = 10, threads: int | None = None, write: bool = True) -> dict[str, Any]:
    """Run the comparison for one exported decoder; the report (also written to generation.json)."""
    from runtime.bpe import ByteLevelBPE
    from runtime.modelspec import ModelRef
    from zoo.gpt2 import gpt2_dir, load_lm
    from zoo.io import atomic_write_json
    from zoo.spec import load_spec

    ref = ModelRef.resolve(name, artifacts)
    path = ref.file(artifact)
    spec = load_spec(path)
    pre = spec.preprocess
    tol = spec.tolerances["fp32"].max_abs or 1e-4
    tok = ByteLevelBPE.from_file(ref.file(pre["tokenizer"]))
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
    if write:
        atomic_write_json(ref.file(REPORT_FILE), report)
    return report


def main(argv: list[str] | None = None) -> int:
    from runtime.modelspec import model_names
    from runtime.stage import StageErrors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2_imdb")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--artifact", default="fp32.onnx", help="the decoder file in the model folder")
    ap.add_argument("--backends", default=",".join(CPU_BACKENDS))
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    errors = StageErrors("verify")
    failed = False
    for name in model_names(args.models):
        with errors.model(name):
            r = verify_generation(name, args.artifacts, args.artifact, model_names(args.backends), args.prompts,
                                  args.max_new_tokens, args.batch, args.threads)
            for backend, b in r["backends"].items():
                if "error" in b:
                    print(f"verify {name} {args.artifact} {backend}: FAILED to run: {b['error']}")
                    continue
                ties = ", ".join(f"prompt {t['prompt']} step {t['step']} gap {t['gap']:.2g}" for t in b["ties"])
                print(f"verify {name} {args.artifact} {backend}: {b['identical']}/{b['prompts']} token-identical, "
                      f"{len(b['ties'])} tie(s){' (' + ties + ')' if ties else ''}, {len(b['mismatches'])} "
                      f"mismatch(es), max scaled logit diff {b['max_scaled_logit_diff']:.2g}: "
                      f"{'PASS' if b['passed'] else 'FAIL'}")
            failed |= not r["passed"]
    code = errors.finish()
    return code or (1 if failed else 0)


if __name__ == "__main__":
    from runtime.stage import cli

    raise SystemExit(cli("verify", main))
