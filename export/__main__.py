"""``python -m export --models a,b --artifacts DIR [--weights FILE]``: write <artifacts>/<model>/fp32.onnx for each
model. Our three families export their checkpoint (`make train`); ``onnx:<file>`` is copied (its spec read from
the graph, ``--task`` when inference is not what you want); torchvision and your own ``module:factory``
models are built by their factory, with ``--weights`` (a state dict .pt/.pth or .safetensors; one model only) or
EDGEATTN_WEIGHTS_<NAME> when given. A model that cannot be exported is one ``error:`` line; the others go on."""
from __future__ import annotations

import logging

from pipeline.args import (add_artifacts, add_force, add_models, existing_path, positive_int, require_one_model,
                           stage_parser)
from pipeline.artifacts import resolve_models
from pipeline.stage import StageErrors, cli
from zoo.tasks import task_of


def main(argv: list[str] | None = None) -> int:
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
            task_of(ref).run("export", ref, args)  # zoo.tasks: the model's task says how it is exported
    return errors.finish()


if __name__ == "__main__":
    raise SystemExit(cli("export", main))
