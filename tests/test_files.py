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
