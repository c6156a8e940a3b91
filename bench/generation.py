"""Generation speed of decoders with a KV cache (task ``text_generation``), ours vs PyTorch, in ONE interleaved run:
bench.json's ``generation`` section, written by the bench stage (``edgeattn bench --models gpt2_imdb``).

Candidates: the decoders and CPU backends of verify.decoder.bench_plan (fp32.onnx on ONNX Runtime, fp32.sim.onnx on
every CPU backend, fp16.onnx and int8.cpu.onnx on ONNX Runtime where the quantize stage wrote them) through the thin
runtime (``runtime.generate.TextGenerator``: ONNX Runtime with I/O binding, OpenVINO), and the PyTorch peers in one
worker:
transformers' ``generate`` with its cache (DynamicCache, SDPA attention, greedy) in eager mode, and the same with
``torch.compile(model.forward, dynamic=True)`` where ``compile`` is among the peers (its compilation is the first
call of each point, reported as ``compile_seconds``, never timed). Each candidate runs in a bench worker process
(bench/worker.py) and all of them are timed interleaved, round-robin (bench.timing.run_interleaved), per batch size.

What is measured, on IMDB test-split prompts (the first k tokens of reviews that have k; the same ids for all):

- TTFT (time to first token): p50 wall time of a whole generate call for 1 new token, batch 1, prompts of 32 and
  128 tokens: token ids in, the first new token out (prefill, sampling, the runtime's own checks).
- decode tokens/s at batch 1 and 8: ``batch x (N - 1) / (t_N - t_1)``, t_N and t_1 the p50 times of generating
  N = 64 and 1 new tokens from a 32-token prompt: the prefill and the first token cancel, what is left is the
  N - 1 decode steps. Every call must return exactly N new tokens (stop tokens off), else the candidate fails.
- KV-cache bytes per token: ``2 (key, value) x layers x heads x head_dim x bytes`` of the cache's dtype.

The headline (``summary``): the fastest verified artifact's decode tokens/s at batch 1 over PyTorch eager's, target
>= 2x. "Verified": verify.json's row of the same artifact and backend passed (verify.decoder).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.decoder_peers import DECODER_PEERS, compare_greedy, prepare
from bench.generation_candidates import MODES, PEERS  # noqa: F401 (re-exported)
from bench.timing import run_interleaved, summarize as stats_of
from runtime.modelspec import precision_of
from pipeline.artifacts import ModelRef
from zoo.gpt2 import WEIGHT_FILES

log = logging.getLogger("edgeattn.bench.generation")

TTFT_PROMPTS = (32, 128, 512)  # clamped to the model's context (prompt + 1 new token)
DECODE_PROMPT = 32
NEW_TOKENS = 64
BATCHES = (1, 8)
TARGET_VS_EAGER = 2.0
CODE_VERSION = "bench-generation/2"  # 2: OrtDecoder puts the weights on huge pages (runtime.hugepages)


# ---- parent side ----------------------------------------------------------------------------------------------------
def kv_bytes_per_token(pre: dict[str, Any], dtype: str = "float32") -> int:
    """2 (key and value) x layers x heads x head_dim x the cache dtype's bytes."""
    return 2 * int(pre["layers"]) * int(pre["heads"]) * int(pre["head_dim"]) * np.dtype(dtype).itemsize


