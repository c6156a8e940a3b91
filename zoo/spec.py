"""Declarative model specs: one place that export, calibration, engines, runtime and bench read.

The definitions live at the bottom of the project, in runtime.modelspec (numpy only), so a device that copies
runtime/ reads the same spec; this module re-exports them for the training and export code.
"""
from runtime.modelspec import DEFAULT_TOLERANCES, DimRange, ModelSpec, TensorSpec, Tolerance  # noqa: F401
