"""The repository's README.md and the perf_analyzer input files beside it (``perf-<entry>.json``: valid inputs, so
perf_analyzer never sends token ids outside the vocabulary). Both are files at the repository's top level, which
Triton does not read (it loads sub-folders only)."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from runtime.files import atomic_write_json, atomic_write_text
from runtime.modelspec import ModelSpec
from serve import configs
from zoo.tasks import task_named

CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"


def perf_data(rec: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON for one entry: the same sample the warm-up uses."""
    spec = ModelSpec.from_dict(rec["spec"])
    if entry.get("triton") == "python":
        name = entry["inputs"][0]
        if name in (configs.TEXT_INPUT, configs.PROMPT_INPUT):
            return {"data": [{name: [configs.WARMUP_SENTENCE]}]}
        return {"data": [{name: {"b64": base64.b64encode(configs.warmup_image(spec)).decode()}}]}
    from runtime.base import IOInfo

    ios = [IOInfo(t.name, t.dtype, t.shape) for t in spec.inputs if t.name in entry["inputs"]]
    arrays = configs.warmup_arrays(spec, ios)
    return {"data": [{n: {"content": a.reshape(-1).tolist(), "shape": list(a.shape)} for n, a in arrays.items()}]}


def _entries(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in (rec["python"], rec["onnx"], rec["trt"]) if "skipped" not in e]


def write_readme(path: Path, manifest: dict[str, Any]) -> None:
    folder = path.parent
    for rec in manifest["models"]:
        for e in _entries(rec):
            atomic_write_json(folder / f"perf-{e['entry']}.json", perf_data(rec, e))
    atomic_write_text(path, readme_text(manifest))


def _table(manifest: dict[str, Any]) -> list[str]:
    rows = ["| entry | runs | artifact | precision | why |", "|---|---|---|---|---|"]
    for rec in manifest["models"]:
        p, o, t = rec["python"], rec["onnx"], rec["trt"]
        stream = ", decoupled: one response per token" if p.get("decoupled") else ""
        on = "OpenVINO CPU" if p.get("backend") == "openvino" else "ONNX Runtime CPU"
        rows.append(f"| `{p['entry']}` | Python backend: edgeattn runtime on {on} ({p['mode']}{stream}) | "
                    f"`{p['artifact']}` | {p['precision']} | {p['reason']} |")
        if "skipped" in o:
            rows.append(f"| `{o['entry']}` | not written | - | - | {o['skipped']} |")
        else:
            accel = (f"TensorRT accelerator, {configs.TRT_PRECISION[o['precision']]}" if o.get("device") == "gpu"
                     else "CPU")
            rows.append(f"| `{o['entry']}` | onnxruntime_onnx ({accel}) | `{o['artifact']}` | {o['precision']} | "
                        f"{o['reason']} |")
        if "skipped" in t:
            rows.append(f"| `{t['entry']}` | not written | - | - | {t['skipped']} |")
        else:
            rows.append(f"| `{t['entry']}` | tensorrt_plan ({t['mode']}) | `{t['artifact']}` | {t['precision']} | "
                        f"{t['reason']} |")
    return rows


def _perf(manifest: dict[str, Any]) -> list[str]:
    out = []
    for rec in manifest["models"]:
        for e in _entries(rec):
            out.append(f"perf_analyzer -m {e['entry']} -u 127.0.0.1:8001 -i grpc --input-data perf-{e['entry']}.json "
                       f"--concurrency-range 1:16:5 --measurement-interval 5000"
                       + (" --streaming" if e.get("decoupled") else ""))
    return out


EXAMPLE_TEXT = '"a gripping, beautiful film"'


def classifier_query_lines(p: dict[str, Any]) -> list[str]:
    """The ``triton_query`` of a classifier's Python entry (zoo.tasks' default): the client over HTTP and gRPC, and
    curl for raw text."""
    text = p["kind"] == "text"
    arg = f"--text {EXAMPLE_TEXT}" if text else "--image shoe.png"
    return ["```bash",
            f"python -m serve.client --url 127.0.0.1:8000 --model {p['entry']} {arg}",
            f"python -m serve.client --url 127.0.0.1:8001 --protocol grpc --model {p['entry']} {arg}",
            "```", "",
            ("```bash\ncurl -s 127.0.0.1:8000/v2/models/" + p["entry"] + "/infer -d '{\"inputs\": [{\"name\": "
             "\"TEXT\", \"shape\": [1, 1], \"datatype\": \"BYTES\", \"data\": [\"a gripping, beautiful film\"]}]}'"
             "\n```\n") if text else ""]


