"""The decoder peers a user deploying a decoder would pick instead of our runtime, converted once from the same
Hugging Face folder the pipeline exports from and timed by bench.generation beside our artifacts:

| kind | how |
|---|---|
| ``ct2_fp32`` / ``ct2_int8`` | CTranslate2 ``Generator`` (compute type float32 / int8), converted by its own CLI (``python -m ctranslate2.converters.transformers --quantization float32/int8``) |
| ``ortgenai_fp32`` / ``ortgenai_int4`` | ONNX Runtime GenAI, its model builder (``python -m onnxruntime_genai.models.builder -i DIR -p fp32/int4 -e cpu``); the builder has no GPT-2, so on GPT-2 these rows say so |
| ``openvino_genai`` | OpenVINO GenAI's ``LLMPipeline`` needs a stateful OpenVINO IR written by optimum-intel, whose install would replace this project's transformers: always a skipped row with that reason |

Each conversion runs once, in a child process (the converters load torch and transformers; bench's parent and the
timed worker never do), into ``<model folder>/peers/<tool>-<type>/``, keyed by the source folder's sha256 (zoo.hf
.dir_digest), the converter's version and the type (``source.json`` beside the files): a later bench reuses it, and
its conversion time is reported apart from loading and timing. A peer whose package is missing, whose converter
fails or whose converter does not know the architecture is a row with ``skipped: <why>``, never a crash.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.generation_candidates import GreedyCandidate
from runtime.child import python_module, run_child
from runtime.files import atomic_write_json

log = logging.getLogger("edgeattn.bench.decoder_peers")

CONVERT_TIMEOUT_S = 3600.0
MARKER = "source.json"
OPENVINO_GENAI_WHY = ("OpenVINO GenAI's LLMPipeline needs a stateful OpenVINO IR exported by optimum-intel "
                      "(optimum-cli export openvino); installing optimum-intel 2.2.0 would replace transformers "
                      "5.23.0 with 5.5.4 here, so it is not installed")


@dataclass(frozen=True)
class DecoderPeer:
    """One peer kind: the package it needs (import name, distribution), the converted type, its model files."""

    kind: str
    tool: str  # distribution name, also the folder prefix
    module: str  # what ``import`` needs
    precision: str  # our precision vocabulary (fp32, int8, int4)
    quant: str  # the converter's word for it
    files: tuple[str, ...]  # glob patterns of the model files (what "file size" sums)

    @property
    def folder(self) -> str:
        return f"{self.tool}-{self.quant}"

    @property
    def mode(self) -> str:
        return self.quant


DECODER_PEERS = {p.kind: p for p in (
    DecoderPeer("ct2_fp32", "ctranslate2", "ctranslate2", "fp32", "float32", ("model.bin",)),
    DecoderPeer("ct2_int8", "ctranslate2", "ctranslate2", "int8", "int8", ("model.bin",)),
    DecoderPeer("ortgenai_fp32", "onnxruntime-genai", "onnxruntime_genai", "fp32", "fp32", ("*.onnx", "*.onnx.data")),
    DecoderPeer("ortgenai_int4", "onnxruntime-genai", "onnxruntime_genai", "int4", "int4", ("*.onnx", "*.onnx.data")),
    DecoderPeer("openvino_genai", "openvino-genai", "openvino_genai", "fp32", "f32", ("*.xml", "*.bin")),
)}
DECODER_PEER_KINDS = tuple(DECODER_PEERS)


def peer_of(kind: str) -> DecoderPeer:
    if kind not in DECODER_PEERS:
        raise ValueError(f"decoder peer '{kind}': unknown; expected one of {list(DECODER_PEERS)}")
    return DECODER_PEERS[kind]


# ---- parent side: is it here, convert once -----------------------------------------------------------------------
def missing_package(peer: DecoderPeer) -> str | None:
    """None when ``peer``'s package imports, else why not (the skip reason)."""
    try:
        importlib.import_module(peer.module)
    except ImportError as e:
        return f"{peer.tool} is not installed ({type(e).__name__}: {str(e)[:120]}); pip install {peer.tool}"
    return None


