"""Export a zoo model to ONNX: ``python -m export [--models ...]``.

Writes ``<artifacts>/<model>/fp32.onnx``: opset >= 17, dynamic axes from the spec, input/output names from
the spec, the spec itself in the graph's metadata (key ``edgeattn.spec``) and beside it as ``spec.json``,
``onnx.checker.check_model(full_check=True)`` and shape inference run on the result.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.checks import post_export_check, pre_export_check
from runtime.errors import EdgeattnError
from runtime.modelspec import SPEC_METADATA_KEY
from zoo.io import (adopt_external_data, atomic_write, atomic_write_text, onnx_files, peak_rss_mb,
                    prune_external_data, save_onnx, sha256_file, update_manifest)
from zoo.registry import BuiltModel

log = logging.getLogger("edgeattn.export")


class ExportError(EdgeattnError, RuntimeError):
    """torch.onnx.export or the checker failed; the message names the model and the stage."""


@contextlib.contextmanager
def attention_fastpath_disabled():
    """nn.MultiheadAttention / nn.TransformerEncoder take a fused 'fast path' in eval mode
    (torch._transformer_encoder_layer_fwd, nested tensors with a padding mask) that the TorchScript
    exporter cannot always trace. Export the plain math path instead; it is numerically the same."""
    import torch

    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


def _dynamic_axes(built: BuiltModel) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in list(built.spec.inputs) + list(built.spec.outputs):
        dyn = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        if dyn:
            axes[t.name] = dyn
    return axes


@contextlib.contextmanager
def causal_mask_check_off():
    """``nn.TransformerEncoder`` / ``nn.TransformerDecoder`` called with a mask and no ``is_causal`` hint compare the
    mask with a causal one and branch on the answer (``bool((mask == causal).all())`` in
    ``torch.nn.modules.transformer._detect_is_causal_mask``): a data-dependent branch that ``torch.export`` refuses
    ("Could not guard on data-dependent expression"), so an encoder-decoder with a causal target mask did not export.
    While exporting, an absent hint reads as "not causal": the mask is then applied as given, which is the same
    arithmetic (the hint only lets PyTorch skip the mask for a fused causal kernel). A hint the model gives is kept."""
    from torch.nn.modules import transformer as tr

    detect = getattr(tr, "_detect_is_causal_mask", None)
    if detect is None:  # a torch without the check: nothing to rewrite
        yield
        return
    tr._detect_is_causal_mask = lambda mask, is_causal=None, size=None: is_causal is True
    try:
        yield
    finally:
        tr._detect_is_causal_mask = detect


EXPORTERS = ("dynamo", "torchscript")


@contextlib.contextmanager
def quiet_exporter():
    """The dynamo exporter prints progress lines to stdout; keep the pipeline's own output readable."""
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield


def finish_graph(tmp: Path, name: str, spec, edit: Callable[[Any], None] | None = None,
                 strict_shapes: bool = True, final_name: str | None = None) -> None:
    """What every export does to the file an exporter wrote at ``tmp``: load it (external data the exporter wrote
    beside it is pulled in, or, for a model over the limit, adopted as it is: ``zoo.io.adopt_external_data``), apply ``edit(proto)`` (e.g. rename dims), put the spec
    in the metadata, save it (``zoo.io.save_onnx``: with external data named after ``final_name`` when the model
    reaches the protobuf limit), then run shape inference and onnx.checker on the file (both read external data from
    the path, so a model of any size takes the same steps). ExportError naming the model on any failure."""
    import onnx

    from onnx.external_data_helper import load_external_data_for_model

    proto = onnx.load(str(tmp), load_external_data=False)
    adopted = adopt_external_data(proto, tmp.parent, final_name or tmp.name)  # a big model's weights stay on disk
    if not adopted:
        load_external_data_for_model(proto, str(tmp.parent))  # none, or small: into memory, saved below
    for side in tmp.parent.glob(f"{tmp.name}*.data"):
        if side.name not in adopted:
            side.unlink()
    if edit is not None:
        edit(proto)
    meta = proto.metadata_props.add()
    meta.key, meta.value = SPEC_METADATA_KEY, spec.to_json()
    proto.producer_name = "edgeattn"
    if adopted:
        tmp.write_bytes(proto.SerializeToString())  # the graph; its tensors point at the adopted data file
    else:
        save_onnx(proto, tmp, name=final_name)
    del proto
    try:
        onnx.shape_inference.infer_shapes_path(str(tmp), str(tmp), check_type=True, strict_mode=strict_shapes)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"export '{name}': ONNX shape inference failed: {e}") from e
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"export '{name}': onnx.checker rejected the graph: {e}") from e


