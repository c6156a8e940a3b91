"""Serve the verified artifacts from Triton Inference Server.

- ``repository``: ``edgeattn triton`` writes ``artifacts/triton/``: per model ``<model>`` (Python backend running our
  thin runtime, raw text / encoded images in, logits and labels out), ``<model>_onnx`` (onnxruntime_onnx) and
  ``<model>_trt`` (tensorrt_plan) for NVIDIA's containers, and a README; ``pick`` chooses the artifacts from
  verify.json (and bench.json), ``configs`` + ``pbtxt`` write ``config.pbtxt``, ``triton_model.py`` is the Python
  backend's ``model.py``; for a decoder, ``<model>`` is a decoupled streaming entry (``triton_generate.py``: one
  response per generated token) and there are no ``_onnx``/``_trt`` entries.
- ``server``: ``edgeattn serve`` runs the ``tritonserver`` bundled in the nvidia-pytriton wheel on 127.0.0.1.
- ``client``: tritonclient (HTTP and gRPC) example, ``TritonStreamer`` for the streaming entries (gRPC);
  ``loadtest``: ``edgeattn loadtest`` (``genload`` for the streaming entries: tokens/s, every sequence checked).

Heavy optional packages (tritonclient, matplotlib) are imported inside the functions that need them.
"""
