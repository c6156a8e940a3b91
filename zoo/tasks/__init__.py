"""Tasks as plug-ins: a model kind (image / text classification, custom and sequence-to-sequence, text generation)
is one :class:`~zoo.tasks.base.Task` in one module of this package, and each stage asks the model's task for its
handler instead of forking on the kind (``task_of(ref).run("verify", ref, ...)``).

Why handlers are ``"module:attribute"`` strings (as entry points are) rather than tables each stage fills in: the
registry sits on floor 3 (zoo) while the handlers live on floors 4-5 (export, optimize, verify, bench), which it may
not import; a string resolved when a stage asks keeps the floors, and a new task then touches one file. Tables per
stage would keep the floors too, but a new task would have to be written into every stage's table. Each stage has
one signature for its handler (``zoo.tasks.base.STAGES``), so the stages' dispatch is the same line for every task.

Adding a task: one module here that defines ``TASK = Task(name, handlers, ...)`` (found at import; no list to edit)
plus its tests. ``register`` adds one from elsewhere (tests register fakes).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Mapping

from runtime.files import read_json
from runtime.modelspec import SPEC_FILE
from zoo.tasks.base import OUTPUT_HANDLERS, STAGES, Task, TaskError, resolve

__all__ = ["DEFAULT", "OUTPUT_HANDLERS", "STAGES", "Task", "TaskError", "get", "known", "register", "resolve",
           "task_named", "task_of", "task_of_dir", "task_of_rows", "unregister"]

DEFAULT = "custom"  # a model whose spec does not say yet (before training or export): its spec will decide
_TASKS: dict[str, Task] = {}


def register(task: Task, replace: bool = False) -> Task:
    """Add ``task``; TaskError when its name is taken (``replace=True`` swaps it)."""
    if task.name in _TASKS and not replace and _TASKS[task.name] is not task:
        raise TaskError(f"task '{task.name}': got a second registration, expected one (replace=True to swap it)")
    _TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    _TASKS.pop(name, None)


def known() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> Task:
    """The task registered as ``name``; TaskError naming the known ones."""
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task '{name}': expected one of {', '.join(known())}") from None


def task_named(name: str | None) -> Task:
    """``get(name)``, the default task for None (a spec or row that does not say)."""
    return get(name or DEFAULT)


def task_of(ref: Any) -> Task:
    """The task of a ``pipeline.artifacts.ModelRef``: its exported spec's, else what its source says."""
    return task_named(ref.task)


def task_of_dir(model_dir: str | Path) -> Task:
    """The task of a model folder, from its spec.json (every export writes one)."""
    spec = read_json(Path(model_dir) / SPEC_FILE, {}) or {}
    return task_named(spec.get("task") if isinstance(spec, Mapping) else None)


def task_of_rows(rows: list[Mapping[str, Any]]) -> Task:
    """The task of one model's verify.json rows: the first that says one (rows of models judged by outputs, and the
    failed row of a model that could not be verified, do not)."""
    return task_named(next((r["task"] for r in rows if r.get("task")), None))


def _discover() -> None:
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):
        task = getattr(importlib.import_module(f"{__name__}.{m.name}"), "TASK", None)
        if isinstance(task, Task):
            register(task)


_discover()
