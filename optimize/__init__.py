"""Graph optimisation stages: simplify (onnxsim), fp16, int8 (Q/DQ and CPU), TensorRT engines."""
