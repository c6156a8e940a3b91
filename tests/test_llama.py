"""Llama-family decoders (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM: rotary positions, RMSNorm,
grouped-query attention, SwiGLU) through ``hf:<dir>`` and the same text-generation stages as GPT-2, on tiny random
configs (2 layers, hidden 64, 4 query heads over 2 KV heads) written with save_pretrained beside a byte-level BPE
fitted on 300 IMDB reviews (test_generate's). By value: the export's parity at every min/opt/max shape, the cache
(B, kv_heads, P, D) in the graph and the spec, simplify's parity, the runtime's greedy tokens equal to transformers'
``generate`` on a left-padded batch and in verify's comparison (ties reported), and a decoder quantize run that
writes its fp16 and int8 graphs with their figures. Qwen2 ties its LM head to the embeddings (and has q/k/v
biases); Mistral's sliding window (48) caps the position table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeattn.__main__ import main as edgeattn
from runtime.errors import InputError
from test_generate import PROMPTS, hf_greedy, texts  # noqa: F401 - texts: a pytest fixture

ARCHS = ("llama", "qwen2", "mistral")
GREEDY_NEW = 16
VERIFY_PROMPTS = 6


def _config(kind: str, vocab: int, eos: int):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, bos_token_id=eos, eos_token_id=eos,
                  pad_token_id=eos, initializer_range=0.2)
    if kind == "llama":
        return transformers.LlamaConfig(**common, tie_word_embeddings=False)
    if kind == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    return transformers.MistralConfig(**common, sliding_window=48, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tokenizer(texts):  # noqa: F811 - the imported fixture
    from zoo.gpt2 import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, 300)


@pytest.fixture(scope="module", params=ARCHS)
def staged(request, tokenizer, tmp_path_factory):
    """A tiny random decoder of one architecture, save_pretrained, then exported and simplified through the CLI:
    (kind, name, artifacts, model folder, the HF model)."""
    import transformers

    from zoo.decoder_arch import ARCHITECTURES
    from zoo.gpt2 import EOS, load_lm

    kind = request.param
    d = tmp_path_factory.mktemp("models") / f"tiny_{kind}"
    cfg = _config(kind, len(tokenizer), tokenizer.convert_tokens_to_ids(EOS))
    torch.manual_seed(0)
    getattr(transformers, ARCHITECTURES[kind].lm_class)(cfg).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    art = tmp_path_factory.mktemp(f"art_{kind}")
    name = f"hf:{d}"
    common = ["--models", name, "--artifacts", str(art)]
    assert edgeattn(["export", *common]) == 0
    assert edgeattn(["simplify", *common]) == 0
    return kind, name, art, art / d.name, load_lm(d)


def _spec(folder):
    return json.loads((folder / "spec.json").read_text())


def test_the_decoder_model_types_are_one_list_and_route_to_text_generation(staged):
    from pipeline.sources import DECODER_MODEL_TYPES, source_of
    from runtime.modelspec import TEXT_GENERATION
    from zoo.decoder_arch import ARCHITECTURES

    kind, name, _, _, lm = staged
    assert set(ARCHITECTURES) == set(DECODER_MODEL_TYPES)
    assert source_of(name).declared_task() == TEXT_GENERATION
    assert type(lm).__name__ == ARCHITECTURES[kind].lm_class


def test_export_keeps_the_kv_heads_in_the_cache_and_matches_pytorch_at_every_shape(staged):
    import onnx

    kind, name, art, folder, lm = staged
    man = json.loads((folder / "manifest.json").read_text())["export"]
    assert man["graph"].startswith("one graph") and len(man["parity"]) >= 8, man["parity"]
    assert max(man["parity"].values()) <= 1e-4 and any("empty past" in k for k in man["parity"])
    pre = _spec(folder)["preprocess"]
    assert (pre["layers"], pre["heads"], pre["attention_heads"], pre["head_dim"]) == (2, 2, 4, 16)
    assert pre["model_type"] == kind and pre["max_positions"] == (48 if kind == "mistral" else 64)
    graph = onnx.load(str(folder / "fp32.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}
    assert dims["past_key_values.1.value"] == ["batch", 2, "past", 16]
    assert dims["present.0.key"] == ["batch", 2, "total", 16]
    assert dims["logits"] == ["batch", "sequence", len(json.loads((folder / "tokenizer.json").read_text())
                                                       ["model"]["vocab"])]
    sim = json.loads((folder / "manifest.json").read_text())["simplify"]
    assert sim["nodes_after"] <= sim["nodes_before"] and sim["parity_max_rel_diff"] <= 1e-5


def test_runtime_greedy_tokens_equal_transformers_generate_on_a_left_padded_batch(staged):
    from runtime.generate import TextGenerator

    kind, name, art, folder, lm = staged
    with TextGenerator(folder / "fp32.sim.onnx", threads=1) as g:
        rows = [g.tokenizer.encode(p) for p in PROMPTS]
        ours = [r.tokens for r in g.generate(rows, max_new_tokens=GREEDY_NEW)]
        alone = g.generate([rows[1]], max_new_tokens=GREEDY_NEW)[0].tokens
    ref = hf_greedy(lm, rows, GREEDY_NEW)
    assert ours == ref and alone == ours[1]
    assert sum(len(r) for r in ours) > len(rows)  # not all stopped on the first token


def test_verify_compares_greedy_tokens_with_ties_reported(staged):
    from verify.generation import verify_generation

    kind, name, art, folder, lm = staged
    rep = verify_generation(name, art, "fp32.sim.onnx", backends=("onnxruntime",), n_prompts=VERIFY_PROMPTS,
                            max_new_tokens=GREEDY_NEW, batch=3, threads=1, write=False)
    row = rep["backends"]["onnxruntime"]
    assert rep["passed"] and row["prompts"] == VERIFY_PROMPTS and row["mismatches"] == []
    assert row["identical"] + len(row["ties"]) == VERIFY_PROMPTS and row["max_scaled_logit_diff"] < 1e-4
    for t in row["ties"]:  # a tie is a step where PyTorch's own top two are closer than the fp32 tolerance
        assert t["gap"] <= t["threshold"]


def test_a_decoder_quantize_run_writes_fp16_and_int8_with_their_figures(staged):
    import onnx

    from optimize.decoder_quant import DecoderQuantOptions, quantize_decoder
    from optimize.int8_budget import QuantOptions

    kind, name, art, folder, lm = staged
    if kind != "llama":
        pytest.skip("one quantize run (Llama: grouped-query attention, an untied head); Qwen2 and Mistral differ "
                    "from it in the export (biases, tied head, window), checked above, and test_decoder_quant runs a "
                    "tied head")
    small = dict(block=32, calib_tokens=1024, eval_tokens=2048, sweep_tokens=1024, bench_rounds=1, bench_new_tokens=4)
    out = quantize_decoder(folder, QuantOptions(threads=1), progress=False, dopts=DecoderQuantOptions(**small))
    fp16 = out["fp16"]
    assert fp16["file"] == "fp16.onnx" and fp16["io_types"]["past_key_values.0.key"] == "FLOAT16"
    assert fp16["check"]["n_tokens"] == 2048 and fp16["check"]["nonfinite"] == 0 and fp16["padded_row"]["finite"]
    assert {"Pow", "ReduceMean", "Sqrt"} <= set(fp16["fp32_ops_present"])  # RMSNorm's statistics stay float32
    assert fp16["passed"] and fp16["check"]["top1_agreement"] >= fp16["budget"]["min_top1_agreement"]
    qdq = out["int8"]["qdq"]
    assert qdq["file"] == "int8.qdq.onnx" and qdq["counts"]["DequantizeLinear"] > 0
    assert qdq["val"]["n_tokens"] == 2048 and 0.0 < qdq["val"]["top1_agreement"] <= 1.0
    assert qdq["passed"] or qdq["miss"]  # within the budget, or it says what missed (random weights: flat logits)
    nodes = {n.op_type for n in onnx.load(str(folder / "int8.qdq.onnx")).graph.node}
    assert "DequantizeLinear" in nodes and np.isfinite(qdq["val"]["perplexity"])


def test_architectures_outside_the_table_and_sequence_dependent_rope_are_refused():
    from transformers import LlamaConfig

    from zoo.built import RegistryError
    from zoo.decoder_arch import decoder_dims

    with pytest.raises(RegistryError, match=r"model 'm': model_type 'bert' is not a decoder the pipeline builds; "
                                            r"expected one of \['gpt2', 'llama', 'mistral', 'qwen2'\]"):
        decoder_dims(type("C", (), {"model_type": "bert"})(), "m")
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, max_position_embeddings=4096,
                      rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(RegistryError, match="rope type 'dynamic' changes its frequencies with the sequence length"):
        decoder_dims(cfg, "m")
    big = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=1,
                      max_position_embeddings=131072)
    d = decoder_dims(big, "m")
    assert (d.kv_heads, d.attention_heads, d.head_dim, d.max_positions) == (1, 4, 16, 2048)


def test_llama_imdb_trains_through_the_train_stage_and_loads_as_a_decoder(tmp_path, monkeypatch):
    """``edgeattn train --models llama_imdb`` with a tiny LlamaRecipe: a LlamaForCausalLM with grouped-query
    attention saved where the pipeline finds it, train.json's perplexity and floor, and the spec's KV heads."""
    from zoo import gpt2

    tiny = gpt2.LlamaRecipe(vocab_size=300, n_layer=1, n_embd=32, n_head=4, kv_heads=2, intermediate=64,
                            n_positions=64, block_size=32, batch_size=4, max_steps=3, warmup_steps=1, eval_tokens=128,
                            max_train_docs=150, budget_seconds=120)
    monkeypatch.setitem(gpt2.LLAMA_RECIPES, "full", tiny)
    assert edgeattn(["train", "--models", "llama_imdb", "--artifacts", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "llama_imdb" / "train.json").read_text())
    assert doc["steps"] == 3 and doc["config"]["architecture"] == "LlamaForCausalLM"
    assert doc["config"]["kv_heads"] == 2 and doc["recipe"]["kv_heads"] == 2 and doc["n_val_tokens"] == 128
    assert doc["val_perplexity"] > 1 and doc["unigram_perplexity"] > 1
    built = gpt2.load_gpt2("llama_imdb", artifacts=tmp_path)
    pre = built.spec.preprocess
    assert (pre["model_type"], pre["heads"], pre["attention_heads"], pre["head_dim"]) == ("llama", 2, 4, 8)
    assert built.config["architecture"] == "LlamaForCausalLM" and built.config["kv_heads"] == 2
    assert gpt2.recipe_for("demo", model="llama_imdb") == (gpt2.LLAMA_DEMO_RECIPE, (tiny,))
    assert gpt2.recipe_for("full", 5.0, model="gpt2_imdb")[0].budget_seconds == 5.0


# ---- the tokenizers these families ship: SentencePiece BPE with byte fallback (Llama-2, Mistral), Qwen2's -----------
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_folder_with_its_familys_own_tokenizer_generates_text_through_the_runtime(kind, texts, tmp_path):
    """A Llama folder holding a Llama-2-style tokenizer.json (Prepend/Replace, <0xNN> byte fallback, BOS by the
    post-processor; tests/test_bpe.py's) and a Qwen2 folder holding Qwen2Tokenizer's (its Split pattern, NFC): the
    export takes the folder, runtime.bpe reads the exported tokenizer.json with the ids transformers' own tokenizer
    gives (BOS included), greedy tokens equal transformers' generate, and the text decodes as transformers decodes."""
    import transformers

    from runtime.bpe import BPETokenizer
    from runtime.generate import TextGenerator
    from test_bpe import _llama2_legacy, _qwen2
    from verify.generation import verify_generation
    from zoo.gpt2 import load_lm

    if kind == "llama":
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_llama2_legacy(texts), bos_token="<s>",
                                                   eos_token="</s>", unk_token="<unk>")
        eos = tok.convert_tokens_to_ids("</s>")
    else:
        tok = _qwen2(texts)
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
    d = tmp_path / f"{kind}_own_tokenizer"
    cfg = _config(kind, len(tok), eos)
    torch.manual_seed(0)
    getattr(transformers, "LlamaForCausalLM" if kind == "llama" else "Qwen2ForCausalLM")(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    art = tmp_path / "art"
    assert edgeattn(["export", "--models", f"hf:{d}", "--artifacts", str(art)]) == 0
    folder = art / d.name
    ours, theirs = BPETokenizer.from_file(folder / "tokenizer.json"), transformers.AutoTokenizer.from_pretrained(str(d))
    prompt = "Wow, the café scene 😀 in 東京 was great! 12345\r\nIt's  odd"
    ids = ours.encode(prompt)
    assert ids == theirs(prompt)["input_ids"] and (ids[0] == 1) == (kind == "llama")
    if kind == "llama":
        assert any(theirs.convert_ids_to_tokens(i).startswith("<0x") for i in ids)  # byte fallback took the emoji
    assert ours.decode(ids) == prompt  # a round trip: BOS skipped, the prepended '▁' stripped
    with TextGenerator(folder / "fp32.onnx", threads=1) as g:
        got = g.generate(prompt, max_new_tokens=GREEDY_NEW)[0]
    assert got.prompt_ids == ids and got.tokens == hf_greedy(load_lm(d), [ids], GREEDY_NEW)[0]
    assert got.text == theirs.decode(got.tokens, skip_special_tokens=True)
    rep = verify_generation(f"hf:{d}", art, "fp32.onnx", backends=("onnxruntime",), n_prompts=4,
                            max_new_tokens=GREEDY_NEW, batch=2, threads=1, write=False)
    assert rep["passed"] and rep["backends"]["onnxruntime"]["mismatches"] == []  # verify's prompts: runtime.bpe's ids
    # the decoder's teacher-forced windows (quantize and verify): the spec's eos_id separates the reviews, so a
    # tokenizer without GPT-2's <|endoftext|> (Llama-2's </s>) is judged too; without it, a typed refusal
    from calibration.windows import text_windows

    spec_eos = _spec(folder)["preprocess"]["eos_id"]
    assert spec_eos == eos
    w = text_windows(folder / "tokenizer.json", "val", 512, 64, "imdb", spec_eos)
    x, y = w.inputs["input_ids"], w.inputs["labels"]
    assert x.shape == (8, 64) and x[0, 0] == eos and (y[:, :-1] == x[:, 1:]).all()
    if kind == "llama":
        with pytest.raises(InputError, match="and no eos_id was given"):
            text_windows(folder / "tokenizer.json", "val", 512, 64, "imdb")
