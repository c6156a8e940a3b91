"""Hardening: the runtime refuses bad feeds, tampered files and junk text with typed errors; a graph ONNX Runtime
crashes on at 'all' opens at its recorded level; and the whole suite (`make harden`) at CI size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.base import DimBounds, InputContract, IOInfo
from runtime.errors import InputError, ModelLoadError, PreprocessError
from runtime.onnx_guard import check_external_data, external_locations, model_metadata
from runtime.ort_backend import ORT_LEVEL_KEY, OrtRunner

ROOT = Path(__file__).resolve().parents[1]


def _matmul_model(path: Path, external: bool = False, metadata: dict[str, str] | None = None) -> Path:
    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    if external:
        onnx.save(m, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


def test_contract_refuses_nonfinite_and_out_of_vocab_and_takes_big_endian():
    c = InputContract([IOInfo("x", "float32", ("batch", 3)), IOInfo("ids", "int64", ("batch", 5))],
                      {"batch": DimBounds(1, 4)}, {"ids": (0, 99)})
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    x = np.ones((2, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(InputError, match=r"input 'x': got 1 NaN/Inf value\(s\) of 6, expected finite numbers"):
        c.check({"x": x, "ids": ids})
    with pytest.raises(InputError, match=r"input 'ids': got ids -1..8, expected 0..99 \(the model's vocabulary\)"):
        c.check({"x": np.ones((2, 3), np.float32), "ids": ids - 1})
    with pytest.raises(InputError, match=r"got ids 0..100"):
        c.check({"x": np.ones((2, 3), np.float32), "ids": np.where(ids == 9, 100, ids)})
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    got = c.check({"x": big, "ids": ids})
    assert got["x"].dtype == np.float32 and got["x"].dtype.isnative and np.array_equal(got["x"], big.astype(np.float32))


def test_external_data_outside_the_folder_is_refused_before_loading(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    ok = _matmul_model(d / "ok.onnx", external=True)
    assert check_external_data(ok) == ["w.bin"] and external_locations(ok.read_bytes()) == ["w.bin"]
    with OrtRunner(ok) as r:  # beside the model: loads and runs
        assert r.infer({"x": np.ones((1, 4), np.float32)})["y"].tolist() == [[12.0, 16.0]]
    (tmp_path / "secret.bin").write_bytes((d / "w.bin").read_bytes())
    for loc in ("../secret.bin", str(tmp_path / "secret.bin"), "sub/../../secret.bin"):
        m = onnx.load(str(ok), load_external_data=False)
        m.graph.initializer[0].external_data[0].value = loc
        bad = d / "bad.onnx"
        bad.write_bytes(m.SerializeToString())
        with pytest.raises(ModelLoadError, match=r"external data .* outside the model's folder .*refused before loading"):
            OrtRunner(bad)
    assert check_external_data(_matmul_model(d / "inline.onnx")) == []
    (d / "junk.onnx").write_bytes(b"\xff" * 64)
    assert check_external_data(d / "junk.onnx") == []  # not protobuf: left to the backend's own error


def test_metadata_is_read_without_onnx_and_caps_the_default_level(tmp_path):
    meta = {"edgeattn.spec": json.dumps({"inputs": [], "outputs": [], "dynamic": {}}), ORT_LEVEL_KEY: "extended"}
    p = _matmul_model(tmp_path / "m.onnx", metadata=meta)
    assert model_metadata(p) == meta == {q.key: q.value for q in onnx.load(str(p)).metadata_props}
    with OrtRunner(p) as r:
        assert r.opt_level == "extended"  # the recorded level, by default
    with OrtRunner(p, opt_level="all") as r:
        assert r.opt_level == "all"  # an explicit level is the caller's choice
    with OrtRunner(_matmul_model(tmp_path / "plain.onnx")) as r:
        assert r.opt_level == "all"


def test_text_encoder_refuses_what_is_not_text(tmp_path):
    from runtime.preprocess import TextEncoder
    from zoo.tokenizer import train_tokenizer

    tok = train_tokenizer(["a good film", "a bad film", "good acting", "bad plot"] * 10, 50, 8, tmp_path / "t.json")
    enc = TextEncoder(tok)
    assert enc.encode(["", "a good film " * 1000]).shape == (2, 8)  # empty and huge: fine (truncated)
    with pytest.raises(PreprocessError, match=r"item 1 is bytes, expected str"):
        enc.encode(["ok", b"bytes"])
    with pytest.raises(PreprocessError, match=r"item 0 is not valid Unicode .*expected UTF-8 text"):
        enc.encode([b"caf\xe9".decode("utf-8", "surrogateescape")])


def test_hardening_suite_at_ci_size(tmp_path):
    """`python -m devtools.harden --quick`: every bad input gives a typed error, every tampered file is refused, every
    stage survives SIGKILL (and the rebuilt artifacts pass verify), crashing workers become failed rows, a runner's
    memory does not grow, and the served endpoint answers bad requests with HTTP 4xx and survives a killed model."""
    r = subprocess.run([sys.executable, "-m", "devtools.harden", "--artifacts", str(tmp_path), "--quick"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1500)
    rep = json.loads((tmp_path / "harden.json").read_text())
    assert r.returncode == 0 and rep["problems"] == [], rep["problems"] or r.stdout[-2000:] + r.stderr[-2000:]
    bad = rep["bad_input"]
    runners = [v for k, v in bad.items() if k.startswith("runner ")]
    assert runners and all(v["tried"] == 40 and v["typed_error"] > 0 and v["accepted"] > 0 for v in runners)
    assert bad["cli"]["ok"] == bad["cli"]["tried"] >= 20
    assert rep["tampering"]["refused"] == rep["tampering"]["tried"] >= 8
    f = rep["faults"]
    assert f["survived"] == f["tried"] == 5 and f["final_verify"]["ok"] and f["stale_or_mismatched_files"] == []
    assert all(v["ok"] for v in f["crashing_workers"].values())
    assert all(v["growth_mb_per_10k"] <= 5.0 for v in rep["memory"].values())
    sv = rep["served"]  # the bundled Triton server (installed by scripts/setup.sh)
    br = sv["bad_requests"]
    assert br["tried"] >= 20 and br["client_error"] > 0 and br["answered"] > 0 and sv["still_serving_after_bad_requests"]
    assert br["server_error"] == br["accepted_bad"] == br["refused_good"] == br["hung_or_dropped"] == 0
    kl = sv["killed_while_loading"]
    assert kl["stubs_killed"] >= 1 and kl["server_alive"] and kl["other_still_serves"]
