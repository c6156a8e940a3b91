"""Triton Python-backend model for a decoder, decoupled: a prompt (BYTES) in, one response per generated token out
(``TOKEN``: its id, ``TEXT``: the new piece of text), the last one flagged final; on the edgeattn thin runtime's
``runtime.generate.TextGenerator`` (numpy + onnxruntime, the tokenizer JSON read by ``runtime.bpe``; never torch).

``edgeattn triton`` copies this file to ``<repository>/<model>/1/model.py`` beside ``triton_model.py`` (the shared
helpers), ``runtime/``, the decoder graph, ``spec.json`` and ``tokenizer.json``. ``config.pbtxt``
(``serve.configs.generation_config``) sets ``model_transaction_policy { decoupled: true }`` and the parameters
``artifact``, ``ort_opt_level``, ``threads``, ``default_new_tokens``, ``warmup``.

Greedy decoding. Every request of a dynamic batch is checked on its own (a bad one gets an error, the others go on);
the good ones are generated as one left-padded batch (the padding mask gives each row the tokens it gets alone), each
row streamed to its own client and ended on its own: at its stop token (sent, as ``generate`` returns it) or at its
``MAX_NEW_TOKENS``. Where the rows together need more positions than the model has, they run one at a time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runtime.errors import InputError, RuntimeErrorBase  # noqa: E402
from runtime.generate import FINISHED, TextGenerator  # noqa: E402
from triton_model import check_numpy_bridge, triton_error  # noqa: E402

PROMPT, MAX_NEW, TOKEN, PIECE = "PROMPT", "MAX_NEW_TOKENS", "TOKEN", "TEXT"  # serve.configs' names
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WARMUP_PROMPT = "a warm-up sentence for the model"


class Row:
    """One request being streamed: its sender, prompt ids, token limit, the tokens sent and the text shown."""

    def __init__(self, sender, ids: list[int], limit: int):
        self.sender, self.ids, self.limit = sender, ids, limit
        self.tokens: list[int] = []
        self.shown = ""
        self.open = True


class TritonPythonModel:
    def initialize(self, args):
        check_numpy_bridge()
        cfg = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(cfg):
            raise pb_utils.TritonModelException(f"{cfg['name']}: expected model_transaction_policy "
                                                "{ decoupled: true } (one response per token)")
        params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        self.artifact = HERE / params["artifact"]
        threads = int(params.get("threads") or 0) or None
        self.default_new = int(params.get("default_new_tokens") or 32)
        self.gen = TextGenerator(self.artifact, threads=threads, opt_level=params.get("ort_opt_level") or None)
        self.stops = {self.gen.info.eos_id}
        if params.get("warmup", "1") != "0":
            self.gen.generate(WARMUP_PROMPT, max_new_tokens=2, decode=False)
        pb_utils.Logger.log_info(f"edgeattn: {cfg['name']} streams {self.artifact.name} (decoder, "
                                 f"{self.gen.info.layers} layers) on {getattr(self.gen.decoder, 'providers', '?')}")

    # -- one request ------------------------------------------------------------------------------------------
    def _row(self, request) -> Row:
        """The request's prompt ids and limit; ValueError / InputError when the request is at fault."""
        t = pb_utils.get_input_tensor_by_name(request, PROMPT)
        if t is None:
            raise ValueError(f"input '{PROMPT}': missing from the request")
        arr = t.as_numpy()
        if arr.dtype != np.object_ or arr.size != 1:
            raise ValueError(f"input '{PROMPT}': got {arr.dtype} of {arr.size} items, expected one BYTES prompt")
        raw = arr.reshape(-1)[0]
        text = (raw if isinstance(raw, bytes) else bytes(raw)).decode("utf-8")
        limit = self.default_new
        n = pb_utils.get_input_tensor_by_name(request, MAX_NEW)
        if n is not None:
            v = n.as_numpy().reshape(-1)
            if v.size != 1 or int(v[0]) < 1:
                raise ValueError(f"input '{MAX_NEW}': got {v.tolist()}, expected one integer >= 1")
            limit = int(v[0])
        ids = self.gen.tokenizer.encode(text)
        if not ids:
            raise InputError("prompt: got no tokens, expected at least one (the model needs a context)")
        need = len(ids) + limit - 1
        if need > self.gen.info.max_positions:
            raise InputError(f"prompt of {len(ids)} tokens + {MAX_NEW} {limit}: needs {need} positions, expected at "
                             f"most {self.gen.info.max_positions} (the model's position table)")
        return Row(request.get_response_sender(), ids, limit)

    def _send(self, row: Row, tok: int) -> None:
        """Stream ``tok`` to its client with the text it adds (held back while it ends inside a UTF-8 character);
        final at a stop token or the row's limit."""
        row.tokens.append(tok)
        last = tok in self.stops or len(row.tokens) >= row.limit
        text = self.gen.tokenizer.decode([t for t in row.tokens if t not in self.stops])
        piece = ""
        if len(text) > len(row.shown) and (last or not text.endswith("\ufffd")):
            piece, row.shown = text[len(row.shown):], text
        row.sender.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(TOKEN, np.array([[tok]], dtype=np.int64)),
            pb_utils.Tensor(PIECE, np.array([[piece.encode("utf-8")]], dtype=np.object_))]),
            flags=FINAL if last else 0)
        row.open = not last

    def _stream(self, rows: list[Row]) -> None:
        for out in self.gen.stream([r.ids for r in rows], max_new_tokens=max(r.limit for r in rows)):
            for row, tok in zip(rows, out):
                if row.open and int(tok) != FINISHED:
                    self._send(row, int(tok))
            if not any(r.open for r in rows):
                return

    def _fail(self, rows: list[Row], e: Exception) -> None:
        err = triton_error(f"edgeattn: {e}", invalid_input=isinstance(e, InputError))
        for r in rows:
            if r.open:
                r.sender.send(pb_utils.InferenceResponse(error=err), flags=FINAL)
                r.open = False

    def execute(self, requests):
        rows = []
        for req in requests:
            try:
                rows.append(self._row(req))
            except (RuntimeErrorBase, ValueError, UnicodeDecodeError) as e:  # the request is at fault
                req.get_response_sender().send(pb_utils.InferenceResponse(
                    error=triton_error(f"edgeattn: {e}", invalid_input=True)), flags=FINAL)
        if not rows:
            return None
        together = max(len(r.ids) for r in rows) + max(r.limit for r in rows) - 1 <= self.gen.info.max_positions
        for group in ([rows] if together else [[r] for r in rows]):
            try:
                self._stream(group)
            except RuntimeErrorBase as e:
                self._fail(group, e)
            self._fail([r for r in group if r.open], RuntimeError("generation ended before the row's last token"))
        return None

    def finalize(self):
        self.gen.close()
