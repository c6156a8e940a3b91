"""One crash-isolated child process (stdlib only): run a Python module or snippet of this project in a child, with a
timeout, and get back what happened in words. A backend that segfaults (ONNX Runtime on some FP16 graphs) or hangs
takes down only the child; the caller records it and goes on. Used by verify's workers, the FP16 level probe, the
quantiser's latency harness and the runtime's crash probe (bench keeps long-lived workers: bench/worker.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds runtime/ (and, in the repo, every stage)


@dataclass
class ChildResult:
    returncode: int | None  # None: timed out (killed)
    stdout: str
    stderr: str
    seconds: float
    timeout_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self, tail_lines: int = 3) -> str:
        """'crashed with SIGSEGV (returncode -11): <last stderr lines>', 'timed out after 900 s', 'exited with
        code 1: ...' or 'ok'."""
        if self.returncode is None:
            return f"timed out after {self.timeout_s:.0f} s"
        if self.returncode == 0:
            return "ok"
        tail = [ln for ln in (self.stderr or "").strip().splitlines() if ln.strip()][-tail_lines:]
        return describe_returncode(self.returncode) + (": " + " | ".join(tail) if tail else "")


def describe_returncode(rc: int) -> str:
    if rc < 0:
        try:
            return f"crashed with {signal.Signals(-rc).name} (returncode {rc})"
        except ValueError:
            return f"crashed with signal {-rc} (returncode {rc})"
    return f"exited with code {rc}"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the project root first on PYTHONPATH, so ``python -m <stage>`` resolves here."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra or {})
    return env


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def run_child(argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``argv`` with :func:`child_env`, capture its output, never raise for a crash, an exit code or a timeout."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, env=child_env(env))
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return ChildResult(None, out, err, time.perf_counter() - t0, timeout_s)
    return ChildResult(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0, timeout_s)
