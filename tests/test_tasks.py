"""Tasks as plug-ins (zoo.tasks): every model kind resolves to its task and each of its stage handlers imports; a
task registered here with its own handlers goes through the stages' dispatch (export, quantize, graph parity,
verify, bench, report, train) with no stage changed; an unknown task is one clear error naming the known ones;
and the stages hold no fork on a model's kind (checked over their syntax trees, as tests/test_layers.py checks
imports)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from zoo import tasks
from zoo.tasks import STAGES, Task, TaskError

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ("image_classification", "text_classification", "custom", "text_generation", "feature_extraction")
FAKE = "fake_task"
CALLS: list[tuple[str, str]] = []  # (stage, model) for every fake handler call


# ---- the built-in kinds ---------------------------------------------------------------------------------------------
def test_every_built_in_kind_is_one_registered_task_with_every_stage():
    assert set(BUILT_IN) <= set(tasks.known())
    for name in BUILT_IN:
        task = tasks.get(name)
        assert task.name == name and set(STAGES) <= set(task.handlers), (name, sorted(task.handlers))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_handler_of_every_built_in_task_resolves(name):
    task = tasks.get(name)
    for stage in task.handlers:
        got = task.handler(stage)
        assert isinstance(got, str) if stage == "bench_version" else callable(got), (name, stage)


def test_the_decoder_task_differs_where_decoders_differ_and_classifiers_share_one_path():
    gen, image, text = tasks.get("text_generation"), tasks.get("image_classification"), tasks.get("text_classification")
    assert image.handlers == tasks.get("custom").handlers == {s: text.handlers[s] for s in STAGES}
    assert all(gen.handlers[s] != text.handlers[s] for s in text.handlers)  # hf_*: how an hf:<dir> of it is built
    assert sorted(set(text.handlers) - set(STAGES)) == ["hf_build", "hf_create", "hf_source"]
    assert gen.report_section == "generation" and image.report_section == "classification"
    assert gen.fp32_sources == ("fp32.sim.onnx", "fp32.onnx") and image.fp32_sources == ("fp32.sim.onnx",)
    assert gen.handler("bench_version") == __import__("bench.generation").generation.CODE_VERSION


def test_a_model_resolves_to_its_task(tmp_path):
    from pipeline.artifacts import ModelRef

    vit = ModelRef.resolve("vit", tmp_path)
    assert tasks.task_of(vit).name == "custom"  # nothing exported yet: the spec will decide
    vit.folder.mkdir()
    (vit.folder / "spec.json").write_text(json.dumps({"task": "image_classification"}))
    assert tasks.task_of(vit).name == tasks.task_of_dir(vit.folder).name == "image_classification"
    assert tasks.task_of(ModelRef.resolve("gpt2_imdb", tmp_path)).name == "text_generation"  # its source says
    assert tasks.task_of(ModelRef.resolve("bert_imdb", tmp_path)).name == "text_classification"
    assert tasks.task_of_dir(tmp_path / "nowhere").name == "custom"


def test_an_hf_directory_is_built_by_the_task_its_source_declares(tmp_path, monkeypatch):
    import zoo.registry as reg

    seen = []
    monkeypatch.setattr(reg, "hf_decoder", lambda name, o: seen.append(("decoder", name)) or "decoder")
    monkeypatch.setattr(reg, "hf_classifier", lambda name, o: seen.append(("classifier", name)) or "classifier")
    gpt2, bert = tmp_path / "gpt2", tmp_path / "bert"
    for d, kind in ((gpt2, "gpt2"), (bert, "bert")):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": kind}))
    assert reg.create_model(f"hf:{gpt2}") == "decoder" and reg.create_model(f"hf:{bert}") == "classifier"
    assert seen == [("decoder", f"hf:{gpt2}"), ("classifier", f"hf:{bert}")]
    with pytest.raises(TaskError, match="task 'image_classification': got no handler for stage 'hf_create'"):
        tasks.get("image_classification").run("hf_create", "hf:x", {})


def test_verify_rows_resolve_to_the_task_of_the_first_row_that_says_one():
    failed = {"model": "m", "passed": False}  # a model that could not be verified carries no task
    assert tasks.task_of_rows([failed, {"model": "m", "task": "text_generation"}]).name == "text_generation"
    assert tasks.task_of_rows([failed]).name == "custom"


# ---- unknown tasks and bad handlers ---------------------------------------------------------------------------------
def test_an_unknown_task_is_one_error_naming_the_known_ones():
    with pytest.raises(TaskError) as e:
        tasks.get("speech_recognition")
    assert str(e.value) == f"unknown task 'speech_recognition': expected one of {', '.join(tasks.known())}"
    assert all(k in str(e.value) for k in BUILT_IN)


def test_an_unknown_task_in_a_spec_stops_a_stage_with_that_error(tmp_path, capsys):
    from export.__main__ import main as export_main

    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "spec.json").write_text(json.dumps({"task": "speech_recognition"}))
    assert export_main(["--models", "vit", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'speech_recognition': expected one of custom, feature_extraction, image_classification" in err
    assert not (tmp_path / "vit" / "fp32.onnx").exists()


def test_a_task_says_which_handler_is_missing_or_cannot_be_imported():
    with pytest.raises(TaskError, match=r"got handlers for \['deploy'\], expected stages among"):
        Task("x", {"deploy": "a:b"})
    t = Task("x", {"export": "no_such_module_here:f", "verify": "nocolon"})
    with pytest.raises(TaskError, match=r"task 'x': got no handler for stage 'bench', expected one of \['export', "):
        t.handler("bench")
    with pytest.raises(TaskError, match=r"task 'x' stage 'export': handler 'no_such_module_here:f' cannot be "
                                        r"resolved \(ModuleNotFoundError"):
        t.handler("export")
    with pytest.raises(TaskError, match=r"got handler 'nocolon', expected 'package.module:attribute'"):
        t.handler("verify")


def test_a_second_registration_under_a_known_name_is_refused():
    with pytest.raises(TaskError, match="task 'custom': got a second registration"):
        tasks.register(Task("custom", {}))
    assert tasks.get("custom").handlers["export"] == "export.stage:export_outputs"


# ---- a new task goes through the stages' dispatch ----------------------------------------------------------------
def fake_train(ref, args):
    CALLS.append(("train", ref.name))
    return {"model": ref.name, "fake": True}


def fake_train_summary(rows):
    CALLS.append(("train_summary", ",".join(r["model"] for r in rows)))
    return [f"fake trained {len(rows)}"]


def fake_export(ref, args):
    CALLS.append(("export", ref.name))


def fake_parity_feeds(spec):
    CALLS.append(("parity_feeds", spec.name))
    return [("fake size", {})]


def fake_quantize(model_dir, opts, force, progress):
    CALLS.append(("quantize", Path(model_dir).name))
    return {"fp16": {"passed": True}}


def fake_quantize_tables(name, res):
    CALLS.append(("quantize_tables", name))


def fake_verify_key(ref, limit):
    CALLS.append(("verify_key", ref.name))
    return "fake-key"


def fake_verify(ref, limit, threads, key=None):
    CALLS.append(("verify", ref.name))
    return [{"model": ref.name, "artifact": "fp32.onnx", "backend": "fake", "task": FAKE, "passed": True,
             "gating": True, "verify_key": key}]


def fake_verify_markdown(model, rows):
    CALLS.append(("verify_markdown", model))
    return [f"## {model} (fake task, {len(rows)} row)"]


def fake_bench(ref, args, cfg, key, old):
    from bench.__main__ import Benched

    CALLS.append(("bench", ref.name))
    return Benched(timed=False)


def fake_figures(*args):
    return {}


def fake_triton_entries(out, name, ref, spec, choice, rows, opts):
    CALLS.append(("triton_entries", ref.name))
    (out / name).mkdir()
    skipped = "the fake task serves no tensor entry"
    return {"python": {"entry": name, "triton": "python", **choice.to_dict(), "inputs": ["PROMPT"], "kind": "fake"},
            "onnx": {"entry": f"{name}_onnx", "skipped": skipped}, "trt": {"entry": f"{name}_trt", "skipped": skipped}}


def fake_triton_query(entry):
    CALLS.append(("triton_query", entry["entry"]))
    return [f"fake query of {entry['entry']}", ""]


def fake_loadtest(repo, rec, settings, threads):
    CALLS.append(("loadtest", rec["model"]))
    return {"model": rec["model"], "entry": rec["python"]["entry"], "levels": [{"ok": settings.duration_s > 0}]}


def fake_loadtest_markdown(result):
    CALLS.append(("loadtest_markdown", result["model"]))
    return [f"## {result['entry']} (fake load test)", ""]


def fake_loadtest_passed(result):
    CALLS.append(("loadtest_passed", result["model"]))
    return all(r["ok"] for r in result["levels"])


def fake_loadtest_plot(results, folder):
    CALLS.append(("loadtest_plot", ",".join(m["model"] for m in results)))
    (folder / "fake.png").write_bytes(b"not a png")
    return "fake.png", f"fake figure of {len(results)} model(s)"


@pytest.fixture()
def fake_task(tmp_path):
    """A task no stage knows, registered with this module's handlers; a vit folder whose spec.json says it."""
    me = __name__
    task = tasks.register(Task(FAKE, {s: f"{me}:fake_{s}" for s in STAGES}))
    CALLS.clear()
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"task": FAKE}))
    (folder / "fp32.onnx").write_bytes(b"")  # verify's "something to verify" check
    yield task
    tasks.unregister(FAKE)


