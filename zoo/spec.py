"""Declarative model specs: one place that export, calibration, engines, runtime and bench read.

The definitions live at the bottom of the project, in runtime.modelspec (numpy only), so a device that copies
runtime/ reads the same spec; this module re-exports them for the training and export code, and holds ``load_spec``, the stages' reader of a
spec from an ONNX file or ModelProto (it needs onnx, which runtime/ never imports: it is copied onto devices).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import ModelLoadError
from runtime.modelspec import (DEFAULT_TOLERANCES, SPEC_FILE, SPEC_METADATA_KEY, DimRange, ModelSpec,  # noqa: F401
                               TensorSpec, Tolerance, parse_spec, read_spec)


def load_spec(source: Any, required: bool = True) -> "ModelSpec | None":
    """The stages' spec reader: an ONNX model (a path or a loaded ModelProto) -> its ModelSpec, read in
    ``read_spec``'s order (the model's ``edgeattn.spec`` metadata, then spec.json beside the file). None when
    neither holds one and not ``required``; ModelLoadError naming the file when ``required``. Needs the onnx
    package (imported here only)."""
    import onnx

    if hasattr(source, "graph"):
        meta = {p.key: p.value for p in source.metadata_props}
        d = parse_spec(meta[SPEC_METADATA_KEY], f"ONNX model metadata '{SPEC_METADATA_KEY}'") \
            if SPEC_METADATA_KEY in meta else None
    else:
        path = Path(source)
        meta = ({p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
                if path.is_file() else None)
        d = read_spec(path, meta)
    if d is None and required:
        raise ModelLoadError(f"'{source}': no '{SPEC_METADATA_KEY}' metadata and no {SPEC_FILE} beside it; expected "
                             "the spec the export stage writes (run 'make export')")
    return ModelSpec.from_dict(d) if d is not None else None
