"""``python -m export --models a,b --artifacts DIR [--weights FILE]``: write <artifacts>/<model>/fp32.onnx for each
model. Our three families export their checkpoint (`make train`); ``onnx:<file>`` is copied (its spec read from
the graph, ``--task`` when inference is not what you want); torchvision and your own ``module:factory``
models are built by their factory, with ``--weights`` (a state dict .pt/.pth or .safetensors; one model only) or
EDGEATTN_WEIGHTS_<NAME> when given. A model that cannot be exported is one ``error:`` line; the others go on."""
from __future__ import annotations

import logging
from pathlib import Path

from calibration.user_data import data_path
from pipeline.args import (add_artifacts, add_force, add_models, existing_path, positive_int, require_one_model,
                           stage_parser)
from pipeline.artifacts import resolve_models
from pipeline.stage import StageErrors, cli
from export.checks import ExportCheckError
from zoo.gpt2 import is_decoder
from zoo.io import sha256_file, update_manifest
from zoo.registry import export_source, load_for_export, weights_for


def main(argv: list[str] | None = None) -> int:
    from export.onnx_export import export_model

    ap = stage_parser("export", __doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=False)
    ap.add_argument("--opset", type=positive_int, default=None)
    ap.add_argument("--weights", type=existing_path, default=None,
                    help="weights for a torchvision or module:factory model (state dict .pt/.pth or .safetensors)")
    ap.add_argument("--data", type=existing_path, default=None,
                    help="your calibration/evaluation data for a model without a dataset (a folder of images, a text "
                         "file with one sample per line, or an .npz per input name; labels optional)")
    ap.add_argument("--task", default=None,
                    help="the task of an onnx:<file> model (image_classification, text_classification, custom); "
                         "default: inferred from the graph's outputs")
    add_force(ap)
    args = ap.parse_args(argv)
    refs = resolve_models(args.models, args.artifacts)
    for flag, value in (("--weights", args.weights), ("--data", args.data)):
        require_one_model(flag, value, len(refs))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    errors = StageErrors("export")
    for ref in refs:
        with errors.model(ref.name):
            if is_decoder(ref):  # a GPT-2 with its KV cache: one decoder graph (export.decoder_export)
                _export_decoder(ref, args)
                continue
            name, out = ref.name, ref.file("fp32.onnx")
            src = export_source(ref, args.weights)
            man = ref.manifest()
            data = data_path(man, name, args.data)
            data = str(Path(data).resolve()) if data else None
            if (not args.force and out.is_file() and man.get("export", {}).get("source") == src
                    and man["export"].get("sha256") == sha256_file(out) and man["export"].get("data") == data
                    and man["export"].get("task") == args.task):
                print(f"export {name}: up to date ({out})")
                continue
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
    return errors.finish()


def _export_decoder(ref, args) -> None:
    from export.decoder_export import export_gpt2

    for flag, value in (("--weights", args.weights), ("--data", args.data), ("--opset", args.opset),
                        ("--task", args.task)):
        if value:
            raise ExportCheckError(f"export {ref.name}: {flag} does not apply to a GPT-2 decoder (got {value}; "
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


if __name__ == "__main__":
    raise SystemExit(cli("export", main))
