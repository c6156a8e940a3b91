"""The one orchestrator (``edgeattn run``; `make demo`, `make gpt2` and `make bert` call it): the stage list, laps
(seconds per stage), the summary and the exit rules, in one place.

Stage-major, as `make demo` always ran: train (the models we have recipes for), export, simplify, quantize, engines,
verify, bench, then one report; each stage once for all its models, in its own process (``python -m edgeattn
<stage>``), so a stage's crash or memory stays in it. Exit rules:

- train, export, simplify: a model that fails (its ``error:`` line) is dropped from the later stages, which need its
  file; the other models go on; the run exits 2 at the end.
- quantize, engines: a budget miss (exit 1) is recorded and the run goes on; verify judges what was written. An
  error (exit 2) ends the run with exit 2 at the end (with ``--keep-going``: recorded only).
- verify (always ``--strict``): a failed gating row makes the run exit 1 at the end, unless ``--keep-going`` (the
  demo's rule: go on past a budget miss, summarise, exit 0).
- bench, report: a failure is the run's exit status.

A model's kind is not looked at here: ``--skip-quantize`` / ``--skip-engines`` name the models a recipe leaves out.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from runtime.files import read_json
from pipeline.sources import BUILTIN_NAMES, TRAINED_HF
from pipeline.stage import EXIT_FAILED, REPORT_ENV

log = logging.getLogger("edgeattn.run")
TRAINED = (*BUILTIN_NAMES, *TRAINED_HF)  # the models `train` has recipes for (pipeline.sources' one table)
STOP, RECORD, VERDICT, FINAL = "stop", "record", "verdict", "final"  # what a stage's failure means (module docstring)
EXIT_MISSED = 1


@dataclass(frozen=True)
class RunOptions:
    """What ``edgeattn run`` was asked for (already checked by its argument parser)."""

    models: tuple[str, ...]
    artifacts: str = "artifacts"
    max_drop: str | None = None  # None: the spec's budget
    flavor: str = "auto"
    gpt2_recipe: str | None = None
    weights: str | None = None
    data: str | None = None
    skip_quantize: tuple[str, ...] = ()
    skip_engines: tuple[str, ...] = ()
    bench: bool = True
    bench_args: tuple[str, ...] = ()
    keep_going: bool = False
    summary: bool = False
    kv_cache: str | None = None  # quantize's --kv-cache (a decoder's cache type); None: quantize's default


@dataclass(frozen=True)
class Step:
    """One stage over some models: ``edgeattn <stage> --models <models> <args>``; ``rule`` says what a failure means."""

    stage: str
    models: tuple[str, ...]
    args: tuple[str, ...]
    rule: str

    def argv(self, models: Sequence[str], artifacts: str) -> list[str]:
        head = ["--models", ",".join(models)] if self.models else []
        return [*head, "--artifacts", artifacts, *self.args]


@dataclass(frozen=True)
class StageResult:
    """A stage's exit status and the models it reported failed (None: it did not say, e.g. it crashed)."""

    rc: int
    failed: tuple[str, ...] | None = None


StageRunner = Callable[[str, list[str]], StageResult]


def plan(o: RunOptions) -> list[Step]:
    """The steps of a run, in order (stage-major). Stages with no model left out of the plan."""
    opt = lambda flag, v: (flag, v) if v else ()  # noqa: E731
    steps = [
        Step("train", tuple(m for m in o.models if m in TRAINED), (*opt("--gpt2-recipe", o.gpt2_recipe),), STOP),
        Step("export", o.models, (*opt("--weights", o.weights), *opt("--data", o.data)), STOP),
        Step("simplify", o.models, (), STOP),
        Step("quantize", tuple(m for m in o.models if m not in o.skip_quantize),
             (*opt("--max-drop", o.max_drop), *opt("--kv-cache", o.kv_cache)), RECORD),
        Step("engines", tuple(m for m in o.models if m not in o.skip_engines), ("--flavor", o.flavor), RECORD),
        Step("verify", o.models, ("--strict",), VERDICT),
    ]
    if o.bench:
        steps.append(Step("bench", o.models, o.bench_args, FINAL))
    steps = [s for s in steps if s.models]
    return steps + [Step("report", (), ("--summary",) if o.summary else (), FINAL)]


