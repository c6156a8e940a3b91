"""Hugging Face models from a local directory (``hf:<dir>``, zoo.hf): a tiny random BERT written with
save_pretrained, loaded with no network, its logits equal to the HF model's own with the padding mask computed
inside, its tokenizer encoding equal to the HF tokenizer's through the pipeline's TextEncoder, clear errors for a
folder missing a piece, and export + simplify + verify of it."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.artifacts import ModelRef, artifact_name
from zoo.registry import RegistryError, create_model, export_source, load_for_export

WORDS = ("the a film movie plot acting good bad great awful dull boring fun loved hated story actor actors scene "
         "scenes music end ending first time really very not was is it this that and but of to in best worst").split()
SENTENCES = ["the film was great", "a dull , boring plot and bad acting", "loved it !",
             "this movie is not good but the music was fun and the actors really loved the story . " * 3,
             "worst ending", ""]


def tiny_tokenizer(max_len: int = 16, side: str = "right"):
    """A BERT WordPiece tokenizer over a fixed vocabulary (no training: deterministic and instant)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!"] + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("bcdfghjklmnpqrsuvwxyz")
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=max_len, truncation_side=side)


def write_tiny_bert(d: Path, max_len: int = 16, side: str = "right", dataset: str | None = None) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = tiny_tokenizer(max_len, side)
    extra = {"edgeattn_dataset": dataset} if dataset else {}
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=max_len, num_labels=2, initializer_range=0.2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}, **extra)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture()
def tiny_bert(tmp_path):
    return write_tiny_bert(tmp_path / "tiny_bert")


