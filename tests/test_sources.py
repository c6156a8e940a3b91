"""Model sources registered once (pipeline.sources + zoo.registry.SOURCES), and the ``onnx:<file>`` source: an ONNX
file with no PyTorch behind it through export, simplify, quantize and verify, judged against its own fp32 graph."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts import ModelRef, artifact_name
from pipeline.sources import SourceError, source_of
from zoo.built import RegistryError


@pytest.mark.parametrize("name, kind, folder, heavy, weights_env", [
    ("vit", "builtin", "vit", False, False),
    ("bert_imdb", "hf", "bert_imdb", False, False),
    ("gpt2_imdb", "hf", "gpt2_imdb", False, False),
    ("torchvision:resnet18", "torchvision", "resnet18", True, True),
    ("hf:/models/bert-base-uncased", "hf", "bert-base-uncased", False, False),
    ("hf:artifacts/bert_imdb/hf", "hf", "bert_imdb", False, False),
    ("onnx:/some/where/net.onnx", "onnx", "net", False, False),
    ("my.models:make_tiny", "module", "make_tiny", False, True),
])
def test_each_kind_resolves_to_its_source_and_policy(name, kind, folder, heavy, weights_env, tmp_path):
    src = source_of(name)
    assert (src.kind, src.folder_name, src.policy.heavy, src.policy.weights_env) == (kind, folder, heavy, weights_env)
    ref = ModelRef.resolve(name, tmp_path)
    assert ref.source == src and ref.folder == tmp_path / folder and artifact_name(name) == folder


def test_the_source_tells_the_task_until_the_spec_does(tmp_path):
    gpt2 = tmp_path / "g"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert ModelRef.resolve(f"hf:{gpt2}", tmp_path / "art").task == "text_generation"
    assert ModelRef.resolve("gpt2_imdb", tmp_path).task == "text_generation"
    assert ModelRef.resolve("bert_imdb", tmp_path).task == "text_classification"
    ref = ModelRef.resolve("vit", tmp_path)
    assert ref.task is None
    ref.folder.mkdir()
    ref.file("spec.json").write_text(json.dumps({"task": "image_classification"}))
    assert ref.task == "image_classification"


def test_an_unknown_prefix_is_one_clear_error_naming_the_known_ones(tmp_path):
    msg = r"model 'tf:/x/m\.pb': unknown source 'tf:'; expected one of .*'torchvision:<arch>', 'hf:<directory>', " \
          r"'onnx:<file\.onnx>', '<python\.module>:<factory>'"
    with pytest.raises(SourceError, match=msg):
        ModelRef.resolve("tf:/x/m.pb", tmp_path)
    from zoo.registry import create_model

    with pytest.raises(RegistryError, match=r"model 'nope': unknown; expected one of text_transformer, .*'onnx:"):
        create_model("nope")


# ---- onnx:<file> ---------------------------------------------------------------------------------------------------
def _tiny_classifier(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5)).eval()


def _to_onnx(path: Path, dynamic: bool = True, external: bool = False, seed: int = 0) -> Path:
    """A tiny torch classifier exported elsewhere (then forgotten): (batch, 12) float -> (batch, 5) logits."""
    import onnx
    import torch

    kw = dict(input_names=["features"], output_names=["scores"], opset_version=17, dynamo=False)
    if dynamic:
        kw["dynamic_axes"] = {"features": {0: "N"}, "scores": {0: "N"}}
    example = torch.randn(1 if not dynamic else 2, 12)
    torch.onnx.export(_tiny_classifier(seed), (example,), str(path), **kw)
    if external:
        proto = onnx.load(str(path))
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.stem}.weights", size_threshold=0)
    return path


def _ort(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_onnx_source_reads_the_spec_from_the_graph(tmp_path):
    from zoo.registry import create_model

    built = create_model(f"onnx:{_to_onnx(tmp_path / 'net.onnx')}")
    spec = built.spec
    assert spec.task == "custom" and spec.dataset is None and spec.labels == []
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [("features", "float32", ("batch", 12))]
    assert [(t.name, t.shape) for t in spec.outputs] == [("scores", ("batch", 5))]
    assert (spec.dynamic["batch"].min, spec.dynamic["batch"].max) == (1, 16) and spec.opset == 17
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    import torch

    got = built.module(torch.from_numpy(x)).numpy()  # the reference: the given graph on ONNX Runtime
    np.testing.assert_array_equal(got, _ort(tmp_path / "net.onnx", {"features": x})[0])
    with pytest.raises(RegistryError, match=r"got task 'text_generation', expected one of .*KV-cache"):
        create_model(f"onnx:{tmp_path / 'net.onnx'}", task="text_generation")
    with pytest.raises(RegistryError, match=r"ONNX file '.*missing\.onnx' does not exist"):
        create_model(f"onnx:{tmp_path / 'missing.onnx'}")


def test_task_inferred_from_a_2d_float_output_of_an_image_graph(tmp_path):
    import torch
    from torch import nn

    from zoo.registry import create_model

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)).eval()
    path = tmp_path / "img.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    spec = create_model(f"onnx:{path}").spec
    assert spec.task == "image_classification" and spec.labels == [str(i) for i in range(7)]
    assert spec.preprocess["size"] == [32, 32] and spec.preprocess["channels"] == 3


def test_a_text_graph_gets_token_ids_inside_its_vocabulary(tmp_path):
    import torch
    from torch import nn

    from zoo.registry import create_model

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(30, 8), nn.Linear(8, 2)

        def forward(self, ids):  # (B, T) int64 -> (B, 2)
            return self.head(self.emb(ids).mean(1))

    path = tmp_path / "txt.onnx"
    torch.onnx.export(Text().eval(), (torch.ones(2, 5, dtype=torch.int64),), str(path), input_names=["ids"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "b", 1: "t"}, "logits": {0: "b"}},
                      opset_version=17, dynamo=False)
    spec = create_model(f"onnx:{path}").spec
    assert spec.task == "text_classification" and spec.preprocess["vocab_size"] == 30
    assert spec.inputs[0].shape == ("batch", "t") and spec.dynamic["t"].max == 64
    art = tmp_path / "art"
    assert _stage("export.__main__", "--models", f"onnx:{path}", "--artifacts", str(art)) == 0  # runs at 1..64
    data = tmp_path / "ids.npz"
    np.savez(data, ids=np.random.default_rng(0).integers(1, 30, size=(40, 7)))
    assert _stage("export.__main__", "--models", f"onnx:{path}", "--artifacts", str(art), "--data", str(data)) == 0
    dyn = json.loads((art / "txt" / "spec.json").read_text())["dynamic"]
    assert dyn["t"] == {"min": 7, "opt": 7, "max": 7} and dyn["batch"]["max"] == 16  # the data's length


def test_task_given_at_export_wins_and_is_refused_where_the_spec_says_it(tmp_path, capsys):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7)).eval()
    path = tmp_path / "img.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    art = tmp_path / "art"

    def task() -> str:
        return json.loads((art / "img" / "spec.json").read_text())["task"]

    assert _stage("export.__main__", "--models", f"onnx:{path}", "--artifacts", str(art), "--task", "custom") == 0
    assert task() == "custom" and json.loads((art / "img" / "manifest.json").read_text())["export"]["task"] == "custom"
    assert _stage("export.__main__", "--models", f"onnx:{path}", "--artifacts", str(art)) == 0
    assert task() == "image_classification"  # not given: inferred again
    assert _stage("export.__main__", "--models", "vit", "--artifacts", str(art), "--task", "custom") == 2
    assert "error: export vit: model 'vit': got task 'custom', expected none: its spec gives its task" in \
        capsys.readouterr().err


def _stage(module: str, *argv: str) -> int:
    import importlib

    from pipeline.stage import cli

    mod = importlib.import_module(module)
    return int(cli(module, lambda: mod.main(list(argv))) or 0)


def _through_every_stage(name: str, art: Path) -> list[dict]:
    assert _stage("export.__main__", "--models", name, "--artifacts", str(art)) == 0
    assert _stage("optimize.simplify", "--models", name, "--artifacts", str(art)) == 0
    assert _stage("optimize.quantize", "--models", name, "--artifacts", str(art), "--bench-runs", "3",
                  "--cpu-candidates", "dynamic") in (0, 1)  # 1: an artifact outside its budget (recorded, still verified)
    assert _stage("verify.__main__", "--models", name, "--artifacts", str(art), "--limit", "32") in (0, 1)
    return [r for r in json.loads((art / "verify.json").read_text()) if r["model"] == name]


def test_onnx_file_goes_through_every_stage_judged_against_its_own_graph(tmp_path):
    (tmp_path / "given").mkdir()
    src = _to_onnx(tmp_path / "given" / "net.onnx")
    name, art = f"onnx:{src}", tmp_path / "art"
    rows = _through_every_stage(name, art)
    folder = art / "net"
    assert {"fp32.onnx", "fp32.sim.onnx", "fp16.onnx", "int8.qdq.onnx", "spec.json"} <= {p.name for p in
                                                                                       folder.iterdir()}
    man = json.loads((folder / "manifest.json").read_text())
    assert man["export"]["exporter"] == "copy" and man["export"]["source"].startswith("onnx ")
    fp32 = [r for r in rows if r["artifact"] == "fp32.onnx" and r["backend"] == "onnxruntime"]
    assert fp32 and all(r["passed"] for r in fp32), fp32
    assert all(r["dataset"] == "seeded-random" for r in rows)
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    np.testing.assert_allclose(_ort(folder / "fp32.onnx", {"features": x})[0], _ort(src, {"features": x})[0],
                               rtol=0, atol=1e-6)
    assert _stage("export.__main__", "--models", name, "--artifacts", str(art)) == 0  # up to date: same file
    assert json.loads((folder / "manifest.json").read_text())["export"]["sha256"] == man["export"]["sha256"]

    # bench: our artifacts and plain ONNX Runtime; no PyTorch peer (there is no PyTorch model behind the name)
    assert _stage("bench.__main__", "--models", name, "--artifacts", str(art), "--quick", "--threads", "1",
                  "--batches", "1", "--peers", "eager,ort_plain", "--accuracy-samples", "0") == 0
    brows = [r for r in json.loads((art / "bench.json").read_text())["rows"] if r["model"] == name]
    assert {r.get("peer_kind") for r in brows if r["is_peer"]} == {"ort_plain"}
    assert all(r["error"] is None and r["p50_ms"] > 0 for r in brows), brows
    assert any(r["artifact"] == "fp32.sim.onnx" and r["verified"] is True for r in brows)
    assert _stage("bench.report", "--artifacts", str(art)) == 0
    assert "none (ONNX file: judged against its own fp32 graph)" in (art / "report.md").read_text()

    # the reference is the given graph, not the copy: other weights in the given file fail the copy's fp32 row
    _to_onnx(src, seed=1)
    assert _stage("verify.__main__", "--models", name, "--artifacts", str(art), "--limit", "32", "--force") in (0, 1)
    rows = [r for r in json.loads((art / "verify.json").read_text()) if r["model"] == name]
    fp32 = [r for r in rows if r["artifact"] == "fp32.onnx" and r["backend"] == "onnxruntime"]
    assert fp32 and not any(r["passed"] for r in fp32), fp32
    assert _stage("export.__main__", "--models", name, "--artifacts", str(art)) == 0  # a changed file re-exports
    assert json.loads((folder / "manifest.json").read_text())["export"]["sha256"] != man["export"]["sha256"]


def test_external_data_beside_the_file_is_honoured_and_outside_refused(tmp_path):
    from zoo.registry import create_model

    d = tmp_path / "given"
    d.mkdir()
    src = _to_onnx(d / "ext.onnx", external=True)
    assert (d / "ext.weights").is_file() and src.stat().st_size < 2000  # the weights live beside it
    art = tmp_path / "art"
    assert _stage("export.__main__", "--models", f"onnx:{src}", "--artifacts", str(art)) == 0
    out = art / "ext" / "fp32.onnx"
    assert out.stat().st_size > 2000 and not list((art / "ext").glob("*.weights"))  # pulled into the copy
    x = np.random.default_rng(2).standard_normal((2, 12)).astype(np.float32)
    np.testing.assert_allclose(_ort(out, {"features": x})[0], _ort(src, {"features": x})[0], rtol=0, atol=1e-6)

    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.weights"
    (tmp_path / "outside.weights").write_bytes((d / "ext.weights").read_bytes())
    bad = d / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(RegistryError, match=r"external data '\.\./outside\.weights'.*outside the model's folder"):
        create_model(f"onnx:{bad}")


def test_a_graph_with_no_dynamic_axes_goes_through(tmp_path):
    d = tmp_path / "given"
    d.mkdir()
    src = _to_onnx(d / "fixed.onnx", dynamic=False)
    rows = _through_every_stage(f"onnx:{src}", tmp_path / "art")
    spec = json.loads((tmp_path / "art" / "fixed" / "spec.json").read_text())
    assert spec["dynamic"] == {"batch": {"min": 1, "opt": 4, "max": 16}}  # made dynamic, proven against the graph
    assert spec["inputs"][0]["shape"] == ["batch", 12] and spec["outputs"][0]["shape"] == ["batch", 5]
    fp32 = [r for r in rows if r["artifact"] == "fp32.onnx" and r["backend"] == "onnxruntime"]
    assert fp32 and all(r["passed"] for r in fp32), fp32


def test_a_static_batch_the_graph_bakes_in_is_refused_at_export(tmp_path, capsys):
    import torch
    from torch import nn

    class Baked(nn.Module):
        def forward(self, x):  # the batch of 1 is a constant of the graph's Reshape
            return x.reshape(1, 12)[:, :5] * 2.0

    path = tmp_path / "baked.onnx"
    torch.onnx.export(Baked().eval(), (torch.randn(1, 3, 4),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    assert _stage("export.__main__", "--models", f"onnx:{path}", "--artifacts", str(tmp_path / "art")) == 2
    err = capsys.readouterr().err
    assert "error: export onnx:" in err and "the ONNX graph fails at opt sizes {'batch': 4}" in err, err
    assert not (tmp_path / "art" / "baked" / "fp32.onnx").exists()
