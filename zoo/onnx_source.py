"""``onnx:<file>``: a model that arrives as an ONNX file only (exported elsewhere, from a vendor or a model hub).

There is no PyTorch behind it: the reference every stage compares with is the given fp32 graph on ONNX Runtime
(:class:`BuiltModel` whose module runs it), and the spec is read from the graph (:func:`graph_spec`):

- inputs and outputs with their dtypes; each input's and output's first axis is the batch (``batch``, 1..16; a
  graph exported with a static batch is made dynamic there, and the export check proves it at 1, 4 and 16 against
  the given graph, run a static batch at a time, or refuses it); other named or unnamed dynamic axes keep (or get) a name and take
  :data:`DEFAULT_DIM` sizes, the spatial axes of an image input :data:`DEFAULT_IMAGE_SIZE`, or the sizes of the
  user's ``--data`` (.npz: one array per input name);
- the task, given (``--task``) or inferred from the graph: one 2-D float output is classification logits (image
  classification for one 4-D float input, text classification for one integer input), anything else ``custom``;
  parity-only (no labels, no dataset) unless the user's data has labels.

Export copies the graph (its external data pulled in, refused like the runtime refuses it when a location leaves
the file's folder) into ``<artifacts>/<name>/fp32.onnx`` with the batch axis named ``batch`` and the spec in its
metadata (export.onnx_export.import_graph).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifacts import ModelRef
from runtime.errors import ModelLoadError
from runtime.modelspec import SPEC_FILE, TEXT_GENERATION
from runtime.onnx_guard import check_external_data
from zoo.built import BuiltModel, RegistryError
from zoo.io import sha256_file
from zoo.sources import ZooSource
from zoo.spec import DimRange, ModelSpec, TensorSpec

BATCH = "batch"
DEFAULT_BATCH = DimRange(1, 4, 16)
DEFAULT_DIM = DimRange(1, 16, 64)  # a sequence or any other dynamic axis
DEFAULT_IMAGE_SIZE = 224  # the height and width of an image input whose spatial axes are dynamic
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64"}
TASKS = ("image_classification", "text_classification", "custom")


def onnx_file(name: str, path: Path) -> Path:
    """The file ``onnx:<file>`` names, checked: it exists, and its external data stays beside it."""
    if not path.is_file():
        raise RegistryError(f"model '{name}': ONNX file '{path}' does not exist; expected 'onnx:<path to a .onnx "
                            "file>'")
    try:
        check_external_data(path)
    except ModelLoadError as e:
        raise RegistryError(f"model '{name}': {e}") from e
    return path


def read_graph(name: str, path: Path, external: bool = False):
    """The ModelProto of ``path`` (with its external data when ``external``); RegistryError when it is not one."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise several kinds for a file that is not a model
        raise RegistryError(f"model '{name}': '{path}' is not a readable ONNX model ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e


def _dims(value) -> list[int | str | None]:
    """A graph value's shape: ints, dim_param names, None for an unnamed unknown axis."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _dtype(name: str, value) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in ONNX_DTYPES:
        raise RegistryError(f"model '{name}': tensor '{value.name}' has ONNX element type {elem}; expected one of "
                            f"{sorted(ONNX_DTYPES.values())}")
    return ONNX_DTYPES[elem]


def _safe(text: str) -> str:
    return re.sub(r"\W", "_", text)


def batch_params(proto) -> set[str]:
    """The dim_params of every graph input's first axis: they become ``batch``."""
    inits = {i.name for i in proto.graph.initializer}
    out = set()
    for v in proto.graph.input:
        dims = _dims(v) if v.name not in inits else []
        if dims and isinstance(dims[0], str):
            out.add(dims[0])
    return out


def name_dims(proto) -> None:
    """Edit the graph in place: the first axis of every input and output is ``batch`` (a dim_param renamed
    everywhere; an unnamed or static one made dynamic, the stored intermediate shapes dropped: the export check runs
    the result at batch 1..16 against the given graph), every other unnamed dynamic axis ``<tensor>_<axis>``."""
    batch = batch_params(proto)
    inits = {i.name for i in proto.graph.initializer}
    ends = [v for v in [*proto.graph.input, *proto.graph.output] if v.name not in inits]
    static = False
    for v in [*ends, *proto.graph.value_info]:
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_param") and d.dim_param in batch:
                d.dim_param = BATCH
            elif i == 0 and v in ends and not d.dim_param:
                static = static or d.HasField("dim_value")
                d.dim_param = BATCH  # clears dim_value (a oneof)
            elif not d.HasField("dim_value") and not d.dim_param and v.name not in inits:
                d.dim_param = f"{_safe(v.name)}_{i}"
    if static:
        del proto.graph.value_info[:]


def _tensors(name: str, values) -> list[TensorSpec]:
    return [TensorSpec(v.name, _dtype(name, v), tuple(d if d is not None else "?" for d in _dims(v))) for v in values]


def _data_sizes(data: str | Path | None) -> dict[str, tuple[int, ...]]:
    """Array shapes of the user's ``.npz`` (input name -> shape); {} for other data or none."""
    if not data or Path(data).suffix != ".npz" or not Path(data).is_file():
        return {}
    with np.load(data) as z:
        return {k: tuple(z[k].shape) for k in z.files}


def _ranges(inputs: list[TensorSpec], data: dict[str, tuple[int, ...]]) -> dict[str, DimRange]:
    """min/opt/max of every dynamic axis: the batch's default, the data's size, an image's size, else the default."""
    out: dict[str, DimRange] = {}
    for t in inputs:
        image = len(t.shape) == 4 and t.dtype.startswith("float")
        for i, d in enumerate(t.shape):
            if not isinstance(d, str) or d in out:
                continue
            if d == BATCH:
                out[d] = DEFAULT_BATCH
            elif t.name in data and i < len(data[t.name]):
                n = int(data[t.name][i])
                out[d] = DimRange(n, n, n)
            elif image and i >= 2:
                out[d] = DimRange(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            else:
                out[d] = DEFAULT_DIM
    return out


def infer_task(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    """Classification logits when the one output is 2-D float: an image classifier for one 4-D float input, a text
    classifier for one integer input; else ``custom`` (parity on every output)."""
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or not outputs[0].dtype.startswith("float") \
            or len(inputs) != 1:
        return "custom"
    x = inputs[0]
    if len(x.shape) == 4 and x.dtype.startswith("float"):
        return "image_classification"
    return "text_classification" if x.dtype.startswith("int") else "custom"


def vocab_size(proto) -> int | None:
    """The smallest table an integer graph input indexes (``Gather(table, input)``: an embedding), so synthetic token
    ids stay inside it; None when no input is used so."""
    tables = {i.name: i for i in proto.graph.initializer}
    ids = {v.name for v in proto.graph.input if v.type.tensor_type.elem_type in (6, 7)}
    sizes = [int(tables[n.input[0]].dims[0]) for n in proto.graph.node
             if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in ids and n.input[0] in tables]
    return min(sizes) if sizes else None


def _preprocess(task: str, inputs: list[TensorSpec], dynamic: dict[str, DimRange], vocab: int | None) -> dict[str, Any]:
    """An image classifier's image facts (size, channels; no normalisation known: mean 0, std 1); the vocabulary
    of token-id inputs."""
    if task != "image_classification":
        return {"source": "onnx", **({"vocab_size": vocab} if vocab else {})}
    c, h, w = (d if isinstance(d, int) else dynamic[d].opt for d in inputs[0].shape[1:])
    return {"kind": "image", "size": [h, w], "channels": c, "mean": [0.0] * c, "std": [1.0] * c, "invert": False,
            "source": "onnx"}


def graph_spec(name: str, proto, task: str | None = None, data: str | Path | None = None) -> ModelSpec:
    """The spec of a graph whose dims :func:`name_dims` named (see the module docstring)."""
    if task is not None and task not in TASKS:
        raise RegistryError(f"model '{name}': got task '{task}', expected one of {list(TASKS)} for an ONNX file"
                            + (" (a decoder needs its KV-cache contract: export it from PyTorch)"
                               if task == TEXT_GENERATION else ""))
    inits = {i.name for i in proto.graph.initializer}
    inputs = _tensors(name, [v for v in proto.graph.input if v.name not in inits])
    outputs = _tensors(name, proto.graph.output)
    if not inputs or not outputs:
        raise RegistryError(f"model '{name}': the graph has {len(inputs)} input(s) and {len(outputs)} output(s); "
                            "expected at least one of each")
    dynamic = _ranges(inputs, _data_sizes(data))
    task = task or infer_task(inputs, outputs)
    n_out = outputs[0].shape[-1] if task.endswith("_classification") else None
    labels = [str(i) for i in range(n_out)] if isinstance(n_out, int) else []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    return ModelSpec(name=name, task=task, inputs=inputs, outputs=outputs, dynamic=dynamic, labels=labels,
                     preprocess=_preprocess(task, inputs, dynamic, vocab_size(proto)), opset=int(opset), dataset=None)


def _static_batch(session) -> int | None:
    """The given graph's batch size when its first input's first axis is static (else None)."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def _reference_module(path: Path, spec: ModelSpec):
    """The given graph on ONNX Runtime's CPU provider as the torch module the stages call (tensors in and out); a
    graph with a static batch b runs a batch of n in n / b calls."""
    import torch

    from runtime.ort_backend import cpu_session

    class OnnxReference(torch.nn.Module):
        """``forward(*inputs)`` in the spec's input order -> the graph's outputs (one tensor, or a tuple)."""

        def __init__(self) -> None:
            super().__init__()
            self.session = cpu_session(path)
            self.inputs = [t.name for t in spec.inputs]
            self.outputs = [t.name for t in spec.outputs]
            self.step = _static_batch(self.session)

        def forward(self, *xs):
            arrays = [x.detach().cpu().numpy() for x in xs]
            n = len(arrays[0])
            step = self.step or n
            if n % step:
                raise RegistryError(f"model '{spec.name}': got a batch of {n}, expected a multiple of the graph's "
                                    f"static batch {step}")
            parts = [self.session.run(self.outputs, {k: a[i:i + step] for k, a in zip(self.inputs, arrays)})
                     for i in range(0, n, step)]
            res = tuple(torch.from_numpy(np.ascontiguousarray(np.concatenate(o))) for o in zip(*parts))
            return res[0] if len(res) == 1 else res

    return OnnxReference().eval()


class OnnxSource(ZooSource):
    """``onnx:<file>`` (see the module docstring)."""

    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        from pipeline.sources import source_of

        bad = sorted(set(overrides) - {"task", "data"})
        if bad:
            raise RegistryError(f"model '{name}': unknown override(s) {bad}; expected some of ['data', 'task'] (an "
                                "ONNX file holds its own weights)")
        path = onnx_file(name, source_of(name).path)
        proto = read_graph(name, path)
        name_dims(proto)
        spec = graph_spec(name, proto, overrides.get("task"), overrides.get("data"))
        cfg = {"onnx_file": str(path.resolve()), "task_given": overrides.get("task")}
        return BuiltModel(name, _reference_module(path, spec), spec, cfg, graph=path)

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        if weights:
            raise RegistryError(f"model '{ref.name}': got --weights '{weights}', expected none: an ONNX file holds "
                                "its own weights")
        return self.create(ref.name, {"task": task, "data": data})

    def reference(self, ref: ModelRef) -> BuiltModel:
        """The given graph, with the spec export wrote (spec.json: the task and sizes decided then)."""
        built = self.create(ref.name, {})
        spec_file = ref.file(SPEC_FILE)
        if spec_file.is_file():
            built.spec = ModelSpec.from_json(spec_file.read_text(encoding="utf-8"))
            built.module = _reference_module(built.graph, built.spec)
        return built

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        """The file's sha256 and its external-data files' (a changed graph re-exports)."""
        path = onnx_file(ref.name, ref.source.path)
        parts = [f"onnx {sha256_file(path)}"]
        for loc in sorted(set(check_external_data(path))):
            f = path.parent / loc
            parts.append(f"{loc} {sha256_file(f) if f.is_file() else 'missing'}")
        return "; ".join(parts)
