"""Protobuf text format for Triton's ``config.pbtxt`` from plain Python values (no protobuf package needed).

    to_pbtxt({"name": "m", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
              "dims": [-1]}]})
    # name: "m"
    # max_batch_size: 8
    # input [
    #   {
    #     name: "x"
    #     data_type: TYPE_FP32
    #     dims: [ -1 ]
    #   }
    # ]

str -> quoted string, ``Enum`` -> bare identifier, bool -> true/false, int/float -> number, dict -> ``key { ... }``,
list of scalars -> ``key: [ a, b ]``, list of dicts -> ``key [ {...}, {...} ]`` (also how a map field such as
``parameters`` is written: a list of ``{"key": ..., "value": ...}``). ``parameters(...)`` builds that list.
"""
from __future__ import annotations

import json
from typing import Any, Mapping


class Enum(str):
    """An enum value (TYPE_FP32, KIND_GPU): written without quotes."""


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a valid text-format string literal for printable text
    raise TypeError(f"pbtxt: got a value of type {type(v).__name__} ({v!r}), expected str, Enum, bool, int, float, "
                    "dict or list")


def _lines(obj: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, v in obj.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            out += [f"{pad}{key} {{", *_lines(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, (list, tuple)):
            if v and all(isinstance(x, Mapping) for x in v):
                out.append(f"{pad}{key} [")
                for i, x in enumerate(v):
                    out += [f"{pad}  {{", *_lines(x, indent + 2), f"{pad}  }}" + ("," if i < len(v) - 1 else "")]
                out.append(f"{pad}]")
            elif any(isinstance(x, Mapping) for x in v):
                raise TypeError(f"pbtxt: field '{key}' mixes messages and scalars; expected one kind")
            else:
                out.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(v)}")
    return out


def to_pbtxt(config: Mapping[str, Any]) -> str:
    """A config dict -> protobuf text format (see the module docstring); None values are left out."""
    return "\n".join(_lines(config, 0)) + "\n"


def parameters(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """{"k": v} -> the ``parameters`` map of a model config (every value as a string_value)."""
    return [{"key": str(k), "value": {"string_value": str(v)}} for k, v in values.items()]


def key_values(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """{"k": v} -> ``parameters`` of an execution accelerator (map<string, string>: plain key/value pairs)."""
    return [{"key": str(k), "value": str(v)} for k, v in values.items()]
