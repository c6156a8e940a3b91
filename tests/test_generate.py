"""Text generation: a tiny random GPT-2 (2 layers, d=32, a ~300-token byte-level BPE fitted on 300 IMDB train
reviews) written with save_pretrained, exported with its KV cache (export.decoder_export) and run by the thin
runtime (runtime.generate, runtime.bpe), checked against transformers and tokenizers by value: export parity at
min/opt/max with an empty past, cache vs no-cache logits, greedy tokens equal to ``generate(do_sample=False)``,
left-padded batches equal to each prompt alone, stop tokens, seeded sampling, streaming, the tokenizer JSON read
without tokenizers, the CLI, and the greedy comparison of verify.generation (ties vs mismatches)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from runtime.errors import InputError

PROMPTS = ["This movie was", "I really did not like the acting in this film, and", "A", "The plot"]
NEW = 12


@pytest.fixture(scope="module")
def texts():
    from zoo.data import load_imdb

    return load_imdb().train.x[:300]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, texts):
    """A tiny random GPT-2 + its BPE tokenizer, save_pretrained into a folder (what a user's hf:<dir> is)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from zoo.gpt2 import EOS, train_bpe_tokenizer

    d = tmp_path_factory.mktemp("models") / "tiny_gpt2"
    tok = train_bpe_tokenizer(texts, 300)
    eos = tok.convert_tokens_to_ids(EOS)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos,
                     eos_token_id=eos, pad_token_id=eos, initializer_range=0.2)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """hf:<dir> exported into an artifacts folder: (name, artifacts, manifest section)."""
    from export.decoder_export import export_gpt2

    art = tmp_path_factory.mktemp("art")
    name = f"hf:{tiny_dir}"
    return name, art, export_gpt2(name, art)


@pytest.fixture(scope="module")
def onnx_path(exported):
    name, art, _ = exported
    return art / "tiny_gpt2" / "fp32.onnx"


@pytest.fixture(scope="module")
def lm(tiny_dir):
    from zoo.gpt2 import load_lm

    return load_lm(tiny_dir)


@pytest.fixture(scope="module")
def gen(onnx_path):
    from runtime.generate import TextGenerator

    with TextGenerator(onnx_path, threads=1) as g:
        yield g


def hf_greedy(lm, rows, new=NEW, stop=None):
    """transformers' greedy generate on a left-padded batch -> new tokens per row, cut after the stop token."""
    from runtime.generate import left_pad

    eos = lm.config.eos_token_id
    ids, mask = left_pad(rows, eos)
    with torch.no_grad():
        out = lm.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                          max_new_tokens=new, pad_token_id=eos, eos_token_id=stop if stop is not None else eos)
    res = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t == (stop if stop is not None else eos)), len(row))
        res.append(row[:cut])
    return res


# ---- tokenizer ------------------------------------------------------------------------------------------------------
def test_bpe_json_encodes_and_decodes_like_tokenizers(tiny_dir, texts):
    from tokenizers import Tokenizer

    from runtime.bpe import BPETokenizer

    path = tiny_dir / "tokenizer.json"
    ours, ref = BPETokenizer.from_file(path), Tokenizer.from_file(str(path))
    samples = list(texts[:60]) + [
        "", " ", "  two  spaces   and\ttabs\n\nnewlines  \n", "it's I'M we'll 'S ''s x.'s don't",
        "123abc 4,5 ½ ٣ 一二三",
        "émigré naïve café 😀 🎬🍿 <|endoftext|> after", "<|endoftext|><|endoftext|>x", "\x1c\x1d odd\u2028sep\u00a0nb\u3000",
        "Ǆ ǅ ʰ ª", "z\u200bzero width"]
    for t in samples:
        assert ours.encode(t) == ref.encode(t).ids, repr(t[:80])
        ids = ref.encode(t).ids
        assert ours.decode(ids) == ref.decode(ids)
    every = list(range(ours.vocab_size))  # every token once: invalid UTF-8 pieces included
    assert ours.decode(every) == ref.decode(every)
    assert ours.decode(every, skip_special_tokens=False) == ref.decode(every, skip_special_tokens=False)


