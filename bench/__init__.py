"""Latency benchmark: every artifact on every backend side by side with PyTorch / ONNX Runtime peers.

``python -m bench --models ... --artifacts DIR`` -> ``DIR/bench.json`` + ``DIR/plots/*.png``;
``python -m bench.report --artifacts DIR`` -> ``DIR/report.md``.
"""
