"""The one numerical check between two ONNX graphs that must compute the same thing: the simplify stage's candidates
and the TensorRT-ready rewrites (optimize.trt_ready) are each kept only when ``parity`` passes."""
from __future__ import annotations

import numpy as np

from runtime.errors import EdgeattnError
from runtime.modelspec import ModelSpec
from runtime.ort_backend import cpu_session


class SimplifyError(EdgeattnError, RuntimeError):
    """No simplifier produced a graph that matches the input numerically."""


def _run(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return cpu_session(model_bytes, "disable").run(None, feed)


def parity(ref_bytes: bytes, new_bytes: bytes, spec: ModelSpec | None, rtol: float = 1e-5) -> float:
    """Max abs difference between the two graphs' outputs, over min/opt/max input sizes (relative to the
    output scale); raises SimplifyError when it exceeds ``rtol``."""
    sizes_list = [{k: getattr(r, w) for k, r in spec.dynamic.items()} for w in ("min", "opt", "max")] if spec else [{}]
    worst = 0.0
    for i, sizes in enumerate(sizes_list):
        feed = spec.example_inputs(sizes, seed=i) if spec else {}
        a, b = _run(ref_bytes, feed), _run(new_bytes, feed)
        for x, y in zip(a, b):
            if x.shape != y.shape:
                raise SimplifyError(f"output shape changed: {x.shape} -> {y.shape} at sizes {sizes}")
            scale = max(1.0, float(np.abs(x).max()))
            worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) / scale)
    if worst > rtol:
        raise SimplifyError(f"simplified graph differs from the input by {worst:.3g} (relative), expected <= {rtol}")
    return worst