def tool_version(peer: DecoderPeer) -> str | None:
    try:
        return metadata.version(peer.tool)
    except metadata.PackageNotFoundError:
        return None


def convert_argv(peer: DecoderPeer, source: Path, out: Path) -> list[str]:
    """The converter's own command line for ``peer`` (run in a child process)."""
    if peer.tool == "ctranslate2":
        return python_module("ctranslate2.converters.transformers", "--model", source, "--output_dir", out,
                             "--quantization", peer.quant, "--force")
    if peer.tool == "onnxruntime-genai":
        return python_module("onnxruntime_genai.models.builder", "-m", source.name, "-i", source, "-o", out,
                             "-p", peer.quant, "-e", "cpu", "-c", out.parent / f".{peer.folder}.cache")
    raise ValueError(f"decoder peer '{peer.kind}': no converter here; expected a ctranslate2 or onnxruntime-genai "
                     "peer")


def conversion_key(peer: DecoderPeer, source: Path) -> str:
    """What a conversion depends on: the source folder's files, the converter's version, the type."""
    from zoo.hf import dir_digest

    blob = {"source": dir_digest(source), "tool": peer.tool, "version": tool_version(peer), "quant": peer.quant}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def architecture(source: Path) -> str:
    """The ``architectures`` of a Hugging Face folder's config.json, as one word ('?' when unreadable)."""
    try:
        return ",".join(json.loads((source / "config.json").read_text(encoding="utf-8")).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return "?"


def model_bytes(peer: DecoderPeer, folder: Path) -> int | None:
    """Bytes of the model files in ``folder`` (weights and graph; tokenizer and config files not counted)."""
    files = {p for pat in peer.files for p in folder.glob(pat) if p.is_file()}
    return sum(p.stat().st_size for p in files) or None


def prepare(peer: DecoderPeer, source: Path, peers_root: Path) -> dict[str, Any]:
    """``peer`` converted from ``source`` into ``peers_root/<tool>-<type>/`` (reused when its key is unchanged):
    {dir, convert_seconds, reused, model_bytes, skipped (why, or None), key}."""
    if peer.kind == "openvino_genai":
        why = OPENVINO_GENAI_WHY + (" (openvino-genai itself is not installed either)" if missing_package(peer) else "")
        return _prepared(peer, None, skipped=why)
    why = missing_package(peer)
    if why:
        return _prepared(peer, None, skipped=why)
    out = peers_root / peer.folder
    key = conversion_key(peer, source)
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = {}
    if marker.get("key") == key:
        return _prepared(peer, out if not marker.get("error") else None, key=key, reused=True,
                         seconds=marker.get("convert_seconds"), skipped=marker.get("error"))
    return _convert(peer, source, out, key)


def _convert(peer: DecoderPeer, source: Path, out: Path, key: str) -> dict[str, Any]:
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_child(convert_argv(peer, source, tmp), CONVERT_TIMEOUT_S)
    seconds = round(time.perf_counter() - t0, 2)
    error = None if res.ok else (f"{peer.tool} {tool_version(peer)} could not convert '{source}' (architecture "
                                 f"{architecture(source)}): {res.describe(1)}")
    shutil.rmtree(out, ignore_errors=True)
    if error:
        shutil.rmtree(tmp, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)  # the failure is kept, keyed: not retried until something changes
        log.warning("%s", error)
    else:
        tmp.rename(out)
    shutil.rmtree(out.parent / f".{peer.folder}.cache", ignore_errors=True)
    atomic_write_json(out / MARKER, {"key": key, "source": str(source), "tool": peer.tool,
                                     "version": tool_version(peer), "quant": peer.quant, "convert_seconds": seconds,
                                     "error": error})
    return _prepared(peer, None if error else out, key=key, reused=False, seconds=seconds, skipped=error)


def _prepared(peer: DecoderPeer, folder: Path | None, *, skipped: str | None, key: str | None = None,
              reused: bool = False, seconds: float | None = None) -> dict[str, Any]:
    return {"dir": None if folder is None else str(folder), "convert_seconds": seconds, "reused": reused,
            "model_bytes": None if folder is None else model_bytes(peer, folder), "skipped": skipped, "key": key,
            "tool_version": tool_version(peer)}


# ---- worker side: the candidates -------------------------------------------------------------------------------
class PeerGenerate(GreedyCandidate):
    """A converted peer in a bench worker: ``greedy(rows, new)`` -> exactly ``new`` token ids per row."""

    def __init__(self, model: str, kind: str, folder: str | Path, threads: int | None) -> None:
        self.peer = peer_of(kind)
        super().__init__(model, self.peer.tool, self.peer.folder, self.peer.precision, self.peer.mode, is_peer=True,
                         peer_kind=kind)
        self.folder, self.threads = Path(folder), threads
        self.impl = None

    def close(self) -> None:
        self.impl = None


class CT2Generate(PeerGenerate):
    """CTranslate2's ``Generator`` on the CPU: greedy (top-k 1), prompt forwarded at once, no end token."""

    def _load(self) -> None:
        import ctranslate2

        self.vocab = json.loads((self.folder / "vocabulary.json").read_text(encoding="utf-8"))
        compute = "float32" if self.peer.quant == "float32" else self.peer.quant
        self.impl = ctranslate2.Generator(str(self.folder), device="cpu", compute_type=compute,
                                          intra_threads=self.threads or 0)
        self.notes.update(compute_type=self.impl.compute_type, version=ctranslate2.__version__)

    def greedy(self, rows: list[list[int]], new: int) -> list[list[int]]:
        tokens = [[self.vocab[i] for i in r] for r in rows]
        res = self.impl.generate_batch(tokens, max_length=new, min_length=new, sampling_topk=1, end_token=[],
                                       include_prompt_in_result=False)
        return [list(r.sequences_ids[0]) for r in res]


class GenAIGenerate(PeerGenerate):
    """ONNX Runtime GenAI's ``Generator`` (CPU provider): greedy search, min length = max length (no early stop)."""

    def _load(self) -> None:
        import onnxruntime_genai as og

        cfg = og.Config(str(self.folder))
        cfg.clear_providers()
        if self.threads:
            cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": int(self.threads)}}}}))
        self.og, self.impl = og, og.Model(cfg)
        self.notes.update(version=og.__version__, provider="cpu")

    def greedy(self, rows: list[list[int]], new: int) -> list[list[int]]:
        import numpy as np

        og, n = self.og, len(rows[0]) + new
        params = og.GeneratorParams(self.impl)
        params.set_search_options(max_length=n, min_length=n, do_sample=False, batch_size=len(rows))
        gen = og.Generator(self.impl, params)
        gen.append_tokens(np.asarray(rows, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        return [[int(t) for t in gen.get_sequence(i)[len(rows[i]):]] for i in range(len(rows))]


def build_peer(model: str, kind: str, folder: str | Path, threads: int | None) -> PeerGenerate:
    """The worker's candidate for one converted peer (bench.worker --generation --decoder-peer)."""
    cls = {"ctranslate2": CT2Generate, "onnxruntime-genai": GenAIGenerate}.get(peer_of(kind).tool)
    if cls is None:
        raise ValueError(f"decoder peer '{kind}': nothing runs it here; expected a ctranslate2 or onnxruntime-genai "
                         "peer")
    return cls(model, kind, folder, threads)


# ---- greedy tokens compared ------------------------------------------------------------------------------------
def first_difference(ref: list[int], got: list[int]) -> int | None:
    """The first position where ``got`` differs from ``ref`` (a shorter one differs where it ends); None if equal."""
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            return i
    return None if len(ref) == len(got) else min(len(ref), len(got))


def compare_greedy(ref: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    """Per row, where ``got`` first leaves ``ref``: {identical, rows, rows_identical, first_diff (per row, None =
    equal), first_diff_min}."""
    if len(ref) != len(got):
        raise ValueError(f"greedy tokens: got {len(got)} rows, expected {len(ref)} (the reference's)")
    firsts = [first_difference(a, b) for a, b in zip(ref, got)]
    diffs = [f for f in firsts if f is not None]
    return {"identical": not diffs, "rows": len(ref), "rows_identical": len(ref) - len(diffs), "first_diff": firsts,
            "first_diff_min": min(diffs) if diffs else None}
