"""#19 item 7: arguments are checked before anything is touched, the same way in every stage. A bad argument is one
``error: <stage>: ...`` line (what was received, what was expected), exit 2, and the artifacts folder byte-for-byte
as it was; verifying nothing is a failure; a quantize run that does worse never deletes the verified files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeattn.__main__ import main as edgeattn
from pipeline import args as pa

READS = ("simplify", "quantize", "engines", "verify", "bench", "triton")  # stages that read an artifacts folder
MODEL_STAGES = ("train", "export", *READS)  # every stage with --models
GO = "expected the artifacts folder the earlier stages wrote (run 'edgeattn export' first, or pass --artifacts DIR)"


@pytest.fixture
def art(tmp_path: Path) -> Path:
    """An artifacts folder as a user has it after `make demo`: the verified int8.cpu.onnx must survive every case."""
    root = tmp_path / "artifacts"
    vit = root / "vit"
    vit.mkdir(parents=True)
    for name, data in (("fp32.onnx", b"fp32"), ("fp32.sim.onnx", b"sim"), ("int8.qdq.onnx", b"qdq"),
                       ("int8.cpu.onnx", b"cpu int8, verified"), ("spec.json", b"{}")):
        (vit / name).write_bytes(data)
    (vit / "manifest.json").write_text(json.dumps({"int8": {"cpu": {"file": "int8.cpu.onnx", "passed": True}}}))
    (root / "verify.json").write_text("[]")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), folders included as markers."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(argv: list[str], root: Path, capsys, cwd: Path | None = None, monkeypatch=None) -> str:
    """Run ``edgeattn argv``; assert exit 2, nothing on stdout, exactly one stderr line, ``root`` unchanged; return
    the line."""
    before = snapshot(root)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    rc = edgeattn(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert out == "" and len(lines) == 1, (out, err)
    assert snapshot(root) == before
    return lines[0]


# ---- the four cases a new user hit ------------------------------------------------------------------------------
def test_a_negative_budget_is_refused_and_int8_cpu_survives(art, capsys):
    line = refused(["quantize", "--models", "vit", "--max-drop", "-3", "--artifacts", str(art)], art, capsys)
    assert line == "error: quantize: --max-drop: got '-3', expected a number of accuracy points >= 0 (e.g. 0.5)"
    assert (art / "vit" / "int8.cpu.onnx").read_bytes() == b"cpu int8, verified"


def test_verify_of_an_empty_artifacts_folder_is_a_failure(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refused(["verify", "--models", "vit", "--artifacts", str(empty)], empty, capsys)
    assert line == (f"error: verify: nothing to verify: got no ONNX file for vit under {empty}, expected "
                    "<model>/fp32.onnx at least (run 'edgeattn export --models vit' first)")
    assert not (empty / "verify.json").exists()


def test_bench_batches_zero_is_refused(art, capsys):
    line = refused(["bench", "--models", "vit", "--batches", "0", "--artifacts", str(art)], art, capsys)
    assert line == "error: bench: --batches: got '0', expected comma-separated integers >= 1 such as 1,8,32"


@pytest.mark.parametrize("stage", READS + ("report",))
def test_every_stage_defaults_artifacts_the_same_way(stage, tmp_path, art, capsys, monkeypatch):
    """No --artifacts: the default 'artifacts' in every stage (here: a cwd without one, so the same refusal)."""
    argv = [stage] + ([] if stage == "report" else ["--models", "vit"])
    (tmp_path / "elsewhere").mkdir()
    line = refused(argv, art, capsys, cwd=tmp_path / "elsewhere", monkeypatch=monkeypatch)
    assert line == f"error: {stage}: --artifacts: got 'artifacts' (no such folder), {GO}"


def test_the_default_artifacts_folder_is_used_when_present(art, capsys, monkeypatch):
    """quantize without --artifacts reads ./artifacts (it used to fail with `python -m optimize quantize`'s usage)."""
    line = refused(["quantize", "--models", "vit", "--max-drop", "x"], art, capsys, cwd=art.parent,
                   monkeypatch=monkeypatch)
    assert line == "error: quantize: --max-drop: got 'x', expected a number of accuracy points >= 0 (e.g. 0.5)"


# ---- each kind of bad argument in every stage that takes it ----------------------------------------------------
@pytest.mark.parametrize("stage", ["quantize", "run"])
@pytest.mark.parametrize("budget", ["-3", "abc", "nan", "inf"])
def test_bad_budget_in_every_stage(stage, budget, art, capsys):
    line = refused([stage, "--models", "vit", "--artifacts", str(art), "--max-drop", budget], art, capsys)
    assert line == f"error: {stage}: --max-drop: got '{budget}', expected a number of accuracy points >= 0 (e.g. 0.5)"


@pytest.mark.parametrize("stage", MODEL_STAGES + ("run",))
@pytest.mark.parametrize("models", [",", " , ,"])
def test_empty_models_list_in_every_stage(stage, models, art, capsys):
    line = refused([stage, "--models", models, "--artifacts", str(art)], art, capsys)
    assert line == (f"error: {stage}: --models: got '{models}', expected one or more model names, comma-separated "
                    "(e.g. vit,torchvision:vit_b_16)")


@pytest.mark.parametrize("stage", [s for s in MODEL_STAGES if s != "train"] + ["run"])
def test_missing_models_in_every_stage(stage, art, capsys):
    line = refused([stage, "--artifacts", str(art)], art, capsys)
    assert line == f"error: {stage}: got no --models; expected it (required)"


@pytest.mark.parametrize("stage", READS + ("report",))
def test_missing_artifacts_folder_in_every_stage_that_reads_one(stage, art, capsys):
    gone = art.parent / "nope"
    argv = [stage, "--artifacts", str(gone)] + ([] if stage == "report" else ["--models", "vit"])
    line = refused(argv, art, capsys)
    assert line == f"error: {stage}: --artifacts: got '{gone}' (no such folder), {GO}"
    assert not gone.exists()


@pytest.mark.parametrize("stage,flag", [("engines", "--flavor"), ("run", "--flavor"), ("triton", "--flavor")])
def test_unknown_flavour_in_every_stage(stage, flag, art, capsys):
    line = refused([stage, "--models", "vit", "--artifacts", str(art), flag, "tensorrt9"], art, capsys)
    assert line.startswith(f"error: {stage}: --flavor: got 'tensorrt9', expected one of 'auto', ")


@pytest.mark.parametrize("argv,expected", [
    (["bench", "--batches", "1,x"], "--batches: got '1,x', expected comma-separated integers >= 1 such as 1,8,32"),
    (["bench", "--batches", "8,-1"], "--batches: got '8,-1', expected comma-separated integers >= 1 such as 1,8,32"),
    (["bench", "--threads", "0"], "--threads: got '0', expected an integer >= 1"),
    (["bench", "--peers", "eager,onnx"], "--peers: got 'eager,onnx', expected some of "),
    (["verify", "--limit", "0"], "--limit: got '0', expected an integer >= 1"),
    (["engines", "--opt-level", "9"], "--opt-level: got '9', expected an integer from 0 to 5"),
    (["engines", "--precisions", "int4"], "--precisions: got 'int4', expected some of fp32,fp16,int8, comma-separated"),
    (["quantize", "--min-agreement", "-0.1"], "--min-agreement: got '-0.1', expected a number >= 0"),
    (["quantize", "--calib-size", "-1"], "--calib-size: got '-1', expected an integer >= 1"),
    (["quantize", "--cpu-candidates", "fastest"], "--cpu-candidates: got 'fastest', expected some of "),
    (["quantize", "--kv-cache", "int8"], "--kv-cache: got 'int8', expected one of 'float32', 'float16'"),
    (["run", "--kv-cache", "bfloat16"], "--kv-cache: got 'bfloat16', expected one of 'float32', 'float16'"),
    (["triton", "--instances", "0"], "--instances: got '0', expected an integer >= 1"),
    (["export", "--weights", "/no/such.pt"], "--weights: got '/no/such.pt' (no such file or folder), expected an "
                                             "existing path"),
    (["export", "--models", "vit,attention_cnn", "--weights", "{art}/vit/fp32.onnx"],
     "--weights: got 2 models, expected one (a file goes with one model)"),
    (["train", "--models", "vit,nope"], "--models: got nope (no training recipe), expected some of "),
    (["train", "--epochs", "0"], "--epochs: got '0', expected an integer >= 1"),
    (["run", "--skip-quantize", "gpt2_imdb"], "--skip-quantize: got gpt2_imdb, expected some of --models (vit)"),
    (["run", "--bench-args=--batches 0"], "--bench-args: --batches: got '0', expected comma-separated integers >= 1"),
    (["run", "--bench-args=--quick --artifacts x"], "--bench-args: got --artifacts, expected bench's other options"),
])
def test_each_kind_of_bad_value(argv, expected, art, capsys):
    stage, rest = argv[0], [a.replace("{art}", str(art)) for a in argv[1:]]
    models = [] if "--models" in rest else ["--models", "vit"]
    line = refused([stage, *models, "--artifacts", str(art), *rest], art, capsys)
    assert line.startswith(f"error: {stage}: {expected}"), line


@pytest.mark.parametrize("stage", MODEL_STAGES + ("report", "run"))
def test_unknown_option_in_every_stage(stage, art, capsys):
    argv = [stage, "--artifacts", str(art), "--max-dorp", "1"] + ([] if stage == "report" else ["--models", "vit"])
    line = refused(argv, art, capsys)
    assert line == f"error: {stage}: got unknown argument(s) --max-dorp 1; expected the options listed by --help"


@pytest.mark.parametrize("argv,expected", [
    (["loadtest", "--concurrency", "0"], "--concurrency: got '0', expected comma-separated integers >= 1"),
    (["loadtest", "--duration", "-1"], "--duration: got '-1', expected a number of seconds > 0"),
    (["serve", "--http-port", "70000"], "--http-port: got '70000', expected an integer from 0 to 65535"),
])
def test_serve_stages_check_their_arguments(argv, expected, tmp_path, capsys):
    repo = tmp_path / "triton"
    repo.mkdir()
    line = refused([*argv, "--repository", str(repo)], repo, capsys)
    assert line.startswith(f"error: {argv[0]}: {expected}"), line


def test_help_still_prints_usage_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        edgeattn(["quantize", "--help"])
    assert e.value.code == 0 and "--max-drop" in capsys.readouterr().out


# ---- the value checks themselves -------------------------------------------------------------------------------
def test_value_checks_accept_what_they_should():
    assert pa.max_drop("0") == 0.0 and pa.max_drop("0.5") == 0.5
    assert pa.int_list("1, 8,32") == [1, 8, 32]
    assert pa.models_text(" vit, ,torchvision:vit_b_16 ") == "vit,torchvision:vit_b_16"
    assert pa.choice_list(("a", "b"), allow_empty=True)("") == ()
    assert pa.int_range(0, 5)("5") == 5


# ---- a quantize run that does worse keeps what was verified ---------------------------------------------------
def test_a_worse_int8_run_keeps_the_previous_files(tmp_path):
    from optimize.int8_budget import QuantOptions
    from optimize.quantize import did_worse, kept_previous, previous_intact
    from zoo.io import sha256_file

    (tmp_path / "int8.qdq.onnx").write_bytes(b"qdq")
    (tmp_path / "int8.cpu.onnx").write_bytes(b"cpu")
    prev = {"files_sha256": {f: sha256_file(tmp_path / f) for f in ("int8.qdq.onnx", "int8.cpu.onnx")},
            "qdq": {"passed": True}, "cpu": {"file": "int8.cpu.onnx", "passed": True}, "key": "k0"}
    assert previous_intact(tmp_path, prev)
    assert did_worse(False, "dynamic", prev)  # the budget search missed
    assert did_worse(True, None, prev)  # no CPU form where the previous run had one
    assert not did_worse(True, "dynamic", prev)
    assert not previous_intact(tmp_path, {**prev, "qdq": {"passed": False}})
    (tmp_path / "int8.cpu.onnx").write_bytes(b"changed since")
    assert not previous_intact(tmp_path, prev)
    search = {"passed": True, "final": {}}
    opts = QuantOptions()
    kept = kept_previous(prev, search, {"why": "fp32 was faster"}, opts, opts.budget(None), True)
    assert kept["key"] == "k0" and kept["files_sha256"] == prev["files_sha256"]
    assert kept["last_run"]["passed"] is False and "fp32 was faster" in kept["last_run"]["why"]
    assert kept["last_run"]["kept"] == ["int8.cpu.onnx", "int8.qdq.onnx"]


def test_no_cpu_form_moves_the_old_file_aside_never_deletes_it(tmp_path):
    from optimize.cpu_int8 import write_cpu_artifact

    dst = tmp_path / "int8.cpu.onnx"
    dst.write_bytes(b"verified elsewhere")
    write_cpu_artifact(None, dst, "avx2")
    assert not dst.exists() and (tmp_path / "int8.cpu.onnx.prev").read_bytes() == b"verified elsewhere"


def test_a_quantize_run_that_misses_keeps_the_verified_int8_files(tmp_path, capsys):
    """The stage itself: a passing run writes int8.qdq.onnx and int8.cpu.onnx; a second run under a budget it cannot
    meet exits 1, rewrites and deletes nothing, and the manifest keeps the passing section (its key: the next run
    tries again) with ``last_run`` saying what missed."""
    pytest.importorskip("onnxruntime")
    from export.onnx_export import export_model
    from optimize.quantize import main as quantize
    from tests.conftest import tiny_model
    from zoo.data import DataError, load_dataset

    try:
        load_dataset("fashion_mnist")
    except DataError as e:
        pytest.skip(str(e))
    built = tiny_model("attention_cnn")
    md = tmp_path / "attention_cnn"
    export_model(built, md / "fp32.sim.onnx")
    (md / "spec.json").write_text(built.spec.to_json())
    argv = ["--models", "attention_cnn", "--artifacts", str(tmp_path), "--only", "int8", "--max-drop", "100",
            "--min-agreement", "0", "--sweep", "never", "--calib-size", "32", "--eval-samples", "200",
            "--bench-runs", "3", "--cpu-candidates", "dynamic,qdq_s8s8", "--min-speedup", "0"]
    assert quantize(argv) == 0
    files = ("int8.qdq.onnx", "int8.cpu.onnx")
    before = {f: hashlib.sha256((md / f).read_bytes()).hexdigest() for f in files}
    first = json.loads((md / "manifest.json").read_text())["int8"]
    capsys.readouterr()
    miss = [("1.01" if a == "0" and argv[i - 1] == "--min-agreement" else a) for i, a in enumerate(argv)]
    assert quantize(miss) == 1  # top-1 agreement can never reach 1.01
    assert "int8 outside the budget" in capsys.readouterr().err
    assert {f: hashlib.sha256((md / f).read_bytes()).hexdigest() for f in files} == before
    kept = json.loads((md / "manifest.json").read_text())["int8"]
    assert kept["key"] == first["key"] and kept["files_sha256"] == first["files_sha256"] == before
    assert kept["last_run"]["passed"] is False and "1.01" in kept["last_run"]["why"]
    assert kept["last_run"]["kept"] == sorted(files)


# ---- --kv-cache (issue #21): a decoder's cache type; refused for a model without a cache ---------------------------
@pytest.mark.parametrize("cache", ["float16", "float32"])
def test_kv_cache_on_a_classifier_is_refused_before_its_files_are_touched(cache, art, capsys):
    """The choice made for #21: a refusal, not a silent no-op. One error line for the model (exit 2), its folder
    byte-for-byte as it was; the stage's summary names the model."""
    before = snapshot(art)
    rc = edgeattn(["quantize", "--models", "vit", "--kv-cache", cache, "--artifacts", str(art)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and snapshot(art) == before, (rc, out, err)
    assert lines[0] == (f"error: quantize vit: --kv-cache {cache}: model 'vit' has no KV cache (its spec.json lists no "
                        "past inputs); expected a decoder exported with its cache (leave --kv-cache out "
                        "for this model)")
    assert lines[1:] == ["quantize: 1 of 1 model(s) failed: vit (ArgumentsError)"]


def test_kv_cache_reaches_the_decoder_quantize_options(art, capsys, monkeypatch):
    """A folder whose spec lists past inputs (a decoder): --kv-cache float16 arrives as
    DecoderQuantOptions(kv_cache='float16') in its task's quantize handler; without the flag, the handler's default."""
    import optimize.decoder_quant as dq

    folder = art / "tiny_decoder"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"task": "text_generation", "preprocess": {
        "past_inputs": ["past_key_values.0.key", "past_key_values.0.value"]}}))
    (folder / "fp32.sim.onnx").write_bytes(b"sim")
    seen = []
    monkeypatch.setattr(dq, "quantize_decoder", lambda *a, dopts=None, **k: seen.append(dopts) or {})
    monkeypatch.setattr(dq, "print_tables", lambda name, res: None)
    for extra in (["--kv-cache", "float16"], []):
        assert edgeattn(["quantize", "--models", "tiny_decoder", "--artifacts", str(art), *extra]) == 0, \
            capsys.readouterr()
    assert [d.kv_cache if d else None for d in seen] == ["float16", None]


def test_run_passes_kv_cache_to_quantize_only():
    from edgeattn import orchestrator as orc
    from edgeattn.__main__ import run_options

    steps = {s.stage: s for s in orc.plan(run_options(["--models", "gpt2_imdb", "--kv-cache", "float16"]))}
    assert steps["quantize"].args == ("--kv-cache", "float16")
    assert not any("--kv-cache" in s.args for name, s in steps.items() if name != "quantize")
    plain = {s.stage: s for s in orc.plan(run_options(["--models", "gpt2_imdb"]))}
    assert "--kv-cache" not in plain["quantize"].args
