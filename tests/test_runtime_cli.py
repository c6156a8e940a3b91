"""``python -m runtime`` end to end: export a tiny model, write its tokenizer, run the CLI in a subprocess (no
torch in that process) and compare the printed probabilities with PyTorch's softmax for the same input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY, tiny_model

SENTENCE = "a gripping, beautiful film"
CORPUS = [
    "a gripping, beautiful film", "a dull and boring movie", "the best film of the year",
    "the worst movie ever made", "beautiful acting and a gripping story", "boring, slow and far too long",
    "a film full of heart", "a movie without a single good idea", "the story is gripping from the start",
    "the acting is dull and the story is boring", "a beautiful and moving film", "the plot makes no sense",
] * 3  # a few dozen sentences
TOL = 1e-5


def run_cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    """``python -m runtime ARGS`` in a fresh process with only PYTHONPATH set to the repo."""
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "runtime", *map(str, args)]
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def parse_table(stdout: str) -> tuple[str, dict[str, float]]:
    """The first block of the CLI table -> (label, {class: probability}); rows must be sorted descending."""
    lines = stdout.strip().split("\n\n")[0].splitlines()
    label = lines[1].split("label:", 1)[1].strip()
    probs = {}
    for row in lines[2:]:
        name, value = row.strip().rsplit(None, 1)
        probs[name] = float(value)
    values = list(probs.values())
    assert values == sorted(values, reverse=True), stdout
    return label, probs


def imported(stderr: str) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines() if ln.startswith("import time:") and "|" in ln}


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """(built, model path) for a tiny text transformer with a 64-token tokenizer.json beside it."""
    from export.onnx_export import export_model
    from zoo.tokenizer import train_tokenizer

    built = tiny_model("text_transformer")
    path = tmp_path_factory.mktemp("cli_text") / "fp32.onnx"
    export_model(built, path)
    cfg = TINY["text_transformer"]
    train_tokenizer(CORPUS, vocab_size=cfg["vocab_size"], max_len=cfg["max_len"],
                    path=path.parent / built.spec.preprocess["tokenizer"])
    return built, path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """(built, model path, png path, pixels) for a tiny attention_cnn and a Fashion-MNIST-like 28x28 PNG."""
    from PIL import Image

    from export.onnx_export import export_model

    built = tiny_model("attention_cnn")
    folder = tmp_path_factory.mktemp("cli_image")
    path = folder / "fp32.onnx"
    export_model(built, path)
    pixels = np.zeros((28, 28), dtype=np.uint8)  # a light trouser-like shape on black, as in Fashion-MNIST
    pixels[3:26, 8:13] = 200
    pixels[3:26, 15:20] = 180
    pixels[3:8, 8:20] = 220
    pixels += np.random.default_rng(0).integers(0, 20, size=pixels.shape, dtype=np.uint8)
    png = folder / "trouser.png"
    Image.fromarray(pixels, mode="L").save(png)
    return built, path, png, pixels


def torch_probs(built, feed: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = built.module(*[torch.from_numpy(feed[t.name]) for t in built.spec.inputs]).numpy()
    return softmax(logits.astype(np.float64))


# ---- text -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [None, "max"])
def test_cli_text_matches_pytorch(pad, text_model):
    from runtime.preprocess import TextEncoder

    built, path = text_model
    enc = TextEncoder(path.parent / "tokenizer.json")
    ids = enc.encode([SENTENCE])  # (1, T) unpadded
    assert enc.vocab_size <= TINY["text_transformer"]["vocab_size"]
    assert ids.max() < TINY["text_transformer"]["vocab_size"] and ids[0, 0] == 2  # [CLS] first
    want = torch_probs(built, {"input_ids": ids})[0]

    args = [path, "--text", SENTENCE] + (["--pad-to", pad] if pad else [])
    out = run_cli(*args, importtime=pad is None)
    assert out.returncode == 0, out.stderr[-2000:]
    label, probs = parse_table(out.stdout)
    assert set(probs) == set(built.spec.labels)
    assert abs(sum(probs.values()) - 1.0) <= 2e-6
    got = np.array([probs[lab] for lab in built.spec.labels])
    assert np.abs(got - want).max() <= TOL  # table has 6 decimals
    assert label == built.spec.labels[int(want.argmax())]
    if pad is None:  # the whole CLI run imported no torch and no onnx
        mods = imported(out.stderr)
        assert "runtime.classify" in mods and "onnxruntime" in mods
        assert sorted(m for m in mods if m.split(".")[0] in ("torch", "onnx")) == []


def test_cli_text_json_several_sentences(text_model):
    from runtime.preprocess import TextEncoder

    built, path = text_model
    texts = [SENTENCE, "boring", "the plot makes no sense and the acting is dull " * 4]  # the last one is truncated
    out = run_cli(path, "--text", texts[0], "--text", texts[1], "--text", texts[2], "--json", "--backend", "onnxruntime")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    assert [r["input"] for r in results] == texts
    enc = TextEncoder(path.parent / "tokenizer.json")
    for text, r in zip(texts, results):
        ids = enc.encode([text])
        assert ids.shape[1] <= TINY["text_transformer"]["max_len"]  # truncated by the tokenizer JSON
        want = torch_probs(built, {"input_ids": ids})[0]
        got = np.array([r["probabilities"][lab] for lab in built.spec.labels])
        assert np.abs(got - want).max() <= TOL and abs(got.sum() - 1) <= 1e-9


# ---- image ----------------------------------------------------------------------------------------------
def test_cli_image_matches_pytorch(image_model):
    built, path, png, pixels = image_model
    pre = built.spec.preprocess
    x = ((pixels.astype(np.float32) / 255.0 - pre["mean"]) / pre["std"]).astype(np.float32)[None, None]  # (1,1,28,28)
    want = torch_probs(built, {"pixels": x})[0]
    out = run_cli(path, "--image", png, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    [r] = json.loads(out.stdout)
    got = np.array([r["probabilities"][lab] for lab in built.spec.labels])
    assert abs(got.sum() - 1.0) <= 1e-9
    assert np.abs(got - want).max() <= TOL
    assert r["label"] == built.spec.labels[int(want.argmax())]


def test_cli_image_openvino_table(image_model):
    built, path, png, _ = image_model
    out = run_cli(path, "--image", png, "--backend", "openvino")
    assert out.returncode == 0, out.stderr[-2000:]
    label, probs = parse_table(out.stdout)
    assert len(probs) == 10 and abs(sum(probs.values()) - 1) <= 1e-5 and label == max(probs, key=probs.get)


# ---- info and errors --------------------------------------------------------------------------------------
def test_cli_info(text_model, capsys):
    from runtime.__main__ import main

    _, path = text_model
    assert main([str(path), "--info"]) == 0
    out = capsys.readouterr().out
    assert "input    input_ids    int64    (batch 1..64, sequence 1..16)" in out
    assert "output   logits       float32  (batch 1..64, 2)" in out
    assert main([str(path), "--info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bounds"] == {"batch": [1, 64], "sequence": [1, 16]} and d["backend"] == "onnxruntime"


def test_cli_errors_one_line_exit_2(text_model, image_model, tmp_path, capsys):
    from runtime.__main__ import main

    _, text_path = text_model
    _, image_path, png, _ = image_model
    bad = tmp_path / "model.onnx"
    bad.write_bytes(text_path.read_bytes()[:1000])
    cases = [
        ([str(tmp_path / "nope.onnx"), "--text", "x"], r"no such file"),
        ([str(tmp_path / "model.pt"), "--text", "x"], r"unknown extension '.pt'"),
        ([str(bad), "--text", "x"], r"cannot load it"),
        ([str(image_path), "--text", "x"], r"is an image model, got text input"),
        ([str(text_path), "--image", str(png)], r"is a text model, got an image"),
        ([str(image_path), "--image", str(tmp_path / "none.png")], r"no such file"),
        ([str(text_path), "--text", "x", "--pad-to", "lots"], r"--pad-to: got 'lots', expected an integer or 'max'"),
    ]
    for argv, expect in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and expect in err, (argv, err)


def test_cli_error_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    out = run_cli(bad, "--text", "hello")
    assert out.returncode == 2
    err_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err_lines) == 1 and str(bad) in err_lines[0] and "Traceback" not in out.stderr
