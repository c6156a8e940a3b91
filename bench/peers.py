"""The peers our artifacts are compared with, all marked ``is_peer``; CPU peers are compared with CPU artifacts and
CUDA peers with GPU artifacts (engines, ONNX Runtime GPU providers) only (``PEER_DEVICE``, bench.results):

| kind | how |
|---|---|
| ``eager`` | PyTorch eager FP32, ``torch.inference_mode()`` |
| ``bf16_autocast`` | ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the eager module |
| ``dynamic_int8`` | ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` (qint8 weights, x86 engine); the fused MHA fast path is switched off for its calls (it reads ``linear.weight``, a method after quantisation) |
| ``compile`` | ``torch.compile(module, dynamic=False)`` per input shape (inductor, default mode), compiled when the shape's feed arrives, never inside timed calls; that compile time is reported as ``compile_seconds`` |
| ``ort_plain`` | ONNX Runtime on the plain export ``fp32.onnx`` at ORT's default level (ORT_ENABLE_ALL), CPU provider |
| ``cuda_eager`` | PyTorch eager FP32 on the GPU (a copy of the module on ``cuda:0``) |
| ``cuda_fp16_autocast`` | ``torch.autocast("cuda", dtype=torch.float16)`` around the CUDA eager module |
| ``cuda_compile`` | ``torch.compile(dynamic=False)`` of the CUDA module per input shape, as ``compile`` |
| ``ct2_fp32`` ... ``openvino_genai`` | decoders only: CTranslate2, ONNX Runtime GenAI, OpenVINO GenAI (bench/decoder_peers.py) |

The CUDA peers are timed like our engines, numpy in and numpy out: the host-to-device copy of the inputs and the
device-to-host copy of the logits (which waits for the GPU) are inside every timed call. They are chosen by default
only where ``torch.cuda.is_available()`` (``default_peers``). TF32 is set, not left to PyTorch's defaults (TF32 on
for cuDNN convolutions, off for matmuls): off for every CUDA peer (``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32``), like our fp32 engines (BuilderFlag.TF32 cleared); rows carry ``notes.tf32``.

With ``dynamic=None`` (torch.compile's default) the second batch size recompiles with dynamic shapes, and a shape
seen first by the smoke test or the accuracy pass moves its compile out of ``compile_seconds`` (or into a timed
call); one static compile per shape, done before timing, avoids both.

Peers are the reference implementations, so bench rows mark them ``verified: null`` and never pick one as
"fastest ours". The PyTorch peers of a model share one worker process (bench/worker.py); ``ort_plain`` is a
``RunnerCandidate`` in its own worker, like our artifacts.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable

import numpy as np

from bench.candidates import Candidate
from bench.decoder_peers import DECODER_PEER_KINDS
from runtime import gpu

log = logging.getLogger("edgeattn.bench.peers")
CPU_TORCH_PEERS = ("eager", "bf16_autocast", "dynamic_int8", "compile")
CUDA_TORCH_PEERS = ("cuda_eager", "cuda_fp16_autocast", "cuda_compile")
TORCH_PEERS = CPU_TORCH_PEERS + CUDA_TORCH_PEERS
ALL_PEERS = TORCH_PEERS + ("ort_plain",) + DECODER_PEER_KINDS  # the decoder peers apply to decoders only
PEER_MODES = {"eager": ("fp32", "eager"), "bf16_autocast": ("bf16", "bf16-autocast"),
         "dynamic_int8": ("int8", "dynamic-int8-linear"), "compile": ("fp32", "compile-inductor"),
         "cuda_eager": ("fp32", "cuda-eager"), "cuda_fp16_autocast": ("fp16", "cuda-fp16-autocast"),
         "cuda_compile": ("fp32", "cuda-compile-inductor")}
COMPILE_PEERS = ("compile", "cuda_compile")  # compiled per input shape before timing: reported as compile_seconds
RECOMPILE_LIMIT = 64  # dynamo's per-function cache (default 8) must hold one static graph per shape we run
TF32_NOTE = "off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False)"
PEER_DEVICE = {k: ("gpu" if k in CUDA_TORCH_PEERS else "cpu") for k in ALL_PEERS}
# the eager FP32 reference each device's speed-ups are measured against
EAGER_PEER = {"cpu": "eager", "gpu": "cuda_eager"}


def default_peers() -> tuple[str, ...]:
    """Every CPU peer, plus the CUDA peers where PyTorch sees a CUDA GPU (asked only when the driver reports one)."""
    if not gpu.nvidia_gpu_present():
        return CPU_TORCH_PEERS + ("ort_plain",) + DECODER_PEER_KINDS
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except ImportError:
        cuda = False
    return ALL_PEERS if cuda else CPU_TORCH_PEERS + ("ort_plain",) + DECODER_PEER_KINDS


def set_cuda_tf32(torch, allowed: bool) -> str:
    """Set TF32 for CUDA matmuls and cuDNN convolutions explicitly (process-wide: every CUDA peer of a worker gets
    the same); returns the note the rows carry."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allowed)
    torch.backends.cudnn.allow_tf32 = bool(allowed)
    return TF32_NOTE if not allowed else "allowed (torch.backends.cuda.matmul/cudnn.allow_tf32 = True)"


