"""Text generation in the thin runtime: a decoder graph with its KV cache (zoo.gpt2's export), numpy and one
backend; no torch, no transformers, no tokenizers (runtime.bpe reads the tokenizer JSON).

    from runtime.generate import TextGenerator
    with TextGenerator("artifacts/gpt2_imdb/fp32.onnx") as g:
        out = g.generate(["This movie was", "I"], max_new_tokens=40)               # greedy, a batch
        out = g.generate("This movie was", do_sample=True, temperature=0.8, top_k=50, top_p=0.95, seed=1)
        for piece in g.stream_text("This movie was", max_new_tokens=40):         # streaming text
            print(piece, end="")

    from runtime.generate import generate                                          # one call
    generate("artifacts/gpt2_imdb/fp32.onnx", "This movie was", max_new_tokens=40)[0].text

How a step runs. One graph serves prefill (an empty past, the whole prompt) and decode (one token, the past):
inputs ``input_ids`` (B, S), ``attention_mask`` (B, P+S), ``position_ids`` (B, S), ``past_key_values.<i>.key|value``
(B, H, P, D); outputs ``logits`` (B, S, V) and ``present.<i>.key|value`` (B, H, P+S, D). A batch of prompts of
different lengths is left-padded (mask 0, positions counted from each row's first real token as transformers
does), each row stops on its own (a stop token, then padding fed in, as transformers' generate does), and the step
loop ends when every row has finished or ``max_new_tokens`` is reached.

The KV cache lives in preallocated buffers (:class:`OrtDecoder`, ONNX Runtime I/O binding): two buffers per cache
tensor, sized for the batch and the longest sequence of the call; a step reads the past from one and the graph
writes the present (past + new) into the other, then they swap. Nothing is allocated per step, the cache never
leaves them, and on a GPU execution provider they are device memory. The loop asks each step for the last
position's logits only (``step(..., last_only=True)``): on a GPU provider the logits (B, S, V) are written to device
memory and one strided copy (``cudaMemcpy2D``) brings back the (B, V) rows the next token is chosen from, not the
whole prefill's B x S x V. :class:`FeedDecoder` runs the same loop on any runtime Runner (OpenVINO, or ONNX Runtime without
binding) by feeding numpy arrays: it is what verify uses for "every CPU backend". A TensorRT decoder is the same
contract (``start`` / ``step`` / ``close``) with device buffers bound by ``set_tensor_address`` and two optimisation
profiles (``spec.preprocess['profiles']``: prefill with past 0, decode with sequence 1).

Sampling follows transformers' order: temperature, then top-k, then top-p (the smallest set of most likely tokens
whose probability reaches p), then a draw from numpy's PCG64 seeded with ``seed``: the same seed gives the same
tokens on every run and machine (not the same tokens as torch's sampler, whose generator differs). Greedy is
argmax (the first maximum, like torch).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from runtime.errors import BackendError, InputError, ModelLoadError, PreprocessError
from runtime.modelspec import TEXT_GENERATION

log = logging.getLogger("edgeattn.runtime.generate")

TASK = TEXT_GENERATION
FINISHED = -1  # what stream() yields for a row that has already finished


# ---- the decoder's contract, from its spec ------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderInfo:
    """What the generation loop needs to know about a decoder graph (from ``spec['preprocess']``)."""

    layers: int
    heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eos_id: int
    pad_id: int
    past_inputs: tuple[str, ...]
    present_outputs: tuple[str, ...]
    max_batch: int | None = None
    tokenizer: str = "tokenizer.json"
    past_min: int = 0  # 0: the graph takes an empty past (a prefill); 1: prefill with one masked dummy slot

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, source: str = "model") -> "DecoderInfo":
        pre = (spec or {}).get("preprocess") or {}
        if (spec or {}).get("task") != TASK or pre.get("kind") != TASK:
            got = (spec or {}).get("task") if spec else "no spec"
            raise ModelLoadError(f"model '{source}': task {got!r}, expected '{TASK}' (a decoder with KV cache exported "
                                 "by export.decoder_export, its spec in the file or spec.json beside it)")
        missing = [k for k in ("layers", "heads", "head_dim", "vocab_size", "max_positions", "eos_id",
                               "past_inputs", "present_outputs") if k not in pre]
        if missing:
            raise ModelLoadError(f"model '{source}': spec preprocess lacks {missing}; expected a text_generation spec")
        batch = ((spec or {}).get("dynamic") or {}).get("batch") or {}
        return cls(layers=int(pre["layers"]), heads=int(pre["heads"]), head_dim=int(pre["head_dim"]),
                   vocab_size=int(pre["vocab_size"]), max_positions=int(pre["max_positions"]),
                   eos_id=int(pre["eos_id"]), pad_id=int(pre.get("pad_id", pre["eos_id"])),
                   past_inputs=tuple(pre["past_inputs"]), present_outputs=tuple(pre["present_outputs"]),
                   max_batch=int(batch["max"]) if "max" in batch else None,
                   tokenizer=str(pre.get("tokenizer", "tokenizer.json")), past_min=int(pre.get("past_min", 0)))

    def cache_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        return (batch, self.heads, length, self.head_dim)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows of different lengths -> (ids, mask), both int64 (B, T), padded on the left."""
    t = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), t), int(pad_id), dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, t - len(r):] = np.asarray(r, dtype=np.int64)
            mask[i, t - len(r):] = 1
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids from a (B, T) mask as transformers' generate makes them: cumsum - 1, 0 on padding."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