def test_a_folder_with_vocab_and_merges_only_gives_the_same_tokenizer(tiny_dir, tmp_path):
    """A GPT-2 folder from the slow tokenizer (vocab.json + merges.txt, no tokenizer.json): the export's
    tokenizer.json, read by runtime.bpe, encodes as the original."""
    import shutil

    from tokenizers import Tokenizer

    from runtime.bpe import BPETokenizer
    from zoo.gpt2 import tokenizer_json

    d = tmp_path / "slow"
    shutil.copytree(tiny_dir, d)
    spec = json.loads((d / "tokenizer.json").read_text())
    (d / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in spec["model"]["merges"]))
    (d / "tokenizer.json").unlink()
    ours, ref = BPETokenizer(json.loads(tokenizer_json(d))), Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    for t in ("This movie was great, wasn't it?", "  a  b <|endoftext|> c"):
        assert ours.encode(t) == ref.encode(t).ids


# ---- model and export -----------------------------------------------------------------------------------------------
def test_registry_recognises_gpt2_dirs_and_the_wrapper_equals_hf(tiny_dir, lm):
    from runtime.generate import DecoderInfo, decoder_feed
    from zoo.registry import create_model

    built = create_model(f"hf:{tiny_dir}")
    assert built.spec.task == "text_generation" and built.spec.preprocess["layers"] == 2
    assert [t.name for t in built.spec.inputs][:3] == ["input_ids", "attention_mask", "position_ids"]
    info = DecoderInfo.from_spec(built.spec.to_dict())
    feed = decoder_feed(info, 3, 7, 0, seed=1)  # a prefill with left padding in row 1
    args = [torch.from_numpy(feed[t.name]) for t in built.spec.inputs]
    with torch.no_grad():
        ours = built.module(*args)[0].numpy()
        ref = lm(input_ids=args[0], attention_mask=args[1], position_ids=args[2]).logits.numpy()
    real = feed["attention_mask"].astype(bool)
    assert not real.all() and np.abs(ours[real] - ref[real]).max() <= 1e-5


def test_missing_pieces_are_named(tmp_path):
    from zoo.built import RegistryError
    from zoo.gpt2 import GPT2_TOKENIZERS
    from zoo.hf import check_dir

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(RegistryError, match=r"has no weights \(model.safetensors or pytorch_model.bin\), no "
                                            r"tokenizer \(tokenizer.json, or vocab.json"):
        check_dir(tmp_path, "hf:x", GPT2_TOKENIZERS)


def test_export_parity_at_min_opt_max_with_an_empty_past(exported, onnx_path):
    import onnx

    _, _, section = exported
    parity = section["parity"]
    assert section["exporter"] == "dynamo" and section["failed_exporters"] == []
    assert any("past 0" in k and "batch 1, sequence 1" in k for k in parity)  # the empty past, at min sizes
    assert any("batch 32" in k and "past 0" in k for k in parity) and any("batch 32, sequence 1" in k for k in parity)
    assert "(batch 2, sequence 64, past 0)" in " ".join(parity) and "(batch 2, sequence 1, past 63)" in " ".join(parity)
    assert max(parity.values()) <= 1e-4
    g = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.input) + list(g.output)}
    assert dims["attention_mask"] == ["batch", "total"] and dims["past_key_values.1.value"] == ["batch", 2, "past", 16]
    assert dims["present.0.key"] == ["batch", 2, "total", 16] and dims["logits"] == ["batch", "sequence", 300]
    assert (onnx_path.parent / "tokenizer.json").is_file() and (onnx_path.parent / "spec.json").is_file()


def test_cache_and_no_cache_logits_equal(onnx_path):
    """The whole sequence in one prefill vs a 5-token prefill then one token at a time through the cache."""
    from runtime.generate import OrtDecoder, left_pad, positions

    rows = [[5, 60, 61, 62, 100, 7, 8, 9, 250, 11, 12], [40, 41, 42, 43, 44, 45, 46, 47]]
    ids, mask = left_pad(rows, 0)
    pos = positions(mask)
    dec = OrtDecoder(onnx_path, threads=1)
    dec.start(2, ids.shape[1], max_sequence=ids.shape[1])
    full = dec.step(ids, mask, pos).copy()
    dec.start(2, ids.shape[1], max_sequence=5)
    steps = [dec.step(ids[:, :5], mask[:, :5], pos[:, :5]).copy()]
    for t in range(5, ids.shape[1]):
        steps.append(dec.step(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1]).copy())
    cached = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    assert dec.past_length == ids.shape[1]
    assert np.abs(full[real] - cached[real]).max() <= 1e-4
    dec.close()