@pytest.fixture()
def offline(monkeypatch):
    """No network: the hub is told so, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_loads_offline_and_logits_equal_hf_with_the_mask_inside(tiny_bert, offline):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    built = create_model(f"hf:{tiny_bert}")
    spec = built.spec
    assert spec.task == "text_classification" and spec.labels == ["negative", "positive"]
    assert [t.name for t in spec.inputs] == ["input_ids"] and spec.dataset is None
    assert spec.dynamic["sequence"].min == 2 and spec.dynamic["sequence"].max == 16  # [CLS] [SEP] .. max positions
    assert spec.preprocess["pad_id"] == 0 and spec.preprocess["cls_id"] == 2 and spec.preprocess["kind"] == "text"

    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), local_files_only=True).eval()
    enc = tok(SENTENCES[:4], truncation=True, max_length=16, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # a padded batch
    with torch.no_grad():
        want = hf(**enc).logits
        got = built.module(enc["input_ids"])
        alone = [built.module(enc["input_ids"][i:i + 1, : int(enc["attention_mask"][i].sum())]) for i in range(4)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(alone), want, atol=1e-5, rtol=1e-5)  # padded batch = unpadded rows
    assert float(want.std(0).max()) > 1e-3  # the logits depend on the input: the comparison means something


@pytest.mark.parametrize("side", ["right", "left"])
def test_text_encoder_ids_equal_the_hf_tokenizer(tmp_path, side, offline):
    from transformers import AutoTokenizer

    from runtime.preprocess import TextEncoder
    from zoo.hf import write_tokenizer

    d = write_tiny_bert(tmp_path / "tb", side=side)
    path = write_tokenizer(d, tmp_path / "art" / "tokenizer.json", 16)
    ours = TextEncoder(path).encode(SENTENCES)
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    theirs = np.asarray(tok(SENTENCES, truncation=True, max_length=16, padding=True)["input_ids"])
    np.testing.assert_array_equal(ours, theirs)
    long = ours[3]
    assert long[0] == 2 and long[-1] == 3 and len(long) == 16  # [CLS] ... [SEP], truncated to 16
    assert ours[5].tolist()[:3] == [2, 3, 0]  # an empty text: [CLS] [SEP] then padding


def test_missing_pieces_name_the_directory(tmp_path, tiny_bert):
    with pytest.raises(RegistryError, match=r"'.*nowhere' does not exist"):
        create_model(f"hf:{tmp_path / 'nowhere'}")
    for f, what in (("config.json", "config.json"), ("model.safetensors", "weights"),
                    ("tokenizer.json", "tokenizer")):
        d = tmp_path / f"no_{f}"
        d.mkdir()
        for p in tiny_bert.iterdir():
            if p.name != f:
                (d / p.name).write_bytes(p.read_bytes())
        with pytest.raises(RegistryError, match=rf"directory '{d}' has no {what}"):
            create_model(f"hf:{d}")
    with pytest.raises(RegistryError, match=r"bert_imdb.*does not exist.*edgeattn train --models bert_imdb"):
        create_model("bert_imdb", directory=tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="weights from its directory"):
        create_model(f"hf:{tiny_bert}", weights="w.safetensors")


def test_artifact_folder_is_never_the_model_directory(tmp_path, tiny_bert):
    """`hf:<path>` names one folder under the artifacts folder (the directory's name, once
    runtime.modelspec.artifact_name knows hf:), never a path and never the HF directory itself: the stages would
    overwrite its tokenizer.json."""
    art = tmp_path / "art"
    ref = ModelRef.resolve(f"hf:{tiny_bert}", art)
    inside = write_tiny_bert(art / "mine")  # a model saved into the artifacts folder under its own folder name
    if artifact_name(f"hf:{tiny_bert}") == "tiny_bert":
        assert ref.folder == art / "tiny_bert"
        assert export_source(ref).startswith("hf ")
        with pytest.raises(RegistryError, match="would write into the model directory"):
            load_for_export(ModelRef.resolve(f"hf:{inside}", art))
    else:  # runtime.modelspec takes the text after ':' as the folder name: a path
        for d in (tiny_bert, inside):
            with pytest.raises(RegistryError, match="artifact folder name would be the path"):
                export_source(ModelRef.resolve(f"hf:{d}", art))
    assert ModelRef.resolve("bert_imdb", art).folder == art / "bert_imdb"  # its HF folder is art/bert_imdb/hf


def test_export_simplify_verify(tmp_path, monkeypatch, offline):
    """The pipeline on the tiny BERT: fp32.onnx and fp32.sim.onnx match PyTorch on every backend verify plans."""
    from export.__main__ import main as export_main
    from optimize.simplify import main as simplify_main
    from verify.__main__ import main as verify_main

    write_tiny_bert(tmp_path / "tiny_bert")
    monkeypatch.chdir(tmp_path)  # 'hf:tiny_bert' is ./tiny_bert; its artifacts go to art/tiny_bert
    args = ["--models", "hf:tiny_bert", "--artifacts", "art"]
    assert export_main(args) == 0
    folder = tmp_path / "art" / "tiny_bert"
    assert (folder / "fp32.onnx").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "tokenizer.json").read_text())["truncation"]["max_length"] == 16
    man = json.loads((folder / "manifest.json").read_text())
    assert man["export"]["source"].startswith("hf ") and man["export"]["config"]["model_type"] == "bert"
    assert simplify_main(args) == 0
    assert verify_main(args) == 0
    rows = [r for r in json.loads((tmp_path / "art" / "verify.json").read_text()) if r["model"] == "hf:tiny_bert"]
    assert {r["artifact"] for r in rows} >= {"fp32.onnx", "fp32.sim.onnx"}
    assert all(r["passed"] for r in rows), [r for r in rows if not r["passed"]]
    assert export_main(args) == 0  # up to date: same directory, same source digest


def test_bert_imdb_trainer_saves_a_directory_the_pipeline_loads(tmp_path):
    """A few steps of the bert_imdb recipe on a small subset: save_pretrained directory, train.json, and the model
    loaded back through `bert_imdb` (the alias of <artifacts>/bert_imdb/hf) judged on IMDB."""
    import dataclasses

    from zoo.train import HF_RECIPES, train_hf_model

    r = HF_RECIPES["bert_imdb"]
    r = dataclasses.replace(r, epochs=1, max_train=256, max_eval=64, tokenizer_vocab=600,
                            overrides={**r.overrides, "hidden": 32, "intermediate": 64})
    ref = ModelRef.resolve("bert_imdb", tmp_path)
    res = train_hf_model(ref, r, progress=False)
    assert res["n_test"] == 64 and 0.0 <= res["test_accuracy"] <= 1.0
    d = tmp_path / "bert_imdb" / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["edgeattn_dataset"] == "imdb"
    built = load_for_export(ref)
    assert built.name == "bert_imdb" and built.spec.dataset == "imdb" and built.spec.labels == ["negative", "positive"]
    assert built.spec.preprocess["truncation_side"] == "left"
    again = train_hf_model(ref, r, progress=False)  # up to date: reused, not retrained
    assert again["train_seconds"] == res["train_seconds"]