def export_checked(path: Path, name: str, spec, export: Callable[[Path, str], None], check: Callable[[Path], Any],
                   exporters: tuple[str, ...] | None = None, edit: Callable[[Any], None] | None = None,
                   strict_shapes: bool = True) -> tuple[str, list[str]]:
    """Each exporter in turn until one passes, into ``path`` atomically: ``export(tmp, exporter)`` writes the graph,
    :func:`finish_graph` (``edit``, spec, shape inference, checker), then ``check(tmp)`` (parity with PyTorch).
    Returns (the exporter used, the errors of those that failed); ExportError listing every failure when none
    passes."""
    def write(tmp: Path, exporter: str) -> None:
        try:
            export(tmp, exporter)
        except Exception as e:  # noqa: BLE001 - the exporters raise many kinds
            raise ExportError(f"export '{name}': torch.onnx.export ({exporter}) failed: {type(e).__name__}: "
                              f"{str(e)[:500]}") from e
        finish_graph(tmp, name, spec, edit, strict_shapes, final_name=path.name)
        check(tmp)

    attempts: list[str] = []
    for exporter in exporters or EXPORTERS:
        try:
            atomic_write(path, lambda tmp, ex=exporter: write(tmp, ex))
            prune_external_data(path)
            return exporter, attempts
        except ExportError as e:
            attempts.append(str(e))
            log.warning("%s", e)
    prune_external_data(path)  # data files of failed attempts
    raise ExportError(f"export '{name}': every exporter failed: " + " | ".join(attempts))


