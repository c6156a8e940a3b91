"""A Triton client for the Python-backend entries (tritonclient, HTTP or gRPC): raw text or image files in, logits and
labels out; no tokenizer or preprocessing here.

    python -m serve.client --url 127.0.0.1:8000 --model bert_imdb --text "a gripping, beautiful film"
    python -m serve.client --url 127.0.0.1:8001 --protocol grpc --model attention_cnn --image shoe.png --json

    from serve.client import TritonClassifier
    with TritonClassifier("127.0.0.1:8000", "bert_imdb") as c:            # protocol="grpc" for gRPC
        logits, labels = c.infer(["a gripping, beautiful film"])          # (1, classes) float32, ["positive"]

A decoder's streaming entry (decoupled, gRPC streaming only): one response per token as it is generated.

    python -m serve.client --url 127.0.0.1:8001 --protocol grpc --model gpt2_imdb --prompt "This movie was"

    with TritonStreamer("127.0.0.1:8001", "gpt2_imdb") as s:
        r = s.generate("This movie was", max_new_tokens=32, on_piece=print)  # r.tokens, r.text, r.first_token_s
"""
from __future__ import annotations

import json
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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


@dataclass
class Streamed:
    """One streamed generation: the token ids as they came (the stop token included), their text, the seconds to
    the first token and to the last."""

    tokens: list[int]
    text: str
    first_token_s: float
    total_s: float


class TritonStreamer:
    """One gRPC stream to one decoder entry (decoupled: ``PROMPT`` in, one ``TOKEN``/``TEXT`` response per token).
    Requests go one at a time on the stream. Not shared between threads: give each thread its own."""

    def __init__(self, url: str, model: str, timeout_s: float = 60.0):
        self.url, self.model, self.timeout_s = url, model, float(timeout_s)
        self.protocol = "grpc"
        self._mod = _module("grpc")
        self.client = self._mod.InferenceServerClient(url=url)
        meta = _as_dict(self._call(lambda: self.client.get_model_metadata(model, client_timeout=self.timeout_s)))
        names = [i["name"] for i in meta.get("inputs", [])]
        if "PROMPT" not in names:
            raise ClientError(f"model '{model}' at {url}: inputs {names}, expected PROMPT (a decoder's streaming "
                              "entry of `edgeattn triton`)")
        self._q: queue.Queue = queue.Queue()
        self._call(lambda: self.client.start_stream(callback=lambda result, error: self._q.put((result, error))))
        self._n = 0

    def _call(self, fn):
        try:
            return fn()
        except _exception_types() as e:
            raise ClientError(f"grpc://{self.url} model '{self.model}': {e}") from e

    def generate(self, prompt: str, max_new_tokens: int | None = None,
                 on_piece: Callable[[str], Any] | None = None) -> Streamed:
        """Send ``prompt``, collect the streamed tokens until the final response (``on_piece`` gets each text piece
        as it arrives); ClientError on an error response or when no response comes within the timeout."""
        self._n += 1
        rid = f"r{self._n}"
        data = np.array([[prompt.encode("utf-8")]], dtype=np.object_)
        inputs = [self._mod.InferInput("PROMPT", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(data)
        if max_new_tokens is not None:
            inputs.append(self._mod.InferInput("MAX_NEW_TOKENS", [1, 1], "INT32"))
            inputs[1].set_data_from_numpy(np.array([[int(max_new_tokens)]], dtype=np.int32))
        t0 = time.perf_counter()
        self._call(lambda: self.client.async_stream_infer(self.model, inputs, request_id=rid,
                                                          enable_empty_final_response=True))
        tokens, pieces, first = [], [], None
        while True:
            try:
                result, error = self._q.get(timeout=self.timeout_s)
            except queue.Empty:
                raise ClientError(f"grpc://{self.url} model '{self.model}': no response within {self.timeout_s:g} s "
                                  f"after {len(tokens)} tokens") from None
            if error is not None:
                raise ClientError(f"grpc://{self.url} model '{self.model}': {error}")
            resp = result.get_response()
            if resp.id != rid:
                continue  # a late response of an earlier request that failed on our side
            tok = result.as_numpy("TOKEN")
            if tok is not None and tok.size:
                if first is None:
                    first = time.perf_counter() - t0
                tokens.append(int(tok.reshape(-1)[0]))
                piece = result.as_numpy("TEXT")
                text = piece.reshape(-1)[0] if piece is not None and piece.size else b""
                text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
                pieces.append(text)
                if on_piece is not None and text:
                    on_piece(text)
            final = resp.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        total = time.perf_counter() - t0
        return Streamed(tokens, "".join(pieces), first if first is not None else total, total)

    def close(self) -> None:
        try:
            self.client.stop_stream()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a connection that already failed
            pass

    def __enter__(self) -> "TritonStreamer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_dict(msg) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def model_statistics(url: str, model: str, protocol: str = "grpc", timeout_s: float = 60.0) -> dict[str, Any]:
    """Triton's statistics of ``model`` (any entry, streaming ones included) as JSON, on a connection of its own."""
    mod = _module(protocol)
    client = mod.InferenceServerClient(url=url)
    try:
        if protocol == "http":
            return client.get_inference_statistics(model)
        return client.get_inference_statistics(model, as_json=True, client_timeout=timeout_s)
    except _exception_types() as e:
        raise ClientError(f"{protocol}://{url} model '{model}': statistics: {e}") from e
    finally:
        client.close()


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
    what.add_argument("--prompt", help="a decoder's streaming entry (--protocol grpc): print tokens as they come")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="with --prompt (default: the entry's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(list(argv) if argv is not None else None)
    if a.prompt is not None:
        return _stream_main(a)
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


def _stream_main(a) -> int:
    if a.protocol != "grpc":
        print("error: --prompt: streaming needs --protocol grpc (and the gRPC port)", file=sys.stderr)
        return 2
    try:
        with TritonStreamer(a.url, a.model) as s:
            show = None if a.json else (lambda piece: print(piece, end="", flush=True))
            r = s.generate(a.prompt, a.max_new_tokens, on_piece=show)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"prompt": a.prompt, "tokens": r.tokens, "text": r.text, "first_token_s": r.first_token_s,
                          "total_s": r.total_s}, indent=2))
    else:
        print(f"\n[{len(r.tokens)} tokens, first after {r.first_token_s * 1e3:.1f} ms, "
              f"{len(r.tokens) / r.total_s:.1f} tokens/s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli("client", main))
