"""The one numerical check between two ONNX graphs that must compute the same thing: the simplify stage's candidates
and the TensorRT-ready rewrites (optimize.trt_ready) are each kept only when ``parity`` passes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import EdgeattnError
from runtime.modelspec import ModelSpec
from runtime.ort_backend import cpu_session
from zoo.tasks import task_named


class SimplifyError(EdgeattnError, RuntimeError):
    """No simplifier produced a graph that matches the input numerically."""


def _run(model_bytes: bytes | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return cpu_session(model_bytes, "disable").run(None, feed)


def parity_feeds(spec: ModelSpec | None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(label, feed) for every size the two graphs are compared at: what the spec's task says (zoo.tasks: the
    spec's min/opt/max sizes, or a decoder's own cases)."""
    if spec is None:
        return [("no spec", {})]
    return task_named(spec.task).run("parity_feeds", spec)


def size_feeds(spec: ModelSpec) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The spec's min/opt/max sizes, one seeded feed each."""
    sizes_list = [{k: getattr(r, w) for k, r in spec.dynamic.items()} for w in ("min", "opt", "max")]
    return [(f"sizes {sizes}", spec.example_inputs(sizes, seed=i)) for i, sizes in enumerate(sizes_list)]


def decoder_feeds(spec: ModelSpec) -> list[tuple[str, dict[str, np.ndarray]]]:
    """A decoder with KV cache, whose total = past + sequence the spec's independent sizes would break:
    runtime.generate.parity_cases, an empty past and left padding among them."""
    from runtime.generate import DecoderInfo, decoder_feed, parity_cases

    d = spec.to_dict()
    info = DecoderInfo.from_spec(d, spec.name)
    return [(f"{label} (batch {b}, sequence {s}, past {p})", decoder_feed(info, b, s, p, seed=i))
            for i, (label, b, s, p) in enumerate(parity_cases(d))]


def parity(ref_bytes: bytes | str | Path, new_bytes: bytes | str | Path, spec: ModelSpec | None,
           rtol: float = 1e-5) -> float:
    """Max abs difference between the two graphs' outputs (serialised bytes, or files: a model with external data),
    over :func:`parity_feeds` (relative to the output scale); raises SimplifyError when it exceeds ``rtol``."""
    worst = 0.0
    for label, feed in parity_feeds(spec):
        a, b = _run(ref_bytes, feed), _run(new_bytes, feed)
        for x, y in zip(a, b):
            if x.shape != y.shape:
                raise SimplifyError(f"output shape changed: {x.shape} -> {y.shape} at {label}")
            scale = max(1.0, float(np.abs(x).max(initial=0.0)))
            worst = max(worst, float(np.abs(x.astype(np.float64) - y).max(initial=0.0)) / scale)
    if worst > rtol:
        raise SimplifyError(f"simplified graph differs from the input by {worst:.3g} (relative), expected <= {rtol}")
    return worst
