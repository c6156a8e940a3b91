"""Export a GPT-2 decoder with its KV cache to ONNX: ``python -m export.decoder_export --models gpt2_imdb``.

Writes ``<artifacts>/<model>/fp32.onnx`` (one graph for prefill and decode: inputs ``input_ids`` (batch, sequence),
``attention_mask`` (batch, total), ``position_ids`` (batch, sequence), ``past_key_values.<i>.key|value`` (batch,
heads, past, head_dim); outputs ``logits`` (batch, sequence, vocab) and ``present.<i>.key|value`` (batch, heads,
total, head_dim); every one of batch, sequence, past and total dynamic, total = past + sequence), the spec in its
metadata and as ``spec.json``, the tokenizer as ``tokenizer.json`` (what ``runtime.bpe`` reads), and the manifest's
``export`` section. Like every export it is checked against PyTorch (:func:`check_decoder_parity`): ONNX Runtime
vs the wrapped HF model at the min/opt/max size of every dynamic axis, an empty past included, with left-padded
rows, on the logits and present cache of every real position (padded slots: finite).

The exporters are tried as export.onnx_export tries them: the dynamo exporter first (opset 18, every axis
``Dim.DYNAMIC`` because total = past + sequence is a sum of two dims, which ``Dim`` expressions cannot state; the
graph's symbolic dims are renamed to the spec's names afterwards), then the TorchScript one.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.checks import pre_export_check
from export.onnx_export import (EXPORTERS, ExportError, quiet_exporter, attention_fastpath_disabled, export_checked,
                                export_section)
from runtime.generate import DecoderInfo, decoder_feed, parity_cases
from zoo.built import BuiltModel
from zoo.io import sha256_file, update_manifest

log = logging.getLogger("edgeattn.export.decoder")

FIXED_INPUTS = ("input_ids", "attention_mask", "position_ids")
EXAMPLE = {"batch": 2, "sequence": 5, "past": 3}  # no 0 or 1: torch.export would specialise those sizes


def _names(built: BuiltModel) -> tuple[list[str], list[str]]:
    return [t.name for t in built.spec.inputs], [t.name for t in built.spec.outputs]


def _example_args(built: BuiltModel) -> tuple:
    import torch

    info = DecoderInfo.from_spec(built.spec.to_dict(), built.name)
    feed = decoder_feed(info, EXAMPLE["batch"], EXAMPLE["sequence"], EXAMPLE["past"], seed=0)
    ins, _ = _names(built)
    fixed = tuple(torch.from_numpy(feed[n]) for n in FIXED_INPUTS)
    return fixed + tuple(torch.from_numpy(feed[n]) for n in ins[len(FIXED_INPUTS):])


def _rename_dims(proto, built: BuiltModel) -> None:
    """Give the graph's inputs and outputs the spec's dim names (the dynamo exporter writes s0, s1, 's0 + s1')."""
    want = {t.name: t.shape for t in list(built.spec.inputs) + list(built.spec.outputs)}
    for v in list(proto.graph.input) + list(proto.graph.output):
        shape = want.get(v.name)
        if shape is None:
            continue
        for d, name in zip(v.type.tensor_type.shape.dim, shape):
            if isinstance(name, str):
                d.ClearField("dim_value")
                d.dim_param = name


def _torch_export(built: BuiltModel, tmp: Path, exporter: str, opset: int) -> None:
    import torch

    ins, outs = _names(built)
    args = _example_args(built)
    kw: dict[str, Any] = dict(opset_version=opset, input_names=ins, output_names=outs)
    if exporter == "dynamo":
        dyn = torch.export.Dim.DYNAMIC
        n_past = len(ins) - len(FIXED_INPUTS)
        kw.update(dynamo=True, optimize=True, verbose=False,
                  dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn},
                                  tuple({0: dyn, 2: dyn} for _ in range(n_past))))
    else:
        axes: dict[str, dict[int, str]] = {}
        for t in list(built.spec.inputs) + list(built.spec.outputs):
            axes[t.name] = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        kw.update(dynamo=False, do_constant_folding=True, dynamic_axes=axes)
    with attention_fastpath_disabled(), torch.no_grad(), quiet_exporter():
        torch.onnx.export(built.module, args, str(tmp), **kw)


def check_decoder_parity(built: BuiltModel, onnx_path: str | Path, rtol: float = 1e-4,
                         cases: list[tuple[str, int, int, int]] | None = None) -> dict[str, float]:
    """ONNX Runtime vs PyTorch at :func:`runtime.generate.parity_cases` (left padding in every other row): the
    largest |diff| over max(1, max |reference|) per case, over what a later step can read: the logits of real
    (unpadded) positions and the present cache at real positions (a padded slot is always masked; its values,
    computed from a query row that sees nothing, differ more and are only checked to be finite). ExportError naming
    every case over ``rtol`` (or that fails to run)."""
    import torch

    from runtime.ort_backend import cpu_session

    sess = cpu_session(onnx_path)
    info = DecoderInfo.from_spec(built.spec.to_dict(), built.name)
    ins, outs = _names(built)
    result, problems = {}, []
    for i, (label, b, s, p) in enumerate(cases or parity_cases(built.spec.to_dict())):
        feed = decoder_feed(info, b, s, p, seed=100 + i)
        try:
            got = sess.run(outs, feed)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{label} (batch {b}, sequence {s}, past {p}): onnxruntime fails: "
                            f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
            continue
        with torch.no_grad(), attention_fastpath_disabled():
            ref = built.module(*[torch.from_numpy(feed[n]) for n in ins])
        mask = feed["attention_mask"].astype(bool)  # (B, P+S)
        worst = 0.0
        for name, r, g in zip(outs, ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                problems.append(f"{label}: output '{name}' has shape {g.shape}, PyTorch {r.shape}")
                continue
            if not np.isfinite(g).all():
                problems.append(f"{label}: output '{name}' has NaN/Inf values, expected finite numbers everywhere")
                continue
            # what is ever read: logits of real positions, cache entries of real positions (padded slots are masked)
            if name == "logits":
                r, g = r[mask[:, p:]], g[mask[:, p:]]
            else:
                r, g = r.transpose(0, 2, 1, 3)[mask], g.transpose(0, 2, 1, 3)[mask]
            worst = max(worst, float(np.abs(r - g).max(initial=0.0)) / max(1.0, float(np.abs(r).max(initial=0.0))))
        result[f"{label} (batch {b}, sequence {s}, past {p})"] = worst
        if worst > rtol:
            problems.append(f"{label} (batch {b}, sequence {s}, past {p}): differs from PyTorch by {worst:.3g} "
                            f"(relative), expected <= {rtol}")
    if problems:
        raise ExportError(f"export '{built.name}': " + "; ".join(problems))
    return result


def export_decoder(built: BuiltModel, path: str | Path, opset: int | None = None,
                   exporters: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Export ``built`` (zoo.gpt2.load_gpt2) to ``path`` atomically, checked (onnx.checker, shape inference, parity);
    return the manifest section."""
    path = Path(path)
    spec = built.spec
    opset = int(opset or spec.opset)
    report = pre_export_check(built.module, opset)
    report.raise_if_errors(f"export '{built.name}'")
    built.module.eval()
    parity: dict[str, float] = {}
    t0 = time.perf_counter()

    def _check(tmp: Path) -> None:
        parity.clear()
        parity.update(check_decoder_parity(built, tmp))

    used, attempts = export_checked(path, built.name, spec, lambda tmp, ex: _torch_export(built, tmp, ex, opset),
                                    _check, exporters, edit=lambda proto: _rename_dims(proto, built),
                                    strict_shapes=False)
    section = export_section(built, path, opset, report.warnings, used, attempts, time.perf_counter() - t0)
    return {**section, "graph": "one graph: prefill (empty past) and decode", "parity": parity}


