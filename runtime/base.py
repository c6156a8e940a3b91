"""The Runner contract every backend implements, and the feed checks they all share.

    with OrtRunner("artifacts/vit/fp32.sim.onnx") as r:
        out = r.infer({"pixels": x})          # dict[str, np.ndarray] -> dict[str, np.ndarray]

``infer`` checks names, dtypes, ranks and dynamic-dimension ranges *before* the backend sees the feed and
raises ``InputError`` saying what it got and what it expected, e.g.
``input 'input_ids': got shape (2, 900), expected (batch 1..64, sequence 1..64)``. Float inputs must be finite
and token ids within the spec's vocabulary; an array in the other byte order is taken as its native twin.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from runtime.errors import InputError


@dataclass(frozen=True)
class IOInfo:
    """One input or output. ``shape`` entries are ints (fixed) or str (dynamic dim names)."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[int | str, ...]


@dataclass
class DimBounds:
    """Allowed range of a dynamic dimension (from the model spec, an engine profile, or unbounded)."""

    min: int = 1
    max: int | None = None


@dataclass
class InputContract:
    inputs: list[IOInfo]
    bounds: dict[str, DimBounds] = field(default_factory=dict)  # dim name -> bounds
    value_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # int input -> inclusive id range
    finite_only: bool = True  # refuse NaN/Inf in float inputs (off only for bit-exact copy checks: devtools.gpu_check)

    def describe(self, info: IOInfo) -> str:
        parts = []
        for d in info.shape:
            if isinstance(d, str):
                b = self.bounds.get(d, DimBounds())
                parts.append(f"{d} {b.min}..{b.max}" if b.max is not None else f"{d} >={b.min}")
            else:
                parts.append(str(d))
        return "(" + ", ".join(parts) + ")"

    def check(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``feed``; return it as contiguous numpy arrays. Every problem is listed in one error."""
        if not isinstance(feed, Mapping):
            raise InputError(f"feed: got {type(feed).__name__}, expected a dict of input name -> numpy array")
        expected = {i.name: i for i in self.inputs}
        problems = []
        missing = [n for n in expected if n not in feed]
        extra = [n for n in feed if n not in expected]
        if missing:
            problems.append(f"missing input(s) {missing}")
        if extra:
            problems.append(f"unknown input(s) {extra}; expected names {list(expected)}")
        out: dict[str, np.ndarray] = {}
        seen_dims: dict[str, tuple[str, int]] = {}
        for name, info in expected.items():
            if name not in feed:
                continue
            arr = feed[name]
            if not isinstance(arr, np.ndarray):
                problems.append(f"input '{name}': got {type(arr).__name__}, expected numpy.ndarray")
                continue
            want_dtype = np.dtype(info.dtype)
            if not arr.dtype.isnative and arr.dtype.newbyteorder("=") == want_dtype:
                arr = arr.astype(want_dtype)  # the same numbers in the other byte order (a big-endian file)
            if arr.dtype != want_dtype:
                problems.append(f"input '{name}': got dtype {arr.dtype}, expected {info.dtype}")
            elif self.finite_only and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                problems.append(f"input '{name}': got {bad} NaN/Inf value(s) of {arr.size}, expected finite numbers")
            elif name in self.value_ranges and arr.size:
                lo, hi = self.value_ranges[name]
                got_lo, got_hi = int(arr.min()), int(arr.max())
                if got_lo < lo or got_hi > hi:
                    problems.append(f"input '{name}': got ids {got_lo}..{got_hi}, expected {lo}..{hi} (the model's "
                                    "vocabulary)")
            if arr.ndim != len(info.shape):
                problems.append(f"input '{name}': got rank {arr.ndim} shape {arr.shape}, expected rank "
                                f"{len(info.shape)} {self.describe(info)}")
                continue
            for axis, (want, got) in enumerate(zip(info.shape, arr.shape)):
                if isinstance(want, str):
                    b = self.bounds.get(want, DimBounds())
                    if got < b.min or (b.max is not None and got > b.max):
                        problems.append(f"input '{name}': got shape {arr.shape}, expected {self.describe(info)} "
                                        f"(axis {axis} '{want}' = {got} is outside {b.min}..{b.max})")
                    prev = seen_dims.setdefault(want, (name, got))
                    if prev[1] != got:
                        problems.append(f"input '{name}': dim '{want}' = {got} but input '{prev[0]}' has {prev[1]}")
                elif got != want:
                    problems.append(f"input '{name}': got shape {arr.shape}, expected {self.describe(info)} "
                                    f"(axis {axis} must be {want})")
            out[name] = np.ascontiguousarray(arr)
        if problems:
            raise InputError("; ".join(problems))
        return out


class Runner(abc.ABC):
    """A loaded model on one backend. Use as a context manager; ``infer`` is the only hot call."""

    backend: str = "abstract"

    def __init__(self) -> None:
        self._contract: InputContract | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # backends free sessions/buffers here
        pass

    # -- metadata --------------------------------------------------------------------------------
    @property
    def contract(self) -> InputContract:
        assert self._contract is not None, "backend did not set its input contract"
        return self._contract

    @property
    def inputs(self) -> list[IOInfo]:
        return list(self.contract.inputs)

    @property
    @abc.abstractmethod
    def outputs(self) -> list[IOInfo]: ...

    # -- inference -------------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.contract.check(feed))

    @abc.abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
