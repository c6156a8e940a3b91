"""A tiny GPT-2 (tests/test_generate.py's fixture) through the stage CLIs, as `make gpt2` runs them: export ->
simplify -> verify -> bench (quick) -> report, checked by value: one verify row per decoder artifact x CPU backend
with every prompt token-identical or a counted tie, the generation section of bench.json (decode tokens/s > 0 for
every candidate, KV bytes per token = 2 x layers x heads x head_dim x 4), the plot and the report's section; and
``edgeattn train --models gpt2_imdb`` routed to zoo.gpt2 (a demo request reuses a model of the full recipe)."""
from __future__ import annotations

import json

import pytest

from edgeattn.__main__ import main as edgeattn
from test_generate import texts, tiny_dir  # noqa: F401 - the tiny GPT-2 folder fixture (and the one it needs)
from verify.plan import openvino_available

PROMPTS = 6


@pytest.fixture(scope="module")
def staged(tiny_dir, tmp_path_factory):  # noqa: F811 - the imported fixture
    """hf:<tiny dir> through export, simplify, verify and bench: (name, artifacts folder, model folder)."""
    art = tmp_path_factory.mktemp("stages")
    name = f"hf:{tiny_dir}"
    common = ["--models", name, "--artifacts", str(art)]
    assert edgeattn(["export", *common]) == 0
    assert edgeattn(["simplify", *common]) == 0
    assert edgeattn(["verify", *common, "--limit", str(PROMPTS), "--threads", "1", "--strict"]) == 0
    assert edgeattn(["bench", *common, "--quick", "--peers", "eager", "--threads", "1"]) == 0
    return name, art, art / tiny_dir.name


def _spec(folder):
    return json.loads((folder / "spec.json").read_text())


def test_export_and_simplify_write_checked_decoder_graphs(staged, capsys):
    name, art, folder = staged
    man = json.loads((folder / "manifest.json").read_text())
    assert man["export"]["graph"].startswith("one graph") and max(man["export"]["parity"].values()) <= 1e-4
    sim = man["simplify"]
    assert sim["file"] == "fp32.sim.onnx" and sim["nodes_after"] <= sim["nodes_before"]
    assert sim["parity_max_rel_diff"] <= 1e-5
    capsys.readouterr()
    assert edgeattn(["export", "--models", name, "--artifacts", str(art)]) == 0  # nothing changed: reused
    assert "up to date" in capsys.readouterr().out
    assert edgeattn(["export", "--models", name, "--artifacts", str(art), "--opset", "17"]) == 2
    assert "--opset does not apply to a decoder with KV cache (got 17" in capsys.readouterr().err


def test_verify_writes_one_gating_row_per_artifact_and_cpu_backend(staged, capsys):
    name, art, folder = staged
    rows = [r for r in json.loads((art / "verify.json").read_text()) if r["model"] == name]
    backends = {"onnxruntime", "openvino"} if openvino_available() else {"onnxruntime"}
    # the raw export on ONNX Runtime, the simplified graph (what is deployed) on every CPU backend
    assert {(r["artifact"], r["backend"]) for r in rows} == {("fp32.onnx", "onnxruntime")} | {
        ("fp32.sim.onnx", b) for b in backends}
    new = min(64, _spec(folder)["preprocess"]["max_positions"] - 16)  # 64 new tokens where the positions allow
    for r in rows:
        assert r["task"] == "text_generation" and r["gating"] and r["passed"], r
        assert r["n_samples"] == PROMPTS and r["token_identical"] + r["n_ties"] == PROMPTS
        assert r["n_mismatches"] == 0 and len(r["ties"]) == r["n_ties"] and r["max_new_tokens"] == new
        assert r["max_scaled_logit_diff"] < 1e-4 and r["precision"] == "fp32"
    md = (art / "verify.md").read_text()
    assert f"## {name} (text generation)" in md and "| fp32.sim.onnx | onnxruntime | fp32 | 6 |" in md
    capsys.readouterr()
    assert edgeattn(["verify", "--models", name, "--artifacts", str(art), "--limit", str(PROMPTS)]) == 0
    assert f"verify {name}: up to date ({len(rows)} rows reused" in capsys.readouterr().out


