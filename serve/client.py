"""A Triton client for the Python-backend entries (tritonclient, HTTP or gRPC): raw text or image files in, logits and
labels out; no tokenizer or preprocessing here.

    python -m serve.client --url 127.0.0.1:8000 --model bert_imdb --text "a gripping, beautiful film"
    python -m serve.client --url 127.0.0.1:8001 --protocol grpc --model attention_cnn --image shoe.png --json

    from serve.client import TritonClassifier
    with TritonClassifier("127.0.0.1:8000", "bert_imdb") as c:            # protocol="grpc" for gRPC
        logits, labels = c.infer(["a gripping, beautiful film"])          # (1, classes) float32, ["positive"]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.args import stage_parser
from pipeline.stage import cli
from serve.errors import ClientError

PROTOCOLS = ("http", "grpc")


def _module(protocol: str):
    if protocol not in PROTOCOLS:
        raise ClientError(f"protocol: got '{protocol}', expected one of {list(PROTOCOLS)}")
    try:
        if protocol == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
    except ImportError as e:
        raise ClientError(f"tritonclient[{protocol}] is not installed ({e}); pip install 'tritonclient[http,grpc]'") from e
    return mod


def _exception_types() -> tuple[type[BaseException], ...]:
    from tritonclient.utils import InferenceServerException

    return (InferenceServerException, ConnectionError, OSError)


class TritonClassifier:
    """One connection to one Python-backend entry (``TEXT`` or ``IMAGE`` BYTES in; ``logits``, ``label`` out).
    Not shared between threads: give each thread its own."""

    def __init__(self, url: str, model: str, protocol: str = "http", timeout_s: float = 60.0):
        self.url, self.model, self.protocol, self.timeout_s = url, model, protocol, float(timeout_s)
        self._mod = _module(protocol)
        kw = ({"connection_timeout": self.timeout_s, "network_timeout": self.timeout_s} if protocol == "http" else {})
        self.client = self._mod.InferenceServerClient(url=url, **kw)
        self._timeout_kw = {"client_timeout": self.timeout_s} if protocol == "grpc" else {}  # HTTP: set on the client
        meta = self._call(lambda: self.client.get_model_metadata(model, **self._timeout_kw))
        meta = meta if isinstance(meta, dict) else _as_dict(meta)
        names = [i["name"] for i in meta.get("inputs", [])]
        if len(names) != 1 or names[0] not in ("TEXT", "IMAGE"):
            raise ClientError(f"model '{model}' at {url}: inputs {names}, expected one TEXT or IMAGE input (a "
                              "Python-backend entry of `edgeattn triton`; the _onnx/_trt entries take tensors)")
        self.input_name = names[0]
        self.kind = names[0].lower()

    def _call(self, fn):
        try:
            return fn()
        except _exception_types() as e:
            raise ClientError(f"{self.protocol}://{self.url} model '{self.model}': {e}") from e

    def infer(self, items: Sequence[str | bytes]) -> tuple[np.ndarray, list[str]]:
        """Texts (str) or encoded images (bytes) -> ((N, classes) float32 logits, N labels) in one request."""
        if isinstance(items, (str, bytes)):
            items = [items]
        if not items:
            raise ClientError("infer: got no items, expected at least one text or image")
        data = np.array([[x.encode("utf-8") if isinstance(x, str) else bytes(x)] for x in items], dtype=np.object_)
        inp = self._mod.InferInput(self.input_name, list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        outs = [self._mod.InferRequestedOutput("logits"), self._mod.InferRequestedOutput("label")]
        res = self._call(lambda: self.client.infer(self.model, [inp], outputs=outs, **self._timeout_kw))
        logits = res.as_numpy("logits")
        labels = res.as_numpy("label")
        if logits is None or labels is None or len(logits) != len(items):
            raise ClientError(f"model '{self.model}': got outputs logits {None if logits is None else logits.shape}, "
                              f"label {None if labels is None else labels.shape}; expected {len(items)} rows of each")
        return logits.astype(np.float32), [b.decode() if isinstance(b, bytes) else str(b) for b in labels.reshape(-1)]

    def classify_text(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        return self.infer(list(texts))

    def classify_images(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[str]]:
        data = []
        for p in paths:
            if not Path(p).is_file():
                raise ClientError(f"image '{p}': no such file")
            data.append(Path(p).read_bytes())
        return self.infer(data)

    def statistics(self) -> dict[str, Any]:
        """Triton's statistics of this model (the /v2/models/<m>/stats document, also over gRPC)."""
        if self.protocol == "http":
            return self._call(lambda: self.client.get_inference_statistics(self.model))
        return self._call(lambda: self.client.get_inference_statistics(self.model, as_json=True, **self._timeout_kw))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a connection that already failed
            pass

    def __enter__(self) -> "TritonClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_dict(msg) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def batch_sizes(stats: dict[str, Any]) -> dict[int, int]:
    """{batch size Triton formed: executions} from a statistics document (HTTP or gRPC JSON)."""
    out: dict[int, int] = {}
    for m in stats.get("model_stats", []):
        for b in m.get("batch_stats", []):
            n = int((b.get("compute_infer") or {}).get("count", 0))
            out[int(b["batch_size"])] = out.get(int(b["batch_size"]), 0) + n
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = stage_parser("client", __doc__)
    ap.add_argument("--url", required=True, help="host:port (HTTP port, or the gRPC port with --protocol grpc)")
    ap.add_argument("--protocol", default="http", choices=PROTOCOLS)
    ap.add_argument("--model", required=True)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", metavar="SENTENCE")
    what.add_argument("--image", action="append", metavar="FILE")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(list(argv) if argv is not None else None)
    try:
        with TritonClassifier(a.url, a.model, a.protocol) as c:
            logits, labels = c.classify_text(a.text) if a.text else c.classify_images(a.image)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items = a.text or a.image
    rows = [{"input": x, "label": lab, "logits": [float(v) for v in lg]} for x, lab, lg in zip(items, labels, logits)]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['label']:<12} {' '.join(f'{v:+.4f}' for v in r['logits'])}  {r['input']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli("client", main))
