"""Artifact files: the atomic writers, sha256 and JSON reader live in runtime.files (re-exported here, so a device
that copies runtime/ has them too); this module adds the per-model-folder manifest, and the one way every stage
writes an ONNX file (``atomic_save_onnx`` / ``save_onnx`` / ``copy_onnx``: ONNX external data when the model would
pass the 2 GB protobuf limit, or ``$EDGEATTN_EXTERNAL_DATA_BYTES``)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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



# ---- ONNX files over the protobuf limit: external data --------------------------------------------------------
PROTOBUF_LIMIT = 2 * 1024 ** 3  # one serialised ModelProto cannot exceed 2 GiB
EXTERNAL_DATA_ENV = "EDGEATTN_EXTERNAL_DATA_BYTES"  # lower the threshold (tests: the >2 GB path on a small model)
EXTERNAL_HEADROOM = 64 * 1024 ** 2  # the graph itself, metadata: the weights move out before the limit is near
EXTERNAL_TENSOR_MIN = 1024  # tensors from this many bytes go to the data file; smaller ones stay in the graph


def external_data_limit() -> int:
    """Serialised size from which an ONNX model is written with external data: $EDGEATTN_EXTERNAL_DATA_BYTES when
    set (a positive integer), else the 2 GiB protobuf limit less 64 MiB of headroom."""
    raw = os.environ.get(EXTERNAL_DATA_ENV, "").strip()
    if not raw:
        return PROTOBUF_LIMIT - EXTERNAL_HEADROOM
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${EXTERNAL_DATA_ENV}: got {raw!r}, expected a positive number of bytes")
    return int(raw)


def needs_external_data(model, limit: int | None = None) -> bool:
    """True when ``model`` (a ModelProto with its tensors in memory) is too big to write as one file."""
    return model.ByteSize() >= (limit if limit is not None else external_data_limit())


def save_onnx(model, path: str | os.PathLike, name: str | None = None, limit: int | None = None) -> list[str]:
    """Write ``model`` to ``path``: one file, or, when it reaches the limit (:func:`external_data_limit`), the graph
    plus one data file beside it named ``<name>.<sha256 of the data, 12 digits>.data`` (``name``: the file's final
    name, for a ``path`` that is an atomic writer's temp file). A new content gets a new data file, so the file an
    older graph points at is never overwritten (:func:`prune_external_data` removes it once nothing points at it).
    ``model`` is left as it was (its tensors back in memory). Returns the data files written (none: one file)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not needs_external_data(model, limit):
        onnx.save(model, str(path))
        return []
    name = name or path.name
    tmp_loc = f".{name}.{os.getpid()}-{time.time_ns()}.data.tmp"
    try:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=tmp_loc, size_threshold=EXTERNAL_TENSOR_MIN, convert_attribute=False)
        loc = f"{name}.{sha256_file(path.parent / tmp_loc)[:12]}.data"
        os.chmod(path.parent / tmp_loc, 0o644)
        os.replace(path.parent / tmp_loc, path.parent / loc)
        moved = _external_tensors(model)
        for t in moved:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
        path.write_bytes(model.SerializeToString())  # the graph only: its tensors point at ``loc`` now
        load_external_data_for_model(model, str(path.parent))  # the caller's model as it was: tensors in memory
        for t in moved:
            t.ClearField("data_location")
    finally:
        if (path.parent / tmp_loc).exists():
            (path.parent / tmp_loc).unlink()
    return [loc]


def _external_tensors(model):
    """The tensors of ``model`` (every graph's initializers, subgraphs included) whose bytes live in a data file."""
    from onnx import TensorProto

    out, graphs = [], [model.graph]
    while graphs:
        g = graphs.pop()
        out += [t for t in g.initializer if t.data_location == TensorProto.EXTERNAL]
        for node in g.node:
            for a in node.attribute:
                graphs += ([a.g] if a.HasField("g") else []) + list(a.graphs)
    return out


def adopt_external_data(model, folder: str | os.PathLike, name: str, limit: int | None = None) -> list[str]:
    """A graph loaded WITHOUT its external data (``onnx.load(..., load_external_data=False)``) whose tensors point at
    one data file in ``folder`` (what torch's exporter writes for a big model): when graph + data reach the limit,
    that file is renamed to :func:`save_onnx`'s content name ``<name>.<sha256, 12 digits>.data`` and the tensors
    pointed at it, without reading the weights into memory (the caller then writes the graph alone). Returns
    [the new name], or [] when there is nothing to adopt (no external tensors, several data files, or under the
    limit: then load the data and use :func:`save_onnx`)."""
    folder = Path(folder)
    tensors = _external_tensors(model)
    locs = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    if len(locs) != 1:
        return []
    src = folder / next(iter(locs))
    if not src.is_file() or model.ByteSize() + src.stat().st_size < (limit or external_data_limit()):
        return []
    loc = f"{name}.{sha256_file(src)[:12]}.data"
    os.replace(src, folder / loc)
    for t in tensors:
        for e in t.external_data:
            if e.key == "location":
                e.value = loc
    return [loc]