# ---- generation -----------------------------------------------------------------------------------------------------
def test_greedy_equals_transformers_and_padding_changes_nothing(gen, lm):
    rows = [gen.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(r) for r in rows}) > 1  # different lengths: the batch is left-padded
    batch = gen.generate(PROMPTS, max_new_tokens=NEW)
    assert [r.tokens for r in batch] == hf_greedy(lm, rows)
    for p, r in zip(PROMPTS, batch):
        alone = gen.generate(p, max_new_tokens=NEW)[0]
        assert alone.tokens == r.tokens and alone.prompt_ids == r.prompt_ids
        assert r.text == gen.tokenizer.decode(r.tokens)


def test_every_cpu_backend_gives_the_same_tokens(onnx_path, gen):
    from runtime.generate import TextGenerator

    want = [r.tokens for r in gen.generate(PROMPTS, max_new_tokens=NEW)]
    for backend, binding in (("onnxruntime", False), ("openvino", True)):
        with TextGenerator(onnx_path, backend=backend, io_binding=binding, threads=1) as g:
            assert [r.tokens for r in g.generate(PROMPTS, max_new_tokens=NEW)] == want, backend


def test_a_stop_token_stops_its_row_only(gen, lm):
    free = gen.generate(PROMPTS, max_new_tokens=NEW)
    stop = free[0].tokens[3]
    k = free[0].tokens.index(stop)
    got = gen.generate(PROMPTS, max_new_tokens=NEW, stop_tokens=[stop])
    assert got[0].tokens == free[0].tokens[:k + 1] and got[0].finish_reason == "stop"
    for f, g in zip(free, got):  # every row ends at its own first stop token, the others run to the end
        cut = f.tokens[:f.tokens.index(stop) + 1] if stop in f.tokens else f.tokens
        assert g.tokens == cut and g.finish_reason == ("stop" if stop in f.tokens else "length")
    assert [g.tokens for g in got] == hf_greedy(lm, [r.prompt_ids for r in got], stop=stop)
    steps = list(gen.stream(PROMPTS, max_new_tokens=NEW, stop_tokens=[stop]))
    assert steps[k][0] == stop and all(s[0] == -1 for s in steps[k + 1:])  # finished: -1 from then on
    assert gen.generate(PROMPTS, max_new_tokens=NEW, stop_tokens=[])[0].finish_reason == "length"


def test_the_same_seed_gives_the_same_samples(gen):
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=1.3, top_k=50, top_p=0.95)
    a = [r.tokens for r in gen.generate(PROMPTS, seed=7, **kw)]
    assert a == [r.tokens for r in gen.generate(PROMPTS, seed=7, **kw)]
    assert a != [r.tokens for r in gen.generate(PROMPTS, seed=8, **kw)]
    greedy = [r.tokens for r in gen.generate(PROMPTS, max_new_tokens=NEW)]
    assert [r.tokens for r in gen.generate(PROMPTS, seed=3, max_new_tokens=NEW, do_sample=True, top_k=1)] == greedy


def test_warp_applies_temperature_top_k_top_p():
    from runtime.generate import GenerationConfig, warp

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    p = warp(logits, GenerationConfig(do_sample=True))
    assert np.allclose(p, [[0.5, 0.3, 0.15, 0.05]])
    assert np.allclose(warp(logits, GenerationConfig(do_sample=True, top_k=2)), [[0.625, 0.375, 0, 0]])
    assert np.allclose(warp(logits, GenerationConfig(do_sample=True, top_p=0.79)), [[0.625, 0.375, 0, 0]])
    kept3 = np.array([[0.5, 0.3, 0.15, 0]]) / 0.95
    assert np.allclose(warp(logits, GenerationConfig(do_sample=True, top_p=0.81)), kept3)
    hot = warp(logits, GenerationConfig(do_sample=True, temperature=2.0))
    assert np.allclose(hot, np.sqrt([0.5, 0.3, 0.15, 0.05]) / np.sqrt([0.5, 0.3, 0.15, 0.05]).sum())