def test_a_registered_task_goes_through_every_stage_dispatch(fake_task, tmp_path, capsys):
    from bench.__main__ import main as bench_main
    from bench.report import in_generation
    from export.__main__ import main as export_main
    from optimize.graph_parity import parity_feeds
    from optimize.quantize import main as quantize_main
    from verify.__main__ import main as verify_main
    from zoo.spec import ModelSpec
    from zoo.train import main as train_main

    art = ["--models", "vit", "--artifacts", str(tmp_path)]
    assert export_main(art) == 0
    assert quantize_main(art) == 0
    assert verify_main(art) == 0
    assert bench_main([*art, "--no-plots", "--peers", "", "--no-engine-timing"]) == 0
    assert train_main(art) == 0
    assert parity_feeds(ModelSpec("vit", FAKE, [], [], {}, [])) == [("fake size", {})]
    assert CALLS[:4] == [("export", "vit"), ("quantize", "vit"), ("quantize_tables", "vit"), ("verify_key", "vit")]
    assert ("verify", "vit") in CALLS and ("verify_markdown", "vit") in CALLS and ("bench", "vit") in CALLS
    assert ("train", "vit") in CALLS and ("train_summary", "vit") in CALLS
    assert "## vit (fake task, 1 row)" in (tmp_path / "verify.md").read_text()
    rows = json.loads((tmp_path / "verify.json").read_text())
    assert rows == [{"model": "vit", "artifact": "fp32.onnx", "backend": "fake", "task": FAKE, "passed": True,
                     "gating": True, "verify_key": "fake-key"}]
    assert not in_generation(rows[0])
    assert "fake trained 1" in capsys.readouterr().out


