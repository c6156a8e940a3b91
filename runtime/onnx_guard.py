"""What the runtime reads from an ONNX file before any backend opens it (no numpy, no onnx): external-data paths
(refused when outside the model's folder) and the metadata (``model_metadata``).

An ONNX tensor may keep its bytes in another file (``external_data`` entry ``location``). A tampered or careless
model can point that at ``../../etc/shadow`` or an absolute path; ONNX Runtime (1.20+) and OpenVINO refuse some of
these themselves, each in its own words and only once loading has begun. ``external_locations`` walks the protobuf
wire format of the file (only the fields that can hold a tensor: graph initializers, sparse initializers, node
attributes, subgraphs, functions) and ``check_external_data`` raises ``ModelLoadError`` for any location that is
absolute or resolves outside the model's folder.
"""
from __future__ import annotations

import mmap
from pathlib import Path

from runtime.errors import ModelLoadError

# message -> {field number: message type of that (length-delimited) field}; onnx.proto field numbers
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_MAX_DEPTH = 64


class _Truncated(ValueError):
    pass


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Truncated(f"varint at byte {i}")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value: int or memoryview) for each field of one message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 5:
            value, i = None, i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise _Truncated(f"field {field} of {n} bytes at byte {i}")
            value, i = buf[i:i + n], i + n
        else:
            raise _Truncated(f"wire type {wire} at byte {i}")
        if i > len(buf):
            raise _Truncated(f"field {field} past the end")
        yield field, wire, value


def _walk(buf: memoryview, kind: str, out: list[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise _Truncated(f"messages nested deeper than {_MAX_DEPTH}")
    if kind == "entry":
        key = value = None
        for field, wire, v in _fields(buf):
            if wire == 2 and field == 1:
                key = bytes(v).decode("utf-8", "replace")
            elif wire == 2 and field == 2:
                value = bytes(v).decode("utf-8", "replace")
        if key == "location" and value is not None:
            out.append(value)
        return
    children = _SCHEMA[kind]
    for field, wire, v in _fields(buf):
        if wire == 2 and field in children:
            _walk(v, children[field], out, depth + 1)


def external_locations(data) -> list[str]:
    """Every external-data ``location`` in a serialised ModelProto (bytes, or any buffer); ValueError when the bytes
    are not one."""
    out: list[str] = []
    _walk(memoryview(data), "model", out)
    return out


def _locations_or_none(data) -> list[str] | None:
    try:
        return external_locations(data)
    except ValueError:
        return None  # not a protobuf message: the backend's own error says so


def check_external_data(path: str | Path) -> list[str]:
    """The model's external-data locations (often none); ModelLoadError when one is absolute or leaves its folder.
    A file that is not a protobuf message is left to the backend's own error."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            locations = _locations_or_none(m) or []
    except (OSError, ValueError):  # empty or unreadable: check_model_file and the backend report it
        return []
    folder = p.resolve().parent
    for loc in locations:
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or (target != folder and folder not in target.parents):
            raise ModelLoadError(f"model '{p}': a tensor's external data '{loc}' resolves to '{target}', outside the "
                                 f"model's folder '{folder}'; expected data files beside the model (refused before "
                                 "loading: a tampered or hand-edited model)")
    return locations


def _metadata(data) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, wire, v in _fields(memoryview(data)):
        if field == 14 and wire == 2:  # ModelProto.metadata_props
            key = value = None
            for f2, w2, v2 in _fields(v):
                if w2 == 2 and f2 in (1, 2):
                    text = bytes(v2).decode("utf-8", "replace")
                    key, value = (text, value) if f2 == 1 else (key, text)
            if key is not None:
                out[key] = value or ""
    return out


def _metadata_or_empty(data) -> dict[str, str]:
    try:
        return _metadata(data)
    except ValueError:
        return {}


def model_metadata(path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` (key -> value) read from the file before any backend opens it ({} when the
    file is not an ONNX model): what a backend must know before it builds a session."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _metadata_or_empty(m)
    except (OSError, ValueError):
        return {}

