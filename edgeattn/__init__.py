"""edgeattn: PyTorch attention models to verified ONNX, FP16, INT8 and TensorRT engines. The command line is
``edgeattn <stage> ...`` (edgeattn/__main__.py); the stages live in zoo/, export/, optimize/, verify/, bench/ and
the thin runtime in runtime/."""
