"""Model sources, registered once (as timm registers models): what a model name stands for, read without torch.

A name is one of:

| name                          | kind          | folder under artifacts/     |
|-------------------------------|---------------|-----------------------------|
| ``text_transformer`` ...      | ``builtin``   | the name                    |
| ``bert_imdb``, ``minilm_imdb``, ``gpt2_imdb``, ``llama_imdb`` | ``hf`` | the name (trained here) |
| ``torchvision:<arch>``        | ``torchvision``| ``<arch>``                 |
| ``hf:<dir>``                  | ``hf``        | the directory's name        |
| ``onnx:<file>``               | ``onnx``      | the file's stem             |
| ``<python.module>:<factory>`` | ``module``    | ``<factory>``               |

This table (floor 2: pipeline) holds the name -> kind -> folder rule and each kind's policy; zoo/ registers the
builders against the kinds (``zoo.registry.SOURCES``). :func:`source_of` resolves a name into a :class:`Source`,
which ``ModelRef.source`` carries, so no stage tests a name's prefix.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.errors import EdgeattnError
from runtime.modelspec import FEATURE_EXTRACTION, TEXT_GENERATION

BUILTIN_NAMES = ("text_transformer", "attention_cnn", "vit")
# HF folders trained here (zoo.train's HF_RECIPES, zoo.gpt2): bert_imdb from scratch, gpt2_imdb and
# llama_imdb (decoders) from scratch, minilm_imdb fine-tuned from the
# published all-MiniLM-L6-v2 encoder
TRAINED_HF = {"bert_imdb": "text_classification", "minilm_imdb": "text_classification", "gpt2_imdb": TEXT_GENERATION,
              "llama_imdb": TEXT_GENERATION}
_MODULE_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class SourceError(EdgeattnError, ValueError):
    """A model name no source kind knows; the message names the known ones."""


@dataclass(frozen=True)
class SourcePolicy:
    """What a stage decides from where a model comes from (never from its name's spelling)."""

    heavy: bool = False  # a big parity-only model: few bench runs, batch 1 only, measured against PyTorch peers
    weights_env: bool = False  # EDGEATTN_WEIGHTS_<NAME> may point at its weights file
    no_training: str | None = None  # the report's "dataset" cell for a model that has no train.json
    pytorch: bool = True  # a PyTorch model stands behind the name (bench times it as the PyTorch peers)


@dataclass(frozen=True)
class SourceKind:
    kind: str
    usage: str  # how a user spells it, for error messages
    prefix: str | None  # "torchvision:" ...; None: matched by name or by shape
    folder: Callable[[str], str]  # locator -> folder name under artifacts/
    policy: SourcePolicy = SourcePolicy()


@dataclass(frozen=True)
class Source:
    """A model name resolved: its kind, what follows the prefix (``locator``), its folder name and policy."""

    name: str
    kind: str
    locator: str
    folder_name: str
    policy: SourcePolicy

    @property
    def path(self) -> Path:
        """The file or directory the locator names (``hf:<dir>``, ``onnx:<file>``)."""
        return Path(self.locator.strip()).expanduser()

    def declared_task(self) -> str | None:
        """The task the name alone tells (a trained HF folder; an ``hf:<dir>`` whose config.json says gpt2, read as
        JSON); None: the model's spec decides."""
        if self.name in TRAINED_HF:
            return TRAINED_HF[self.name]
        if self.kind != "hf":
            return None
        return hf_folder_task(self.path)


# the model types built as decoders with a KV cache: zoo.decoder_arch.ARCHITECTURES' keys (tests/test_llama.py keeps
# them equal; this floor reads a folder's task and cannot import zoo)
DECODER_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2"})


def hf_folder_task(d: Path) -> str | None:
    """The task of a Hugging Face folder, from its files (read as JSON): a decoder config (``model_type`` in
    :data:`DECODER_MODEL_TYPES`: GPT-2, Llama, Mistral, Qwen2) -> TEXT_GENERATION; a
    sentence-transformers folder (modules.json) or a config whose architectures are all bare encoders (``BertModel``:
    no head, what ``AutoModel`` loads) -> FEATURE_EXTRACTION; any other config -> text classification; None when
    config.json is missing or not JSON (the folder check says so)."""
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    if cfg.get("model_type") in DECODER_MODEL_TYPES:
        return TEXT_GENERATION
    archs = cfg.get("architectures") or []
    if (d / "modules.json").is_file() or (archs and all(str(a).endswith("Model") and "Head" not in str(a) for a in archs)):
        return FEATURE_EXTRACTION
    return "text_classification"


def _hf_folder(locator: str) -> str:
    """'/models/bert-base-uncased' -> 'bert-base-uncased', 'artifacts/bert_imdb/hf' -> 'bert_imdb' (a directory named
    'hf' takes its parent's name, as zoo.train saves bert_imdb)."""
    parts = [p for p in locator.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if len(parts) > 1 and parts[-1] == "hf":
        parts.pop()
    return parts[-1] if parts else "hf"


def _onnx_folder(locator: str) -> str:
    parts = [p for p in locator.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    stem = parts[-1].rsplit(".", 1)[0] if parts and parts[-1].lower().endswith(".onnx") else (parts[-1] if parts else "")
    return stem or "onnx"


def _same(locator: str) -> str:
    return locator


KINDS: dict[str, SourceKind] = {}


def register_kind(kind: SourceKind) -> SourceKind:
    """Add a source kind (a prefix and its folder rule); zoo.registry registers its builder under the same kind."""
    KINDS[kind.kind] = kind
    return kind


register_kind(SourceKind("builtin", "|".join(BUILTIN_NAMES), None, _same))
register_kind(SourceKind("torchvision", "torchvision:<arch>", "torchvision:", _same, SourcePolicy(
    heavy=True, weights_env=True, no_training="none (torchvision architecture, random init unless weights given)")))
register_kind(SourceKind("hf", "hf:<directory>", "hf:", _hf_folder))
register_kind(SourceKind("onnx", "onnx:<file.onnx>", "onnx:", _onnx_folder, SourcePolicy(
    no_training="none (ONNX file: judged against its own fp32 graph)", pytorch=False)))
register_kind(SourceKind("module", "<python.module>:<factory>", None, lambda loc: loc.rsplit(":", 1)[1],
                         SourcePolicy(weights_env=True)))
UNKNOWN = SourceKind("unknown", "", None, _same)  # a plain name no kind knows: zoo.registry names the known ones


def known() -> str:
    """Every way to name a model, for error messages."""
    return ", ".join([*BUILTIN_NAMES, *TRAINED_HF] + [f"'{k.usage}'" for k in KINDS.values() if k.kind != "builtin"])


def _kind_of(name: str) -> tuple[SourceKind, str]:
    if name in BUILTIN_NAMES:
        return KINDS["builtin"], name
    if name in TRAINED_HF:
        return KINDS["hf"], name
    for k in KINDS.values():
        if k.prefix and name.startswith(k.prefix):
            return k, name[len(k.prefix):]
    if ":" not in name:
        return UNKNOWN, name
    if _MODULE_FACTORY.match(name):
        return KINDS["module"], name
    prefix = name.split(":", 1)[0]
    raise SourceError(f"model '{name}': unknown source '{prefix}:'; expected one of {known()}")


def source_of(name: str) -> Source:
    """The source a model name stands for; SourceError naming the known kinds when the name fits none."""
    kind, locator = _kind_of(name)
    folder = locator if name in TRAINED_HF else kind.folder(locator)
    return Source(name, kind.kind, locator, folder, kind.policy)
