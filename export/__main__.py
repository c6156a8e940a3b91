"""``python -m export --models a,b --artifacts DIR``: write <artifacts>/<model>/fp32.onnx for each model."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from runtime.modelspec import resolve_models
from zoo.io import sha256_file, update_manifest
from zoo.registry import load_for_export


def main(argv: list[str] | None = None) -> int:
    from export.onnx_export import export_model

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", required=True)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--opset", type=int, default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)

    for ref in resolve_models(args.models, args.artifacts):
        name, out, ckpt = ref.name, ref.file("fp32.onnx"), ref.checkpoint
        man = ref.manifest()
        src = sha256_file(ckpt) if ckpt.is_file() else "torchvision"
        if (not args.force and out.is_file() and man.get("export", {}).get("source") == src
                and man["export"].get("sha256") == sha256_file(out)):
            print(f"export {name}: up to date ({out})")
            continue
        built = load_for_export(ref)
        section = export_model(built, out, opset=args.opset)
        section["source"] = src
        update_manifest(out.parent, "export", section)
        print(f"export {name}: {out} ({section['nodes']} nodes, opset {section['opset']}, {section['export_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
