"""The figures of a classifier's (or any logits') output against a reference, separately from running them
(Polygraphy's Comparator idea); verify, the quantize/fp16 budget loops, the zoo's init check and serve's load test all
use these, so every stage judges with one vocabulary.

``figures(ref, got, labels)`` is every number (with ``n_samples`` and the accuracy delta's 95 % interval,
``accuracy_delta_ci95``, judge.interval); ``compare(ref, got, labels, budget)`` returns a ``Comparison``: truthy when
it passed judge.budget's verdict, with every number a report needs and the list of reasons when it did not. Two
rules hold for every stage's verdict:

- a reference with no signal (``degenerate_reference``: PyTorch's logits near zero, constant over classes or over
  inputs, or not finite) gets no verdict: the comparison fails and says so, since a check on it cannot fail;
- an absolute logit tolerance (``Tolerance.max_abs``) is relative to the reference's scale (``reference_scale``,
  the RMS of its logits): tiny logits cannot pass on a tiny error, huge ones do not fail on float32 rounding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from judge.budget import reasons as budget_reasons
from judge.embedding import neighbour_figures
from judge.interval import delta_interval


@dataclass
class Comparison:
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float | None  # embeddings: nearest-neighbour agreement (their other figures: ``neighbours``)
    accuracy: float | None
    reference_accuracy: float | None
    accuracy_delta: float | None  # accuracy points, ours - reference (negative = worse)
    accuracy_delta_ci95: list[float] | None  # 95 % paired-bootstrap interval of accuracy_delta (judge.interval)
    nonfinite: int
    scaled_max_abs_diff: float  # max over samples of |diff| / that sample's logit RMS: what Tolerance.max_abs bounds
    reference_scale: float  # RMS of the reference's logits
    reference_spread: float | None  # std over classes, mean over samples (None: one class)
    reference_sample_spread: float | None  # std over samples, largest over classes (None: one sample)
    reference_nonfinite: int
    degenerate_reference: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)  # every output past the first: its figures and verdict
    neighbours: dict[str, float | int | None] = field(default_factory=dict)  # embeddings: judge.embedding's figures

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("neighbours"))  # flat, as verify.json's rows are; nothing for a classifier
        return d


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    out = np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.abs(a64 - b64).max(1) == 0, 1.0, 0.0))
    return out


# The floor under which PyTorch's logits carry no signal. Logits are in nats: a spread of 1e-5 moves no class's
# probability by more than 1e-5, and it is ~100 float32 eps (1.19e-7), the rounding a network with O(1) activations
# accumulates (the project's fp32 artifacts differ from PyTorch by 1e-6..8e-6). Relative to the logits' RMS it is
# ~100 float32 ulps of them: a constant offset with rounding noise on it. Real models: spread 0.5..4, 5 decades above.
SPREAD_FLOOR = 1e-5
SPREAD_FLOOR_REL = 1e-5


def reference_figures(ref: np.ndarray) -> dict:
    """The reference's own figures (``ref``: (N, classes) logits, or (N, ..., classes): a sequence of them per
    sample): ``reference_scale`` (RMS), ``reference_spread`` (std over classes, mean over samples and positions: the
    signal that picks a class), ``reference_sample_spread`` (std over
    samples, largest over classes: how much the logits depend on the input), ``reference_nonfinite`` and
    ``degenerate_reference`` (either spread under the floor, or NaN/Inf). NaN/Inf count as 0 in the others."""
    r = np.asarray(ref, np.float64)
    per_class = r.reshape(-1, r.shape[-1]) if r.ndim > 2 else r.reshape(r.shape[0], -1)  # (positions, classes)
    r = r.reshape(r.shape[0], int(np.prod(r.shape[1:])))
    bad = int((~np.isfinite(r)).sum())
    r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    per_class = np.nan_to_num(per_class, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.sqrt(np.mean(r ** 2))) if r.size else 0.0
    spread = float(per_class.std(1).mean()) if per_class.shape[1] > 1 and len(per_class) else None
    sample_spread = float(r.std(0).max()) if len(r) > 1 and r.size else None
    floor = spread_floor(scale)
    low = [v for v in (spread, sample_spread) if v is not None and v < floor]
    return {"reference_scale": scale, "reference_spread": spread, "reference_sample_spread": sample_spread,
            "reference_nonfinite": bad, "degenerate_reference": bool(bad or low or not r.size)}


def spread_floor(scale: float) -> float:
    return max(SPREAD_FLOOR, SPREAD_FLOOR_REL * scale)


def degenerate_reason(f: dict) -> str | None:
    """The one-line reason a reference with figures ``f`` (from :func:`reference_figures`) gets no verdict; None
    when it has a signal."""
    if not f["degenerate_reference"]:
        return None
    g = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    what = (f"{f['reference_nonfinite']} NaN/Inf values" if f["reference_nonfinite"] else
            f"std over classes {g(f['reference_spread'])}, over samples {g(f['reference_sample_spread'])}, RMS "
            f"{g(f['reference_scale'])}; floor {spread_floor(f['reference_scale']):.3g}")
    return (f"degenerate reference: PyTorch's logits have no signal ({what}); this check cannot fail on them: fix the "
            "model's initialisation or give real weights")


def scaled_max_abs(r: np.ndarray, diff: np.ndarray) -> float:
    """The largest |logit diff| of a sample over the RMS of that sample's reference logits, over all samples: each
    sample against its own scale, so one input with logits of 100 (a random-init network's outlier) is not judged
    by the others' scale, and small logits cannot pass on a small absolute error."""
    if not diff.size:
        return 0.0
    r2, d2 = r.reshape(len(r), -1), diff.reshape(len(diff), -1)
    rms, worst = np.sqrt(np.mean(r2 ** 2, axis=1)), d2.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(rms > 0, worst / np.where(rms > 0, rms, 1.0), np.where(worst > 0, np.inf, 0.0))
    return float(per.max())


def figures(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
            neighbour_k: int | None = None) -> dict:
    """Every figure of ``got`` against reference logits ``ref`` (and accuracy on ``labels`` if given), under the one
    vocabulary the manifest, verify.json, bench.json and the report share. NaN/Inf count as 0 in the other figures
    and are counted in ``nonfinite`` (``reference_nonfinite`` for the reference's). ``accuracy_delta`` is in accuracy
    points, ours - reference; ``scaled_max_abs_diff`` is each sample's max |diff| over the RMS of that sample's
    reference logits, the worst sample (:func:`scaled_max_abs`); ``reference_scale`` (the RMS of all the reference's
    logits) is one of the reference's own figures (:func:`reference_figures`). Logits with a sequence axis,
    (N, T, classes), are judged per sample (cosine, scaled max abs) and per position (top-1 agreement).
    ``neighbour_k`` (a budget's, for embeddings: the output has no classes): judge.embedding's neighbour figures are
    added, and ``top1_agreement`` is the nearest-neighbour agreement (not an argmax over embedding dimensions)."""
    if ref.shape != got.shape:
        raise ValueError(f"compare: got logits of shape {got.shape}, expected {ref.shape}")
    nonfinite = int((~np.isfinite(got)).sum())
    g = np.nan_to_num(np.asarray(got, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    ref_f = reference_figures(ref)
    r = np.nan_to_num(np.asarray(ref, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(g - r)
    cos = cosine_rows(r, g)
    acc = racc = delta = ci = None
    if labels is not None:
        labels = np.asarray(labels)
        ok, rok = g.argmax(-1) == labels, r.argmax(-1) == labels
        acc, racc = float(ok.mean()), float(rok.mean())
        delta = round(100.0 * (acc - racc), 6)
        per = lambda a: a.reshape(len(a), -1).mean(1)  # noqa: E731 - per sample (mean over positions)
        ci = list(delta_interval(per(ok), per(rok))) if len(ok) else None
    max_abs = float(diff.max()) if diff.size else 0.0
    scaled = scaled_max_abs(r, diff)
    near = {} if neighbour_k is None else neighbour_figures(r, g, neighbour_k)
    top1 = near.get("neighbour_top1_agreement") if near else float((r.argmax(-1) == g.argmax(-1)).mean())
    return {"n_samples": int(len(ref)), "max_abs_diff": max_abs,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "max_rel_diff": float((diff / np.maximum(np.abs(r), 1e-6)).max()) if diff.size else 0.0,
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": top1, "accuracy": acc,
            "reference_accuracy": racc, "accuracy_delta": delta, "accuracy_delta_ci95": ci, "nonfinite": nonfinite,
            "scaled_max_abs_diff": scaled, **ref_f, **near}


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None, tol) -> Comparison:
    """``ref``/``got``: (N, classes) or (N, ..., classes) logits; ``labels``: (N,) ground truth or None (parity only);
    ``tol``: a judge.budget.Budget (or a runtime.modelspec.Tolerance: the same bars). The verdict is
    judge.budget.reasons, the one the budget loops use; a degenerate reference fails whatever ``got`` is, with the
    reason first."""
    f = figures(ref, got, labels, getattr(tol, "neighbour_k", None))
    reasons = budget_reasons({**f, "degenerate_reason": degenerate_reason(f)}, tol, labels is not None)
    near = {k: f.pop(k) for k in list(f) if k.startswith("neighbour_")}
    return Comparison(**f, passed=not reasons, reasons=reasons, neighbours=near)


def compare_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None,
                    tol) -> Comparison:
    """Every output of a model (``ref``/``got``: output name -> array, the first one in ``ref``'s order being the
    logits) under one tolerance: the row's figures are the first output's (with ``labels``); each further output is
    compared for parity and listed under ``outputs``; the verdict is all of them, and a failing further output's
    reasons name it. An output the artifact did not produce fails."""
    names = list(ref)
    if not names:
        raise ValueError("compare: the reference has no outputs")
    missing = [k for k in names if k not in got]
    first = names[0]
    if first in missing:
        raise ValueError(f"compare: the artifact has outputs {sorted(got)}, expected {names}")
    main = compare(ref[first], got[first], labels, tol)
    for k in names[1:]:
        if k in missing:
            main.outputs[k] = {"passed": False, "reasons": [f"output '{k}' missing (outputs {sorted(got)})"]}
        else:
            c = compare(ref[k], got[k], None, tol)
            main.outputs[k] = {key: getattr(c, key) for key in ("max_abs_diff", "scaled_max_abs_diff", "cosine_min",
                                                               "cosine_mean", "top1_agreement", "passed", "reasons")}
        if not main.outputs[k]["passed"]:
            main.passed = False
            main.reasons += [f"output '{k}': {r}" for r in main.outputs[k]["reasons"]]
    return main

