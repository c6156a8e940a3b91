"""Model registry: ``create_model(name, **overrides)``, ``list_models()``, checkpoints.

Names:
- ``text_transformer``, ``attention_cnn``, ``vit``: our three families (config overrides as kwargs);
- ``torchvision:<name>``: any torchvision classifier, random-initialised or from a local weights file
  (``weights="/path/file.pth"``); never downloaded;
- ``hf:<dir>``: a Hugging Face sequence classifier saved with ``save_pretrained`` in a local directory (never
  downloaded; ``zoo.hf``); ``bert_imdb`` and ``minilm_imdb`` are trained here (``<artifacts>/<name>/hf``, ``zoo.train``);
- ``<python.module>:<factory>``: a user model. The factory (and its weights: loaded by the factory, or a state dict
  / safetensors file given as ``weights=``, ``--weights`` or EDGEATTN_WEIGHTS_<FACTORY>) is the source of truth; no
  checkpoint of ours is needed. Its spec comes from the factory (``@model_spec(...)`` or a ``spec`` attribute),
  else the module's ``EDGEATTN_SPEC`` (one spec, or a dict factory name -> spec; see ``_user_model``);
- ``onnx:<file>``: an ONNX file with no PyTorch behind it (``zoo.onnx_source``): its spec read from the graph, its
  own fp32 graph on ONNX Runtime the reference.

Which kind a name is (and its folder, its policy) is pipeline.sources' one rule; what zoo/ does for each kind is
one :class:`zoo.sources.ZooSource` in :data:`SOURCES`. ``create_model``, ``load_for_export``, ``load_reference`` and
``export_source`` ask the name's source; none tests a prefix.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Callable

from pipeline.artifacts import ModelRef, artifact_name
from pipeline.sources import BUILTIN_NAMES, TRAINED_HF, known, source_of
from runtime.modelspec import TEXT_GENERATION
from zoo.data import FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD, SENTIMENT_LABELS
from zoo.built import BuiltModel, CheckpointError, RegistryError  # noqa: F401 (re-exported)
from zoo.gpt2 import load_gpt2
from zoo.hf import check_dir, dir_digest, hf_dir, load_hf, train_hint, write_tokenizer
from zoo.init_spread import INIT_VERSION, ensure_spread
from zoo.io import atomic_write, sha256_file
from zoo.onnx_source import OnnxSource
from zoo.sources import ZooSource, no_task
from zoo.spec import DimRange, ModelSpec, TensorSpec
from zoo.tasks import task_named

BUILTIN = BUILTIN_NAMES
EXAMPLE_TORCHVISION = ("torchvision:vit_b_16",)
HF_MODELS = tuple(n for n, t in TRAINED_HF.items() if t != TEXT_GENERATION)  # bert_imdb, minilm_imdb (edgeattn train)
GENERATIVE_MODELS = tuple(n for n, t in TRAINED_HF.items() if t == TEXT_GENERATION)  # gpt2_imdb (python -m zoo.gpt2)
HF_DEFAULT_TASK = "text_classification"  # an hf:<dir> whose config.json cannot be read
CHECKPOINT_FORMAT = "edgeattn-checkpoint/1"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def list_models() -> list[str]:
    return list(BUILTIN) + list(EXAMPLE_TORCHVISION) + list(HF_MODELS) + list(GENERATIVE_MODELS)


def _apply(cfg_cls, overrides: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise RegistryError(f"{cfg_cls.__name__}: unknown override(s) {bad}; expected some of {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return cfg_cls(**fixed)


def _image_spec(name: str, channels: int, size: int, labels: list[str], mean, std, max_batch: int, dataset) -> ModelSpec:
    return ModelSpec(
        name=name, task="image_classification",
        inputs=[TensorSpec("pixels", "float32", ("batch", channels, size, size))],
        outputs=[TensorSpec("logits", "float32", ("batch", len(labels)))],
        dynamic={"batch": DimRange(1, min(8, max_batch), max_batch)},
        labels=labels, dataset=dataset,
        preprocess={"kind": "image", "size": [size, size], "channels": channels, "mean": mean, "std": std,
                    "invert": False},
    )


def _text_transformer(overrides: dict[str, Any]) -> BuiltModel:
    from zoo.models.text_transformer import TextTransformer, TextTransformerConfig

    cfg = _apply(TextTransformerConfig, overrides)
    spec = ModelSpec(
        name="text_transformer", task="text_classification",
        inputs=[TensorSpec("input_ids", "int64", ("batch", "sequence"))],
        outputs=[TensorSpec("logits", "float32", ("batch", cfg.num_classes))],
        dynamic={"batch": DimRange(1, 8, 64), "sequence": DimRange(1, min(32, cfg.max_len), cfg.max_len)},
        labels=list(SENTIMENT_LABELS)[: cfg.num_classes] if cfg.num_classes == 2 else [str(i) for i in range(cfg.num_classes)],
        dataset=cfg.dataset,
        preprocess={"kind": "text", "tokenizer": "tokenizer.json", "vocab_size": cfg.vocab_size, "max_len": cfg.max_len,
                    "pad_id": cfg.pad_id, "cls_id": cfg.cls_id, "first_real_id": 4},
    )
    return BuiltModel("text_transformer", TextTransformer(cfg), spec, dataclasses.asdict(cfg))


def _attention_cnn(overrides: dict[str, Any]) -> BuiltModel:
    from zoo.models.attention_cnn import AttentionCNN, AttentionCNNConfig

    cfg = _apply(AttentionCNNConfig, overrides)
    spec = _image_spec("attention_cnn", cfg.in_channels, 28, list(FMNIST_LABELS)[: cfg.num_classes], FMNIST_MEAN,
                       FMNIST_STD, 64, "fashion_mnist")
    return BuiltModel("attention_cnn", AttentionCNN(cfg), spec, dataclasses.asdict(cfg))


def _vit(overrides: dict[str, Any]) -> BuiltModel:
    from zoo.models.vit import ViTConfig, VisionTransformer

    cfg = _apply(ViTConfig, overrides)
    spec = _image_spec("vit", cfg.in_channels, cfg.image_size, list(FMNIST_LABELS)[: cfg.num_classes], FMNIST_MEAN,
                       FMNIST_STD, 64, "fashion_mnist")
    return BuiltModel("vit", VisionTransformer(cfg), spec, dataclasses.asdict(cfg))


def _torchvision(name: str, overrides: dict[str, Any]) -> BuiltModel:
    import torch
    import torchvision

    arch = name.split(":", 1)[1]
    weights = overrides.pop("weights", None)
    image_size = int(overrides.pop("image_size", 224))
    max_batch = int(overrides.pop("max_batch", 8))
    seed = int(overrides.pop("seed", 0))
    if "weights" in overrides or "pretrained" in overrides:
        raise RegistryError("torchvision models load weights only from a local file: weights='/path/to/file.pth'")
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as e:
        raise RegistryError(f"torchvision model '{arch}': unknown ({e})") from e
    torch.manual_seed(seed)
    module = builder(weights=None, **overrides)  # never downloads
    if weights:
        _load_state_dict_file(module, Path(weights))
    else:
        ensure_spread(module, (3, image_size, image_size), seed)
    num_classes = int(overrides.get("num_classes", 1000))
    spec = _image_spec(name, 3, image_size, [f"class_{i}" for i in range(num_classes)], IMAGENET_MEAN, IMAGENET_STD,
                       max_batch, None)
    cfg = {"arch": arch, "weights": str(weights) if weights else None, "image_size": image_size, **overrides}
    return BuiltModel(name, module, spec, cfg)


SPEC_KEYS = ("inputs", "outputs", "dynamic")


def model_spec(**spec: Any) -> Callable:
    """Decorator giving a user factory its spec, so one module can offer several models::

        @model_spec(inputs=[{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                    outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
                    dynamic={"batch": {"min": 1, "opt": 8, "max": 32}, "sequence": {"min": 4, "opt": 32, "max": 64}},
                    preprocess={"vocab_size": 1000})
        def tiny_text(): ...

    ``preprocess.vocab_size`` bounds the synthetic token ids used for calibration and parity."""
    def wrap(fn: Callable) -> Callable:
        fn.spec = spec
        return fn

    return wrap


def _declared_spec(name: str, mod, fn) -> dict[str, Any]:
    """The factory's ``spec`` attribute, else the module's EDGEATTN_SPEC (one spec, or factory name -> spec)."""
    factory = name.rsplit(":", 1)[1]
    declared = getattr(fn, "spec", None)
    if not isinstance(declared, dict):
        declared = getattr(mod, "EDGEATTN_SPEC", None)
        if isinstance(declared, dict) and "inputs" not in declared:  # keyed by factory name
            declared = declared.get(factory)
    if not isinstance(declared, dict):
        raise RegistryError(f"model '{name}': no spec: expected @zoo.registry.model_spec(...) on '{factory}', or "
                            "EDGEATTN_SPEC in its module (a dict with inputs, outputs, dynamic; or factory name -> "
                            "such a dict)")
    missing = [k for k in SPEC_KEYS if k not in declared]
    if missing:
        raise RegistryError(f"model '{name}': its spec lacks {missing}; expected keys {list(SPEC_KEYS)} (inputs and "
                            "outputs as [{name, dtype, shape}], dynamic as {dim: {min, opt, max}})")
    return declared


def _user_model(name: str, overrides: dict[str, Any]) -> BuiltModel:
    """``pkg.module:factory``: ``factory(**overrides)`` returns an nn.Module (put into eval mode); its spec is a dict
    like ``{"task": ..., "inputs": [{"name", "dtype", "shape"}], "outputs": [...], "dynamic":
    {"batch": {"min", "opt", "max"}}, "labels": [...], "preprocess": {"vocab_size": ...}}``; ``weights`` (a state
    dict .pt/.pth or .safetensors file) is loaded into the module when given."""
    mod_name, factory = name.rsplit(":", 1)
    weights = overrides.pop("weights", None)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise RegistryError(f"model '{name}': cannot import module '{mod_name}' ({e}); expected an importable "
                            "module (its folder on PYTHONPATH or the current directory)") from e
    fn = getattr(mod, factory, None)
    if fn is None:
        raise RegistryError(f"model '{name}': module '{mod_name}' has no factory '{factory}'")
    d = {"name": name, "task": "custom", "labels": [], **_declared_spec(name, mod, fn)}
    try:
        spec = ModelSpec.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"model '{name}': its spec is malformed ({e!r})") from e
    module = fn(**overrides)
    if weights:
        _load_state_dict_file(module, Path(weights))
    module.eval()
    cfg = {**overrides, **({"weights": str(weights)} if weights else {})}
    return BuiltModel(name, module, spec, cfg)


def create_model(name: str, **overrides: Any) -> BuiltModel:
    """Build a model and its spec. ``overrides`` change config fields (tests use tiny configs)."""
    return source_for(name).create(name, overrides)


def hf_classifier(name: str, overrides: dict[str, Any]) -> BuiltModel:
    """``hf:<dir>`` or ``bert_imdb``: zoo.hf.load_hf (overrides: directory, dataset, max_len, attn_implementation,
    batch_max, artifacts); the weights are the directory's own."""
    if "weights" in overrides:
        raise RegistryError(f"model '{name}': a Hugging Face model loads its weights from its directory; --weights "
                            "and EDGEATTN_WEIGHTS_<NAME> do not apply (save_pretrained the weights you want there)")
    allowed = {"directory", "dataset", "max_len", "attn_implementation", "batch_max", "artifacts"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise RegistryError(f"model '{name}': unknown override(s) {bad}; expected some of {sorted(allowed)}")
    return load_hf(name, **overrides)


def hf_decoder(name: str, overrides: dict[str, Any]) -> BuiltModel:
    """``gpt2_imdb`` or ``hf:<gpt2 dir>``: zoo.gpt2.load_gpt2, the decoder with its KV cache (overrides: directory,
    artifacts, batch_max, attn_implementation, dataset)."""
    allowed = {"directory", "artifacts", "batch_max", "attn_implementation", "dataset"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise RegistryError(f"model '{name}': unknown override(s) {bad}; expected some of {sorted(allowed)}")
    return load_gpt2(name, **overrides)


# ---- checkpoints ------------------------------------------------------------------------------
def save_checkpoint(built: BuiltModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "model": built.name, "config": built.config,
               "state_dict": {k: v.detach().cpu() for k, v in built.module.state_dict().items()}, **(extra or {})}
    return atomic_write(path, lambda p: torch.save(payload, p))


def _load_state_dict_file(module, path: Path) -> None:
    import torch

    if not path.is_file():
        raise CheckpointError(f"weights '{path}': no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/pickle/zip errors vary by corruption
        raise CheckpointError(f"weights '{path}': cannot be read ({type(e).__name__}: {e}); the file is truncated, "
                              "corrupt, or not a state dict") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    _check_state_dict(module, sd, path)
    module.load_state_dict(sd)


def _check_state_dict(module, sd: dict, path: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not match the model: " + ", ".join(problems))


def load_checkpoint(path: str | Path, expected_model: str | None = None) -> BuiltModel:
    """Rebuild a model from an edgeattn checkpoint (``torch.load(weights_only=True)``), in eval mode."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file (run 'make train' first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {str(e)[:200]}); the file is "
                              "truncated or corrupt: delete it and run 'make train'") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint '{path}': format {got!r}, expected {CHECKPOINT_FORMAT!r}")
    name = payload["model"]
    if expected_model and name != expected_model:
        raise CheckpointError(f"checkpoint '{path}': holds model '{name}', expected '{expected_model}'")
    cfg = dict(payload["config"])
    built = create_model(name, **({} if source_of(name).kind == "torchvision" else cfg))
    _check_state_dict(built.module, payload["state_dict"], path)
    built.module.load_state_dict(payload["state_dict"])
    built.module.eval()
    return built


def weights_for(ref: ModelRef, weights: str | Path | None = None) -> str | None:
    """The weights file of a torchvision or user model: ``weights`` if given, else EDGEATTN_WEIGHTS_<NAME>, else the
    one export recorded in manifest.json (so verify and bench load what was exported); None: the factory's own."""
    if weights:
        return str(weights)
    env = os.environ.get(ref.weights_env) if ref.source.policy.weights_env else None
    return env or (ref.manifest().get("export") or {}).get("weights")


def load_for_export(ref: ModelRef, weights: str | Path | None = None, **hints: Any) -> BuiltModel:
    """What export exports (its source's :meth:`ZooSource.build`): our three families, their
    checkpoint (`make train`); torchvision and user models (``module:factory``), built by their factory with
    :func:`weights_for`'s file when there is one (torchvision without one: random init with a real spread);
    ``hf:<dir>`` / ``bert_imdb``, loaded from the directory, whose tokenizer is written into the artifact folder;
    ``onnx:<file>``, the given graph on ONNX Runtime. ``hints``: ``task`` (given for an ONNX file), ``data``."""
    return source_for(ref.name).build(ref, weights, **hints)


def load_reference(ref: ModelRef) -> BuiltModel:
    """What verify and bench compare with, after export (its source's :meth:`ZooSource.reference`): the model export
    exported (PyTorch), or for ``onnx:<file>`` the given graph on ONNX Runtime with the spec export wrote."""
    return source_for(ref.name).reference(ref)


def _hf_ref_dir(ref: ModelRef) -> Path:
    """The HF directory of ``ref``. Refused: an artifact folder name that is a path (``artifact_name`` of
    ``hf:<path>``), and an artifact folder that is (or lies inside) the HF directory: the stages would write their
    files (tokenizer.json, manifest.json, ...) into the model's own folder."""
    d = hf_dir(ref.name, ref.artifacts)
    folder_name = artifact_name(ref.name)
    if "/" in folder_name or "\\" in folder_name:
        raise RegistryError(f"model '{ref.name}': its artifact folder name would be the path '{folder_name}', expected "
                            "one folder name under the artifacts folder; name the directory as 'hf:<its name>' from "
                            "its parent folder")
    folder, src = ref.folder.resolve(), d.resolve()
    if folder == src or src in folder.parents:
        raise RegistryError(f"model '{ref.name}': its artifact folder '{ref.folder}' is its own directory '{d}': the "
                            "stages would write into the model directory; keep the model outside the artifacts folder "
                            "(or under another name)")
    return d


def hf_classifier_for_export(ref: ModelRef) -> BuiltModel:
    """An HF directory's model; its tokenizer goes into the artifact folder (``tokenizer.json``, truncating to the
    spec's max length), where TextEncoder (calibration, verify, the runtime) reads it."""
    d = _hf_ref_dir(ref)
    built = create_model(ref.name, directory=d)
    pp = built.spec.preprocess
    write_tokenizer(d, ref.file(pp["tokenizer"]), pp["max_len"], pp.get("truncation_side"), ref.name)
    return built


def export_source(ref: ModelRef, weights: str | Path | None = None) -> str:
    """What an export is made from, for the up-to-date check (its source's :meth:`ZooSource.export_source`): the
    checkpoint's sha256 (our families), the factory's source file and the weights file (sha256 each), the HF
    directory's digest, the ONNX file's; a changed source re-exports."""
    return source_for(ref.name).export_source(ref, weights)


def _weights_part(ref: ModelRef, weights: str | Path | None) -> list[str]:
    w = weights_for(ref, weights)
    return [f"weights {sha256_file(w) if Path(w).is_file() else 'missing: ' + w}"] if w else []


# ---- the sources, registered once (pipeline.sources holds the name -> kind rule) ----------------------------------
class FactorySource(ZooSource):
    """A model a factory builds (torchvision, ``module:factory``), with :func:`weights_for`'s file when there is one
    (``data`` is calibration's, not the model's)."""

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        no_task(ref, task)
        w = weights_for(ref, weights)
        return create_model(ref.name, **({"weights": w} if w else {}))


class BuiltinSource(ZooSource):
    FAMILIES = {"text_transformer": _text_transformer, "attention_cnn": _attention_cnn, "vit": _vit}

    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        return self.FAMILIES[name](overrides)

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        no_task(ref, task)
        return load_checkpoint(ref.checkpoint, expected_model=ref.name)

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        return sha256_file(ref.checkpoint) if ref.checkpoint.is_file() else "no checkpoint"


class TorchvisionSource(FactorySource):
    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        return _torchvision(name, overrides)

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        init = "torchvision" if weights_for(ref, weights) else f"torchvision {INIT_VERSION}"
        return "; ".join([init, *_weights_part(ref, weights)])


class ModuleSource(FactorySource):
    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        return _user_model(name, overrides)

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        try:
            src = inspect.getsourcefile(importlib.import_module(ref.name.rsplit(":", 1)[0]))
        except (ImportError, TypeError) as e:
            raise RegistryError(f"model '{ref.name}': cannot import its module ({e})") from e
        return "; ".join([f"factory {sha256_file(src)}" if src else "factory ?", *_weights_part(ref, weights)])


def hf_classifier_source(ref: ModelRef) -> str:
    """What an HF sequence classifier's export is made from: its directory's digest (checked first)."""
    d = _hf_ref_dir(ref)
    check_dir(d, ref.name, train_hint=train_hint(ref.name) if ref.name in HF_MODELS else None)
    return f"hf {dir_digest(d)}"


def _hf_task(source):
    """The task an HF directory is built as: what its source declares; a sequence classifier when its config.json
    cannot be read (whose builder then says what is missing)."""
    return task_named(source.declared_task() or HF_DEFAULT_TASK)


class HFSource(ZooSource):
    """``hf:<dir>``, ``bert_imdb``, ``gpt2_imdb``: built by the handlers of the task its source declares (zoo.tasks'
    ``hf_*``: a sequence classifier, or a GPT-2 decoder when its config says so)."""

    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        return _hf_task(source_of(name)).run("hf_create", name, overrides)

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        no_task(ref, task)
        if weights:
            raise RegistryError(f"model '{ref.name}': a Hugging Face model loads its weights from its directory; "
                                "--weights does not apply")
        return _hf_task(ref.source).run("hf_build", ref)

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        return _hf_task(ref.source).run("hf_source", ref)


class UnknownSource(ZooSource):
    def create(self, name: str, overrides: dict[str, Any]) -> BuiltModel:
        raise RegistryError(f"model '{name}': unknown; expected one of {known()}")

    def build(self, ref: ModelRef, weights: str | Path | None = None, task: str | None = None,
              data: str | Path | None = None) -> BuiltModel:
        return self.create(ref.name, {})

    def export_source(self, ref: ModelRef, weights: str | Path | None = None) -> str:
        return self.create(ref.name, {}).name


SOURCES: dict[str, ZooSource] = {"builtin": BuiltinSource(), "torchvision": TorchvisionSource(),
                                 "module": ModuleSource(), "hf": HFSource(), "onnx": OnnxSource(),
                                 "unknown": UnknownSource()}


def source_for(name: str) -> ZooSource:
    """The zoo side of a name's source kind (pipeline.sources.source_of); SourceError for an unknown prefix."""
    return SOURCES[source_of(name).kind]
