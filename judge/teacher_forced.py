"""A decoder's figures: teacher-forced next tokens against a reference on the same text windows.

``TeacherForced`` holds, per position of (N windows, T tokens), the top-1 token and the negative log-likelihood of the
true next token (``score_logits`` turns logits into it; ``teacher_forced_run`` runs any ``ids -> logits`` function
over an EvalSet of windows); ``teacher_forced_figures`` compares two of them: top-1 agreement, next-token accuracy
and its delta in points (with its 95 % interval, a paired bootstrap over windows: judge.interval), perplexity and its
change in percent, the NLL error that ranks sensitive nodes. judge.budget judges them, in verify and in the
quantize stage's decoder loop alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from judge.interval import delta_interval
from runtime.errors import InputError


@dataclass
class TeacherForced:
    """Per next-token position of a set of text windows (N, T): the model's top-1 token and the negative
    log-likelihood of the true next token (NaN where the logits were not finite)."""

    top1: np.ndarray  # (N, T) int64
    nll: np.ndarray  # (N, T) float64

    def pack(self) -> np.ndarray:
        """(N, T, 2) float64: what a crash-guarded child writes (top-1 ids are exact in float64)."""
        return np.stack([self.top1.astype(np.float64), self.nll], axis=-1)

    @classmethod
    def unpack(cls, a: np.ndarray) -> "TeacherForced":
        return cls(a[..., 0].astype(np.int64), a[..., 1].astype(np.float64))


def score_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, V) logits, (B, T) next tokens -> top-1 (B, T) and NLL of the next token (B, T), float64."""
    x = logits.astype(np.float64)
    top1 = np.argmax(x, axis=-1)
    m = x.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
    nll = lse - np.take_along_axis(x, labels[..., None], axis=-1)[..., 0]
    nll[~np.isfinite(nll)] = np.nan
    return top1, nll


def teacher_forced_run(run: Callable[[np.ndarray], np.ndarray], windows: Any, batch_size: int,
                       progress: str | None) -> TeacherForced:
    """``run(input_ids (B, T)) -> logits (B, T, V)`` over every batch of ``windows`` (an EvalSet of input_ids and
    labels), scored."""
    from tqdm import tqdm

    tops, nlls = [], []
    n = len(windows)
    for feed in tqdm(windows.batches(batch_size), total=-(-n // batch_size), desc=progress, disable=not progress,
                     leave=False, dynamic_ncols=True):
        top1, nll = score_logits(run(feed["input_ids"]), feed["labels"])
        tops.append(top1)
        nlls.append(nll)
    return TeacherForced(np.concatenate(tops), np.concatenate(nlls))


def teacher_forced_figures(ref: TeacherForced, got: TeacherForced, labels: np.ndarray) -> dict[str, Any]:
    """``got`` against the reference on the same positions: top-1 agreement, next-token accuracy on the text (and
    its delta in accuracy points, the one budget unit, with ``accuracy_delta_ci95`` over windows), perplexity and its
    change in percent, ``nll_rel_mse`` (the relative mean squared change of the next token's NLL: a smooth score to
    rank sensitive nodes), NaN/Inf positions; ``degenerate_reference`` when the reference has NaN/Inf or predicts one
    token everywhere."""
    if ref.top1.shape != got.top1.shape or labels.shape != ref.top1.shape:
        raise InputError(f"teacher-forced figures: got {got.top1.shape}, reference {ref.top1.shape}, labels "
                         f"{labels.shape}; expected one (windows, tokens) shape")
    bad = ~np.isfinite(got.nll)
    ref_bad = int((~np.isfinite(ref.nll)).sum())
    ok, rok = got.top1 == labels, ref.top1 == labels
    acc, racc = float(ok.mean()), float(rok.mean())
    rnll = float(np.nanmean(ref.nll)) if ref.nll.size else float("nan")
    gnll = float(got.nll.mean()) if not bad.any() else float("inf")
    ppl, rppl = float(np.exp(gnll)), float(np.exp(rnll))
    r, g = np.nan_to_num(ref.nll), np.nan_to_num(got.nll, nan=0.0)
    per = lambda a: a.reshape(len(a), -1).mean(1)  # noqa: E731 - per window
    return {"n_tokens": int(labels.size), "n_windows": int(len(labels)),
            "top1_agreement": float((ref.top1 == got.top1).mean()),
            "accuracy": acc, "reference_accuracy": racc, "accuracy_delta": round(100.0 * (acc - racc), 6),
            "accuracy_delta_ci95": list(delta_interval(per(ok), per(rok))) if labels.size else None,
            "perplexity": ppl, "reference_perplexity": rppl,
            "perplexity_delta_pct": 100.0 * (ppl / rppl - 1.0) if np.isfinite(ppl) else float("inf"),
            "nll_mean_delta": gnll - rnll,
            "nll_rel_mse": float(np.mean((g - r) ** 2) / max(float(np.mean(r ** 2)), 1e-12)),
            "nonfinite": int(bad.sum()), "reference_nonfinite": ref_bad,
            "degenerate_reference": bool(ref_bad or len(np.unique(ref.top1)) < 2)}
