"""The figures of sentence embeddings (feature extraction) against a reference: numpy only.

- ``paired_cosine(ref, got)``: each sample's cosine between its reference and candidate embedding, (N,);
- ``nearest(emb, k)``: the indices of each sample's k nearest other samples by cosine, (N, k), nearest first;
- ``neighbour_figures(ref, got, k)``: ``neighbour_overlap`` (mean over samples of |top-k(ref) & top-k(got)| / k),
  ``neighbour_overlap_min``, ``neighbour_top1_agreement`` (the nearest neighbour is the same sample) and
  ``neighbour_k`` (the k used: at most N - 1);
- ``embedding_figures(ref, got, k)``: the cosine (mean, min) and the neighbour figures together, with ``n_samples``.

A retrieval system answers with the neighbours, so the neighbour overlap says what a quantised artifact changes for
its user; the cosine bar (runtime.modelspec's Tolerance.min_cosine) says how far each vector moved. judge.figures adds
the neighbour figures to a row's figures when its budget names a ``neighbour_k``; judge.budget gates them.
"""
from __future__ import annotations

import numpy as np

BLOCK = 1024  # rows of the similarity matrix at a time: (BLOCK, N) float64, never (N, N)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, D) float64 rows of length 1 (a zero row stays zero); NaN/Inf count as 0."""
    a = np.nan_to_num(np.asarray(x, np.float64).reshape(len(x), -1), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def paired_cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """(N,) cosine of each sample's candidate embedding to its reference one."""
    return (unit_rows(ref) * unit_rows(got)).sum(1)


def nearest(emb: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each sample's ``k`` nearest OTHER samples by cosine, nearest first (ties: lower index)."""
    u = unit_rows(emb)
    n = len(u)
    if not 1 <= k < n:
        raise ValueError(f"nearest neighbours: got k={k} for {n} samples, expected 1 <= k < {n}")
    out = np.empty((n, k), np.int64)
    for lo in range(0, n, BLOCK):
        sim = u[lo:lo + BLOCK] @ u.T  # (B, N)
        rows = np.arange(len(sim))
        sim[rows, lo + rows] = -np.inf  # a sample is not its own neighbour
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # stable: equal cosines keep index order
        out[lo:lo + len(sim)] = order
    return out


def neighbour_figures(ref: np.ndarray, got: np.ndarray, k: int) -> dict:
    """The neighbour figures of ``got`` against ``ref`` (module docstring); k is capped at N - 1, and with fewer than
    2 samples there are no neighbours: every figure is None (judge.budget then fails a neighbour bar, saying so)."""
    if ref.shape != got.shape:
        raise ValueError(f"neighbour figures: got embeddings of shape {got.shape}, expected {ref.shape}")
    n = len(ref)
    kk = min(int(k), n - 1)
    if kk < 1:
        return {"neighbour_k": None, "neighbour_overlap": None, "neighbour_overlap_min": None,
                "neighbour_top1_agreement": None}
    a, b = nearest(ref, kk), nearest(got, kk)
    overlap = np.array([len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())], np.float64) / kk
    return {"neighbour_k": kk, "neighbour_overlap": float(overlap.mean()), "neighbour_overlap_min": float(overlap.min()),
            "neighbour_top1_agreement": float((a[:, 0] == b[:, 0]).mean())}


def embedding_figures(ref: np.ndarray, got: np.ndarray, k: int) -> dict:
    """``n_samples``, ``cosine_mean``/``cosine_min`` (:func:`paired_cosine`) and :func:`neighbour_figures`."""
    cos = paired_cosine(ref, got)
    return {"n_samples": int(len(ref)), "cosine_mean": float(cos.mean()) if len(cos) else None,
            "cosine_min": float(cos.min()) if len(cos) else None, **neighbour_figures(ref, got, k)}
