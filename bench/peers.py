"""The peers our artifacts are compared with, all on CPU, all marked ``is_peer``:

| kind | how |
|---|---|
| ``eager`` | PyTorch eager FP32, ``torch.inference_mode()`` |
| ``bf16_autocast`` | ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the eager module |
| ``dynamic_int8`` | ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` (qint8 weights, x86 engine); the fused MHA fast path is switched off for its calls (it reads ``linear.weight``, a method after quantisation) |
| ``compile`` | ``torch.compile(module)`` (inductor, default mode); compilation time of each new input shape is the first call at that shape, reported as ``compile_seconds`` |
| ``ort_plain`` | ONNX Runtime on the plain export ``fp32.onnx`` at ORT's default level (ORT_ENABLE_ALL), CPU provider |

Peers are the reference implementations, so bench rows mark them ``verified: null`` and never pick one as
"fastest ours". The PyTorch peers of a model share one worker process (bench/worker.py); ``ort_plain`` is a
``RunnerCandidate`` in its own worker, like our artifacts.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import numpy as np

from bench.candidates import Candidate

log = logging.getLogger("edgeattn.bench.peers")
TORCH_PEERS = ("eager", "bf16_autocast", "dynamic_int8", "compile")
ALL_PEERS = TORCH_PEERS + ("ort_plain",)
_MODE = {"eager": ("fp32", "eager"), "bf16_autocast": ("bf16", "bf16-autocast"),
         "dynamic_int8": ("int8", "dynamic-int8-linear"), "compile": ("fp32", "compile-inductor")}


class TorchCandidate(Candidate):
    """A PyTorch peer around ``built.module`` (shared, not copied, except for dynamic int8)."""

    def __init__(self, built, kind: str) -> None:
        if kind not in TORCH_PEERS:
            raise ValueError(f"peer '{kind}': unknown; expected one of {list(TORCH_PEERS)}")
        precision, mode = _MODE[kind]
        super().__init__(built.name, "pytorch", "pytorch", precision, mode, is_peer=True, peer_kind=kind)
        self.built = built
        self.kind = kind
        self.input_names = [t.name for t in built.spec.inputs]
        self.module = None

    def _load(self) -> None:
        import torch

        m = self.built.module.eval()
        if self.kind == "dynamic_int8":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
                m = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {torch.nn.Linear}, dtype=torch.qint8)
            self.notes["quantized_engine"] = torch.backends.quantized.engine
            self.notes["mha_fastpath"] = "disabled for this peer (fused encoder path needs float Linear weights)"
        elif self.kind == "compile":
            m = torch.compile(m)
            self.notes["compile"] = "torch.compile(module), inductor, default mode, dynamic=None"
        self.module = m

    def _forward(self, args) -> Callable[[], Any]:
        import torch

        m = self.module
        if self.kind == "bf16_autocast":
            def fn():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return m(*args)
        elif self.kind == "dynamic_int8":
            mha = torch.backends.mha

            def fn():  # the fused encoder fast path reads .weight, which dynamic-quantized Linear replaces
                prev = mha.get_fastpath_enabled()
                mha.set_fastpath_enabled(False)
                try:
                    with torch.inference_mode():
                        return m(*args)
                finally:
                    mha.set_fastpath_enabled(prev)
        else:
            def fn():
                with torch.inference_mode():
                    return m(*args)
        return fn

    def call(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        import torch

        return self._forward([torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.input_names])

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.call(feed)()
        return out.float().numpy().astype(np.float32)

    def close(self) -> None:
        self.module = None
