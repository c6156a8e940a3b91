"""#19 item 6: `edgeattn run` is the one orchestrator (stage list, laps, summary, exit rules); `make demo`, `make gpt2`
and `make bert` call it. Stages are stubbed: a fake runner records each call and returns chosen exit codes."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgeattn import orchestrator as orc
from edgeattn.__main__ import run_options
from edgeattn.orchestrator import RunOptions, StageResult
from pipeline.stage import REPORT_ENV, StageErrors

ROOT = Path(__file__).resolve().parents[1]
DEMO = ("text_transformer", "attention_cnn", "vit", "torchvision:vit_b_16", "gpt2_imdb")


class FakeStages:
    """Records (stage, argv) and answers with the exit code (and failed models) chosen per stage."""

    def __init__(self, results: dict[str, StageResult] | None = None) -> None:
        self.results = results or {}
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, stage: str, argv: list[str]) -> StageResult:
        self.calls.append((stage, argv))
        return self.results.get(stage, StageResult(0, ()))

    def stages(self) -> list[str]:
        return [s for s, _ in self.calls]

    def models(self, stage: str) -> str:
        argv = dict(self.calls)[stage]
        return argv[argv.index("--models") + 1]


def ticking():
    t = iter(range(0, 10_000, 5))
    return lambda: float(next(t))


def demo_options(art: Path) -> RunOptions:
    """What `make demo` passes (see the Makefile), parsed by the real argument layer."""
    return run_options(["--models", ",".join(DEMO), "--artifacts", str(art), "--gpt2-recipe", "demo",
                        "--skip-quantize", "gpt2_imdb", "--skip-engines", "gpt2_imdb",
                        "--flavor", "auto", "--bench-args=", "--keep-going", "--summary"])


def test_the_demo_plan_is_the_old_recipe(tmp_path):
    """Same stages, same models per stage and the same options as the Makefile's bash recipe had."""
    art = tmp_path / "art"
    art.mkdir()
    fake = FakeStages()
    assert orc.run(demo_options(art), fake, ticking()) == 0
    a = ["--artifacts", str(art)]
    zoo = "text_transformer,attention_cnn,vit,torchvision:vit_b_16"
    assert fake.calls == [
        ("train", ["--models", "text_transformer,attention_cnn,vit,gpt2_imdb", *a, "--gpt2-recipe", "demo"]),
        ("export", ["--models", ",".join(DEMO), *a]),
        ("simplify", ["--models", ",".join(DEMO), *a]),
        ("quantize", ["--models", zoo, *a]),  # the spec's budget: no default restated
        ("engines", ["--models", zoo, *a, "--flavor", "auto"]),
        ("verify", ["--models", ",".join(DEMO), *a, "--strict"]),
        ("bench", ["--models", ",".join(DEMO), *a]),
        ("report", [*a, "--summary"]),
    ]


def test_laps_and_summary(tmp_path, capsys):
    art = tmp_path / "art"
    art.mkdir()
    o = RunOptions(("vit",), str(art), bench=False)
    out = orc.execute(orc.plan(o), o, FakeStages(), ticking())
    assert out.laps == [(s, 5.0) for s in ("train", "export", "simplify", "quantize", "engines", "verify", "report")]
    assert orc.run(o, FakeStages(), ticking()) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("edgeattn run: done in 75 s (train=5s export=5s simplify=5s quantize=5s engines=5s verify=5s "
                    "report=5s), exit 0; no report was written")  # the fake report stage writes none
    (art / "report.md").write_text("# report\n")
    assert orc.run(o, FakeStages(), ticking()) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(f"exit 0; read {art / 'report.md'}")


def test_a_failed_gating_row_fails_the_run_without_keep_going(tmp_path, capsys):
    """The mobilenet_v3_small case: quantize accepted an int8 graph verify then failed; the run must not exit 0."""
    art = tmp_path / "art"
    art.mkdir()
    o = RunOptions(("torchvision:mobilenet_v3_small",), str(art))
    fake = FakeStages({"verify": StageResult(1, ())})
    assert orc.run(o, fake, ticking()) == 1
    assert fake.stages() == ["export", "simplify", "quantize", "engines", "verify", "bench", "report"]
    assert "edgeattn run: verify: a gating row failed (see verify.md)" in capsys.readouterr().err


