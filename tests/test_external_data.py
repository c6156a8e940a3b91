"""Models over the 2 GB protobuf limit: every artifact written with ONNX external data (zoo.io.save_onnx) and loaded
with the runtime's rules (runtime.onnx_guard: data files beside the model only).

The threshold is a parameter ($EDGEATTN_EXTERNAL_DATA_BYTES; the default is the protobuf limit less headroom), so a
small model takes the code path a real >2 GB model takes: a text classifier whose embedding table is over a 200 KB
threshold goes through export, simplify, fp16, int8, engines and verify with `edgeattn run`, and every ONNX artifact
is a graph plus one content-named data file; peak memory is in the export and quantize manifest sections.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

BIG_MODULE = '''
import torch
from torch import nn

from zoo.registry import model_spec


class WideText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(1000, 96)  # 384 KB of float32: over the test's 200 KB threshold
        self.attn = nn.MultiheadAttention(96, 4, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(96, 192), nn.GELU(), nn.Linear(192, 96))
        self.head = nn.Linear(96, 3)

    def forward(self, input_ids):
        x = self.emb(input_ids)
        a, _ = self.attn(x, x, x, need_weights=False)
        x = x + a
        return self.head((x + self.ff(x)).mean(1))


@model_spec(inputs=[{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}],
            dynamic={"batch": {"min": 1, "opt": 4, "max": 8}, "sequence": {"min": 2, "opt": 8, "max": 16}},
            preprocess={"vocab_size": 1000})
def wide_text():
    torch.manual_seed(0)
    return WideText()
'''
THRESHOLD = 200_000


def tiny_graph(seed: int, rows: int = 256):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((rows, 512)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.ones(512, np.float32), "b")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), onnx


def test_save_onnx_moves_weights_out_at_the_limit_and_prunes_old_data(tmp_path, monkeypatch):
    from runtime.ort_backend import cpu_session
    from zoo.io import EXTERNAL_DATA_ENV, atomic_save_onnx, copy_onnx, external_data_limit, onnx_files

    model, onnx = tiny_graph(0)  # 512 KB of weights
    before = model.SerializeToString()
    x = {"x": np.ones((1, 256), np.float32)}
    atomic_save_onnx(model, tmp_path / "small.onnx", limit=10 ** 9)
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]
    p = atomic_save_onnx(model, tmp_path / "m.onnx", limit=100_000)
    assert model.SerializeToString() == before  # the caller's model keeps its tensors in memory
    files = onnx_files(p)
    assert len(files) == 2 and files[1].name.startswith("m.onnx.") and files[1].name.endswith(".data")
    assert p.stat().st_size < 2_000 and files[1].stat().st_size >= 512 * 256 * 4
    from bench.generation import onnx_bytes

    assert onnx_bytes(p) == p.stat().st_size + files[1].stat().st_size  # bench's file size per row counts the data
    want = cpu_session(tmp_path / "small.onnx", "disable").run(None, x)[0]
    np.testing.assert_array_equal(cpu_session(p, "disable").run(None, x)[0], want)
    again = atomic_save_onnx(model, tmp_path / "m.onnx", limit=100_000)  # same content: same data file name
    assert onnx_files(again)[1].name == files[1].name
    other, _ = tiny_graph(1)
    atomic_save_onnx(other, tmp_path / "m.onnx", limit=100_000)  # new content: a new file, the old one pruned
    new = onnx_files(tmp_path / "m.onnx")[1]
    assert new.name != files[1].name and not files[1].exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["small.onnx", "m.onnx", new.name])
    assert new.stat().st_nlink == 1
    moved = copy_onnx(tmp_path / "m.onnx", tmp_path / "moved.onnx")  # one data file: copied, weights not loaded
    assert onnx_files(moved)[1].name == "moved.onnx." + new.name.split(".")[2] + ".data"
    np.testing.assert_array_equal(cpu_session(moved, "disable").run(None, x)[0],
                                  cpu_session(tmp_path / "m.onnx", "disable").run(None, x)[0])
    # a data file saved twice by onnx (ONNX Runtime's quantiser does: onnx appends) holds dead bytes: not copied
    twice = tmp_path / "twice"
    twice.mkdir()
    for _ in range(2):  # save_model empties the tensors it moves out: a fresh copy each time
        onnx.save_model(onnx.load_from_string(other.SerializeToString()), str(twice / "q.onnx"),
                        save_as_external_data=True, location="q.onnx.data")
    assert (twice / "q.onnx.data").stat().st_size >= 2 * 512 * 256 * 4
    compact = onnx_files(copy_onnx(twice / "q.onnx", tmp_path / "q.onnx"))[1]
    assert compact.stat().st_size < 512 * 256 * 4 + 2 * 4096 + 512 * 4
    np.testing.assert_array_equal(cpu_session(tmp_path / "q.onnx", "disable").run(None, x)[0],
                                  cpu_session(tmp_path / "m.onnx", "disable").run(None, x)[0])
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "100000")
    assert external_data_limit() == 100_000
    copy_onnx(tmp_path / "small.onnx", tmp_path / "copy.onnx")  # the environment's threshold: external now
    assert len(onnx_files(tmp_path / "copy.onnx")) == 2
    np.testing.assert_array_equal(cpu_session(tmp_path / "copy.onnx", "disable").run(None, x)[0], want)
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "two gigs")
    with pytest.raises(ValueError, match=r"got 'two gigs', expected a positive number of bytes"):
        external_data_limit()
    assert onnx.load(str(tmp_path / "m.onnx")).graph.initializer[0].dims == [256, 512]


def test_a_model_over_the_limit_goes_through_every_stage(module_from_source, tmp_path):
    from runtime.onnx_guard import check_external_data
    from runtime.ort_backend import cpu_session
    from zoo.io import EXTERNAL_DATA_ENV

    mods = module_from_source("bigmods", BIG_MODULE)
    art = tmp_path / "art"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(mods)]), EXTERNAL_DATA_ENV: str(THRESHOLD)}
    p = subprocess.run([sys.executable, "-m", "edgeattn", "run", "--models", "bigmods:wide_text", "--artifacts",
                        str(art), "--no-bench", "--flavor", "rtx"], capture_output=True, text=True, env=env,
                       timeout=1200, cwd=ROOT)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    d = art / "wide_text"
    onnx_out = sorted(f.name for f in d.glob("*.onnx"))
    assert {"fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx"} <= set(onnx_out)
    feed = {"input_ids": np.arange(16, dtype=np.int64).reshape(2, 8)}
    for name in onnx_out:
        locs = check_external_data(d / name)
        assert len(set(locs)) == 1 and locs[0].startswith(f"{name}.") and (d / locs[0]).is_file(), (name, locs)
        assert (d / name).stat().st_size < THRESHOLD, name  # the weights are out of the graph
        out = cpu_session(d / name, "disable").run(None, feed)[0]
        assert out.shape == (2, 3) and np.isfinite(out).all(), name
    data = sorted(f.name for f in d.glob("*.data"))
    assert data == sorted({check_external_data(d / n)[0] for n in onnx_out})  # no stale data files
    rows = [r for r in json.loads((art / "verify.json").read_text()) if r["model"] == "bigmods:wide_text"]
    assert {r["precision"] for r in rows} >= {"fp32", "fp16", "int8"}
    assert all(r["passed"] for r in rows if r.get("gating", True)), [r for r in rows if not r["passed"]]
    m = json.loads((d / "manifest.json").read_text())
    assert m["export"]["external_data"] and m["export"]["bytes"] > 1000 * 96 * 4
    assert m["simplify"]["external_data"] is True
    for section in ("export", "fp16", "int8"):
        assert m[section]["peak_rss_mb"] > 50, section  # a Python process with torch/onnxruntime loaded
