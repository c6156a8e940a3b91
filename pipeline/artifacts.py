"""The artifact layout (pipeline only; a device never sees it): a model name is resolved once per stage
(``resolve_models`` -> ``ModelRef``: the name, its folder ``artifacts/<artifact_name>``, its files and manifest), and
that object is passed on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.sources import Source, source_of
from runtime.errors import InputError
from runtime.files import read_json
from runtime.modelspec import SPEC_FILE

MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class PrecisionFile:
    """One reduced-precision artifact of a model folder: the file the quantize stage writes, the spec tolerance it is
    judged by (runtime.modelspec.DEFAULT_TOLERANCES' key) and the weight width a CPU form holds (None: not a CPU
    weight form)."""

    file: str
    tolerance: str
    weight_bits: int | None = None


# precision row -> its file: the ONE table the quantize stage (writes), verify (judges), bench (times) and the
# report read. int8.cpu / int4.cpu: ONNX Runtime CPU forms chosen per weight width (8-bit: dynamic int8, MatMulNBits
# 8-bit or the Q/DQ graph; 4-bit: MatMulNBits 4-bit), each written when it is within its own budget (int8.cpu: the
# spec's int8 tolerance; int4.cpu: its int4 tolerance, chiefly perplexity), so a user picks size against quality.
PRECISION_FILES: dict[str, PrecisionFile] = {
    "fp16": PrecisionFile("fp16.onnx", "fp16"),
    "int8": PrecisionFile("int8.qdq.onnx", "int8"),
    "int8.cpu": PrecisionFile("int8.cpu.onnx", "int8", 8),
    "int4.cpu": PrecisionFile("int4.cpu.onnx", "int4", 4),
}
CPU_WEIGHT_FORMS = {k: v for k, v in PRECISION_FILES.items() if v.weight_bits}  # int8.cpu, int4.cpu


def cpu_form_for_bits(bits: int) -> str:
    """The CPU precision row whose file holds weights of ``bits`` (8 -> 'int8.cpu', 4 -> 'int4.cpu')."""
    for k, v in CPU_WEIGHT_FORMS.items():
        if v.weight_bits == int(bits):
            return k
    raise InputError(f"CPU weight form: got {bits} bits, expected one of "
                     f"{sorted(v.weight_bits for v in CPU_WEIGHT_FORMS.values())}")


def artifact_name(name: str) -> str:
    """Folder name under artifacts/ (pipeline.sources' rule): 'torchvision:vit_b_16' -> 'vit_b_16', 'pkg.mod:make' ->
    'make', 'hf:/models/bert-base-uncased' -> 'bert-base-uncased', 'hf:artifacts/bert_imdb/hf' -> 'bert_imdb' (a
    directory named 'hf' takes its parent's name, as zoo.train saves bert_imdb), 'onnx:/x/model.onnx' -> 'model'."""
    return source_of(name).folder_name


def model_names(text: str) -> list[str]:
    """``--models a, b,torchvision:c`` -> ['a', 'b', 'torchvision:c'] (empty items dropped): every stage's CLI."""
    return [m.strip() for m in str(text).split(",") if m.strip()]


@dataclass(frozen=True)
class ModelRef:
    """A model name resolved once per stage: the name as the user gave it and its folder under artifacts/.
    Every stage takes this object instead of rebuilding ``artifacts / artifact_name(name)``."""

    name: str
    folder: Path

    @classmethod
    def resolve(cls, name: str, artifacts: str | Path) -> "ModelRef":
        """SourceError (naming the known kinds) for a name no source kind knows."""
        return cls(name, Path(artifacts) / artifact_name(name))

    @property
    def artifacts(self) -> Path:
        return self.folder.parent

    def file(self, fname: str) -> Path:
        return self.folder / fname

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_FILE

    def manifest(self) -> dict[str, Any]:
        """manifest.json as a dict ({} when missing or unreadable)."""
        return read_json(self.manifest_path, {}) or {}

    @property
    def source(self) -> Source:
        """Where the model comes from (pipeline.sources): its kind, locator and policy."""
        return source_of(self.name)

    @property
    def task(self) -> str | None:
        """The model's task: its exported spec.json's, else what its source tells (a GPT-2 folder: text generation);
        None before export when the source does not say."""
        try:
            spec = read_json(self.file(SPEC_FILE), None)
        except (OSError, ValueError):  # unreadable: the stage that reads the spec reports it
            spec = None
        if isinstance(spec, dict) and spec.get("task"):
            return str(spec["task"])
        return self.source.declared_task()

    @property
    def weights_env(self) -> str:
        """The environment variable that points a torchvision model at local weights: EDGEATTN_WEIGHTS_<ARCH>."""
        return f"EDGEATTN_WEIGHTS_{self.source.folder_name.upper()}"


def resolve_models(text: str, artifacts: str | Path) -> list[ModelRef]:
    """``--models`` text and ``--artifacts`` folder -> one ModelRef per model, in the order given."""
    return [ModelRef.resolve(n, artifacts) for n in model_names(text)]
