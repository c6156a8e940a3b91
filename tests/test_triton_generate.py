"""serve/ for decoders: the streaming (decoupled) Triton entry and its load test.

A tiny random GPT-2 (test_generate's fixture, exported with its KV cache) gets verify rows as verify writes them, a
repository is built, and the real tritonserver bundled in nvidia-pytriton serves it on 127.0.0.1: prompts streamed
over gRPC one response per token, every sequence equal to the direct runtime's greedy tokens for the prompt alone
(also with several streams at once, which Triton batches), MAX_NEW_TOKENS honoured, a bad prompt answered with an
error while the others go on, and a 1-second load test. Tests that need the server skip only where the wheel or its
Python environment is not installed (as in test_triton).
"""
from __future__ import annotations

import json
import threading

import pytest

from test_generate import exported, texts, tiny_dir  # noqa: F401 (fixtures)
from test_triton import parse_config, server_missing, verify_row

PROMPTS = ["This movie was", "I really did not like the acting in this film, and", "A", "The plot of it"]
NEW = 10


@pytest.fixture(scope="module")
def decoder_repo(exported):  # noqa: F811
    from pipeline.artifacts import resolve_models
    from serve.repository import Options, build

    name, art, _ = exported
    ref = resolve_models(name, art)[0]
    (art / "verify.json").write_text(json.dumps([verify_row(ref.name, "fp32.onnx", task="text_generation")]))
    out = art / "triton"
    manifest = build([ref], out, Options(threads=1))
    return out, manifest, ref


@pytest.fixture(scope="module")
def streaming_server(decoder_repo):
    why = server_missing()
    if why:
        pytest.skip(f"bundled tritonserver not installed here: {why}")
    from serve.server import TritonServer

    out, manifest, _ = decoder_repo
    srv = TritonServer(out, [manifest["models"][0]["python"]["entry"]], ready_timeout_s=120)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def direct(decoder_repo):
    from runtime.generate import TextGenerator

    out, manifest, _ = decoder_repo
    e = manifest["models"][0]["python"]
    with TextGenerator(out / e["entry"] / "1" / e["artifact"], threads=1) as g:
        yield g


def test_decoder_entry_is_decoupled_and_self_contained(decoder_repo):
    from tritonclient.grpc import model_config_pb2 as pb

    from runtime.modelspec import ModelSpec
    from serve.repository import GENERATE_PY, MODEL_PY

    out, manifest, ref = decoder_repo
    rec = manifest["models"][0]
    e = rec["python"]
    assert e["decoupled"] and e["artifact"] == "fp32.onnx" and e["kind"] == "text_generation"
    assert "KV-cache" in rec["onnx"]["skipped"] and "KV-cache" in rec["trt"]["skipped"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [e["entry"]]
    cfg = parse_config(out / e["entry"] / "config.pbtxt")
    spec = ModelSpec.from_json((ref.folder / "spec.json").read_text())
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled
    assert cfg.max_batch_size == spec.dynamic["batch"].max and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in cfg.input] == [
        ("PROMPT", pb.TYPE_STRING, [1], False), ("MAX_NEW_TOKENS", pb.TYPE_INT32, [1], True)]
    assert [(o.name, o.data_type) for o in cfg.output] == [("TOKEN", pb.TYPE_INT64), ("TEXT", pb.TYPE_STRING)]
    assert cfg.parameters["artifact"].string_value == "fp32.onnx" and cfg.parameters["threads"].string_value == "1"
    v = out / e["entry"] / "1"
    assert (v / "model.py").read_text() == GENERATE_PY.read_text()
    assert (v / "triton_model.py").read_text() == MODEL_PY.read_text()
    assert (v / "fp32.onnx").read_bytes() == (ref.folder / "fp32.onnx").read_bytes()
    assert {"spec.json", "tokenizer.json", "runtime"} <= {p.name for p in v.iterdir()}
    readme = (out / "README.md").read_text()
    assert "--streaming" in readme and "one response per token" in readme
    assert json.loads((out / f"perf-{e['entry']}.json").read_text()) == {
        "data": [{"PROMPT": ["a warm-up sentence for the model"]}]}


