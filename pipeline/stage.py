"""What every stage's CLI does with the project's typed errors (runtime.errors.EdgeattnError): one line naming the
stage, the model and what to do, on stderr; the other models of the run go on; the stage ends with a summary of
what failed and exit status 2. Other exceptions are bugs and keep their traceback.

    errors = StageErrors("export")
    for ref in refs:
        with errors.model(ref.name):
            export_one(ref)
    return errors.finish()          # 0, or 2 after "export: 1 of 3 model(s) failed: m (ExportError)"
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from runtime.errors import EdgeattnError
from runtime.files import atomic_write_json

EXIT_FAILED = 2
REPORT_ENV = "EDGEATTN_STAGE_REPORT"  # a file where finish() lists the models that failed (read by `edgeattn run`)


def one_line(e: BaseException, limit: int = 600) -> str:
    """An exception as one line: its message with whitespace folded (multi-line tool output included)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StageErrors:
    """Collects the models a stage could not handle; see the module docstring."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.failed: list[tuple[str, str]] = []  # (model, error type)
        self.seen = 0

    @contextlib.contextmanager
    def model(self, name: str) -> Iterator[None]:
        self.seen += 1
        try:
            yield
        except EdgeattnError as e:
            print(f"error: {self.stage} {name}: {one_line(e)}", file=sys.stderr, flush=True)
            self.failed.append((name, type(e).__name__))

    def finish(self) -> int:
        """0 when every model went through; else a summary line and EXIT_FAILED."""
        report = os.environ.get(REPORT_ENV)
        if report:
            atomic_write_json(report, {"stage": self.stage, "seen": self.seen, "failed": [m for m, _ in self.failed]})
        if not self.failed:
            return 0
        names = ", ".join(f"{m} ({t})" for m, t in self.failed)
        print(f"{self.stage}: {len(self.failed)} of {self.seen} model(s) failed: {names}", file=sys.stderr)
        return EXIT_FAILED


class PhaseClock:
    """Wall seconds per named phase of one model's stage run, for its manifest section (where did the time go):

        clock = PhaseClock()
        with clock("calibrate"):
            ...
        sec["phases_s"] = clock.seconds        # {"calibrate": 12.3, ...}; a repeated phase adds up
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.perf_counter() - t0, 1)


def cli(stage: str, main: Callable[[], int]) -> int:
    """Run a stage's main; a typed error that escapes it (bad arguments, a missing artifacts folder) is one line and
    exit 2, like the per-model errors."""
    try:
        return main()
    except EdgeattnError as e:
        print(f"error: {stage}: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
