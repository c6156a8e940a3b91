"""Calibration data and range caches for INT8 (numpy only; onnxruntime / tensorrt are never imported here).

- :class:`CalibrationData`: ONE deterministic, rewindable iterable of batched feed dicts
  (``dict[input name, np.ndarray]``) drawn from a dataset's TRAINING split only (or seeded synthetic
  images for parity-only models).
- :class:`OrtCalibrationReader`: the ONNX Runtime ``CalibrationDataReader`` protocol (``get_next``/``rewind``).
  (TensorRT's implicit-INT8 calibrators are not used: TensorRT 11 and TensorRT-RTX removed them, and the
  pipeline writes explicit Q/DQ graphs that every flavour builds.)
- :class:`RangeCache`: computed ranges (tensor -> min/max/amax/scale) keyed by the data's sha256, the
  model's sha256 and the calibration method; reused when nothing changed, invalidated otherwise.
"""
from calibration.cache import CacheKey, RangeCache, TensorRange
from calibration.readers import (
    CALIBRATION_METHODS,
    CalibrationData,
    CalibrationError,
    OrtCalibrationReader,
)

__all__ = [
    "CALIBRATION_METHODS", "CacheKey", "CalibrationData", "CalibrationError", "OrtCalibrationReader", "RangeCache",
    "TensorRange",
]
