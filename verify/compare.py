"""Compare a backend's logits with PyTorch's, separately from running them (Polygraphy's Comparator idea).

``compare(ref, got, labels, tol)`` returns a ``Comparison``: truthy when it passed, with every number a
report needs and the list of reasons when it did not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Comparison:
    n_samples: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float
    accuracy: float | None
    reference_accuracy: float | None
    accuracy_delta: float | None  # accuracy points, ours - reference (negative = worse)
    nonfinite: int
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    out = np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.abs(a64 - b64).max(1) == 0, 1.0, 0.0))
    return out


def figures(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Every figure of ``got`` against reference logits ``ref`` (and accuracy on ``labels`` if given), under the one
    vocabulary the manifest, verify.json, bench.json and the report share. NaN/Inf count as 0 in the other figures
    and are counted in ``nonfinite``. ``accuracy_delta`` is in accuracy points, ours - reference."""
    if ref.shape != got.shape:
        raise ValueError(f"compare: got logits of shape {got.shape}, expected {ref.shape}")
    nonfinite = int((~np.isfinite(got)).sum())
    g = np.nan_to_num(np.asarray(got, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    r = np.asarray(ref, np.float64)
    diff = np.abs(g - r)
    cos = cosine_rows(r, g)
    acc = racc = delta = None
    if labels is not None:
        labels = np.asarray(labels)
        acc = float((g.argmax(1) == labels).mean())
        racc = float((r.argmax(1) == labels).mean())
        delta = round(100.0 * (acc - racc), 6)
    return {"n_samples": int(len(ref)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "max_rel_diff": float((diff / np.maximum(np.abs(r), 1e-6)).max()) if diff.size else 0.0,
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": float((r.argmax(1) == g.argmax(1)).mean()), "accuracy": acc,
            "reference_accuracy": racc, "accuracy_delta": delta, "nonfinite": nonfinite}


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None, tol) -> Comparison:
    """``ref``/``got``: (N, classes) logits; ``labels``: (N,) ground truth or None (parity only); ``tol``: a
    zoo.spec.Tolerance-like object (max_abs, min_cosine, min_top1_agreement, max_drop_points)."""
    f = figures(ref, got, labels)
    reasons = []
    if f["nonfinite"]:
        reasons.append(f"{f['nonfinite']} NaN/Inf values in the output")
    if tol.max_abs is not None and f["max_abs_diff"] > tol.max_abs:
        reasons.append(f"max_abs_diff {f['max_abs_diff']:.3g} > {tol.max_abs:g}")
    stat = getattr(tol, "cosine_on", "min")
    cval = f["cosine_mean"] if stat == "mean" else f["cosine_min"]
    if cval < tol.min_cosine:
        reasons.append(f"cosine_{stat} {cval:.6f} < {tol.min_cosine:g}")
    # Parity-only runs (no labels: random images through a random-init head) have near-tied logits, where top-1
    # flips under any rounding; there the pass criterion is cosine/max-abs, and top-1 agreement is reported only.
    agree = f["top1_agreement"]
    if agree < tol.min_top1_agreement and (labels is not None or tol.min_top1_agreement >= 1.0):
        reasons.append(f"top1_agreement {agree:.4f} < {tol.min_top1_agreement:g}")
    delta = f["accuracy_delta"]
    if delta is not None and delta < -tol.max_drop_points - 1e-9:
        reasons.append(f"accuracy_delta {delta:+.2f} points exceeds the {tol.max_drop_points:.2f}-point budget")
    return Comparison(**f, passed=not reasons, reasons=reasons)