def test_streaming_yields_the_tokens_of_generate(gen):
    steps = list(gen.stream(PROMPTS, max_new_tokens=NEW))
    batch = gen.generate(PROMPTS, max_new_tokens=NEW)
    assert len(steps) == NEW and all(s.shape == (len(PROMPTS),) for s in steps)
    assert [[int(s[i]) for s in steps] for i in range(len(PROMPTS))] == [r.tokens for r in batch]
    assert "".join(gen.stream_text(PROMPTS[0], max_new_tokens=NEW, stop_tokens=[])) == batch[0].text


def test_bad_requests_say_what_was_expected(gen):
    with pytest.raises(InputError, match=r"prompt of 3 tokens \+ max_new_tokens 63: needs 65 positions, expected at "
                                         r"most 64 \(the model's position table\)"):
        gen.generate([[1, 2, 3]], max_new_tokens=63)
    with pytest.raises(InputError, match=r"temperature: got 0, expected > 0; top_p: got 1.5"):
        gen.generate("x", do_sample=True, temperature=0, top_p=1.5)
    with pytest.raises(InputError, match=r"prompt 1: got no tokens"):
        gen.generate(["x", ""])
    with pytest.raises(InputError, match=r"token ids \[300\] are outside 0..299"):
        gen.generate([[1, 300]])