def test_bench_writes_the_generation_section(staged):
    name, art, folder = staged
    doc = json.loads((art / "bench.json").read_text())
    sec = doc["generation"][name]
    pre = _spec(folder)["preprocess"]
    kv = 2 * pre["layers"] * pre["heads"] * pre["head_dim"] * 4  # fp32 cache
    assert kv == 2 * 2 * 2 * 16 * 4 and sec["kv_bytes_per_token_fp32"] == kv
    cands = {c["key"]: c for c in sec["candidates"]}
    assert "pytorch|pytorch|eager-generate" in cands and "onnxruntime|fp32.sim.onnx|all" in cands
    for c in cands.values():
        assert c["error"] is None and c["kv_bytes_per_token"] == kv, c
        assert set(c["decode"]) == {"1", "8"} and all(d["tokens_per_s"] > 0 for d in c["decode"].values())
        assert c["decode"]["1"]["new_tokens"] == min(64, pre["max_positions"] - 32)
        assert set(c["ttft_ms"]) == {"32", "63"} and c["ttft_ms"]["32"] > 0  # 128 and 512 clamped to 64 - 1
        assert c["is_peer"] or c["verified"] is True
    s = sec["summary"]
    assert s["fastest_verified"]["key"] in cands and s["eager"]["key"] == "pytorch|pytorch|eager-generate"
    assert s["speedup_vs_eager"] > 0 and s["target"]["target"] == 2.0 and isinstance(s["target"]["met"], bool)
    assert (art / "plots" / f"{folder.name}_generation.png").stat().st_size > 1000


def test_report_has_a_generation_section(staged):
    name, art, _ = staged
    assert edgeattn(["report", "--artifacts", str(art)]) == 0
    text = (art / "report.md").read_text()
    gen = text[text.index("## Text generation"):]
    assert f"### {name}" in gen and "| how | precision | TTFT 32 ms | TTFT 63 ms | tok/s b1 | tok/s b8 |" in gen
    assert "| fp32.onnx | onnxruntime | fp32 | 6 | " in gen and "**Fastest verified:" in gen
    assert "decode tokens/s at batch 1, fastest verified vs PyTorch eager generate" in text  # the targets table


def test_train_routes_gpt2_imdb_and_a_demo_request_reuses_the_full_model(tmp_path, monkeypatch, capsys):
    import dataclasses

    from zoo import gpt2

    tiny = gpt2.GPT2Recipe(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=64, block_size=32,
                           batch_size=4, max_steps=3, warmup_steps=1, eval_tokens=128, max_train_docs=150,
                           budget_seconds=120)
    monkeypatch.setattr(gpt2, "RECIPE", tiny)
    monkeypatch.setitem(gpt2.RECIPES, "full", tiny)
    monkeypatch.setitem(gpt2.RECIPES, "demo", dataclasses.replace(tiny, max_steps=2))
    args = ["train", "--models", "gpt2_imdb", "--artifacts", str(tmp_path)]
    assert edgeattn(args) == 0
    first = json.loads((tmp_path / "gpt2_imdb" / "train.json").read_text())
    assert first["steps"] == 3 and "gpt2_imdb: validation perplexity" in capsys.readouterr().out
    assert edgeattn(args + ["--gpt2-recipe", "demo"]) == 0  # a full model is what a demo asks for, and more
    assert json.loads((tmp_path / "gpt2_imdb" / "train.json").read_text()) == first
    assert edgeattn(args + ["--gpt2-recipe", "demo", "--force"]) == 0
    assert json.loads((tmp_path / "gpt2_imdb" / "train.json").read_text())["steps"] == 2


