"""Triton Python-backend model: raw text or encoded images (BYTES) in, logits and labels out, on the edgeattn thin
runtime (numpy + onnxruntime; tokenizers for text, Pillow for images; never torch).

``edgeattn triton`` copies this file to ``<repository>/<model>/1/model.py`` beside ``runtime/``, the artifact, its
``spec.json`` and the tokenizer JSON, so the folder serves on any Triton with a Python backend and those packages.
``config.pbtxt`` parameters: ``artifact`` (file in this folder), ``ort_opt_level``, ``threads`` (0: ONNX Runtime's
default). Every request of a dynamic batch is encoded on its own (a bad one gets an error response, the others go
on), then the whole batch runs in one call per model-sized chunk: texts are padded to the longest one (the padding
mask inside the model makes the logits those of the unpadded text).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runtime.classify import Classifier  # noqa: E402
from runtime.errors import InputError, RuntimeErrorBase  # noqa: E402
from runtime.loader import open_mode  # noqa: E402
from runtime.preprocess import decode_image  # noqa: E402


def check_numpy_bridge() -> None:
    """The Python backend's stub is built against one numpy ABI. The one in PyTriton 0.7.0 (Triton 2.51) misreads
    numpy 2 arrays (seen: an input [1, 2, 3] arrived as [1, 1, 1], warm-up crashed the server); with numpy 2, a float32
    array passed in through DLPack then comes back as zeros. Refuse to load then, instead of answering garbage."""
    if int(np.__version__.split(".")[0]) < 2:
        return
    probe = np.arange(1, 5, dtype=np.float32)
    back = pb_utils.Tensor.from_dlpack("probe", probe).as_numpy()
    if back.shape != probe.shape or not np.array_equal(back, probe):
        raise pb_utils.TritonModelException(
            f"numpy {np.__version__} in this Python backend: a float32 tensor [1, 2, 3, 4] came back as "
            f"{back.tolist()}; expected the same values: this backend stub was built for numpy 1.x "
            "(use numpy<2 in its environment)")


def triton_error(message: str, invalid_input: bool):
    """A TritonError; INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) when the request is at fault, where the stub
    knows error codes (Triton 23.x and later), else the default (HTTP 500)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_input else None
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        check_numpy_bridge()
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        self.artifact = HERE / params["artifact"]
        threads = int(params.get("threads") or 0) or None
        backend = params.get("runtime_backend") or "onnxruntime"  # as verify judged it (serve.pick.cpu_choice)
        mode = params.get("mode") or params.get("ort_opt_level") or ("all" if backend == "onnxruntime" else "f32")
        runner = open_mode(self.artifact, backend, mode, threads=threads)
        self.clf = Classifier(self.artifact, runner=runner)
        self.input_name = cfg["input"][0]["name"]
        bounds = self.clf.runner.contract.bounds.get(self.clf.runner.inputs[0].shape[0]) \
            if isinstance(self.clf.runner.inputs[0].shape[0], str) else None
        self.chunk = int(bounds.max) if bounds is not None and bounds.max else max(1, int(cfg.get("max_batch_size", 1)))
        pb_utils.Logger.log_info(f"edgeattn: {cfg['name']} serves {self.artifact.name} ({self.clf.kind}) on "
                                 f"{getattr(runner, 'providers', runner.backend)}, chunks of {self.chunk}")

    # -- decoding one request -------------------------------------------------------------------------------
    def _items(self, request) -> list[bytes]:
        t = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if t is None:
            raise ValueError(f"input '{self.input_name}': missing from the request")
        arr = t.as_numpy()
        if arr.dtype != np.object_:
            raise ValueError(f"input '{self.input_name}': got dtype {arr.dtype}, expected BYTES")
        return [x if isinstance(x, bytes) else bytes(x) for x in arr.reshape(-1)]

    def _decode(self, request) -> list:
        items = self._items(request)
        if not items:
            raise ValueError(f"input '{self.input_name}': got no items, expected at least one")
        if self.clf.kind == "text":
            return [x.decode("utf-8") for x in items]
        return [decode_image(x, self.clf.preprocess, source=f"image {i} of the request") for i, x in enumerate(items)]

    # -- running a batch --------------------------------------------------------------------------------------
    def _logits(self, decoded: list) -> np.ndarray:
        """All items of the batch -> (N, classes) float32 logits."""
        if self.clf.kind == "text":
            x = self.clf.encode_text(decoded)  # (N, T) padded to the longest text
        else:
            x = np.concatenate(decoded)  # (N, C, H, W)
        r = self.clf.runner
        return np.concatenate([r.infer({self.clf.input_name: x[s:s + self.chunk]})[self.clf.output_name]
                               for s in range(0, len(x), self.chunk)]).astype(np.float32)

    def _labels(self, logits: np.ndarray) -> np.ndarray:
        names = self.clf.labels if len(self.clf.labels) == logits.shape[1] else [str(i) for i in range(logits.shape[1])]
        return np.array([[names[int(i)].encode()] for i in logits.argmax(1)], dtype=np.object_)  # (N, 1)

    def execute(self, requests):
        responses = [None] * len(requests)
        decoded, owners = [], []  # every item of the batch, and the request each came from
        for i, req in enumerate(requests):
            try:
                items = self._decode(req)
            except (RuntimeErrorBase, ValueError, UnicodeDecodeError) as e:  # the request is at fault: HTTP 400
                responses[i] = pb_utils.InferenceResponse(error=triton_error(f"edgeattn: {e}", invalid_input=True))
                continue
            decoded += items
            owners += [i] * len(items)
        if decoded:
            try:
                logits = self._logits(decoded)
            except RuntimeErrorBase as e:
                err = triton_error(f"edgeattn: {e}", invalid_input=isinstance(e, InputError))
                return [r or pb_utils.InferenceResponse(error=err) for r in responses]
            labels = self._labels(logits)
            owners_a = np.asarray(owners)
            for i in sorted(set(owners)):
                rows = owners_a == i
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("logits", np.ascontiguousarray(logits[rows])),
                    pb_utils.Tensor("label", labels[rows])])
        return responses

    def finalize(self):
        self.clf.close()