def test_cli_generates_and_streams(onnx_path, capsys):
    from runtime.__main__ import main

    assert main([str(onnx_path), "--generate", "This movie was", "--max-new-tokens", "5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("This movie was") and out.endswith("\n")
    assert main([str(onnx_path), "--generate", "A", "--generate", "The plot", "--json", "--temperature", "0.8",
                 "--seed", "1", "--max-new-tokens", "4"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["prompt"] for r in rows] == ["A", "The plot"] and all(len(r["tokens"]) == 4 for r in rows)
    assert main([str(onnx_path), "--generate", "x", "--max-new-tokens", "100"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "expected at most 64" in err.err


def test_generation_imports_no_torch_transformers_tokenizers_or_onnx(onnx_path):
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers', 'tokenizers', 'onnx'):\n"
            "            raise ImportError(f'{name} is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from runtime.generate import generate\n"
            f"r = generate({str(onnx_path)!r}, ['This movie was', 'A'], max_new_tokens=3)\n"
            "print(len(r[0].tokens), len(r[1].tokens))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "3 3", out.stderr[-2000:]


# ---- verify ---------------------------------------------------------------------------------------------------------
def test_verify_generation_counts_identical_rows_on_every_cpu_backend(exported):
    from verify.generation import verify_generation

    name, art, _ = exported
    r = verify_generation(name, art, n_prompts=6, max_new_tokens=8, batch=3, threads=1)
    assert r["passed"] and set(r["backends"]) == {"onnxruntime", "openvino"}
    for b in r["backends"].values():
        assert b["identical"] + len(b["ties"]) == b["prompts"] == 6 and b["max_scaled_logit_diff"] < 1e-4
    assert json.loads((art / "tiny_gpt2" / "generation.json").read_text())["passed"]


def test_a_difference_is_a_tie_only_when_torch_itself_is_undecided():
    from verify.generation import compare_row

    rl = np.zeros((3, 5), np.float32)
    rl[:, 0] = [3.0, 2.0, 1.0]
    rl[:, 1] = [1.0, 2.0 - 1e-6, 0.5]  # step 1: tokens 0 and 1 within 1e-6
    assert compare_row(([0, 0, 0], rl), ([0, 0, 0], rl), 1e-4)["verdict"] == "identical"
    tie = compare_row(([0, 0, 0], rl), ([0, 1, 4], rl), 1e-4)
    assert tie["verdict"] == "tie" and tie["step"] == 1 and tie["gap"] < tie["tie_threshold"]
    bad = compare_row(([0, 0, 0], rl), ([1, 0, 0], rl), 1e-4)
    assert bad["verdict"] == "mismatch" and bad["step"] == 0 and bad["gap"] == pytest.approx(2.0)


# ---- training -------------------------------------------------------------------------------------------------------
def test_unigram_floor_and_a_tiny_training_run(tmp_path):
    from zoo.gpt2 import GPT2Recipe, train_gpt2, unigram_perplexity

    assert unigram_perplexity(np.arange(10), np.arange(10), 10) == pytest.approx(10.0)  # uniform: ppl = vocab
    assert unigram_perplexity(np.zeros(98, int), np.zeros(5, int), 2) == pytest.approx(100 / 99)
    recipe = GPT2Recipe(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=64, block_size=32, batch_size=4,
                        max_steps=6, warmup_steps=2, eval_tokens=256, max_train_docs=200, budget_seconds=120)
    r = train_gpt2(tmp_path, recipe, progress=False)
    assert r["steps"] == 6 and r["stopped_by"] == "max_steps" and r["n_val_tokens"] == 256
    assert r["val_perplexity"] > 1 and r["unigram_perplexity"] > 1 and r["config"]["vocab_size"] == 300
    assert json.loads((tmp_path / "gpt2_imdb" / "train.json").read_text())["config_hash"] == r["config_hash"]
    from zoo.registry import create_model

    built = create_model("gpt2_imdb", artifacts=tmp_path)  # loads back from <artifacts>/gpt2_imdb/hf
    assert built.spec.dataset == "imdb" and built.spec.preprocess["vocab_size"] == 300


# ---- #22 item 11: only the last position's logits leave the device ---------------------------------------------------
def test_last_position_copy_moves_only_b_times_v_values():
    """On a GPU provider the prefill's logits (B, S, V) stay on the device; one strided cudaMemcpy2D brings back the
    (B, V) rows the next token is chosen from (checked on the cudart stand-in, which counts the bytes copied)."""
    import ctypes

    from devtools.standin_tensorrt import FakeCudart
    from runtime.generate import copy_last_positions

    cudart = FakeCudart()
    b, s, v = 3, 7, 11
    logits = np.random.default_rng(0).standard_normal((b, s, v)).astype(np.float32)
    dev = cudart.cudaMalloc(logits.nbytes)[1]
    ctypes.memmove(dev, logits.ctypes.data, logits.nbytes)
    host = np.zeros(b * v, np.float32)  # pageable: allowed for a synchronous copy
    copy_last_positions(cudart, host, dev, b, s)
    np.testing.assert_array_equal(host.reshape(b, v), logits[:, -1, :])
    assert cudart.copied == {2: b * v * 4}  # not b * s * v * 4
    with pytest.raises(Exception, match="cudaMemcpy2D of the last position's logits"):
        copy_last_positions(cudart, host, dev + logits.nbytes, b, s)  # outside the device allocation
    cudart.cudaFree(dev)


def test_decoder_step_last_only_and_the_loop_asks_for_it(onnx_path, gen, monkeypatch):
    from runtime.generate import OrtDecoder, left_pad, positions

    ids, mask = left_pad([[5, 60, 61, 62, 100], [40, 41, 42]], 0)
    pos = positions(mask)
    dec = OrtDecoder(onnx_path, threads=1)
    dec.start(2, ids.shape[1], max_sequence=ids.shape[1])
    full = dec.step(ids, mask, pos).copy()
    dec.start(2, ids.shape[1], max_sequence=ids.shape[1])
    last = dec.step(ids, mask, pos, last_only=True)
    assert last.shape == (2, 1, full.shape[2])
    np.testing.assert_array_equal(last[:, 0], full[:, -1])
    dec.close()
    asked = []
    real = gen.decoder.step
    monkeypatch.setattr(gen.decoder, "step", lambda *a, **k: asked.append(k.get("last_only")) or real(*a, **k))
    gen.generate("This movie was", max_new_tokens=3)
    assert asked == [True, True, True]


def test_huge_pages_change_no_token_and_no_logit(onnx_path):
    """OrtDecoder's huge_pages (runtime.hugepages, on by default) moves the weights, never their values: greedy
    tokens of a left-padded batch and the logits of every step are bitwise those of a session without it."""
    from runtime.generate import TextGenerator

    outs = []
    for huge in (False, True):
        with TextGenerator(onnx_path, threads=1, huge_pages=huge) as g:
            assert (g.decoder.huge_pages is None) == (not huge)
            outs.append(g.generate(PROMPTS, max_new_tokens=NEW, stop_tokens=(), output_logits=True))
    for a, b in zip(*outs):
        assert a.tokens == b.tokens and len(a.tokens) == NEW
        np.testing.assert_array_equal(a.logits, b.logits)
