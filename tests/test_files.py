"""One atomic writer for artifacts, engines and manifests: same permissions, nothing half-written on a crash."""
from __future__ import annotations

import stat

import pytest

from runtime import engine_manifest as em
from runtime.files import atomic_write, atomic_write_json, read_json
from zoo import io as zio


def test_artifacts_engines_and_manifests_share_one_writer_and_its_permissions(tmp_path):
    assert zio.atomic_write is atomic_write and em.atomic_write_bytes is zio.atomic_write_bytes
    assert em.sha256_file is zio.sha256_file
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    em.write_manifest(tmp_path / "fp16.rtx.engine", {"flavor": "rtx"})
    em.atomic_write_bytes(tmp_path / "fp16.rtx.engine", b"\x00engine")
    for f in ("a.json", "fp16.rtx.engine.json", "fp16.rtx.engine"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o644, f  # engines were 0600 before
    assert read_json(tmp_path / "a.json") == {"x": 1} and read_json(tmp_path / "missing.json", 7) == 7


def test_a_crash_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"old")

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["model.onnx"]


def test_one_child_helper_reports_crashes_exits_and_timeouts_in_words():
    import sys

    from runtime.child import run_child

    ok = run_child([sys.executable, "-c", "import runtime.cpu, sys; print(runtime.cpu.__name__)"], 60)
    assert ok.ok and ok.stdout.strip() == "runtime.cpu" and ok.describe() == "ok"  # the project is on PYTHONPATH
    seg = run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], 60)
    assert not seg.ok and seg.describe().startswith("crashed with SIGSEGV (returncode -11)")
    bad = run_child([sys.executable, "-c", "import sys; sys.exit('no model here')"], 60)
    assert bad.describe() == "exited with code 1: no model here"
    slow = run_child([sys.executable, "-c", "import time; time.sleep(30)"], 1)
    assert slow.returncode is None and slow.describe() == "timed out after 1 s"


def test_one_budget_unit_points_and_old_specs_still_read():
    from zoo.spec import DEFAULT_TOLERANCES, ModelSpec, Tolerance

    assert DEFAULT_TOLERANCES["int8"].max_drop_points == 0.5  # the same unit as `make quantize MAX_DROP=0.5`
    old = {"max_abs": None, "min_cosine": 0.99, "min_top1_agreement": 0.99, "max_accuracy_drop": 0.005,
           "cosine_on": "mean"}  # a spec.json written before the budget moved to points
    assert Tolerance.from_dict(old).max_drop_points == 0.5
    from tests.conftest import tiny_model

    d = tiny_model("vit").spec.to_dict()
    d["tolerances"]["int8"] = old
    assert ModelSpec.from_dict(d).tolerances["int8"].max_drop_points == 0.5


def test_verify_judges_int8_with_the_budget_it_was_built_under(tmp_path):
    from tests.conftest import tiny_model
    from verify.plan import tolerance_for
    from zoo.io import update_manifest

    spec = tiny_model("vit").spec
    assert tolerance_for(spec, "int8", tmp_path).max_drop_points == 0.5
    update_manifest(tmp_path, "int8", {"budget": {"max_drop_points": 1.0}})  # make quantize MAX_DROP=1.0
    assert tolerance_for(spec, "int8", tmp_path).max_drop_points == 1.0
    assert tolerance_for(spec, "fp16", tmp_path).max_drop_points == 0.1