def _dynamo_shapes(built: BuiltModel) -> tuple[dict[int, Any], ...]:
    """Positional (one dict per input, in spec order), so forward()'s argument names need not match."""
    import torch

    dims = {k: torch.export.Dim(k, min=r.min, max=r.max) for k, r in built.spec.dynamic.items()}
    return tuple({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in built.spec.inputs)


def check_against_torch(built: BuiltModel, onnx_path: str | Path, rtol: float = 1e-4) -> float:
    """Run the exported graph on ONNX Runtime at the min, opt and max sizes of every dynamic dim and compare
    with PyTorch. Catches shapes the exporter baked in as constants (a classic with attention reshapes)."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, which in enumerate(("min", "opt", "max")):
        sizes = {k: getattr(r, which) for k, r in built.spec.dynamic.items()}
        feed = built.spec.example_inputs(sizes, seed=100 + i)
        try:
            got = sess.run(None, feed)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"export '{built.name}': the ONNX graph fails at {which} sizes {sizes}: "
                              f"{str(e).splitlines()[0][:300]}") from e
        with torch.no_grad(), attention_fastpath_disabled():
            ref = built.module(*[torch.from_numpy(feed[t.name]) for t in built.spec.inputs])
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        for r, g in zip(ref, got):
            r = r.numpy()
            if r.shape != g.shape:
                raise ExportError(f"export '{built.name}': output shape {g.shape}, PyTorch {r.shape} at {which} sizes")
            diff = float(np.abs(r - g).max()) / max(1.0, float(np.abs(r).max()))
            worst = max(worst, diff)
    if worst > rtol:
        raise ExportError(f"export '{built.name}': ONNX differs from PyTorch by {worst:.3g} (relative), expected <= {rtol}")
    return worst


def export_model(built: BuiltModel, path: str | Path, opset: int | None = None,
                 exporters: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Export ``built`` to ``path`` atomically; return a manifest section (checks, node count, time)."""
    import torch

    path = Path(path)
    if built.graph is not None:  # the model is an ONNX file already (onnx:<file>): copied, not traced
        return import_graph(built, path)
    spec = built.spec
    opset = int(opset or spec.opset)
    module = built.module
    report = pre_export_check(module, opset)
    report.raise_if_errors(f"export '{built.name}'")
    for w in report.warnings:
        log.warning("export '%s': %s", built.name, w)
    module.eval()
    feed = spec.example_inputs(seed=0)
    args = tuple(torch.from_numpy(feed[t.name]) for t in spec.inputs)
    t0 = time.perf_counter()

    def _torch_export(tmp: Path, exporter: str) -> None:
        kw: dict[str, Any] = dict(opset_version=opset, input_names=[t.name for t in spec.inputs],
                                  output_names=[t.name for t in spec.outputs])
        if exporter == "dynamo":
            kw.update(dynamo=True, optimize=True, dynamic_shapes=_dynamo_shapes(built), verbose=False)
        else:
            kw.update(dynamo=False, do_constant_folding=True, dynamic_axes=_dynamic_axes(built))
        with attention_fastpath_disabled(), causal_mask_check_off(), torch.no_grad(), quiet_exporter():
            torch.onnx.export(module, args, str(tmp), **kw)

    used, attempts = export_checked(path, built.name, spec, _torch_export,
                                    lambda tmp: check_against_torch(built, tmp), exporters)
    section = export_section(built, path, opset, report.warnings, used, attempts, time.perf_counter() - t0)
    update_manifest(path.parent, "export", section)
    return section


def import_graph(built: BuiltModel, path: Path) -> dict[str, Any]:
    """``onnx:<file>``'s export into ``path``: the given graph with its external data pulled in (the source checked
    its locations stay beside it), its batch axis named, the spec in its metadata (:func:`finish_graph`), then run
    on ONNX Runtime at the spec's min/opt/max sizes against the given file (:func:`check_against_torch`, whose
    reference module runs it)."""
    import onnx

    from zoo.onnx_source import name_dims, read_graph

    t0 = time.perf_counter()

    def copy(tmp: Path, exporter: str) -> None:
        save_onnx(read_graph(built.name, built.graph, external=True), tmp, name=path.name)

    used, attempts = export_checked(path, built.name, built.spec, copy, lambda tmp: check_against_torch(built, tmp),
                                    ("copy",), edit=name_dims, strict_shapes=False)
    section = export_section(built, path, built.spec.opset, [], used, attempts, time.perf_counter() - t0)
    update_manifest(path.parent, "export", section)
    return section


def export_section(built: BuiltModel, path: Path, opset: int, warnings: list[str], used: str, attempts: list[str],
                   seconds: float) -> dict[str, Any]:
    """After an export landed at ``path``: the post-export check (its warnings logged), spec.json beside the file,
    and the manifest section every exporter writes (classifiers here, decoders in export.decoder_export): with the
    external-data files and their sizes (none: one file), and this process's peak resident memory so far
    (``peak_rss_mb``: ru_maxrss; the export stage runs its models in one process, so it covers the models before)."""
    import onnx
    import torch

    proto = onnx.load(str(path), load_external_data=False)
    post = post_export_check(proto)
    for w in post.warnings:
        log.warning("export '%s': %s", built.name, w)
    atomic_write_text(path.parent / "spec.json", built.spec.to_json())
    data = {f.name: f.stat().st_size for f in onnx_files(path)[1:]}
    return {"file": path.name, "sha256": sha256_file(path), "opset": opset, "nodes": len(proto.graph.node),
            "external_data": data, "bytes": path.stat().st_size + sum(data.values()), "peak_rss_mb": peak_rss_mb(),
            "export_seconds": round(seconds, 2), "torch": torch.__version__, "onnx": onnx.__version__,
            "warnings": warnings + post.warnings, "config": built.config, "exporter": used,
            "failed_exporters": attempts}