def test_streamed_tokens_equal_the_direct_runtime(streaming_server, decoder_repo, direct):
    from serve.client import TritonStreamer

    _, manifest, _ = decoder_repo
    entry = manifest["models"][0]["python"]["entry"]
    with TritonStreamer(streaming_server.grpc_url, entry) as s:
        for p in PROMPTS:
            want = direct.generate(p, max_new_tokens=NEW)[0]
            pieces = []
            got = s.generate(p, NEW, on_piece=pieces.append)
            assert got.tokens == want.tokens, p
            stop = direct.info.eos_id
            assert got.text == "".join(pieces) == direct.tokenizer.decode([t for t in want.tokens if t != stop])
            assert 0 < got.first_token_s <= got.total_s
        short = s.generate(PROMPTS[0], 3)
        assert short.tokens == direct.generate(PROMPTS[0], max_new_tokens=3)[0].tokens and len(short.tokens) <= 3


def test_concurrent_streams_each_get_their_own_tokens(streaming_server, decoder_repo, direct):
    """Four streams at once (Triton batches them: left-padded rows): each equals its prompt alone."""
    from serve.client import TritonStreamer, batch_sizes, model_statistics

    _, manifest, _ = decoder_repo
    entry = manifest["models"][0]["python"]["entry"]
    url = streaming_server.grpc_url
    want = {p: direct.generate(p, max_new_tokens=NEW)[0].tokens for p in PROMPTS}
    got, errors = {}, []

    def one(p):
        try:
            with TritonStreamer(url, entry) as s:
                for _ in range(3):
                    got.setdefault(p, []).append(s.generate(p, NEW).tokens)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads)
    assert {p: runs for p, runs in got.items()} == {p: [want[p]] * 3 for p in PROMPTS}
    formed = batch_sizes(model_statistics(url, entry))
    assert sum(k * v for k, v in formed.items()) >= 12


def test_a_bad_prompt_gets_an_error_and_the_stream_goes_on(streaming_server, decoder_repo, direct):
    from serve.client import TritonStreamer
    from serve.errors import ClientError

    _, manifest, _ = decoder_repo
    entry = manifest["models"][0]["python"]["entry"]
    with TritonStreamer(streaming_server.grpc_url, entry) as s:
        with pytest.raises(ClientError, match="prompt: got no tokens, expected at least one"):
            s.generate("", 4)
        with pytest.raises(ClientError, match=r"needs \d+ positions, expected at most 64"):
            s.generate(PROMPTS[0], 500)
        with pytest.raises(ClientError, match=r"MAX_NEW_TOKENS': got \[0\], expected one integer >= 1"):
            s.generate(PROMPTS[0], 0)
        assert s.generate(PROMPTS[2], 4).tokens == direct.generate(PROMPTS[2], max_new_tokens=4)[0].tokens


def test_generation_loadtest_tiny(streaming_server, decoder_repo, tmp_path):
    from serve.loadtest import Settings, passed, run

    out, manifest, _ = decoder_repo
    data = tmp_path / "prompts.txt"
    data.write_text("\n".join(PROMPTS) + "\n")
    s = Settings([1, 3], 1.0, "grpc", pool=4, data=str(data), url=streaming_server.grpc_url, new_tokens=6)
    doc = run(out, None, s, tmp_path / "lt", threads=1)
    assert passed(doc), json.dumps(doc["models"][0]["levels"], indent=1)[:3000]
    m = doc["models"][0]
    assert m["kind"] == "text_generation" and m["inputs"] == {"n": 4, "source": str(data)}
    assert [r["concurrency"] for r in m["levels"]] == [1, 3]
    for r in m["levels"]:
        assert r["requests"] > 0 and r["checked"] == r["identical"] == r["requests"] and r["errors"] == 0
        assert 0 < r["tokens"] <= 6 * r["requests"] and r["tokens_per_s"] > 0 and r["p50_ttft_ms"] > 0
    assert len(m["direct"]) == 2 and m["direct"][1]["batch"] == 3 and m["direct"][0]["tokens_per_s"] > 0
    files = {p.name for p in (tmp_path / "lt").iterdir()}
    assert {"loadtest.json", "loadtest.md", "loadtest-generation.png"} <= files
    assert "| 3 |" in (tmp_path / "lt" / "loadtest.md").read_text()
