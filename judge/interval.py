"""How sure a verdict is: a seeded paired bootstrap of the accuracy delta over samples.

``delta_interval(got_correct, ref_correct)`` takes, per sample, how much of it the artifact and the reference got
right (0/1 for a classifier; the share of correct positions of a window for a decoder) and returns the 95 %
interval of ``100 * mean(got - ref)`` in accuracy points, the one budget unit. The pairs are resampled together
(one sample is one draw), so what both get right or wrong cancels and the interval is as narrow as the paired
design allows.

A bootstrap resample depends on the data only through how often each distinct paired difference is drawn, so the
resamples are drawn as multinomial counts over the distinct differences (3 of them for a classifier: -1, 0, +1):
the same distribution as drawing sample indices, in O(resamples x distinct values) instead of O(resamples x n),
so the budget loop can afford it on every candidate. Seeded: the same figures give the same interval on every
machine.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


def delta_interval(got_correct: np.ndarray, ref_correct: np.ndarray, resamples: int = RESAMPLES,
                   seed: int = SEED) -> tuple[float, float]:
    """(low, high): the 95 % paired-bootstrap interval of the accuracy delta in points, ours - reference.
    ``got_correct``/``ref_correct``: (N,) per-sample correctness in [0, 1]."""
    g, r = np.asarray(got_correct, np.float64).ravel(), np.asarray(ref_correct, np.float64).ravel()
    if g.shape != r.shape or not g.size:
        raise ValueError(f"delta interval: got {g.shape} and {r.shape} per-sample scores, expected two equal, "
                         "non-empty (N,) arrays")
    values, counts = np.unique(g - r, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(g.size, counts / g.size, size=resamples)  # (B, distinct)
    means = 100.0 * (draws @ values) / g.size
    tail = 100.0 * (1.0 - LEVEL) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return round(float(lo), 6), round(float(hi), 6)
