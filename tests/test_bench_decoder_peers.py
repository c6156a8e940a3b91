"""The decoder peers of bench.generation (bench/decoder_peers.py), checked by value on tiny random models written
with save_pretrained: CTranslate2 converted from the GPT-2 folder gives transformers' greedy tokens, ONNX Runtime
GenAI's builder output gives them on a tiny Llama, a conversion is reused while the folder is unchanged, a missing
package or an architecture the builder does not know is a row that says "skipped: <why>", and `edgeattn bench` on
the tiny GPT-2 writes every peer row (decode tokens/s, TTFT clamped to the context, file size, peak RSS, greedy
tokens compared with ours fp32), the tokens/s-vs-size plot and the report's columns."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bench import decoder_peers as dp
from edgeattn.__main__ import main as edgeattn
from test_generate import texts, tiny_dir  # noqa: F401 - the tiny GPT-2 folder fixture (and the one it needs)

NEW = 10
PEERS = "eager,ct2_fp32,ct2_int8,ortgenai_fp32,openvino_genai"


def prompts(folder: Path, n: int = 3) -> list[list[int]]:
    from runtime.bpe import BPETokenizer

    tok = BPETokenizer.from_file(folder / "tokenizer.json")
    return [tok.encode(t) for t in ("This movie was", "I really did not like the acting in this film, and",
                                    "The plot")][:n]


def hf_greedy(lm, row: list[int], new: int = NEW) -> list[int]:
    ids = torch.tensor([row])
    with torch.no_grad():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                          min_new_tokens=new, pad_token_id=0, eos_token_id=None)
    return out[0, len(row):].tolist()


def peer_greedy(peer: dp.PeerGenerate, rows: list[list[int]], new: int = NEW) -> list[list[int]]:
    assert peer.load(), peer.error
    try:
        return [peer.greedy([r], new)[0] for r in rows]
    finally:
        peer.close()


# ---- CTranslate2 -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct2_fp32(tiny_dir, tmp_path_factory):  # noqa: F811 - the imported fixture
    pytest.importorskip("ctranslate2")
    root = tmp_path_factory.mktemp("peers")
    return root, dp.prepare(dp.DECODER_PEERS["ct2_fp32"], tiny_dir, root)


def test_ctranslate2_greedy_tokens_equal_transformers(ct2_fp32, tiny_dir):  # noqa: F811
    from zoo.gpt2 import load_lm

    root, prep = ct2_fp32
    assert prep["skipped"] is None and not prep["reused"] and prep["convert_seconds"] > 0, prep
    folder = Path(prep["dir"])
    assert folder == root / "ctranslate2-float32" and prep["model_bytes"] == (folder / "model.bin").stat().st_size
    lm = load_lm(tiny_dir)
    rows = prompts(tiny_dir)
    want = [hf_greedy(lm, r) for r in rows]
    got = peer_greedy(dp.build_peer("m", "ct2_fp32", folder, 1), rows)
    assert got == want and all(len(g) == NEW for g in got)
    assert len({tuple(w) for w in want}) > 1  # the prompts lead to different continuations: a real comparison


def test_a_conversion_is_reused_until_the_folder_changes(ct2_fp32, tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    root, first = ct2_fp32
    monkeypatch.setattr(dp, "run_child", lambda *a, **k: pytest.fail("converted again although nothing changed"))
    again = dp.prepare(dp.DECODER_PEERS["ct2_fp32"], tiny_dir, root)
    assert again["reused"] and again["dir"] == first["dir"] and again["convert_seconds"] == first["convert_seconds"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    peer = dp.DECODER_PEERS["ct2_fp32"]
    assert dp.conversion_key(peer, copy) == first["key"]  # the same files: the same key, wherever they lie
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"n_layer": 2', '"n_layer": 1'))
    assert dp.conversion_key(peer, copy) != first["key"]
    assert dp.conversion_key(dp.DECODER_PEERS["ct2_int8"], tiny_dir) != first["key"]


def test_a_missing_package_is_a_skipped_row_not_a_crash(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    from bench.generation import GenerationBench
    from pipeline.artifacts import ModelRef

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` raises ImportError
    prep = dp.prepare(dp.DECODER_PEERS["ct2_int8"], tiny_dir, tmp_path / "peers")
    assert prep["dir"] is None and prep["skipped"].startswith("ctranslate2 is not installed (ModuleNotFoundError")
    assert not (tmp_path / "peers").exists()  # nothing converted, nothing written
    gb = GenerationBench.__new__(GenerationBench)
    gb.ref, gb.cands, gb.workers = ModelRef.resolve(f"hf:{tiny_dir}", tmp_path), [], []
    gb._spawn_decoder_peer("ct2_int8")
    (row,) = gb.cands
    assert row["key"] == "ctranslate2|ctranslate2-int8|int8" and row["is_peer"] and row["precision"] == "int8"
    assert row["skipped"].startswith("ctranslate2 is not installed") and "worker" not in row and not gb.workers


# ---- ONNX Runtime GenAI ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tiny_dir, tmp_path_factory):  # noqa: F811
    """A tiny random Llama (grouped-query attention, head size 16: GenAI's GroupQueryAttention needs a multiple of
    16) with the tiny GPT-2's tokenizer, save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("models") / "tiny_llama"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"), eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).eval().save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_genai_builder_output_gives_transformers_greedy_tokens_on_a_tiny_llama(tiny_llama, tiny_dir,  # noqa: F811
                                                                              tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from transformers import LlamaForCausalLM

    prep = dp.prepare(dp.DECODER_PEERS["ortgenai_fp32"], tiny_llama, tmp_path)
    assert prep["skipped"] is None and prep["model_bytes"] > 0, prep
    lm = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    rows = prompts(tiny_dir)
    got = peer_greedy(dp.build_peer("m", "ortgenai_fp32", prep["dir"], 1), rows)
    assert got == [hf_greedy(lm, r) for r in rows]


