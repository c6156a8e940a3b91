"""Third-party warnings said once: a stage that calls a library in a loop (ONNX Runtime's quantizer, once per
candidate) gets each distinct warning one time, with how often it came, instead of dozens of copies.

    @fold_repeats("edgeattn.optimize.quantize")       # or: with fold_repeats(log_name) as seen: ...
    def quantize_outputs(...): ...

Inside, Python warnings (``warnings.warn``; the ones the warning filters ignore stay ignored) and log records at WARNING or above from loggers that are not the
project's own (``edgeattn*``: ONNX Runtime's quantizer logs on the root logger and on ``onnxruntime.*``) are held
back and counted by (source, level, text); at exit, also on an exception, each distinct one is logged once on the
given logger, at its own level: ``onnxruntime.quantization.quantize (x38): Please consider to run pre-processing ...``.
The root logger's level is lowered to WARNING inside (restored at exit) so a library's hints are counted even where
a stage keeps the root logger at ERROR. Stdlib only (floor 2).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterator

OWN = ("edgeattn",)  # logger names (and their children) that are never held back


@dataclass
class Repeats:
    """What was held back: (source, level, text) -> count, in first-seen order."""

    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)

    def add(self, source: str, level: int, text: str) -> None:
        key = (source, level, " ".join(text.split()))
        self.counts[key] = self.counts.get(key, 0) + 1

    def lines(self) -> list[tuple[int, str]]:
        """(level, line) per distinct message: ``source (xN): text`` (``(xN)`` only when it came more than once)."""
        return [(lv, f"{src}{f' (x{n})' if n > 1 else ''}: {text}") for (src, lv, text), n in self.counts.items()]


def _module_of(path: str) -> str:
    """'/v/lib/python3.11/site-packages/onnxruntime/quantization/quantize.py' -> 'onnxruntime.quantization.quantize'."""
    parts = os.path.normpath(path).split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            parts = parts[len(parts) - parts[::-1].index(marker):]
            break
    else:
        parts = parts[-1:]
    if parts and parts[-1].endswith(".py"):
        parts[-1] = parts[-1][:-3]
    return ".".join(p for p in parts if p and p != "__init__") or "?"


def _own(name: str, own: tuple[str, ...]) -> bool:
    return any(name == o or name.startswith(o + ".") for o in own)


class _Hold(logging.Filter):
    """Drops (and counts) third-party records at WARNING or above; the rest pass."""

    def __init__(self, seen: Repeats, own: tuple[str, ...]) -> None:
        super().__init__()
        self.seen, self.own = seen, own

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or _own(record.name, self.own):
            return True
        if getattr(record, "edgeattn_held", False):  # a second handler of the root logger: counted already
            return False
        record.edgeattn_held = True
        source = _module_of(record.pathname) if record.name == "root" else record.name
        self.seen.add(source, record.levelno, record.getMessage())
        return False


@contextlib.contextmanager
def fold_repeats(log_name: str = "edgeattn", own: tuple[str, ...] = OWN) -> Iterator[Repeats]:
    """Hold back third-party warnings inside; at exit log each distinct one once, with its count, on ``log_name``
    (see the module docstring). Usable as a decorator. Yields the :class:`Repeats` being filled."""
    seen = Repeats()
    hold = _Hold(seen, own)
    root = logging.getLogger()
    handlers = list(root.handlers) or ([logging.lastResort] if logging.lastResort else [])
    targets = [root, *handlers]  # the root logger's own records, and everything that reaches its handlers
    level = root.level
    for t in targets:
        t.addFilter(hold)
    if root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # the filters as they were (an ignored category stays ignored), but every repeat recorded, to be counted
            warnings.filters[:] = [("always", *f[1:]) if f[0] in ("default", "module", "once") else f
                                   for f in warnings.filters]
            warnings.simplefilter("always", append=True)  # where no filter matches (the "default" action)
            try:
                yield seen
            finally:
                for w in caught:
                    seen.add(f"{_module_of(w.filename)} {w.category.__name__}", logging.WARNING, str(w.message))
    finally:
        root.setLevel(level)
        for t in targets:
            t.removeFilter(hold)
        out = logging.getLogger(log_name)
        for lv, line in seen.lines():
            out.log(lv, line)