@dataclass
class Outcome:
    """What a run did: laps (stage, seconds), models stopped early, notes for the summary, the exit status."""

    laps: list[tuple[str, float]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rc: int = 0

    def worse(self, rc: int) -> None:
        self.rc = max(self.rc, rc)


def execute(steps: Sequence[Step], o: RunOptions, runner: StageRunner,
            clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Run ``steps`` with ``runner`` under the exit rules of the module docstring."""
    out = Outcome()
    for step in steps:
        models = [m for m in step.models if m not in out.stopped]
        if step.models and not models:
            out.notes.append(f"{step.stage}: skipped, every model stopped early")
            continue
        if step.stage == "report" and not Path(o.artifacts).is_dir():
            out.notes.append(f"report: skipped, no {o.artifacts} folder")
            continue
        argv = step.argv(models, o.artifacts)
        print(f"== edgeattn {step.stage} {shlex.join(argv)}", flush=True)
        t0 = clock()
        res = runner(step.stage, argv)
        out.laps.append((step.stage, clock() - t0))
        judge(step, models, res, o, out)
    return out


def judge(step: Step, models: list[str], res: StageResult, o: RunOptions, out: Outcome) -> None:
    """Apply the step's rule to its result (see the module docstring)."""
    if res.rc == 0:
        return
    if step.rule == STOP:
        failed = [m for m in models if res.failed is None or m in res.failed] or models
        out.stopped += [m for m in failed if m not in out.stopped]
        out.notes.append(f"{step.stage}: {', '.join(failed)} failed (exit {res.rc}); the later stages need its output")
        out.worse(EXIT_FAILED)
    elif step.rule == RECORD:
        what = "an artifact missed its budget" if res.rc == EXIT_MISSED else "failed"
        out.notes.append(f"{step.stage}: {what} (exit {res.rc}; see above and manifest.json); going on")
        if res.rc != EXIT_MISSED and not o.keep_going:
            out.worse(EXIT_FAILED)
    elif step.rule == VERDICT and res.rc == EXIT_MISSED:
        out.notes.append("verify: a gating row failed (see verify.md)" + ("; --keep-going: exit 0" if o.keep_going
                                                                           else ""))
        if not o.keep_going:
            out.worse(EXIT_MISSED)
    else:
        out.notes.append(f"{step.stage}: exit {res.rc} (see above)")
        out.worse(res.rc)


def summary_lines(o: RunOptions, out: Outcome, total_s: float) -> list[str]:
    laps = " ".join(f"{stage}={secs:.0f}s" for stage, secs in out.laps)
    lines = [f"edgeattn run: {note}" for note in out.notes]
    if out.stopped:
        lines.append(f"edgeattn run: {len(out.stopped)} of {len(o.models)} model(s) stopped early: "
                     f"{', '.join(out.stopped)}")
    report = Path(o.artifacts) / "report.md"
    lines.append(f"edgeattn run: done in {total_s:.0f} s ({laps}), exit {out.rc}"
                 + (f"; read {report}" if report.is_file() else "; no report was written"))
    return lines


def run(o: RunOptions, runner: StageRunner | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    """Plan, execute, print the summary (stderr when something went wrong); the exit status."""
    t0 = clock()
    out = execute(plan(o), o, runner or child_runner, clock)
    stream = sys.stderr if out.notes or out.stopped else sys.stdout
    print("\n".join(summary_lines(o, out, clock() - t0)), file=stream, flush=True)
    return out.rc


def child_runner(stage: str, argv: list[str]) -> StageResult:
    """``python -m edgeattn <stage> <argv>`` in its own process (output passed through); the models it reported
    failed are read from the file named by pipeline.stage.REPORT_ENV."""
    with tempfile.TemporaryDirectory(prefix="edgeattn-run-") as tmp:
        report = Path(tmp) / "stage.json"
        env = {**os.environ, REPORT_ENV: str(report)}
        rc = subprocess.run([sys.executable, "-m", "edgeattn", stage, *argv], env=env).returncode
        doc = read_json(report, None)
    failed = tuple(doc.get("failed", ())) if isinstance(doc, dict) else None
    return StageResult(rc if rc >= 0 else EXIT_FAILED, failed)
