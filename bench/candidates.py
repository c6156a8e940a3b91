"""What bench times: a ``Candidate`` is one way of running one model (a backend + artifact + mode).

    c = RunnerCandidate(model, path, "openvino", "bf16", "bf16", threads=2)
    c.load()                              # session / compiled model; load_seconds recorded
    fn = c.call(feed)                     # zero-argument callable: one inference on ``feed``
    logits = c.logits(feed)               # (B, classes) float32, for accuracy

``RunnerCandidate`` goes through the thin runtime (``runtime.*Runner.infer``: the input checks a user's code
pays are included in the time). PyTorch peers live in bench/peers.py.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.faults import fault_point
from runtime.loader import open_mode
from runtime.modelspec import precision_of

log = logging.getLogger("edgeattn.bench.candidates")


class Candidate:
    """Base: identity fields plus load/call/logits/close. Subclasses implement ``_load`` and ``call``."""

    def __init__(self, model: str, backend: str, artifact: str, precision: str, mode: str, *, is_peer: bool,
                 peer_kind: str | None = None) -> None:
        self.model, self.backend, self.artifact = model, backend, artifact
        self.precision, self.mode = precision, mode
        self.is_peer, self.peer_kind = is_peer, peer_kind
        self.load_seconds: float | None = None
        self.error: str | None = None
        self.notes: dict[str, Any] = {}

    @property
    def key(self) -> str:
        return f"{self.backend}|{self.artifact}|{self.mode}"

    @property
    def label(self) -> str:
        return ("peer " if self.is_peer else "") + f"{self.backend} {self.artifact} ({self.mode})"

    def load(self) -> bool:
        """Load; on failure record ``error`` and return False (never raises for backend errors)."""
        t0 = time.perf_counter()
        try:
            self._load()
        except Exception as e:  # noqa: BLE001 - backends raise many kinds; one failure must not end the run
            self.error = f"load failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}"
            log.warning("%s %s: %s", self.model, self.label, self.error)
            return False
        self.load_seconds = time.perf_counter() - t0
        return True

    def _load(self) -> None:
        raise NotImplementedError

    def call(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        raise NotImplementedError

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RunnerCandidate(Candidate):
    """An artifact on a runtime backend: onnxruntime (CPU, or a GPU EP), openvino (CPU) or tensorrt (engine).

    ``mode``: ORT optimisation level ("all", "extended", ...) or "cuda-ep"/"tensorrt-ep" (GPU EPs at "all");
    OpenVINO precision hint ("f32", "bf16"); TensorRT: the engine flavour."""

    def __init__(self, model: str, path: str | Path, backend: str, mode: str, precision: str | None = None, *,
                 threads: int | None = None, is_peer: bool = False, peer_kind: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(model, backend, self.path.name, precision or precision_of(self.path.name), mode,
                         is_peer=is_peer, peer_kind=peer_kind)
        self.threads = threads
        self.runner = None
        self._out_name: str | None = None

    def _load(self) -> None:
        fault_point(self.path)
        self.runner = open_mode(self.path, self.backend, self.mode, self.threads)
        self._out_name = self.runner.outputs[0].name
        providers = getattr(self.runner, "providers", None)
        if providers:
            self.notes["providers"] = list(providers)
        tf32 = runner_tf32(self.runner)
        if tf32:
            self.notes["tf32"] = tf32
        if getattr(self.runner, "rtx_settings", None):
            self.notes["rtx"] = dict(self.runner.rtx_settings)

    def call(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        runner = self.runner
        return lambda: runner.infer(feed)

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.runner.infer(feed)[self._out_name], dtype=np.float32)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def engine_tf32_mode(manifest: dict[str, Any]) -> str:
    """An engine's TF32 mode from its manifest (``builder.tf32``: False = cleared, True = allowed, None = unknown)."""
    tf32 = (manifest.get("builder") or {}).get("tf32")
    if tf32 is False:
        return "off (BuilderFlag.TF32 cleared: FP32 layers compute in FP32)"
    if tf32 is True:
        return "allowed (TensorRT's default: FP32 GEMMs/convolutions may run in TF32)"
    return "unknown (this TensorRT has no TF32 flag, or the manifest predates the field)"


def runner_tf32(runner) -> str | None:
    """What TF32 does in a runner's rows: ONNX Runtime GPU providers say it (``OrtRunner.tf32``), engines carry it in
    their manifest; None on CPU backends (no TF32 there)."""
    mode = getattr(runner, "tf32", None)
    if mode:
        return mode
    if getattr(runner, "backend", None) == "tensorrt":
        return engine_tf32_mode(getattr(runner, "manifest", None) or {})
    return None


def make_feed(spec, batch: int, seq_len: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """The timing input: seeded random pixels / token ids (CLS first, no padding) of ``batch`` x ``seq_len``."""
    sizes = {"batch": batch}
    if seq_len is not None and "sequence" in spec.dynamic:
        sizes["sequence"] = seq_len
    return spec.example_inputs(sizes, seed=seed)