def stream_query_lines(p: dict[str, Any]) -> list[str]:
    """The ``triton_query`` of a decoder's streaming entry (zoo.tasks.text_generation): the client over gRPC (a
    decoupled entry streams over gRPC only)."""
    return ["```bash", f"python -m serve.client --url 127.0.0.1:8001 --protocol grpc --model {p['entry']} --prompt "
            f"{EXAMPLE_TEXT}", "```", "", ""]


def readme_text(manifest: dict[str, Any]) -> str:
    first = manifest["models"][0]
    query = task_named(first["spec"].get("task")).run("triton_query", first["python"])
    skipped = [rec["trt"] for rec in manifest["models"] if "skipped" in rec["trt"] and "skipped" not in rec["onnx"]]
    ov = any(rec["python"].get("backend") == "openvino" for rec in manifest["models"])
    lines = [
        "# Triton model repository (written by `make triton`)", "",
        f"Written {manifest['written']} from the verified artifacts in `{manifest['artifacts']}` (verify.json; "
        "bench.json where present). `edgeattn-triton.json` records every choice with its sha256.", "",
        *_table(manifest), "",
        "- `<model>` takes raw input, one BYTES element per item: `TEXT` (UTF-8 text) or `IMAGE` (PNG/JPEG bytes); "
        "it returns `logits` (FP32) and `label` (BYTES). No tokenizer or preprocessing on the client. Its version "
        "folder is self-contained: `model.py`, a copy of `runtime/`, the artifact, `spec.json`, the tokenizer JSON.",
        "- A decoder's `<model>` streams (decoupled; gRPC streaming): `PROMPT` (BYTES) and an optional "
        "`MAX_NEW_TOKENS` (INT32) in, one response per generated token, greedy: `TOKEN` (INT64 id) and `TEXT` (the "
        "text it adds, BYTES); the last response is flagged final (Triton's `triton_final_response`). Requests "
        "that wait together are generated as one left-padded batch.",
        "- `<model>_onnx` and `<model>_trt` take the model's own tensors (e.g. token ids) and load only in NVIDIA's "
        "Triton containers (the PyPI server has no ONNX Runtime or TensorRT backend). A TensorRT plan deserialises "
        "only with the TensorRT version and GPU it was built for (`model.plan.json`).",
        f"- Dynamic batching: queue delay {manifest['batching']['queue_delay_us']} us, preferred sizes from the spec's "
        f"batch opt/max; {manifest['batching']['instances']} instance(s) per model.", "",
        "## Serve it with NVIDIA's container (GPU)", "",
        "The Python-backend model needs numpy, onnxruntime, tokenizers (text) and Pillow (images) in the container"
        + (", and openvino for the entries that serve an int8.cpu.onnx chosen on OpenVINO" if ov else "") + "; "
        "the model checks at load time that numpy crosses the backend intact (PyTriton 0.7.0's stub misreads numpy 2 "
        "arrays: use `numpy<2` with such a stub).", "",
        "```bash",
        "docker run --gpus all --rm -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 \\",
        f"  -v $PWD:/models {CONTAINER} \\",
        f"  bash -c \"pip install 'numpy<2' onnxruntime tokenizers pillow{' openvino' if ov else ''} && "
        "tritonserver --model-repository=/models\"",
        "```", "",
    ]
    if skipped:
        lines += ["No `_trt` entry was written for some models (no TensorRT 10/11 engine was built here). On the "
                  "target GPU, build the plan from the ONNX entry's graph (precision is in the graph), add the "
                  "config with `make engines FLAVOR=trt` + `make triton`, or by hand:", "", "```bash",
                  *[t["build"] for t in skipped], "```", ""]
    lines += [
        "## Serve it on this machine (CPU, the server bundled in PyTriton)", "",
        "```bash",
        "make serve                        # tritonserver on 127.0.0.1 (free ports, printed), Ctrl-C stops it",
        "python -m edgeattn serve --repository artifacts/triton --http-port 8000 --grpc-port 8001",
        "```", "",
        "Only the Python-backend entries load there (`--model-control-mode explicit`).", "",
        "## Query it", "",
        *query,
        "## Load it", "",
        "`make loadtest` (N concurrent clients for a fixed time, loopback only, outputs checked against the runtime "
        "in one process). With perf_analyzer (in NVIDIA's `nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk` container; "
        "not run here: the package index here has no perf_analyzer build), from this folder:", "",
        "```bash", *_perf(manifest), "```", "",
    ]
    return "\n".join(lines) + "\n"