# ---- the bench stage ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def benched(tiny_dir, tmp_path_factory):  # noqa: F811
    """hf:<tiny GPT-2> exported and benched (quick) with every decoder peer: (name, artifacts, model folder,
    generation section)."""
    pytest.importorskip("ctranslate2")
    art = tmp_path_factory.mktemp("bench_peers")
    name = f"hf:{tiny_dir}"
    common = ["--models", name, "--artifacts", str(art)]
    assert edgeattn(["export", *common]) == 0
    assert edgeattn(["bench", *common, "--quick", "--threads", "1", "--peers", PEERS]) == 0
    sec = json.loads((art / "bench.json").read_text())["generation"][name]
    return name, art, art / tiny_dir.name, sec


def test_bench_rows_of_the_converted_peers(benched):
    name, art, folder, sec = benched
    cands = {c["key"]: c for c in sec["candidates"]}
    ref = "onnxruntime|fp32.onnx|all"
    assert sec["greedy_reference"] == {"key": ref, "rows": 8, "prompt": 32, "new": 32}
    ct2 = cands["ctranslate2|ctranslate2-float32|float32"]
    assert ct2["error"] is None and ct2["is_peer"] and ct2["peer_kind"] == "ct2_fp32" and ct2["skipped"] is None
    assert set(ct2["decode"]) == {"1", "8"} and all(d["tokens_per_s"] > 0 for d in ct2["decode"].values())
    assert set(ct2["ttft_ms"]) == {"32", "63"}  # 128 and 512 clamped to the 64-position context (prompt + 1 new)
    assert ct2["model_bytes"] == (folder / "peers" / "ctranslate2-float32" / "model.bin").stat().st_size
    assert ct2["conversion"]["convert_seconds"] > 0 and ct2["conversion"]["tool_version"] == "4.8.5"
    assert ct2["greedy"] == {"reference": ref, "identical": True, "rows": 8, "rows_identical": 8,
                             "first_diff": [None] * 8, "first_diff_min": None}
    for c in cands.values():
        if c["skipped"]:
            assert c["error"] == f"skipped: {c['skipped']}" and not c["decode"]
            continue
        assert c["error"] is None and c["peak_rss_bytes"] > 2**20 and c["model_bytes"] > 0, c
        g = c["greedy"]
        assert g["identical"] == (g["first_diff_min"] is None) and g["rows_identical"] == g["first_diff"].count(None)
    assert cands[ref]["greedy"]["identical"] and cands[ref]["model_bytes"] == (folder / "fp32.onnx").stat().st_size
    genai = cands["onnxruntime-genai|onnxruntime-genai-fp32|fp32"]
    assert "(architecture GPT2LMHeadModel)" in genai["skipped"] and "not currently supported" in genai["skipped"]
    assert "optimum-intel" in cands["openvino-genai|openvino-genai-f32|f32"]["skipped"]
    vs = sec["summary"]["versus_peers"]["1"]
    assert vs["fastest_peer"] in cands and vs["fastest_peer_tokens_per_s"] > 0
    assert vs["fastest_verified"] is None  # verify has not run here: nothing of ours is verified