def export_gpt2(name: str, artifacts: str | Path = "artifacts", force: bool = False,
                exporters: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``gpt2_imdb`` or ``hf:<gpt2 dir>`` -> ``<artifacts>/<model>/fp32.onnx`` + spec.json + tokenizer.json +
    manifest; up to date (same source folder digest, same file) unless ``force``."""
    from pipeline.artifacts import ModelRef
    from zoo.gpt2 import export_source, load_for_export

    ref = ModelRef.resolve(name, artifacts)
    out = ref.file("fp32.onnx")
    src = f"{export_source(ref)}; exporter {sha256_file(Path(__file__))[:16]}"
    man = ref.manifest().get("export") or {}
    if not force and out.is_file() and man.get("source") == src and man.get("sha256") == sha256_file(out):
        log.info("export %s: up to date (%s)", name, out)
        return man
    built = load_for_export(ref)
    section = export_decoder(built, out, exporters=exporters)
    section["source"] = src
    update_manifest(ref.folder, "export", section)
    return section


def main(argv: list[str] | None = None) -> int:
    from pipeline.artifacts import model_names
    from pipeline.stage import StageErrors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2_imdb", help="gpt2_imdb and/or hf:<gpt2 dir>, comma-separated")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--exporter", choices=EXPORTERS, default=None, help="only this exporter (default: dynamo, then "
                    "torchscript)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("edgeattn").setLevel(logging.INFO)
    errors = StageErrors("export")
    for name in model_names(args.models):
        with errors.model(name):
            s = export_gpt2(name, args.artifacts, args.force, (args.exporter,) if args.exporter else None)
            worst = max(s.get("parity", {}).values(), default=0.0)
            print(f"export {name}: {s['file']} ({s['nodes']} nodes, {s['exporter']}, opset {s['opset']}, "
                  f"parity {worst:.2g} over {len(s.get('parity', {}))} shapes, {s['export_seconds']} s)")
    return errors.finish()


if __name__ == "__main__":
    from pipeline.stage import cli

    raise SystemExit(cli("export", main))