def raise_recompile_limit(torch, limit: int = RECOMPILE_LIMIT) -> None:
    """Room for one static graph per input shape (``recompile_limit``; ``cache_size_limit`` before torch 2.6)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


class TorchCandidate(Candidate):
    """A PyTorch peer around ``built.module`` (shared, not copied, except for dynamic int8)."""

    def __init__(self, built, kind: str) -> None:
        if kind not in TORCH_PEERS:
            raise ValueError(f"peer '{kind}': unknown; expected one of {list(TORCH_PEERS)}")
        precision, mode = PEER_MODES[kind]
        super().__init__(built.name, "pytorch", "pytorch", precision, mode, is_peer=True, peer_kind=kind)
        self.built = built
        self.kind = kind
        self.input_names = [t.name for t in built.spec.inputs]
        self.module = None
        self._compiled: dict[tuple, Any] = {}  # compile peers: input shapes -> torch.compile(module, dynamic=False)
        self._compile_s: dict[tuple, float] = {}

    @property
    def on_cuda(self) -> bool:
        return self.kind in CUDA_TORCH_PEERS

    def _load(self) -> None:
        import torch

        m = self.built.module.eval()
        if self.on_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError(f"peer '{self.kind}' needs a CUDA GPU; torch {torch.__version__} sees none "
                                   f"(torch.version.cuda={torch.version.cuda})")
            m = copy.deepcopy(m).to("cuda").eval()  # a copy: the CPU peers in this worker keep the CPU module
            self.notes["device"] = torch.cuda.get_device_name(0)
            self.notes["tf32"] = set_cuda_tf32(torch, False)
        elif self.kind == "dynamic_int8":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
                m = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {torch.nn.Linear}, dtype=torch.qint8)
            self.notes["quantized_engine"] = torch.backends.quantized.engine
            self.notes["mha_fastpath"] = "disabled for this peer (fused encoder path needs float Linear weights)"
        if self.kind in COMPILE_PEERS:
            raise_recompile_limit(torch)
            self.notes["compile"] = ("torch.compile(module, dynamic=False) per input shape, inductor, default mode; "
                                     "compiled before timing, compile time = compile_seconds")
        self.module = m

    def _compiled_for(self, args) -> Any:
        """The module compiled for these input shapes (``dynamic=False``), compiling it now (its first call, timed
        into ``compile_seconds_of``) if this shape is new."""
        import torch

        key = tuple(tuple(a.shape) for a in args)
        if key not in self._compiled:
            compiled = torch.compile(self.module, dynamic=False)
            t0 = time.perf_counter()
            self._forward(args, compiled)()  # compiles; a CUDA peer's .cpu() waits for the GPU
            self._compile_s[key] = time.perf_counter() - t0
            self._compiled[key] = compiled
        return self._compiled[key]

    def compile_seconds_of(self, feed: dict[str, np.ndarray]) -> float | None:
        """Seconds the compile for this feed's shapes took (None: not a compile peer, or not compiled yet)."""
        return self._compile_s.get(tuple(tuple(np.shape(feed[n])) for n in self.input_names))

    def _forward(self, args, module=None) -> Callable[[], Any]:
        import torch

        m = self.module if module is None else module
        if self.on_cuda:
            autocast = self.kind == "cuda_fp16_autocast"

            def fn():  # numpy-side tensors in, host tensor out: H2D and D2H (which waits for the GPU) are timed
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                    return m(*[a.to("cuda") for a in args]).cpu()
        elif self.kind == "bf16_autocast":
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

        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.input_names]
        if self.kind in COMPILE_PEERS:
            return self._forward(args, self._compiled_for(args))
        return self._forward(args)

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        out = self.call(feed)()
        return out.float().numpy().astype(np.float32)

    def close(self) -> None:
        self.module = None
        self._compiled.clear()