def decoder_feed(info: DecoderInfo, batch: int, sequence: int, past: int, seed: int = 0,
                 pad_rows: bool = True) -> dict[str, np.ndarray]:
    """A valid random feed for a decoder graph: token ids, a mask with left padding in every other row (when
    ``pad_rows`` and there is room; the padding is in the past when there is one, else in the new tokens), matching
    positions, and cache tensors ~ N(0, 1). For parity checks and benchmarks at any (batch, sequence, past)."""
    rng = np.random.default_rng(seed)
    total = past + sequence
    mask = np.ones((batch, total), dtype=np.int64)
    if pad_rows:
        for b in range(1, batch, 2):
            mask[b, : rng.integers(1, max(2, total // 2 + 1))] = 0 if total > 1 else 1
    pos = positions(mask)[:, past:]
    feed = {"input_ids": rng.integers(0, info.vocab_size, size=(batch, sequence), dtype=np.int64),
            "attention_mask": mask, "position_ids": np.ascontiguousarray(pos)}
    for name in info.past_inputs:
        feed[name] = rng.standard_normal(info.cache_shape(batch, past)).astype(np.float32)
    return feed


def parity_cases(spec: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(label, batch, sequence, past) where a decoder graph is checked (the export against PyTorch, the simplified
    graph against the export): the min, opt and max of every dynamic axis, an empty past among them, each max with
    the other axes small (all maxes at once would be batch x the whole position table, minutes of PyTorch for a
    real GPT-2), and past + sequence within the position table."""
    d = spec["dynamic"]
    n = int(spec["preprocess"]["max_positions"])
    b, s, p = (d[k] for k in ("batch", "sequence", "past"))
    cases = [("min: batch 1, sequence 1, empty past", b["min"], s["min"], 0),
             ("min past", b["min"], s["min"], p["min"]),
             ("opt prefill, empty past", b["opt"], s["opt"], 0),
             ("opt decode", b["opt"], 1, p["opt"]),
             ("opt sequence and past", max(2, b["opt"]), s["opt"], min(p["opt"], n - s["opt"])),
             ("max batch prefill, empty past", b["max"], s["opt"], 0),
             ("max batch decode", b["max"], 1, p["opt"]),
             ("max sequence, empty past", 2, s["max"], 0),
             ("max past, decode", 2, 1, min(p["max"], n - 1))]
    return [(label, int(bb), int(ss), int(pp)) for label, bb, ss, pp in cases if ss + pp <= n]


# ---- decoders: one step of the graph, the cache kept between steps ---------------------------------------------------
class OrtDecoder:
    """A decoder graph on ONNX Runtime with I/O binding. ``start(batch, capacity)`` (re)uses two preallocated
    buffers per cache tensor; ``step(ids, mask, positions)`` runs one graph call and returns the logits (B, S, V),
    a view into a preallocated buffer valid until the next step (copy it to keep it).

    ``spinning=False`` (the default) stops ONNX Runtime's intra-op threads from spin-waiting after a run: between two
    steps this thread picks the token and binds the buffers, and spinning workers take the cores it needs. Measured
    on 2 shared cores (AMD EPYC, gpt2_imdb, 2 threads, batch 1): 1,020-1,150 decode tokens/s without spinning,
    700-860 with it (batch 8: 4,030 vs 1,680).

    ``huge_pages=True`` (the default; CPU only) moves the session's weights onto 2 MiB pages once it is loaded
    (runtime.hugepages; ``self.huge_pages`` says what it did): decode at batch 1 streams every weight per token, and
    on 4 KiB pages that costs ~15 % (the 12-layer width-768 GPT-2, 1 thread: 31.2 -> 26.4 ms CPU per step)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, info: DecoderInfo | None = None, providers=None, threads: int | None = None,
                 opt_level: str | None = None, spec: dict[str, Any] | None = None, spinning: bool = False,
                 huge_pages: bool = True):
        from runtime.ort_backend import OrtRunner

        config = None if spinning else {"session.intra_op.allow_spinning": "0"}
        self.runner = OrtRunner(path, providers=providers, threads=threads, opt_level=opt_level, spec=spec,
                                session_config=config)
        self.path = self.runner.path
        self.spec = self.runner.spec
        self.info = info or DecoderInfo.from_spec(self.spec, str(path))
        self.providers = list(self.runner.providers)
        # GPU execution providers: the cache in device memory (untested without a GPU here)
        self.device = "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.huge_pages = None  # runtime.hugepages' report: the weights this session holds, on 2 MiB pages
        if huge_pages and self.device == "cpu":
            from runtime.hugepages import collapse_to_huge_pages

            self.huge_pages = collapse_to_huge_pages().as_dict()
        self._sess = self.runner._session  # noqa: SLF001 - the runner's own session: same providers, options, checks
        names = {i.name for i in self._sess.get_inputs()} | {o.name for o in self._sess.get_outputs()}
        missing = [n for n in ("input_ids", "attention_mask", "position_ids", "logits", *self.info.past_inputs,
                               *self.info.present_outputs) if n not in names]
        if missing:
            raise ModelLoadError(f"model '{path}': the graph has no {missing}; expected a decoder with KV cache")
        from runtime.ort_backend import ORT_TYPES

        types = {a.name: ORT_TYPES.get(a.type, "float32") for a in
                 list(self._sess.get_inputs()) + list(self._sess.get_outputs())}
        # the graph's own cache and logits types: float32 here, float16 for a graph whose cache an FP16 pass narrowed
        self.cache_dtype = np.dtype(types[self.info.past_inputs[0]])
        self.logits_dtype = np.dtype(types["logits"])
        self._io = self._sess.io_binding()
        import onnxruntime as ort

        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # failures are raised as BackendError
        self._cache_room = 0  # floats per cache buffer
        self._bufs: list[list[Any]] = []  # per cache tensor: [buffer A, buffer B]
        self._slots: list[tuple[str, str, tuple[int, int]]] = []
        self._logits: np.ndarray | None = None
        self._dev_logits = None  # GPU providers: the graph's logits (B, S, V) stay on the device
        self._cudart = None
        self._flip = 0
        self.past_length = 0
        self._keep: list[np.ndarray] = []

    def _alloc(self, n: int):
        if self.device == "cpu":
            return np.empty(n, dtype=self.cache_dtype)
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type([n], self.cache_dtype.type, "cuda", 0)

    @staticmethod
    def _ptr(buf) -> int:
        return int(buf.ctypes.data) if isinstance(buf, np.ndarray) else int(buf.data_ptr())

    def start(self, batch: int, capacity: int, max_sequence: int | None = None) -> None:
        """Get ready for a batch of ``batch`` rows and at most ``capacity`` cached positions, prompts of at most
        ``max_sequence`` tokens (buffers grow, never shrink); the cache is empty afterwards."""
        n_cache = batch * self.info.heads * max(1, capacity) * self.info.head_dim
        if n_cache > self._cache_room:
            self._bufs = [[self._alloc(n_cache), self._alloc(n_cache)] for _ in self.info.past_inputs]
            self._cache_room = n_cache
            # (past name, present name, (pointer A, pointer B)) per cache tensor: bound afresh each step
            self._slots = [(pin, pout, (self._ptr(bufs[0]), self._ptr(bufs[1]))) for pin, pout, bufs in
                           zip(self.info.past_inputs, self.info.present_outputs, self._bufs)]
        n_logits = batch * (max_sequence or capacity) * self.info.vocab_size
        if self._logits is None or self._logits.size < n_logits:
            self._logits = np.empty(n_logits, dtype=self.logits_dtype)
            if self.device != "cpu":
                import onnxruntime as ort

                self._dev_logits = ort.OrtValue.ortvalue_from_shape_and_type([n_logits], self.logits_dtype.type,
                                                                             "cuda", 0)
        self._flip = 0
        self.past_length = 0

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             last_only: bool = False) -> np.ndarray:
        """One graph call: ``input_ids`` (B, S) after the ``past_length`` cached positions, ``attention_mask``
        (B, past_length + S), ``position_ids`` (B, S) -> logits (B, S, V), or (B, 1, V) of the last position with
        ``last_only`` (on a GPU provider only those rows leave the device); a view into the logits buffer."""
        info = self.info
        b, s = input_ids.shape
        p = self.past_length
        total = p + s
        n_logits = b * s * info.vocab_size
        if b * info.heads * total * info.head_dim > self._cache_room or self._logits is None \
                or n_logits > self._logits.size:
            raise InputError(f"decoder step: got batch {b}, {p} cached + {s} new positions, which the buffers from "
                             "start() have no room for; expected start() with that batch and capacity first")
        io, dev = self._io, self.device
        bind_in, bind_out = io.bind_input, io.bind_output
        self._keep = [np.ascontiguousarray(x, dtype=np.int64) for x in (input_ids, attention_mask, position_ids)]
        for name, arr in zip(("input_ids", "attention_mask", "position_ids"), self._keep):
            bind_in(name, "cpu", 0, np.int64, arr.shape, arr.ctypes.data)
        past_shape = (b, info.heads, p, info.head_dim)
        present_shape = (b, info.heads, total, info.head_dim)
        src, dst = self._flip, 1 - self._flip
        kv = self.cache_dtype.type
        for pin, pout, ptr in self._slots:  # read the past from one buffer, write the present into the other
            bind_in(pin, dev, 0, kv, past_shape, ptr[src])
            bind_out(pout, dev, 0, kv, present_shape, ptr[dst])
        logits = self._logits[:n_logits]
        on_device = last_only and dev != "cpu"
        bind_out("logits", dev if on_device else "cpu", 0, self.logits_dtype.type, (b, s, info.vocab_size),
                 self._ptr(self._dev_logits) if on_device else logits.ctypes.data)
        try:
            self._sess.run_with_iobinding(io, self._run_options)
        except Exception as e:  # noqa: BLE001 - ORT raises many kinds
            raise BackendError(f"onnxruntime failed on '{self.path.name}' at batch {b}, past {p}, sequence {s}: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}") from None
        self._flip = dst
        self.past_length = total
        if on_device:
            io.synchronize_outputs()
            if self._cudart is None:
                from runtime.engine_manifest import import_cudart

                self._cudart = import_cudart()
            last = self._logits[:b * info.vocab_size]
            copy_last_positions(self._cudart, last, self._ptr(self._dev_logits), b, s)
            return last.reshape(b, 1, info.vocab_size)
        out = logits.reshape(b, s, info.vocab_size)
        return out[:, -1:, :] if last_only else out

    def close(self) -> None:
        self._bufs, self._slots, self._cache_room, self._logits, self._io = [], [], 0, None, None
        self._dev_logits = None
        self.runner.close()


def copy_last_positions(cudart, host: np.ndarray, device_ptr: int, batch: int, sequence: int) -> None:
    """Copy the last position of device logits (B, S, V) into ``host`` (B * V, C-contiguous) with ONE strided
    ``cudaMemcpy2D``: B rows of V values, S * V apart on the device; only B * V values cross the bus."""
    row = host.size // batch * host.itemsize  # V values
    if host.size % batch or not host.flags.c_contiguous:
        raise BackendError(f"copy_last_positions: got a host buffer of {host.size} values ({host.flags.c_contiguous=}), "
                           f"expected a contiguous multiple of batch {batch}")
    (err,) = cudart.cudaMemcpy2D(host.ctypes.data, row, device_ptr + (sequence - 1) * row, sequence * row, row, batch,
                                 cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"cudaMemcpy2D of the last position's logits (batch {batch}, sequence {sequence}) failed: "
                           f"{err}")


class FeedDecoder:
    """The same contract on any runtime Runner (``runtime.loader.open_runner``: OpenVINO, ONNX Runtime without I/O
    binding): the cache goes in and comes out as numpy arrays each step."""

    def __init__(self, path: str | Path, backend: str = "auto", info: DecoderInfo | None = None, **runner_kw: Any):
        from runtime.loader import open_runner

        self.runner = open_runner(path, backend, **runner_kw)
        self.backend = self.runner.backend
        self.path = Path(path)
        self.spec = getattr(self.runner, "spec", None)
        self.info = info or DecoderInfo.from_spec(self.spec, str(path))
        past = self.runner.contract.bounds.get("past")
        if past is not None and self.info.past_min == 0:
            past.min = 0  # the spec's DimRange cannot say 0; its preprocess.past_min does: a prefill has no past
        dtypes = {i.name: i.dtype for i in self.runner.inputs}
        self.cache_dtype = np.dtype(dtypes.get(self.info.past_inputs[0], "float32"))
        self._past: list[np.ndarray] = []
        self.past_length = 0

    def start(self, batch: int, capacity: int, max_sequence: int | None = None) -> None:
        self._past = [np.zeros(self.info.cache_shape(batch, 0), self.cache_dtype) for _ in self.info.past_inputs]
        self.past_length = 0

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             last_only: bool = False) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feed.update(zip(self.info.past_inputs, self._past))
        out = self.runner.infer(feed)
        self._past = [out[n] for n in self.info.present_outputs]
        self.past_length += input_ids.shape[1]
        return out["logits"][:, -1:, :] if last_only else out["logits"]

    def close(self) -> None:
        self.runner.close()


def open_decoder(path: str | Path, backend: str = "auto", io_binding: bool = True, **kw: Any):
    """An ONNX decoder graph on ``backend``: ONNX Runtime with I/O binding (``OrtDecoder``) by default, else a
    ``FeedDecoder`` over ``runtime.loader.open_runner`` (OpenVINO, or ``io_binding=False``)."""
    if Path(path).suffix.lower() != ".onnx":
        raise ModelLoadError(f"model '{path}': generation runs an .onnx decoder graph here; a TensorRT decoder "
                             "(device buffers, prefill and decode profiles) is not wired in yet")
    if backend in ("auto", "onnxruntime") and io_binding:
        return OrtDecoder(path, **kw)
    return FeedDecoder(path, backend, **kw)


# ---- choosing tokens ------------------------------------------------------------------------------------------------
@dataclass
class GenerationConfig:
    """How tokens are chosen and when a row stops. ``do_sample=False`` is greedy; ``stop_tokens=None`` stops on the
    model's eos, ``()`` never stops early."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_tokens: tuple[int, ...] | None = None

    def checked(self) -> "GenerationConfig":
        problems = []
        if int(self.max_new_tokens) < 1:
            problems.append(f"max_new_tokens: got {self.max_new_tokens}, expected >= 1")
        if not self.temperature > 0:
            problems.append(f"temperature: got {self.temperature}, expected > 0")
        if int(self.top_k) < 0:
            problems.append(f"top_k: got {self.top_k}, expected >= 0 (0: off)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: got {self.top_p}, expected 0 < top_p <= 1")
        if problems:
            raise InputError("; ".join(problems))
        return self


def warp(logits: np.ndarray, cfg: GenerationConfig) -> np.ndarray:
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k and top-p (transformers' order)."""
    x = logits.astype(np.float64) / float(cfg.temperature)
    v = x.shape[-1]
    if 0 < cfg.top_k < v:
        kth = np.partition(x, v - cfg.top_k, axis=-1)[:, v - cfg.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if cfg.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sp = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sp, axis=-1) - sp  # mass of the more likely tokens
        drop_sorted = before >= cfg.top_p
        drop_sorted[:, 0] = False
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def choose(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator | None) -> np.ndarray:
    """(B, V) logits -> (B,) int64 next tokens: argmax, or one draw per row from :func:`warp`'s distribution."""
    if not cfg.do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)
    p = warp(logits, cfg)
    u = (rng or np.random.default_rng()).random(p.shape[0])
    cdf = np.cumsum(p, axis=-1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)


