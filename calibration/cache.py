"""Range cache: tensor name -> calibrated range (min, max, amax, int8 scale), keyed by what produced it.

A cache entry is valid only for the exact calibration data (sha256 of the batches), the exact model
(sha256 of the ONNX file that was calibrated), the calibration method and its options. Anything else
changing makes :meth:`RangeCache.load` return None (and say why in ``last_miss``), so callers recompute.

File format (JSON, written atomically)::

    {"format": "edgeattn-ranges/1", "key": {model_sha256, data_sha256, method, options}, "digest": "...",
     "created": "...", "seconds": 1.2, "tensors": {"name": {"min": .., "max": .., "amax": .., "scale": ..}}}

``scale`` is the symmetric int8 scale amax / 127 (what TensorRT and the Q/DQ graph use).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping
from zoo.io import atomic_write_json

log = logging.getLogger("edgeattn.calibration")
CACHE_FORMAT = "edgeattn-ranges/1"
INT8_QMAX = 127.0


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    data_sha256: str
    method: str  # "MinMax" | "Entropy" | "Percentile"
    options: Mapping[str, Any] = field(default_factory=dict)  # calibrator options (op types, percentile, bins ...)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = json.loads(json.dumps(dict(self.options), sort_keys=True, default=str))
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """Which key fields differ from a stored key dict (for the log / miss reason)."""
        mine = self.to_dict()
        return [k for k in mine if mine[k] != other.get(k)]


@dataclass(frozen=True)
class TensorRange:
    lowest: float
    highest: float

    @property
    def amax(self) -> float:
        return float(max(abs(self.lowest), abs(self.highest)))

    @property
    def scale(self) -> float:
        """Symmetric int8 scale; a zero range gets the smallest positive scale so Q/DQ stays valid."""
        return self.amax / INT8_QMAX if self.amax > 0 else 1.0 / INT8_QMAX

    def to_dict(self) -> dict[str, float]:
        return {"min": float(self.lowest), "max": float(self.highest), "amax": self.amax, "scale": self.scale}


class RangeCache:
    """One JSON file per (model, flavour). ``load(key)`` -> ranges or None; ``save(key, ranges)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last_miss: str | None = None
        self.hits = 0
        self.saves = 0

    def load(self, key: CacheKey) -> dict[str, TensorRange] | None:
        if not self.path.is_file():
            self.last_miss = "no cache file"
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            self.last_miss = f"unreadable cache ({e})"
            log.warning("range cache %s: %s, recomputing", self.path, self.last_miss)
            return None
        if data.get("format") != CACHE_FORMAT:
            self.last_miss = f"format {data.get('format')!r}, expected {CACHE_FORMAT!r}"
            return None
        diff = key.differences(data.get("key", {}))
        if diff:
            self.last_miss = "changed: " + ", ".join(diff)
            log.info("range cache %s: %s, recomputing", self.path, self.last_miss)
            return None
        self.last_miss = None
        self.hits += 1
        return {k: TensorRange(float(v["min"]), float(v["max"])) for k, v in data.get("tensors", {}).items()}

    def save(self, key: CacheKey, ranges: Mapping[str, TensorRange], seconds: float | None = None,
             extra: Mapping[str, Any] | None = None) -> Path:
        payload = {"format": CACHE_FORMAT, "key": key.to_dict(), "digest": key.digest,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds, **dict(extra or {}),
                   "tensors": {k: r.to_dict() for k, r in sorted(ranges.items())}}
        self.saves += 1
        return atomic_write_json(self.path, payload)