def test_reduced_precision_rows_become_gating_or_advisory_verify_rows():
    """verify.generation.precision_rows' rows (fp16, int8 = the Q/DQ float simulation, int8.cpu = this CPU's
    kernels) as verify.json rows and verify.md lines; made up here, so no quantised decoder is needed."""
    from verify.decoder import markdown_lines, precision_row, row_line

    def prow(precision, artifact, gating, passed, agreement, ppl):
        return {"precision": precision, "artifact": artifact, "backend": "onnxruntime", "gating": gating,
                "judged_by": "float simulation of its Q/DQ: what TensorRT computes", "ort_opt_level": "disable",
                "budget": {"min_top1_agreement": 0.95}, "passed": passed, "reasons": [] if passed else ["too far"],
                "seconds": 1.0, "teacher_forced": {"n_tokens": 16384, "top1_agreement": agreement,
                                                   "accuracy_delta": -0.25, "perplexity": ppl,
                                                   "reference_perplexity": 300.0,
                                                   "perplexity_delta_pct": 100 * (ppl / 300.0 - 1)},
                "generation": {"prompts": 100, "identical": 61, "mean_matching_prefix": 40.5,
                               "mean_reference_length": 64.0}}

    rows = [precision_row("m", prow("int8", "int8.qdq.onnx", True, True, 0.97, 301.5), 64, "k"),
            precision_row("m", prow("int8.cpu", "int8.cpu.onnx", False, False, 0.9, 330.0), 64, "k")]
    qdq, cpu = rows
    assert (qdq["precision"], qdq["role"], qdq["gating"], qdq["passed"]) == ("int8", "tensorrt-reference", True, True)
    assert qdq["teacher_forced_agreement"] == 0.97 and qdq["perplexity_delta_pct"] == pytest.approx(0.5)
    assert qdq["mean_matching_prefix"] == 40.5 and qdq["token_identical"] == 61 and qdq["verify_key"] == "k"
    assert (cpu["role"], cpu["gating"], cpu["passed"]) == ("cpu-int8-kernels", False, False)
    assert "MISS (advisory: CPU kernels)" in row_line(cpu) and "perplexity +0.500 %" in row_line(qdq)
    md = "\n".join(markdown_lines("m", rows))
    assert "| int8.qdq.onnx | float simulation of its Q/DQ | 0.9700 | -0.25 | 301.50 vs 300.00 | +0.500 | 40.5/64.0 | " \
           "61/100 | yes |" in md
    assert "int8.cpu.onnx on onnxruntime missed (advisory: this CPU's integer kernels)**: too far" in md
    int4 = precision_row("m", prow("int4.cpu", "int4.cpu.onnx", False, True, 0.95, 306.0), 64, "k")
    assert (int4["precision"], int4["role"], int4["gating"], int4["passed"]) == ("int4", "cpu-int8-kernels", False, True)
    assert int4["perplexity_delta_pct"] == pytest.approx(2.0) and "int4.cpu.onnx" in row_line(int4)


def test_one_precision_table_names_every_decoder_file_verify_and_bench_use(tmp_path):
    """pipeline.artifacts.PRECISION_FILES is the table: verify.generation's rows, verify.decoder's bench plan and its
    rows' precision all come from it; int4.cpu.onnx is a file of its own, advisory like int8.cpu.onnx."""
    from pipeline.artifacts import PRECISION_FILES
    from verify.decoder import BENCHED, bench_plan, reduced_precisions
    from verify.generation import PRECISION_ARTIFACTS

    assert {p: v[:2] for p, v in PRECISION_ARTIFACTS.items()} == {
        "fp16": ("fp16.onnx", "fp16"), "int8": ("int8.qdq.onnx", "int8"), "int8.cpu": ("int8.cpu.onnx", "int8"),
        "int4.cpu": ("int4.cpu.onnx", "int4")} and set(PRECISION_ARTIFACTS) == set(PRECISION_FILES)
    assert BENCHED == ("fp16.onnx", "int8.cpu.onnx", "int4.cpu.onnx")
    for f in ("fp32.onnx", "int4.cpu.onnx", "int8.qdq.onnx"):
        (tmp_path / f).write_bytes(b"x")
    assert reduced_precisions(tmp_path) == ["int8", "int4.cpu"]
    assert [a for a, _ in bench_plan(tmp_path)] == ["fp32.onnx", "int4.cpu.onnx"]