# ---- the generator -----------------------------------------------------------------------------------------------
@dataclass
class Generation:
    """One prompt's result: its ids, the new tokens (the stop token included when it stopped), why it ended, the
    text of the new tokens (special tokens skipped), and, when asked, the logits of every step (steps, V)."""

    prompt_ids: list[int]
    tokens: list[int]
    finish_reason: str  # "stop" | "length"
    text: str | None = None
    logits: np.ndarray | None = field(default=None, repr=False)


class TextGenerator:
    """Prompts -> tokens with a decoder graph; see the module docstring. ``model`` is an .onnx decoder file (its
    spec inside or spec.json beside it, the tokenizer JSON beside it)."""

    def __init__(self, model: str | Path, backend: str = "auto", tokenizer: str | Path | None = None,
                 threads: int | None = None, io_binding: bool = True, **decoder_kw: Any):
        kw = dict(decoder_kw)
        if threads:
            kw["threads"] = threads
        self.decoder = open_decoder(model, backend, io_binding=io_binding, **kw)
        self.info: DecoderInfo = self.decoder.info
        self.model_path = Path(model)
        self._tokenizer_path = Path(tokenizer) if tokenizer else self.model_path.parent / self.info.tokenizer
        self._tok = None

    # -- lifecycle
    def __enter__(self) -> "TextGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.decoder.close()

    @property
    def tokenizer(self):
        """The BPE tokenizer of the model folder (runtime.bpe: GPT-2, Llama-2/Mistral, Llama-3, Qwen2 forms), loaded
        on first use."""
        if self._tok is None:
            from runtime.bpe import BPETokenizer

            self._tok = BPETokenizer.from_file(self._tokenizer_path)
        return self._tok

    # -- prompts
    def _prompt_ids(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not prompts:
            raise InputError(f"prompts: got {type(prompts).__name__} {prompts!r:.60}, expected a string, a list of "
                             "strings, or a list of token-id lists")
        rows = []
        for i, p in enumerate(prompts):
            ids = self.tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in np.asarray(p).ravel()]
            if not ids:
                raise InputError(f"prompt {i}: got no tokens, expected at least one (the model needs a context)")
            bad = [t for t in ids if not 0 <= t < self.info.vocab_size]
            if bad:
                raise InputError(f"prompt {i}: token ids {bad[:5]} are outside 0..{self.info.vocab_size - 1}")
            rows.append(ids)
        return rows

    def _config(self, config: GenerationConfig | None, kw: dict[str, Any]) -> GenerationConfig:
        cfg = replace(config or GenerationConfig(), **kw) if kw else (config or GenerationConfig())
        if cfg.stop_tokens is not None:
            cfg = replace(cfg, stop_tokens=tuple(int(t) for t in cfg.stop_tokens))
        return cfg.checked()

    # -- the loop
    def _steps(self, rows: list[list[int]], cfg: GenerationConfig,
               keep_logits: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        info = self.info
        b, t = len(rows), max(len(r) for r in rows)
        need = t + cfg.max_new_tokens - 1  # the last new token is never fed back
        if need > info.max_positions:
            raise InputError(f"prompt of {t} tokens + max_new_tokens {cfg.max_new_tokens}: needs {need} positions, "
                             f"expected at most {info.max_positions} (the model's position table)")
        if info.max_batch is not None and b > info.max_batch:
            raise InputError(f"prompts: got a batch of {b}, expected at most {info.max_batch}")
        stops = np.asarray(cfg.stop_tokens if cfg.stop_tokens is not None else (info.eos_id,), dtype=np.int64)
        rng = np.random.default_rng(cfg.seed) if cfg.do_sample else None
        ids, mask0 = left_pad(rows, info.pad_id)
        mask = np.zeros((b, t + cfg.max_new_tokens), dtype=np.int64)
        mask[:, :t] = mask0
        pos = positions(mask0)
        self.decoder.start(b, max(1, need), max_sequence=t)
        done = np.zeros(b, dtype=bool)
        length = t
        for step in range(cfg.max_new_tokens):
            logits = self.decoder.step(ids, np.ascontiguousarray(mask[:, :length]), pos, last_only=True)[:, -1, :]
            nxt = choose(logits, cfg, rng)
            nxt = np.where(done, info.pad_id, nxt)
            out = np.where(done, FINISHED, nxt)
            done = done | np.isin(nxt, stops)
            yield out, (logits.copy() if keep_logits else None)
            if done.all() or step == cfg.max_new_tokens - 1:
                return
            mask[:, length] = 1
            length += 1
            ids = nxt[:, None]
            pos = pos[:, -1:] + 1

    def stream(self, prompts, config: GenerationConfig | None = None, **kw: Any) -> Iterator[np.ndarray]:
        """One (B,) int64 array per step: each row's new token, ``FINISHED`` (-1) for a row that already stopped."""
        cfg = self._config(config, kw)
        for out, _ in self._steps(self._prompt_ids(prompts), cfg):
            yield out

    def stream_text(self, prompt: str, config: GenerationConfig | None = None, **kw: Any) -> Iterator[str]:
        """One prompt -> pieces of text as tokens arrive (a piece is held back while it ends inside a UTF-8 char)."""
        cfg = self._config(config, kw)
        stops = set(cfg.stop_tokens if cfg.stop_tokens is not None else (self.info.eos_id,))
        ids: list[int] = []
        shown = ""
        for out, _ in self._steps(self._prompt_ids([prompt]), cfg):
            tok = int(out[0])
            if tok == FINISHED or tok in stops:
                break
            ids.append(tok)
            text = self.tokenizer.decode(ids)
            if not text.endswith("\ufffd") and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(ids)
        if len(text) > len(shown):
            yield text[len(shown):]

    def generate(self, prompts, config: GenerationConfig | None = None, output_logits: bool = False,
                 decode: bool = True, **kw: Any) -> list[Generation]:
        """Prompts (a string, strings, or token-id lists) -> one :class:`Generation` per prompt."""
        cfg = self._config(config, kw)
        rows = self._prompt_ids(prompts)
        stops = set(cfg.stop_tokens if cfg.stop_tokens is not None else (self.info.eos_id,))
        toks: list[list[int]] = [[] for _ in rows]
        logits: list[list[np.ndarray]] = [[] for _ in rows]
        for out, lg in self._steps(rows, cfg, keep_logits=output_logits):
            for i, tok in enumerate(out):
                if tok != FINISHED:
                    toks[i].append(int(tok))
                    if lg is not None:
                        logits[i].append(lg[i])
        results = []
        for i, r in enumerate(rows):
            reason = "stop" if toks[i] and toks[i][-1] in stops else "length"
            text = None
            if decode and self._tokenizer_ok():
                text = self.tokenizer.decode(toks[i])
            results.append(Generation(r, toks[i], reason, text,
                                      np.stack(logits[i]) if output_logits and logits[i] else None))
        return results

    def _tokenizer_ok(self) -> bool:
        try:
            self.tokenizer
        except PreprocessError as e:
            log.warning("no text for the generated tokens: %s", e)
            return False
        return True


def generate(model: str | Path, prompts, backend: str = "auto", threads: int | None = None,
             **kw: Any) -> list[Generation]:
    """One call: open ``model`` (a decoder .onnx), generate for ``prompts`` (``GenerationConfig`` fields as keywords:
    max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_tokens), close it."""
    with TextGenerator(model, backend=backend, threads=threads) as g:
        return g.generate(prompts, **kw)


__all__ = ["TextGenerator", "GenerationConfig", "Generation", "generate", "OrtDecoder", "FeedDecoder",
           "open_decoder", "DecoderInfo", "decoder_feed", "parity_cases", "left_pad", "positions", "choose", "warp",
           "FINISHED"]
