"""Seeded synthetic images for models without a dataset of ours: "natural-ish" smooth multi-octave noise (what
calibration and the INT8/FP16 budget of a parity-only model run on), and their normalisation. numpy only."""
from __future__ import annotations

from typing import Any

import numpy as np


def _smooth_noise(rng: np.random.Generator, c: int, h: int, w: int, cells: int) -> np.ndarray:
    """(c, h, w) bilinear interpolation of a (c, cells+1, cells+1) Gaussian grid."""
    grid = rng.standard_normal((c, cells + 1, cells + 1)).astype(np.float32)
    ys, xs = np.linspace(0, cells, h, dtype=np.float32), np.linspace(0, cells, w, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g00, g01 = grid[:, y0][:, :, x0], grid[:, y0][:, :, x0 + 1]
    g10, g11 = grid[:, y0 + 1][:, :, x0], grid[:, y0 + 1][:, :, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx).astype(np.float32)


def synthetic_uint8_images(n: int, channels: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Seeded 'natural-ish' uint8 images (N, C, H, W): 1/f-like multi-octave smooth noise + a little pixel noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, channels, h, w), dtype=np.uint8)
    for i in range(n):
        x = np.zeros((channels, h, w), np.float32)
        for octave, cells in enumerate((2, 4, 8, 16)):
            x += _smooth_noise(rng, channels, h, w, cells) * (0.5 ** octave)
        x += rng.standard_normal((1, h, w)).astype(np.float32) * 0.6  # shared luminance structure
        x += rng.standard_normal((channels, h, w)).astype(np.float32) * 0.05
        x = 1.0 / (1.0 + np.exp(-1.5 * (x + rng.normal(0, 0.5))))  # brightness shift per image
        out[i] = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return out


def normalize_nchw(u8: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 with scalar or per-channel mean/std."""
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1) if isinstance(mean, (list, tuple)) else np.float32(mean)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1) if isinstance(std, (list, tuple)) else np.float32(std)
    return ((u8.astype(np.float32) / 255.0 - m) / s).astype(np.float32)