def test_bench_plots_tokens_per_second_against_size_and_the_report_shows_the_peers(benched):
    name, art, folder, _ = benched
    assert (art / "plots" / f"{folder.name}_generation_size.png").stat().st_size > 1000
    assert edgeattn(["report", "--artifacts", str(art)]) == 0
    text = (art / "report.md").read_text()
    gen = text[text.index("## Text generation"):]
    assert "| files MiB | peak RSS MiB | greedy tokens | verified |" in gen
    assert "| ctranslate2 float32 | fp32 |" in gen and "| identical |" in gen and "| reference |" in gen
    assert "| onnxruntime-genai fp32 | skipped: onnxruntime-genai 0.18.0 could not convert" in gen
    header = next(ln for ln in gen.splitlines() if ln.startswith("| how |"))
    skipped = next(ln for ln in gen.splitlines() if ln.startswith("| onnxruntime-genai fp32 |"))
    assert skipped.count(" | ") == header.count(" | ")  # a skipped row fills every column
    assert "compared with onnxruntime|fp32.onnx|all's" in gen
    conv = next(ln for ln in gen.splitlines() if "converted from the same Hugging Face folder" in ln)
    assert "ctranslate2 float32 " in conv and "ctranslate2 int8 " in conv
    assert "onnxruntime-genai" not in conv  # a failed conversion is a skipped row, not a conversion time
    assert f"{folder.name}_generation_size.png" in text


# ---- pieces ------------------------------------------------------------------------------------------------------
def test_greedy_comparison_gives_the_first_differing_position():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9]]
    got = [[1, 2, 3, 4], [5, 6, 0, 8], [9]]
    assert dp.first_difference([1, 2], [1, 2]) is None and dp.first_difference([1, 2], [0, 2]) == 0
    assert dp.compare_greedy(ref, got) == {"identical": False, "rows": 3, "rows_identical": 1,
                                           "first_diff": [None, 2, 1], "first_diff_min": 1}
    assert dp.compare_greedy(ref, ref)["identical"] is True
    with pytest.raises(ValueError, match="got 1 rows, expected 3"):
        dp.compare_greedy(ref, got[:1])


def test_ttft_prompts_are_clamped_to_the_context():
    from bench.generation import plan_points

    def ttft(n):
        return [p["prompt"] for p in plan_points({"max_positions": n}, 8)[1] if p["tag"].startswith("ttft")]

    assert ttft(1024) == [128, 512] and ttft(256) == [128, 255] and ttft(64) == [63]
    assert [p["prompt"] for p in plan_points({"max_positions": 1024}, 8)[1][:2]] == [32, 32]  # the decode pair
