"""Artifact files: the atomic writers, sha256 and JSON reader live in runtime.files (re-exported here, so a device
that copies runtime/ has them too); this module adds the per-model-folder manifest."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from runtime.files import (  # noqa: F401 - re-exported: one implementation of each
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_file,
)


def update_manifest(model_dir: str | os.PathLike, section: str, payload: dict) -> Path:
    """Merge ``payload`` under ``section`` of ``<model_dir>/manifest.json`` (one manifest per model folder)."""
    p = Path(model_dir) / "manifest.json"
    data = read_json(p, default={}) or {}
    data[section] = payload
    return atomic_write_json(p, data)


def publish_dir(stage: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the finished folder ``stage`` in place of ``out``, its files made readable by all (safetensors writes
    0600): ``out`` is moved aside to ``<out>.old``, ``stage`` renamed to ``out``, the old folder removed. A crash
    leaves the old or the new folder, never a half-written one, at ``out``."""
    stage, out = Path(stage), Path(out)
    for f in stage.iterdir():
        f.chmod(0o644)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def digest(obj: Any) -> str:
    """A stage's key: the sha256 (16 hex digits) of ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def section_up_to_date(model_dir: Path, section: dict | None, key: str, files: Iterable[str]) -> bool:
    """A manifest section is current: its key is ``key`` and each of ``files`` exists with the sha256 it records."""
    if not section or section.get("key") != key:
        return False
    shas = section.get("files_sha256", {})
    return all((Path(model_dir) / f).is_file() and shas.get(f) == sha256_file(Path(model_dir) / f) for f in files)

