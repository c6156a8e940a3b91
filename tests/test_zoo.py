"""Foundation: models, registry, data, tokenizer, checkpoints, training. Values, not only shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY, tiny_model
from zoo import CheckpointError, create_model, list_models, load_checkpoint
from zoo.registry import RegistryError, save_checkpoint


def test_list_models_names_the_three_families_and_torchvision():
    names = list_models()
    assert names[:3] == ["text_transformer", "attention_cnn", "vit"]
    assert "torchvision:vit_b_16" in names


def test_padded_text_equals_unpadded():
    b = tiny_model("text_transformer")
    rng = np.random.default_rng(0)
    lens = [3, 9, 16]
    seqs = [np.concatenate([[2], rng.integers(4, 64, n - 1)]) for n in lens]
    padded = np.zeros((3, 16), dtype=np.int64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    with torch.no_grad():
        batch_logits = b.module(torch.from_numpy(padded)).numpy()
        for i, s in enumerate(seqs):
            alone = b.module(torch.from_numpy(s[None].astype(np.int64))).numpy()
            np.testing.assert_allclose(batch_logits[i], alone[0], atol=1e-5, rtol=0)


def test_attention_block_with_gamma_zero_is_identity():
    from zoo.models.attention_cnn import SelfAttention2d

    torch.manual_seed(0)
    blk = SelfAttention2d(16).eval()
    assert float(blk.gamma.detach()) == 0.0  # initialised to 0 as in SAGAN
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        assert torch.equal(blk(x), x)
        blk.gamma.fill_(1.0)
        y = blk(x)
    assert not torch.allclose(y, x)
    # with gamma=1: out = x + V @ softmax(QK^T/sqrt(d))^T, check against a manual computation
    with torch.no_grad():
        q = blk.query(x).flatten(2).transpose(1, 2)
        k = blk.key(x).flatten(2)
        v = blk.value(x).flatten(2)
        a = torch.softmax(q @ k / (16 // 8) ** 0.5, dim=-1)
        manual = (v @ a.transpose(1, 2)).view_as(x) + x
    torch.testing.assert_close(y, manual, atol=1e-5, rtol=1e-5)


def test_vit_shapes_and_class_token_position():
    b = tiny_model("vit")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert b.module(x).shape == (5, 10)
    assert b.module.pos_embed.shape[1] == (28 // 7) ** 2 + 1


def test_save_and_reload_gives_identical_outputs(tmp_path, tiny_name):
    b = tiny_model(tiny_name)
    path = save_checkpoint(b, tmp_path / "model.pt")
    again = load_checkpoint(path, expected_model=tiny_name)
    feed = b.spec.example_inputs({"batch": 3})
    args = [torch.from_numpy(feed[t.name]) for t in b.spec.inputs]
    with torch.no_grad():
        assert torch.equal(b.module(*args), again.module(*args))


def test_corrupt_checkpoint_raises_documented_error(tmp_path):
    b = tiny_model("vit")
    path = save_checkpoint(b, tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt'.*(truncated|corrupt)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_checkpoint_names_the_mismatch(tmp_path):
    b = tiny_model("vit")
    path = save_checkpoint(b, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.weight"] = torch.zeros(3, 3)
    del payload["state_dict"]["head.bias"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['head.bias'\].*head.weight: file \(3, 3\)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="holds model 'vit', expected 'attention_cnn'"):
        save_checkpoint(b, path)
        load_checkpoint(path, expected_model="attention_cnn")


def test_registry_errors_say_what_was_expected():
    with pytest.raises(RegistryError, match="unknown override"):
        create_model("vit", not_a_field=3)
    with pytest.raises(RegistryError, match="unknown; expected one of"):
        create_model("resnet_please")
    with pytest.raises(RegistryError, match="torchvision model 'nope'"):
        create_model("torchvision:nope")


def test_torchvision_vit_head_is_not_zero():
    b = create_model("torchvision:vit_b_16", image_size=224)
    head = b.module.heads.head
    assert float(head.weight.abs().sum()) > 0  # torchvision zero-initialises it; we re-initialise
    assert b.spec.inputs[0].shape == ("batch", 3, 224, 224)


def test_user_model_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "EDGEATTN_SPEC = {'inputs': [{'name': 'x', 'dtype': 'float32', 'shape': ['batch', 4]}],\n"
        "                 'outputs': [{'name': 'y', 'dtype': 'float32', 'shape': ['batch', 2]}],\n"
        "                 'dynamic': {'batch': {'min': 1, 'opt': 2, 'max': 8}}}\n"
        "def make(hidden=3):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    b = create_model("mymodels:make", hidden=5)
    assert b.module[0].out_features == 5
    assert b.spec.profile("max") == {"x": (8, 4)}
    with pytest.raises(RegistryError, match="no factory 'nothere'"):
        create_model("mymodels:nothere")


def test_fashion_mnist_splits_are_disjoint_and_seeded():
    from zoo.data import load_fashion_mnist

    a, b = load_fashion_mnist(), load_fashion_mnist()
    assert (len(a.train), len(a.val), len(a.test)) == (55000, 5000, 10000)
    assert np.array_equal(a.val.y, b.val.y) and np.array_equal(a.val.x[:5], b.val.x[:5])
    assert a.train.x.dtype == np.uint8 and a.train.x.shape[1:] == (28, 28)
    assert set(np.unique(a.test.y)) == set(range(10))
    assert len(a.sha256) == 64


def test_rotten_tomatoes_splits_are_disjoint():
    from zoo.data import load_rotten_tomatoes

    ds = load_rotten_tomatoes()
    tr, va, te = (set(s.lower() for s in split.x) for split in (ds.train, ds.val, ds.test))
    assert not (tr & te) and not (tr & va) and not (va & te)
    assert 800 <= len(ds.test) <= 900 and abs(ds.test.y.mean() - 0.5) < 0.06


def test_tokenizer_roundtrip_is_torch_free(tmp_path):
    import subprocess
    import sys

    from zoo.tokenizer import train_tokenizer

    sents = ["a gripping , beautiful film", "a dull and lifeless movie", "beautiful acting , dull plot"] * 10
    path = train_tokenizer(sents, vocab_size=64, max_len=8, path=tmp_path / "tok.json")
    code = ("import sys; from runtime.preprocess import TextEncoder; e = TextEncoder(sys.argv[1]); "
            "ids = e.encode(['a', 'beautiful acting , dull plot dull plot dull plot']); "
            "print(ids.tolist()); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    ids = eval(out.stdout)  # noqa: S307 - our own subprocess output
    assert ids[0][0] == 2 and ids[1][0] == 2  # [CLS] first
    assert len(ids[1]) == 8  # truncated to max_len
    assert ids[0][-1] == 0  # shorter sentence padded with [PAD]


def test_short_training_run_lowers_the_loss(tmp_path):
    from pipeline.artifacts import ModelRef
    from zoo.train import Recipe, train_model

    r = Recipe(epochs=2, lr=3e-3, batch_size=64, max_train=1024, max_eval=256, overrides=TINY["attention_cnn"])
    ref = ModelRef.resolve("attention_cnn", tmp_path)
    res = train_model(ref, r, progress=False)
    h = res["history"]
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert res["n_test"] == 256 and 0.0 <= res["test_accuracy"] <= 1.0
    assert res["test_accuracy"] > 0.2  # 10 classes: chance is 0.1; 2 epochs of a 4-channel CNN on 1k images
    assert (tmp_path / "attention_cnn" / "model.pt").is_file()
    again = train_model(ref, r, progress=False)  # up to date: reused, not retrained
    assert again["train_seconds"] == res["train_seconds"]


def test_imdb_splits_are_disjoint_and_balanced():
    from zoo.data import load_imdb

    ds = load_imdb()
    tr, te = set(ds.train.x), set(ds.test.x)
    assert not (tr & te) and not (set(ds.val.x) & te)
    assert len(ds.train) + len(ds.val) + len(ds.test) > 24800  # 25,000 reviews less exact duplicates
    assert abs(ds.test.y.mean() - 0.5) < 0.03
    assert all("<br" not in t for t in ds.test.x[:200])


def test_long_text_keeps_its_end(tmp_path):
    from runtime.preprocess import TextEncoder
    from zoo.tokenizer import train_tokenizer

    words = "good bad film plot acting great awful".split()
    path = train_tokenizer([" ".join(words)] * 20, vocab_size=64, max_len=4, path=tmp_path / "t.json",
                           truncation_side="left")
    enc = TextEncoder(path)
    ids = enc.encode(["good bad film plot acting great awful"])[0]
    tail = enc.encode(["acting great awful"])[0]
    assert ids[0] == enc.cls_id and list(ids[1:]) == list(tail[1:])  # [CLS] + the last three words