def prune_external_data(path: str | os.PathLike) -> list[str]:
    """Remove ``<name>.*.data`` files beside ``path`` that neither its graph nor ``<name>.prev`` (a file moved aside)
    points at (left by an earlier version, or by a write that failed); returns their names."""
    from runtime.onnx_guard import check_external_data

    path = Path(path)
    keep = set()
    for f in (path, path.with_name(path.name + ".prev")):  # a file moved aside keeps its data too
        if f.is_file():
            keep |= set(check_external_data(f))
    gone = []
    for f in path.parent.glob(f"{path.name}.*.data"):
        if f.name not in keep:
            f.unlink()
            gone.append(f.name)
    return gone


def atomic_save_onnx(model, path: str | os.PathLike, limit: int | None = None) -> Path:
    """:func:`save_onnx` through :func:`atomic_write` (the graph renamed into place after its data file is
    complete), then stale data files pruned."""
    path = Path(path)
    atomic_write(path, lambda tmp: save_onnx(model, tmp, name=path.name, limit=limit))
    prune_external_data(path)
    return path


def copy_onnx(src: str | os.PathLike, dst: str | os.PathLike, limit: int | None = None) -> Path:
    """An ONNX file (its external data included) to ``dst``, written as :func:`atomic_save_onnx` writes: a plain
    byte copy when ``src`` is one file under the limit; a graph whose weights are in one data file is copied (only
    the bytes its tensors use) without reading the weights into memory (:func:`write_graph_with_data`)."""
    import onnx

    from runtime.onnx_guard import check_external_data

    src, dst = Path(src), Path(dst)
    locs = set(check_external_data(src))
    if not locs and src.stat().st_size < (limit or external_data_limit()):
        atomic_write(dst, lambda p: shutil.copyfile(src, p))
        prune_external_data(dst)
        return dst
    if len(locs) == 1:
        return write_graph_with_data(onnx.load(str(src), load_external_data=False), src.parent, dst, move=False)
    return atomic_save_onnx(onnx.load(str(src)), dst, limit)


def write_graph_with_data(model, base: str | os.PathLike, dst: str | os.PathLike, move: bool = False) -> Path:
    """``model`` loaded WITHOUT its data, its tensors in one data file under ``base``: written to ``dst`` with the
    tensors' bytes copied, in order and nothing else (a file ONNX Runtime's tools saved twice holds the first copy as
    dead bytes: onnx appends), into ``<dst name>.<sha256, 12 digits>.data`` beside it; the data first, then the graph
    atomically, then stale data pruned (``move``: the source data file is removed after). The weights are streamed,
    never held in memory."""
    base, dst = Path(base), Path(dst)
    tensors = _external_tensors(model)
    locs = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    if len(locs) != 1:
        raise ValueError(f"write_graph_with_data: the graph's tensors point at {sorted(locs)}, expected one data file")
    src = base / next(iter(locs))
    tmp = dst.parent / f".{dst.name}.{os.getpid()}-{time.time_ns()}.data.tmp"
    try:
        _compact_copy(tensors, src, tmp)
        loc = f"{dst.name}.{sha256_file(tmp)[:12]}.data"
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst.parent / loc)
    finally:
        if tmp.exists():
            tmp.unlink()
    for t in tensors:
        for e in t.external_data:
            if e.key == "location":
                e.value = loc
    atomic_write(dst, lambda p: p.write_bytes(model.SerializeToString()))
    prune_external_data(dst)
    if move and src.resolve() != (dst.parent / loc).resolve():
        src.unlink()
    return dst


ALIGN = 4096  # each tensor starts on a page boundary (ONNX Runtime can map it)


def _compact_copy(tensors, src: Path, out: Path) -> None:
    """Each tensor's bytes from ``src`` (its offset/length entries) into ``out``, one after another (page-aligned);
    the entries rewritten to the new offsets."""
    size = src.stat().st_size
    with open(src, "rb") as fi, open(out, "wb") as fo:
        for t in tensors:
            info = {e.key: e for e in t.external_data}
            off = int(info["offset"].value) if "offset" in info else 0
            length = int(info["length"].value) if "length" in info else size - off
            pos = -(-fo.tell() // ALIGN) * ALIGN
            fo.write(b"\0" * (pos - fo.tell()))
            fi.seek(off)
            left = length
            while left:
                chunk = fi.read(min(left, 64 << 20))
                if not chunk:
                    raise ValueError(f"{src}: tensor '{t.name}' needs bytes {off}..{off + length}, the file has {size}")
                fo.write(chunk)
                left -= len(chunk)
            for key, value in (("offset", pos), ("length", length)):
                if key in info:
                    info[key].value = str(value)
                else:
                    e = t.external_data.add()
                    e.key, e.value = key, str(value)


def uses_external_data(path: str | os.PathLike) -> bool:
    """True when the ONNX file keeps tensors in external data (ONNX Runtime's quantisation tools must then write
    their models with external data too: ``use_external_data_format``)."""
    from runtime.onnx_guard import check_external_data

    return bool(check_external_data(path))


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The ONNX file and the external-data files it points at (what copying it elsewhere must take along)."""
    from runtime.onnx_guard import check_external_data

    path = Path(path)
    return [path, *[path.parent / loc for loc in dict.fromkeys(check_external_data(path))]]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (``resource.getrusage`` ru_maxrss, KiB on Linux) in MB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
