"""The worker side of bench.generation: the decoder candidates a bench worker process loads and times
(``python -m bench.worker --generation``): our decoders through the thin runtime and transformers' ``generate``
peers. Kept apart from bench.generation (the parent side), which starts those workers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bench.candidates import Candidate
from pipeline.faults import fault_point
from runtime.modelspec import precision_of

PEERS = {"eager": "eager-generate", "compile": "compile-generate"}  # bench's peer names that apply to a decoder
MODES = {"onnxruntime": "all", "openvino": "f32"}


def expect_new(new: int, got: list[int]) -> None:
    if min(got) != new or max(got) != new:
        raise RuntimeError(f"generate: got {min(got)}..{max(got)} new tokens per row, expected exactly {new} (stop "
                           "tokens off); the decode rate needs every call to run its steps")


class GreedyCandidate(Candidate):
    """A decoder candidate: ``greedy(rows, new)`` -> exactly ``new`` greedy token ids per row; the timed call is one
    such generate call, checked to return every token (the decode rate needs every step run)."""

    def greedy(self, rows: list[list[int]], new: int) -> list[list[int]]:
        raise NotImplementedError

    def generate_call(self, rows: list[list[int]], new: int) -> Callable[[], Any]:
        def fn():
            expect_new(new, [len(r) for r in self.greedy(rows, new)])
        return fn


class DecoderCandidate(GreedyCandidate):
    """One decoder artifact on one backend through ``runtime.generate.TextGenerator`` (what a user's code calls)."""

    def __init__(self, model: str, path: str | Path, backend: str, threads: int | None) -> None:
        self.path = Path(path)
        super().__init__(model, backend, self.path.name, precision_of(self.path.name), MODES.get(backend, "-"),
                         is_peer=False)
        self.threads = threads
        self.gen = None

    def _load(self) -> None:
        from runtime.generate import TextGenerator

        fault_point(self.path)
        self.gen = TextGenerator(self.path, backend=self.backend, threads=self.threads)
        dec = self.gen.decoder
        self.notes.update(kv_dtype=str(dec.cache_dtype), decoder=type(dec).__name__)
        if getattr(dec, "huge_pages", None) is not None:  # OrtDecoder: the weights on 2 MiB pages (runtime.hugepages)
            self.notes["huge_pages"] = dec.huge_pages
        if getattr(dec.runner, "opt_level", None):
            self.notes["ort_opt_level"] = dec.runner.opt_level

    def greedy(self, rows: list[list[int]], new: int) -> list[list[int]]:
        """Exactly ``new`` greedy token ids per row (stop tokens off)."""
        out = self.gen.generate(rows, max_new_tokens=new, stop_tokens=(), decode=False)
        return [list(map(int, r.tokens)) for r in out]

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None


class TorchGenerate(GreedyCandidate):
    """transformers' ``generate`` (greedy, its DynamicCache) on the HF model the artifacts were exported from."""

    def __init__(self, model: str, artifacts: str | Path, kind: str) -> None:
        if kind not in PEERS:
            raise ValueError(f"generation peer '{kind}': unknown; expected one of {list(PEERS)}")
        super().__init__(model, "pytorch", "pytorch", "fp32", PEERS[kind], is_peer=True, peer_kind=kind)
        self.artifacts, self.kind = artifacts, kind
        self.lm = None
        self.pad_id = 0

    def _load(self) -> None:
        import torch

        from zoo.gpt2 import gpt2_dir, load_lm

        lm = load_lm(gpt2_dir(self.model, self.artifacts), self.model, attn_implementation="sdpa")
        if self.kind == "compile":
            lm.forward = torch.compile(lm.forward, dynamic=True)
            self.notes["compile"] = "torch.compile(model.forward, dynamic=True), inductor, default mode"
        self.notes.update(kv_dtype="float32", attention="sdpa", cache="DynamicCache")
        self.pad_id = int(lm.config.pad_token_id if lm.config.pad_token_id is not None else lm.config.eos_token_id)
        self.lm = lm

    def greedy(self, rows: list[list[int]], new: int) -> list[list[int]]:
        """``generate(do_sample=False)`` on equal-length rows (no padding): the new token ids per row."""
        import torch

        ids = torch.tensor(rows, dtype=torch.int64)
        with torch.inference_mode():
            out = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                   do_sample=False, use_cache=True, pad_token_id=self.pad_id, eos_token_id=None)
        return out[:, ids.shape[1]:].tolist()

    def close(self) -> None:
        self.lm = None


def build_candidates(args) -> list[Candidate]:
    """The worker's candidates (bench.worker --generation): the torch peers of ``args.torch``, one converted decoder
    peer (``--peer-kind`` of bench.decoder_peers, ``--runner`` its folder), or one artifact."""
    from bench.decoder_peers import DECODER_PEERS, build_peer

    if args.peer_kind in DECODER_PEERS:
        cands = [build_peer(args.model, args.peer_kind, args.runner, args.threads)]
    elif args.torch:
        import torch

        torch.set_num_threads(args.threads)
        cands = [TorchGenerate(args.torch, args.artifacts, k) for k in args.peers.split(",") if k]
    else:
        cands = [DecoderCandidate(args.model, args.runner, args.backend, args.threads)]
    for c in cands:
        c.load()
    return cands


def point_timers(cands: list[Candidate], points: list[dict[str, Any]], timer) -> tuple[dict, dict]:
    """(timers ``<key>@<tag>`` -> timer(fn), errors key -> text) for every loaded candidate at every point
    ({tag, rows, new})."""
    timers, errors = {}, {}
    for c in cands:
        if c.error is not None:
            continue
        try:
            for p in points:
                timers[f"{c.key}@{p['tag']}"] = timer(c.generate_call(p["rows"], int(p["new"])))
        except Exception as e:  # noqa: BLE001 - recorded for this candidate; the others go on
            errors[c.key] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
    return timers, errors


def greedy_tokens(cands: list[Candidate], rows: list[list[int]], new: int) -> tuple[dict, dict]:
    """(key -> greedy new token ids per row, key -> error) for every loaded candidate (the tokens compared across
    candidates, bench.generation)."""
    tokens, errors = {}, {}
    for c in cands:
        if c.error is not None:
            continue
        try:
            tokens[c.key] = c.greedy(rows, int(new))
        except Exception as e:  # noqa: BLE001 - recorded for this candidate; the others go on
            errors[c.key] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
    return tokens, errors