def plan_points(pre: dict[str, Any], batch_max: int, batches: list[int] | None = None) -> dict[int, list[dict]]:
    """batch -> points ({tag, batch, prompt, new}) that fit the position table; TTFT prompts and the decode pair
    (prompt 32, 1 and N new tokens) at batch 1, the decode pair at the other batches."""
    n = int(pre["max_positions"])
    prompt = min(DECODE_PROMPT, n // 2)
    new = max(2, min(NEW_TOKENS, n - prompt))
    out: dict[int, list[dict]] = {}
    for b in sorted({min(int(b), batch_max) for b in (batches or BATCHES)}):
        pts = [{"tag": f"b{b}_n1", "batch": b, "prompt": prompt, "new": 1},
               {"tag": f"b{b}_n{new}", "batch": b, "prompt": prompt, "new": new}]
        if b == 1:
            ttft = sorted({min(p, n - 1) for p in TTFT_PROMPTS} - {prompt})
            pts += [{"tag": f"ttft{p}", "batch": 1, "prompt": p, "new": 1} for p in ttft]
        out[b] = pts
    return out


def prompt_rows(tokenizer: Path, length: int, batch: int, dataset: str = "imdb") -> list[list[int]]:
    """The first ``length`` tokens of the first ``batch`` test-split reviews that have that many."""
    from runtime.bpe import BPETokenizer
    from zoo.data import load_dataset

    tok = BPETokenizer.from_file(tokenizer)
    rows = []
    for text in load_dataset(dataset).test.x:
        ids = tok.encode(text)
        if len(ids) >= length:
            rows.append(ids[:length])
            if len(rows) == batch:
                return rows
    raise ValueError(f"prompts: got {len(rows)} test reviews of >= {length} tokens, expected {batch}")


def onnx_bytes(path: Path) -> int | None:
    """An ONNX file's bytes plus the external data files its graph points at (``zoo.io.onnx_files``)."""
    from zoo.io import onnx_files

    if not path.is_file():
        return None
    return sum(f.stat().st_size for f in onnx_files(path) if f.is_file())


def peak_rss_bytes(pid: int) -> int | None:
    """A live process's peak resident set (VmHWM of /proc/<pid>/status); None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def reference_key(cands: list[dict[str, Any]], got: dict[str, Any]) -> str | None:
    """Whose greedy tokens the others are compared with: ours fp32.onnx on ONNX Runtime, else our first fp32
    artifact, else PyTorch eager, else None; only candidates that returned tokens (``got``) count."""
    have = [c for c in cands if c["key"] in got]
    for pick in (lambda c: not c["is_peer"] and c["artifact"] == "fp32.onnx" and c["backend"] == "onnxruntime",
                 lambda c: not c["is_peer"] and c["precision"] == "fp32",
                 lambda c: c.get("peer_kind") == "eager"):
        hit = next((c for c in have if pick(c)), None)
        if hit:
            return hit["key"]
    return None


def _verified(vrows: list[dict], artifact: str, backend: str) -> bool | None:
    hit = [r for r in vrows if r.get("artifact") == artifact and r.get("backend") == backend]
    return None if not hit else bool(hit[-1].get("passed"))


class GenerationBench:
    """The workers of one decoder, timed interleaved per batch; :meth:`run` -> the model's generation section."""

    def __init__(self, ref: ModelRef, args, cfg, env: dict[str, str], vrows: list[dict]) -> None:
        self.ref, self.args, self.cfg, self.env, self.vrows = ref, args, cfg, env, vrows
        self.spec = json.loads(ref.file("spec.json").read_text(encoding="utf-8"))
        self.pre = self.spec["preprocess"]
        self.workers: list = []
        self.cands: list[dict[str, Any]] = []  # identity + worker + results
        self.greedy_ref: dict[str, Any] | None = None

    def _spawn(self, argv: list[str], label: str, planned: list[dict]) -> None:
        from bench.worker import Worker

        w = Worker(["--generation", "--threads", str(self.args.threads), *argv], f"{self.ref.name} {label}", self.env)
        self.workers.append(w)
        hello = w.hello_or_error()
        if not hello.get("ok"):
            for c in planned:
                c["error"] = f"worker failed to start: {hello.get('error')}"
                self.cands.append(c)
            return
        for c in hello["candidates"]:
            self.cands.append({**c, "worker": w})

    def _source(self) -> Path:
        from zoo.gpt2 import gpt2_dir

        return gpt2_dir(self.ref.name, self.ref.artifacts)

    def _spawn_torch(self, kind: str) -> None:
        """One PyTorch peer per worker, so each row's peak RSS is its own."""
        mode = PEERS[kind]
        self._spawn(["--torch", self.ref.name, "--artifacts", str(self.args.artifacts), "--peers", kind],
                    f"pytorch {mode}", [{"key": f"pytorch|pytorch|{mode}", "backend": "pytorch", "artifact": "pytorch",
                                         "mode": mode, "precision": "fp32", "is_peer": True, "peer_kind": kind,
                                         "notes": {}}])
        self.cands[-1]["model_bytes"] = self._source_bytes()

    def _source_bytes(self) -> int | None:
        """The Hugging Face folder's weight files (what the PyTorch peers load)."""
        try:
            source = self._source()
        except Exception:  # noqa: BLE001 - a decoder without such a folder: no size, the row stays
            return None
        return sum(f.stat().st_size for f in map(source.joinpath, WEIGHT_FILES) if f.is_file()) or None

    def _spawn_decoder_peer(self, kind: str) -> None:
        """A converted peer (bench.decoder_peers): converted once (a child process), then its own worker; a peer that
        is not installed or does not convert is a row with ``skipped``."""
        peer = DECODER_PEERS[kind]
        ident = {"key": f"{peer.tool}|{peer.folder}|{peer.mode}", "backend": peer.tool, "artifact": peer.folder,
                 "mode": peer.mode, "precision": peer.precision, "is_peer": True, "peer_kind": kind, "notes": {}}
        try:
            prep = prepare(peer, self._source(), self.ref.folder / "peers")
        except Exception as e:  # noqa: BLE001 - e.g. no source folder: this peer is skipped, the others go on
            prep = {"skipped": f"conversion failed: {type(e).__name__}: {str(e)[:300]}"}
        conv = {k: prep.get(k) for k in ("convert_seconds", "reused", "tool_version", "dir")}
        if prep.get("skipped"):
            print(f"bench {self.ref.name}: peer {kind} skipped: {prep['skipped'][:300]}", flush=True)
            self.cands.append({**ident, "skipped": prep["skipped"], "conversion": conv})
            return
        print(f"bench {self.ref.name}: peer {kind} " + ("reused" if prep["reused"] else "converted in "
              f"{prep['convert_seconds']:.1f} s") + f" ({prep['dir']})", flush=True)
        n = len(self.cands)
        self._spawn(["--runner", prep["dir"], "--peer-kind", kind, "--model", self.ref.name], ident["key"], [ident])
        for c in self.cands[n:]:
            c.update(conversion=conv, model_bytes=prep.get("model_bytes"))

    def start(self) -> None:
        from verify.decoder import bench_plan

        name, args = self.ref.name, self.args
        for kind in (k for k in PEERS if k in args.peers):
            self._spawn_torch(kind)
        for kind in (k for k in DECODER_PEERS if k in args.peers):
            self._spawn_decoder_peer(kind)
        if not args.no_ours:
            for art, backends in bench_plan(self.ref.folder):
                for backend in backends:
                    mode = MODES.get(backend, "-")
                    n = len(self.cands)
                    self._spawn(["--runner", str(self.ref.folder / art), "--backend", backend, "--model", name],
                                f"{backend}|{art}|{mode}",
                                [{"key": f"{backend}|{art}|{mode}", "backend": backend, "artifact": art, "mode": mode,
                                  "precision": precision_of(art), "is_peer": False, "peer_kind": None, "notes": {}}])
                    for c in self.cands[n:]:
                        c["model_bytes"] = onnx_bytes(self.ref.folder / art)
        for c in self.cands:
            c["verified"] = None if c["is_peer"] else _verified(self.vrows, c["artifact"], c["backend"])
            c["kv_bytes_per_token"] = kv_bytes_per_token(self.pre, (c.get("notes") or {}).get("kv_dtype", "float32"))
            c["timed"] = {}
            if c.get("skipped"):
                c["error"] = f"skipped: {c['skipped']}"

    def _live(self, w) -> list[dict[str, Any]]:
        return [c for c in self.cands if c.get("worker") is w and not c.get("error")]

    def compare_tokens(self, rows: list[list[int]], new: int) -> None:
        """Every candidate's greedy tokens on ``rows`` vs the reference's (ours fp32.onnx on ONNX Runtime, else our
        first fp32 artifact, else PyTorch eager): ``greedy`` per candidate, with the first differing position."""
        got: dict[str, list[list[int]]] = {}
        for w in self.workers:
            mine = self._live(w)
            if not mine or w.dead:
                continue
            try:
                reply = w.request({"cmd": "gen_tokens", "rows": rows, "new": new})
            except Exception as e:  # noqa: BLE001 - the worker is gone: its candidates fail from now on
                reply = {"tokens": {}, "errors": {c["key"]: str(e) for c in mine}}
            got.update(reply["tokens"])
            for c in mine:
                if c["key"] in reply["errors"]:
                    c["error"] = f"greedy tokens: {reply['errors'][c['key']]}"
        ref = reference_key(self.cands, got)
        self.greedy_ref = {"key": ref, "rows": len(rows), "prompt": len(rows[0]), "new": new}
        for c in self.cands:
            if ref is not None and c["key"] in got:
                c["greedy"] = {"reference": ref, **compare_greedy(got[ref], got[c["key"]])}

    def peak_rss(self) -> None:
        """Each candidate's worker's peak resident memory (VmHWM), read when its work is done."""
        for c in self.cands:
            w = c.get("worker")
            if w is not None and c.get("peak_rss_bytes") is None:
                c["peak_rss_bytes"] = peak_rss_bytes(w.proc.pid)

    def time_batch(self, b: int, points: list[dict]) -> None:
        from bench.worker import RemoteTimer

        timers = {}
        for w in self.workers:
            mine = self._live(w)
            if not mine or w.dead:
                continue
            try:
                errors = w.request({"cmd": "gen_points", "points": points})["errors"]
            except Exception as e:  # noqa: BLE001 - the worker is gone: its candidates fail from now on
                errors = {c["key"]: str(e) for c in mine}
            for c in mine:
                if c["key"] in errors:
                    c["error"] = errors[c["key"]]
                    continue
                for p in points:
                    timers[f"{c['key']}@{p['tag']}"] = RemoteTimer(w, f"{c['key']}@{p['tag']}")
        cfg = self.cfg
        if b == 1 and cfg.min_iters_batch1 > cfg.min_iters:
            cfg = replace(cfg, min_iters=cfg.min_iters_batch1)
        timed = run_interleaved(timers, cfg)
        for c in self.cands:
            for p in points:
                t = timed.get(f"{c['key']}@{p['tag']}")
                if t is None:
                    continue
                if t.error:
                    c["error"] = c.get("error") or t.error
                    continue
                c["timed"][p["tag"]] = {**stats_of(t.samples_s, p["batch"]), "first_call_s": t.first_call_s,
                                        "batch": p["batch"], "prompt": p["prompt"], "new": p["new"]}

    def result(self, plan: dict[int, list[dict]]) -> dict[str, Any]:
        out = []
        for c in self.cands:
            timed = c["timed"]
            row = {k: c.get(k) for k in ("key", "backend", "artifact", "mode", "precision", "is_peer", "peer_kind",
                                         "verified", "kv_bytes_per_token", "load_seconds", "error", "notes", "skipped",
                                         "conversion", "model_bytes", "peak_rss_bytes", "greedy")}
            row["ttft_ms"] = {str(p["prompt"]): timed[p["tag"]]["p50_ms"] for b in plan for p in plan[b]
                              if p["new"] == 1 and p["batch"] == 1 and p["tag"] in timed}
            row["decode"] = {}
            for b, pts in plan.items():
                t1, tn = (timed.get(p["tag"]) for p in pts[:2])
                if t1 and tn:
                    steps = tn["new"] - t1["new"]
                    dt = (tn["p50_ms"] - t1["p50_ms"]) / 1e3
                    dt_min = (tn["min_ms"] - t1["min_ms"]) / 1e3
                    row["decode"][str(b)] = {
                        "t1_ms": t1["p50_ms"], "tN_ms": tn["p50_ms"], "new_tokens": tn["new"], "prompt": tn["prompt"],
                        "tokens_per_s": b * steps / dt if dt > 0 else None,
                        "tokens_per_s_at_min": b * steps / dt_min if dt_min > 0 else None,
                        "ms_per_step": 1e3 * dt / steps if dt > 0 else None,
                        "iterations": [t1["iterations"], tn["iterations"]]}
            firsts = [t["first_call_s"] for t in timed.values() if t.get("first_call_s") is not None]
            row["compile_seconds"] = round(sum(firsts), 2) if c.get("peer_kind") == "compile" and firsts else None
            out.append(row)
        return {"model": self.ref.name, "candidates": out, "summary": summarize(out),
                "kv_bytes_per_token_fp32": kv_bytes_per_token(self.pre),
                "cache_shape": ["batch", self.pre["heads"], "tokens", self.pre["head_dim"]],
                "layers": self.pre["layers"], "threads": self.args.threads, "greedy_reference": self.greedy_ref,
                "points": {str(b): [{k: p[k] for k in ("tag", "batch", "prompt", "new")} for p in pts]
                           for b, pts in plan.items()},
                "prompts": "first k tokens of IMDB test-split reviews with >= k tokens (runtime.bpe)",
                "method": "interleaved round-robin (bench.timing); decode tokens/s = batch x (N-1) / (p50 t_N - p50 "
                          "t_1); TTFT = p50 of generate(max_new_tokens=1)"}

    def run(self) -> dict[str, Any]:
        batch_max = int(self.spec["dynamic"]["batch"]["max"])
        plan = plan_points(self.pre, batch_max, self.args.batches)
        dataset = self.spec.get("dataset") or "imdb"
        tok = self.ref.file(self.pre.get("tokenizer", "tokenizer.json"))
        rows_cache: dict[tuple[int, int], list[list[int]]] = {}
        for pts in plan.values():
            for p in pts:
                key = (p["prompt"], p["batch"])
                if key not in rows_cache:
                    rows_cache[key] = prompt_rows(tok, p["prompt"], p["batch"], dataset)
                p["rows"] = rows_cache[key]
        t0 = time.perf_counter()
        self.start()
        print(f"bench {self.ref.name}: {len(self.cands)} generation candidates loaded in "
              f"{time.perf_counter() - t0:.1f} s; batches {list(plan)}, prompts {sorted({k[0] for k in rows_cache})} "
              f"tokens, {max(p['new'] for pts in plan.values() for p in pts)} new", flush=True)
        decode = next(p for p in plan[max(plan)] if p["new"] > 1)
        self.compare_tokens(decode["rows"], decode["new"])
        for b, pts in plan.items():
            t0 = time.perf_counter()
            self.time_batch(b, pts)
            print(f"bench {self.ref.name}: generation batch {b} timed in {time.perf_counter() - t0:.1f} s", flush=True)
        self.peak_rss()
        return self.result(plan)

    def close(self) -> None:
        for w in self.workers:
            w.close()


def bench_decoder(ref: ModelRef, args, cfg, env: dict[str, str], vrows: list[dict]) -> dict[str, Any]:
    """bench.json's generation section for one decoder (see the module docstring)."""
    gb = GenerationBench(ref, args, cfg, env, vrows)
    try:
        return gb.run()
    finally:
        gb.close()


def _rate(c: dict | None, batch: int = 1) -> float | None:
    return (((c or {}).get("decode") or {}).get(str(batch)) or {}).get("tokens_per_s")


def summarize(cands: list[dict[str, Any]], batch: int = 1) -> dict[str, Any]:
    """The fastest verified artifact's decode tokens/s at ``batch`` over PyTorch eager's (and the best peer's)."""
    ok = [c for c in cands if _rate(c, batch)]
    eager = next((c for c in ok if c.get("peer_kind") == "eager"), None)
    peers = [c for c in ok if c.get("peer_kind") in PEERS]  # PyTorch's; the converted peers: versus_peers
    best_peer = max(peers, key=_rate, default=None)
    verified = [c for c in ok if not c.get("is_peer") and c.get("verified") is True]
    fastest = max(verified, key=_rate, default=None)
    fastest_any = max((c for c in ok if not c.get("is_peer")), key=_rate, default=None)
    sp = _rate(fastest, batch) / _rate(eager, batch) if fastest and eager else None
    sp_peer = _rate(fastest, batch) / _rate(best_peer, batch) if fastest and best_peer else None

    def brief(c: dict | None) -> dict | None:
        if c is None:
            return None
        return {**{k: c.get(k) for k in ("key", "backend", "artifact", "mode", "precision", "peer_kind", "verified")},
                "tokens_per_s": _rate(c, batch), "ttft_ms": c.get("ttft_ms")}

    return {"batch": batch, "fastest_verified": brief(fastest), "fastest_any_ours": brief(fastest_any),
            "versus_peers": {str(b): versus_peers(cands, b) for b in BATCHES},
            "eager": brief(eager), "best_torch_peer": brief(best_peer), "speedup_vs_eager": sp,
            "speedup_vs_best_torch_peer": sp_peer,
            "target": {"name": "decode tokens/s at batch 1, fastest verified vs PyTorch eager generate",
                       "target": TARGET_VS_EAGER, "measured": sp, "met": None if sp is None else sp >= TARGET_VS_EAGER}}


def versus_peers(cands: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Our decode tokens/s at ``batch`` over the converted peers' (bench.decoder_peers): the fastest verified artifact
    over the fastest peer, and our fastest verified fp32 artifact over CTranslate2 fp32 (None where one is missing)."""
    ok = [c for c in cands if _rate(c, batch)]

    def best(cs):
        return max(cs, key=lambda c: _rate(c, batch), default=None)

    peer = best([c for c in ok if c.get("peer_kind") in DECODER_PEERS])
    ours = best([c for c in ok if not c.get("is_peer") and c.get("verified") is True])
    ours_fp32 = best([c for c in ok if not c.get("is_peer") and c.get("verified") is True and c["precision"] == "fp32"])
    ct2 = next((c for c in ok if c.get("peer_kind") == "ct2_fp32"), None)

    def ratio(a, b):
        return _rate(a, batch) / _rate(b, batch) if a and b else None

    return {"fastest_peer": (peer or {}).get("key"), "fastest_peer_tokens_per_s": _rate(peer, batch),
            "fastest_verified": (ours or {}).get("key"), "fastest_verified_over_fastest_peer": ratio(ours, peer),
            "fp32_verified": (ours_fp32 or {}).get("key"), "fp32_over_ctranslate2_fp32": ratio(ours_fp32, ct2)}


def print_section(sec: dict[str, Any]) -> None:
    """The generation table the bench stage prints."""
    name = sec["model"]
    pts = sec.get("points", {})
    ttft_keys = sorted({p["prompt"] for b in pts.values() for p in b if p["new"] == 1 and p["batch"] == 1})
    batches = sorted(int(b) for b in pts)
    print(f"  {name} generation: TTFT p50 ms at prompt {'/'.join(map(str, ttft_keys))}; decode tokens/s at batch "
          f"{'/'.join(map(str, batches))}; KV bytes per token; model files and the worker's peak RSS; greedy tokens")
    for c in sorted(sec["candidates"], key=lambda c: -(_rate(c) or 0)):
        tag = "peer" if c["is_peer"] else {True: "ok", False: "FAIL", None: "unver"}[c.get("verified")]
        head = f"    {c['backend']:<12} {c['artifact']:<15} {c['mode']:<17} {tag:<5}"
        if c.get("skipped"):
            print(f"{head} SKIPPED {str(c['skipped'])[:160]}")
            continue
        if c.get("error") and not c.get("decode"):
            print(f"{head} ERROR {str(c['error'])[:120]}")
            continue
        ttft = "/".join(_num(c["ttft_ms"].get(str(k))) for k in ttft_keys)
        rates = "/".join(_num(_rate(c, b)) for b in batches)
        extra = f"  (compile {c['compile_seconds']:.0f} s)" if c.get("compile_seconds") else ""
        conv = c.get("conversion") or {}
        extra += f"  (converted in {conv['convert_seconds']:.1f} s)" if conv.get("convert_seconds") else ""
        print(f"{head} TTFT {ttft} ms  decode {rates} tok/s  KV {c['kv_bytes_per_token']} B/token  files "
              f"{mib(c.get('model_bytes'))} MiB  RSS {mib(c.get('peak_rss_bytes'))} MiB  greedy {greedy_text(c)}"
              f"{extra}", flush=True)
    s = sec.get("summary") or {}
    t = s.get("target") or {}
    if t.get("measured") is not None:
        print(f"  {name}: fastest verified {s['fastest_verified']['key']} decodes {_num(t['measured'])}x PyTorch eager "
              f"generate at batch 1 (target {t['target']:.1f}x: {'met' if t['met'] else 'NOT met'})")


def mib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.1f}"


def greedy_text(c: dict[str, Any]) -> str:
    """'reference', 'identical', 'differs at 12 (5/8 rows identical)' or '-' (not compared)."""
    g = c.get("greedy")
    if not g:
        return "-"
    if g["reference"] == c["key"]:
        return "reference"
    if g["identical"]:
        return "identical"
    return f"differs at {g['first_diff_min']} ({g['rows_identical']}/{g['rows']} rows identical)"


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"
