"""PyTorch -> ONNX export with pre-export checks. See ``export.onnx_export.export_model``."""
