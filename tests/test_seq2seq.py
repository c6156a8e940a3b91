"""Multi-input, multi-output and sequence-to-sequence models: an encoder-decoder ``nn.Transformer`` (two token inputs
with their own dynamic lengths, a causal target mask, per-position logits and the encoder memory as outputs) through
every stage, and the pieces that make it work (the export-time causal-mask rewrite, EvalSet of several inputs,
per-position comparison, every output compared)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.evalset import EvalSet, load_eval_set
from runtime.modelspec import ModelSpec
from judge.figures import compare, compare_outputs
from zoo.spec import DEFAULT_TOLERANCES

ROOT = Path(__file__).resolve().parents[1]
VOCAB, D = 48, 32
S2S_MODULE = f'''
import math
import torch
from torch import nn

from zoo.registry import model_spec


class Seq2Seq(nn.Module):
    """Encoder-decoder: source and target token ids -> next-token logits per target position, and the encoder memory."""

    def __init__(self, vocab={VOCAB}, d={D}, heads=4, layers=2, max_len=64):
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.1)
        self.transformer = nn.Transformer(d, heads, layers, layers, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, tgt):
        s = self.src_emb(src) * math.sqrt(self.src_emb.embedding_dim) + self.pos[: src.shape[1]]
        t = self.tgt_emb(tgt) * math.sqrt(self.tgt_emb.embedding_dim) + self.pos[: tgt.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])  # no is_causal hint: the hard case
        pad = src == 0
        memory = self.transformer.encoder(s, src_key_padding_mask=pad)
        h = self.transformer.decoder(t, memory, tgt_mask=causal, memory_key_padding_mask=pad)
        return self.head(h), memory


@model_spec(inputs=[{{"name": "src", "dtype": "int64", "shape": ["batch", "src_len"]}},
                    {{"name": "tgt", "dtype": "int64", "shape": ["batch", "tgt_len"]}}],
            outputs=[{{"name": "logits", "dtype": "float32", "shape": ["batch", "tgt_len", {VOCAB}]}},
                     {{"name": "memory", "dtype": "float32", "shape": ["batch", "src_len", {D}]}}],
            dynamic={{"batch": {{"min": 1, "opt": 4, "max": 8}}, "src_len": {{"min": 2, "opt": 12, "max": 24}},
                     "tgt_len": {{"min": 1, "opt": 8, "max": 16}}}},
            preprocess={{"vocab_size": {VOCAB}}})
def seq2seq():
    torch.manual_seed(0)
    return Seq2Seq()
'''


@pytest.fixture
def s2s_module(module_from_source):
    return module_from_source("s2smods", S2S_MODULE)


def test_encoder_decoder_with_causal_mask_exports_with_dynamo(s2s_module, tmp_path):
    """torch.export refuses nn.Transformer's causal-mask detection (a branch on the mask's values); the export-time
    rewrite keeps the mask as given, and the graph matches PyTorch at min/opt/max of batch, src_len and tgt_len
    (export_model checks that itself) and on inputs of unequal lengths."""
    import onnxruntime as ort
    import torch
    from torch.nn.modules import transformer as tr

    from export.onnx_export import export_model
    from zoo.registry import create_model

    built = create_model("s2smods:seq2seq")
    detect = tr._detect_is_causal_mask
    sec = export_model(built, tmp_path / "fp32.onnx", exporters=("dynamo",))
    assert sec["exporter"] == "dynamo" and sec["failed_exporters"] == []
    assert tr._detect_is_causal_mask is detect  # restored after export
    sess = ort.InferenceSession(str(tmp_path / "fp32.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["src", "tgt"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "memory"]
    feed = built.spec.example_inputs({"batch": 3, "src_len": 21, "tgt_len": 5}, seed=7)
    got = sess.run(None, feed)
    with torch.no_grad():
        want = built.module(torch.from_numpy(feed["src"]), torch.from_numpy(feed["tgt"]))
    assert got[0].shape == (3, 5, VOCAB) and got[1].shape == (3, 21, D)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4 * float(np.abs(w.numpy()).max()))
    # causality survived the rewrite: changing the last target token changes only the last position's logits
    feed2 = {k: v.copy() for k, v in feed.items()}
    feed2["tgt"][:, -1] = np.where(feed["tgt"][:, -1] == 1, 2, 1)
    got2 = sess.run(None, feed2)
    np.testing.assert_allclose(got2[0][:, :-1], got[0][:, :-1], atol=1e-5)
    assert np.abs(got2[0][:, -1] - got[0][:, -1]).max() > 1e-3


def test_eval_set_holds_every_input_and_trims_only_classifiers():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 9, size=(10, 6))
    tgt = rng.integers(1, 9, size=(10, 4))
    src[:, 4:] = 0  # two columns of padding
    es = EvalSet({"src": src, "tgt": tgt})
    feeds = list(es.batches(4))
    assert [f["src"].shape for f in feeds] == [(4, 6), (4, 6), (2, 6)] and feeds[2]["tgt"].shape == (2, 4)
    assert [f["src"].shape for f in EvalSet({"src": src, "tgt": tgt}, pad_id=0).batches(4)][0] == (4, 4)
    sub = es.subset(5, seed=3)
    assert len(sub) == 5 and set(sub.inputs) == {"src", "tgt"}
    idx = [int(np.nonzero((tgt == row).all(1))[0][0]) for row in sub.inputs["tgt"]]
    assert np.array_equal(sub.inputs["src"], src[idx])  # rows stay aligned across inputs
    with pytest.raises(Exception, match=r"inputs have \{'src': 10, 'tgt': 3\} samples"):
        EvalSet({"src": src, "tgt": tgt[:3]})


def test_pad_trimming_rule_follows_the_outputs(s2s_module):
    from zoo.registry import create_model

    spec = create_model("s2smods:seq2seq").spec
    assert spec.trim_pad_id() is None  # not a text model
    d = spec.to_dict()
    d["preprocess"] = {"kind": "text", "pad_id": 0}
    assert ModelSpec.from_dict(d).trim_pad_id() is None  # per-position outputs: never trimmed
    d["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert ModelSpec.from_dict(d).trim_pad_id() == 0  # a text classifier
    es = load_eval_set(spec, ".", synthetic_n=6, synthetic_seed=1)
    assert es.inputs["src"].shape == (6, 12) and es.inputs["tgt"].shape == (6, 8) and es.y is None
    assert es.inputs["src"].min() >= 1 and es.inputs["src"].max() < VOCAB and "src int64" in es.description


def test_sequence_logits_are_compared_per_position_and_every_output_counts():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4, 6, 10)).astype(np.float32)
    got = ref.copy()
    i = int(np.argsort(ref[2, 3])[-2])
    got[2, 3, i] = ref[2, 3].max() + 0.5  # one position's top-1 flips
    c = compare(ref, got, None, DEFAULT_TOLERANCES["fp32"])
    assert c.top1_agreement == pytest.approx(23 / 24) and not c.passed
    assert any("top1_agreement" in r for r in c.reasons)
    mem = rng.standard_normal((4, 12, 8)).astype(np.float32)
    ok = compare_outputs({"logits": ref, "memory": mem}, {"logits": ref.copy(), "memory": mem + 1e-7},
                         None, DEFAULT_TOLERANCES["fp32"])
    assert ok.passed and ok.outputs["memory"]["passed"] and ok.top1_agreement == 1.0
    bad = compare_outputs({"logits": ref, "memory": mem}, {"logits": ref.copy(), "memory": mem * 1.01},
                          None, DEFAULT_TOLERANCES["fp32"])
    assert not bad.passed and bad.reasons and all(r.startswith("output 'memory': ") for r in bad.reasons)
    gone = compare_outputs({"logits": ref, "memory": mem}, {"logits": ref}, None, DEFAULT_TOLERANCES["fp32"])
    assert not gone.passed and "output 'memory' missing" in gone.reasons[0]


def test_encoder_decoder_through_every_stage_on_user_arrays(s2s_module, tmp_path):
    """`edgeattn run` from the user's module and an .npz of both inputs (no checkpoint of ours): export, simplify,
    fp16 and int8 in the graph, engines (when TensorRT-RTX is installed), verify of every artifact on every CPU
    backend against PyTorch on the evaluation half, both outputs compared."""
    rng = np.random.default_rng(5)
    data = tmp_path / "pairs.npz"
    np.savez(data, src=rng.integers(1, VOCAB, size=(48, 12)), tgt=rng.integers(1, VOCAB, size=(48, 8)))
    art = tmp_path / "art"
    env = {**os.environ, "PYTHONPATH": f"{s2s_module}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "edgeattn", "run", "--models", "s2smods:seq2seq", "--artifacts",
                        str(art), "--data", str(data), "--no-bench", "--strict"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    folder = art / "seq2seq"
    for f in ("fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"):
        assert (folder / f).is_file(), f
    rows = [x for x in json.loads((art / "verify.json").read_text()) if x["model"] == "s2smods:seq2seq"]
    gating = [x for x in rows if x.get("gating", True)]
    assert {x["precision"] for x in gating} >= {"fp32", "fp16", "int8"}
    assert all(x["passed"] for x in gating), [(x["artifact"], x["backend"], x.get("reasons")) for x in gating]
    for x in gating:
        assert x["n_samples"] == 24 and "evaluation half" in x["dataset"]  # the user's held-out half
        assert x["outputs"]["memory"]["passed"] and x["outputs"]["memory"]["cosine_min"] > 0.99
    fp32 = [x for x in gating if x["artifact"] == "fp32.sim.onnx" and x["backend"] == "onnxruntime"][0]
    assert fp32["top1_agreement"] == 1.0 and fp32["scaled_max_abs_diff"] < 1e-4
    assert not fp32["degenerate_reference"] and fp32["reference_spread"] > 0.1