def test_a_registered_task_is_served_and_load_tested_through_its_handlers(fake_task, tmp_path):
    """serve/ asks the task how a model is served (its Triton entries, the README's query lines) and load-tested
    (the test, its report section, its figure, its verdict): a task no serve module knows goes through unchanged."""
    from pipeline.artifacts import resolve_models
    from serve.loadtest import Settings, passed, run
    from serve.repository import Options, build
    from zoo.spec import ModelSpec

    (tmp_path / "vit" / "spec.json").write_text(ModelSpec("vit", FAKE, [], [], {}, []).to_json())
    (tmp_path / "verify.json").write_text(json.dumps([{"model": "vit", "artifact": "fp32.onnx", "passed": True,
                                                       "backend": "onnxruntime", "precision": "fp32"}]))
    manifest = build(resolve_models("vit", tmp_path), tmp_path / "triton", Options())
    assert CALLS == [("triton_entries", "vit"), ("triton_query", "vit")]
    rec = manifest["models"][0]
    assert rec["spec"]["task"] == FAKE and rec["python"]["artifact"] == "fp32.onnx" and "skipped" in rec["trt"]
    assert "\nfake query of vit\n" in (tmp_path / "triton" / "README.md").read_text()
    CALLS.clear()
    doc = run(tmp_path / "triton", None, Settings([1], 0.5), tmp_path / "lt")
    assert CALLS == [("loadtest", "vit"), ("loadtest_plot", "vit"), ("loadtest_markdown", "vit")]
    assert doc["models"] == [{"model": "vit", "entry": "vit", "levels": [{"ok": True}], "task": FAKE}]
    assert doc["plots"] == [{"file": "fake.png", "caption": "fake figure of 1 model(s)"}]
    md = (tmp_path / "lt" / "loadtest.md").read_text()
    assert "## vit (fake load test)" in md and "![fake figure of 1 model(s)](fake.png)" in md
    assert passed(doc) and not passed({"models": [{**doc["models"][0], "levels": [{"ok": False}]}]})


# ---- no fork on a model's kind in the stages ------------------------------------------------------------------------
STAGE_CODE = ["export", "optimize", "verify", "bench", "serve", "edgeattn", "zoo/train.py"]
FORK_NAMES = ("is_decoder", "TEXT_GENERATION", "GEN_TASK", "DECODER_TASK")


def kind_forks(root: Path, where: list[str]) -> list[str]:
    """file:line of every name that tells a decoder apart (is_decoder..., TEXT_GENERATION) and every string
    'text_generation' in code (docstrings say it freely) under ``where``."""
    files = [f for w in where for f in ([root / w] if w.endswith(".py") else sorted((root / w).rglob("*.py")))]
    bad = []
    for f in files:
        rel = f.relative_to(root)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(rel))):
            names = [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
                [a.asname or a.name for a in node.names] + [a.name for a in node.names] \
                if isinstance(node, (ast.Import, ast.ImportFrom)) else \
                [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
            if any(n.startswith(k) for n in names for k in FORK_NAMES):
                bad.append(f"{rel}:{node.lineno} {names}")
            if isinstance(node, ast.Constant) and node.value == "text_generation":
                bad.append(f"{rel}:{node.lineno} 'text_generation'")
    return bad


def test_no_stage_forks_on_the_model_kind():
    bad = kind_forks(ROOT, STAGE_CODE)
    assert not bad, "forks on a model's kind outside zoo/tasks (ask task_of(ref) instead):\n" + "\n".join(bad)


def test_the_fork_check_catches_a_fork(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text('"""text_generation in a docstring is fine."""\n'
                                             "from zoo.gpt2 import is_decoder\n\n\ndef f(spec):\n"
                                             "    return spec.task == 'text_generation'\n")
    assert kind_forks(tmp_path, ["bench"]) == ["bench/x.py:2 ['is_decoder', 'is_decoder']",
                                               "bench/x.py:6 'text_generation'"]