@pytest.mark.parametrize("stage,rc,keep_going,want", [
    ("verify", 1, True, 0),      # the demo: summarise and exit 0
    ("quantize", 1, False, 0),   # a budget miss is recorded; verify judges the artifacts
    ("quantize", 1, True, 0),
    ("quantize", 2, False, 2),   # a model that could not be quantised at all
    ("quantize", 2, True, 0),    # the demo goes on past it (as its `|| echo` did)
    ("engines", 1, False, 0),    # no TensorRT here: recorded
    ("engines", 2, False, 2),
    ("verify", 2, True, 2),      # a model verify could not handle is an error, even for the demo
    ("bench", 2, True, 2),
    ("report", 1, True, 1),
])
def test_exit_rules(stage, rc, keep_going, want, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    o = RunOptions(("vit",), str(art), keep_going=keep_going)
    fake = FakeStages({stage: StageResult(rc, None)})
    assert orc.run(o, fake, ticking()) == want
    assert fake.stages()[-1] == "report"  # every rule still ends with the report


def test_a_model_that_fails_export_is_dropped_and_the_others_go_on(tmp_path, capsys):
    art = tmp_path / "art"
    art.mkdir()
    o = RunOptions(("mymods:no_spec", "vit"), str(art))
    fake = FakeStages({"export": StageResult(2, ("mymods:no_spec",))})
    assert orc.run(o, fake, ticking()) == 2
    assert fake.models("train") == "vit"
    for stage in ("simplify", "quantize", "engines", "verify", "bench"):
        assert fake.models(stage) == "vit", stage
    assert "1 of 2 model(s) stopped early: mymods:no_spec" in capsys.readouterr().err


def test_a_stop_stage_that_says_nothing_stops_all_its_models(tmp_path):
    """A crash (no report of which model failed): every model of that step is stopped; the report still runs."""
    art = tmp_path / "art"
    art.mkdir()
    o = RunOptions(("vit", "attention_cnn"), str(art))
    fake = FakeStages({"simplify": StageResult(1, None)})
    assert orc.run(o, fake, ticking()) == 2
    assert fake.stages() == ["train", "export", "simplify", "report"]


def test_no_report_without_an_artifacts_folder(tmp_path):
    o = RunOptions(("vit",), str(tmp_path / "never"))
    fake = FakeStages({"train": StageResult(2, ("vit",))})
    assert orc.run(o, fake, ticking()) == 2
    assert fake.stages() == ["train"]


def test_gpt2_and_bert_recipes():
    gpt2 = run_options(["--models", "gpt2_imdb", "--gpt2-recipe", "full", "--skip-engines", "gpt2_imdb",
                        "--bench-args=--quick --batches 1"])
    steps = {s.stage: s for s in orc.plan(gpt2)}
    assert list(steps) == ["train", "export", "simplify", "quantize", "verify", "bench", "report"]
    assert steps["train"].args == ("--gpt2-recipe", "full") and steps["bench"].args == ("--quick", "--batches", "1")
    bert = orc.plan(run_options(["--models", "bert_imdb", "--no-bench"]))
    assert [s.stage for s in bert] == ["train", "export", "simplify", "quantize", "engines", "verify", "report"]
    assert bert[0].args == ()  # train's own default recipe
    minilm = orc.plan(run_options(["--models", "minilm_imdb,hf:/some/folder", "--no-bench"]))
    assert minilm[0].stage == "train" and minilm[0].models == ("minilm_imdb",)  # a recipe of its own; hf:<dir> none


def test_the_makefile_recipes_call_edgeattn_run():
    """make demo / gpt2 / bert / minilm are one `edgeattn run` each (dry run: nothing executed); minilm then runs
    the CPU INT8 peers (`edgeattn int8-peers`) on what that run wrote."""
    for target, want in (("demo", "--keep-going --summary"), ("gpt2", "--skip-engines gpt2_imdb"), ("bert", ""),
                         ("minilm", "--models minilm_imdb")):
        p = subprocess.run(["make", "-n", "-s", target, "PY=python", "VENV=/nonexistent"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        cmds = [ln for ln in p.stdout.replace("\\\n", " ").splitlines() if "-m edgeattn" in ln]
        extra = [" -m edgeattn int8-peers --models minilm_imdb "] if target == "minilm" else []
        assert len(cmds) == 1 + len(extra) and " -m edgeattn run " in cmds[0] and want in cmds[0], (target, p.stdout)
        assert all(e in c for e, c in zip(extra, cmds[1:])), (target, p.stdout)


def test_stage_errors_report_failed_models_to_the_orchestrator(tmp_path, monkeypatch):
    report = tmp_path / "stage.json"
    monkeypatch.setenv(REPORT_ENV, str(report))
    from runtime.errors import EdgeattnError

    errors = StageErrors("export")
    for name in ("a", "b"):
        with errors.model(name):
            if name == "b":
                raise EdgeattnError("boom")
    assert errors.finish() == 2
    assert json.loads(report.read_text()) == {"stage": "export", "seen": 2, "failed": ["b"]}


def test_child_runner_reads_the_stage_report(tmp_path):
    """The real runner: one child process per stage; here an empty --models refusal (exit 2, nothing reported)."""
    res = orc.child_runner("simplify", ["--models", ",", "--artifacts", str(tmp_path)])
    assert res == StageResult(2, None)
    assert REPORT_ENV not in os.environ  # set for the child only
