"""Tooling that is neither the device runtime nor a pipeline stage: the hardening suite (``make harden``), the GPU
self-check (``make gpu-check``) and the TensorRT/cudart stand-ins the tests and the self-check run against. No product
package imports from here (tests/test_layers.py keeps it so)."""
