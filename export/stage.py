"""The export stage's handlers, one per kind of graph (zoo.tasks names them; export.__main__ calls the model's):
:func:`export_outputs` for a model judged by its outputs (our families, torchvision, ``module:factory``, an ONNX
file), :func:`export_decoder` for a decoder with its KV cache. Both take ``(ref, args)``: the ModelRef and export's
parsed arguments."""
from __future__ import annotations

from pathlib import Path

from calibration.user_data import data_path
from export.checks import ExportCheckError
from zoo.io import sha256_file, update_manifest
from zoo.registry import export_source, load_for_export, weights_for


def export_outputs(ref, args) -> None:
    """fp32.onnx of a PyTorch model (or the copy of an ONNX file), skipped when source, data and task are unchanged."""
    from export.onnx_export import export_model

    name, out = ref.name, ref.file("fp32.onnx")
    src = export_source(ref, args.weights)
    man = ref.manifest()
    data = data_path(man, name, args.data)
    data = str(Path(data).resolve()) if data else None
    if (not args.force and out.is_file() and man.get("export", {}).get("source") == src
            and man["export"].get("sha256") == sha256_file(out) and man["export"].get("data") == data
            and man["export"].get("task") == args.task):
        print(f"export {name}: up to date ({out})")
        return
    built = load_for_export(ref, args.weights, task=args.task, data=data)
    section = export_model(built, out, opset=args.opset)
    section["source"] = src
    w = weights_for(ref, args.weights)
    if w:
        section["weights"] = str(Path(w).resolve())  # verify and bench load the same weights
    if data:
        section["data"] = data  # quantize and verify read it (calibration.user_data)
    if args.task:
        section["task"] = args.task  # given for an onnx:<file> model (its spec.json holds it)
    update_manifest(out.parent, "export", section)
    print(f"export {name}: {out} ({section['nodes']} nodes, opset {section['opset']}, "
          f"{section['export_seconds']} s)")


def export_decoder(ref, args) -> None:
    """One decoder graph with its KV cache (export.decoder_export); the options of other exports are refused."""
    from export.decoder_export import export_gpt2

    for flag, value in (("--weights", args.weights), ("--data", args.data), ("--opset", args.opset),
                        ("--task", args.task)):
        if value:
            raise ExportCheckError(f"export {ref.name}: {flag} does not apply to a decoder with KV cache (got {value}; "
                                   "expected its own folder's weights, the IMDB prompts and opset 18)")
    out = ref.file("fp32.onnx")
    before = out.stat().st_mtime_ns if out.is_file() else None
    s = export_gpt2(ref.name, ref.artifacts, args.force)
    if before is not None and out.stat().st_mtime_ns == before:  # every export replaces the file
        print(f"export {ref.name}: up to date ({out})")
        return
    worst = max(s.get("parity", {}).values(), default=0.0)
    print(f"export {ref.name}: {out} ({s['nodes']} nodes, decoder with KV cache, {s['exporter']}, "
          f"opset {s['opset']}, parity {worst:.2g} over {len(s.get('parity', {}))} shapes, {s['export_seconds']} s)")
