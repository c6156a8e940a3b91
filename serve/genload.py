"""The load test of a decoder's streaming entry (the text generation task's ``loadtest*`` handlers, which
``edgeattn loadtest`` calls for the entries ``serve.triton_generate`` serves): N concurrent gRPC streams for a fixed
time per level, each client sending one prompt after another and reading one response per token.

Per level: generated tokens/s over all clients, requests/s, time to first token and per-token latency (p50/p99),
the batch sizes Triton formed, errors; every streamed token sequence is compared with the direct runtime's greedy
tokens for the same prompt alone (the same artifact opened in this process, ``runtime.generate.TextGenerator``):
greedy tokens are exact, so one differing sequence fails the level. The direct runtime's own tokens/s (one prompt at
a time, and a batch of prompts per call) is measured in this process before the server starts.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from serve.errors import ClientError, LoadTestError

REQUEST_TIMEOUT_S = 60.0
PLOT = "loadtest-generation.png"
PROMPT_WORDS = (6, 24)  # a dataset text's first words, seeded count per prompt
FALLBACK_PROMPTS = ("This movie was", "I really did not like the acting in this film, and", "The plot",
                    "One of the best films I have seen this year", "A quiet story about a family", "The ending",
                    "Nobody in the cast could", "It is hard to say why")


# ---- prompts and the direct runtime ------------------------------------------------------------------------------
def load_prompts(dataset: str | None, n: int, data: str | None, seed: int = 0) -> tuple[list[str], str]:
    """(``n`` prompts, where they came from): ``data`` (a text file, one prompt a line), else the first words of the
    dataset's first ``n`` test texts, else a fixed list of short prompts."""
    if data:
        p = Path(data)
        if not p.is_file():
            raise LoadTestError(f"--data {p}: expected a text file with one prompt a line for a decoder")
        items = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
        if not items:
            raise LoadTestError(f"--data {p}: got no non-empty lines, expected one prompt a line")
        return items, str(p)
    if dataset:
        try:
            from zoo.data import DataError, load_dataset

            texts = list(load_dataset(dataset).test.x)[:n]
        except (ImportError, DataError, KeyError, ValueError):
            texts = []
        if texts:
            rng = np.random.default_rng(seed)
            return ([" ".join(str(t).split()[: int(rng.integers(*PROMPT_WORDS))]) for t in texts],
                    f"{dataset} test split, first {len(texts)} texts, first {PROMPT_WORDS[0]}..{PROMPT_WORDS[1] - 1} "
                    "words")
    return [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(min(n, len(FALLBACK_PROMPTS)))], "fixed prompts"


class Direct:
    """The served decoder (the repository's copy) in this process, with the entry's settings."""

    def __init__(self, path: Path, opt_level: str | None, threads: int | None):
        from runtime.generate import TextGenerator

        self.gen = TextGenerator(path, threads=threads, opt_level=opt_level or None)

    def reference(self, prompts: Sequence[str], new: int) -> list[list[int]]:
        """Each prompt's greedy tokens, alone (what a client of the runtime gets)."""
        return [self.gen.generate(p, max_new_tokens=new, decode=False)[0].tokens for p in prompts]

    def throughput(self, prompts: Sequence[str], batch: int, new: int, duration_s: float) -> dict[str, Any]:
        """Generated tokens/s running ``batch`` prompts per call (prefill included) for ``duration_s``."""
        n_tok, calls, i, secs = 0, 0, 0, 0.0
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end or not calls:
            rows = [prompts[(i + k) % len(prompts)] for k in range(batch)]
            t0 = time.perf_counter()
            out = self.gen.generate(rows, max_new_tokens=new, decode=False)
            secs += time.perf_counter() - t0
            n_tok += sum(len(g.tokens) for g in out)
            calls += 1
            i += batch
        return {"batch": batch, "calls": calls, "tokens": n_tok, "tokens_per_s": n_tok / secs}

    def close(self) -> None:
        self.gen.close()


# ---- the clients -------------------------------------------------------------------------------------------------
@dataclass
class GenLevel:
    concurrency: int
    results: list[tuple[int, list[int], float, float]] = field(default_factory=list)  # (prompt, tokens, ttft, total)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _client_loop(url: str, model: str, prompts: Sequence[str], new: int, start: int, stride: int, end_at: float,
                 level: GenLevel, lock: threading.Lock) -> None:
    from serve.client import TritonStreamer

    try:
        s = TritonStreamer(url, model, timeout_s=REQUEST_TIMEOUT_S)
    except ClientError as e:
        with lock:
            level.errors.append(f"connect: {e}")
        return
    i = start
    try:
        while time.perf_counter() < end_at:
            k = i % len(prompts)
            try:
                r = s.generate(prompts[k], new)
                with lock:
                    level.results.append((k, r.tokens, r.first_token_s, r.total_s))
            except ClientError as e:
                with lock:
                    level.errors.append(str(e)[:300])
                break  # the stream may hold a late response: this client stops
            i += stride
    finally:
        s.close()


def run_level(url: str, model: str, prompts: Sequence[str], new: int, concurrency: int,
              duration_s: float) -> GenLevel:
    from serve.loadtest import run_clients

    return run_clients(GenLevel(concurrency), _client_loop, (url, model, prompts, new), concurrency, duration_s,
                       "genload", REQUEST_TIMEOUT_S)


def check_tokens(level: GenLevel, ref: list[list[int]]) -> dict[str, Any]:
    """Every streamed sequence against the direct runtime's greedy tokens of the same prompt (exact)."""
    bad = [{"prompt": k, "step": next((j for j, (a, b) in enumerate(zip(got, ref[k])) if a != b),
                                      min(len(got), len(ref[k]))), "got": len(got), "expected": len(ref[k])}
           for k, got, _, _ in level.results if got != ref[k]]
    return {"checked": len(level.results), "identical": len(level.results) - len(bad), "mismatches": bad[:5],
            "matched": bool(level.results) and not bad}


def level_row(level: GenLevel, formed: dict[int, int], ref: list[list[int]]) -> dict[str, Any]:
    from serve.loadtest import latency_ms

    n_tok = sum(len(t) for _, t, _, _ in level.results)
    per_token = [(total - ttft) / (len(t) - 1) for _, t, ttft, total in level.results if len(t) > 1]
    ttft = {k.replace("_ms", "_ttft_ms"): v for k, v in latency_ms([r[2] for r in level.results]).items()}
    tpot = {k.replace("_ms", "_token_ms"): v for k, v in latency_ms(per_token).items()}
    return {"concurrency": level.concurrency, "seconds": level.seconds, "requests": len(level.results),
            "tokens": n_tok, "tokens_per_s": n_tok / level.seconds if level.seconds else 0.0,
            "requests_per_s": len(level.results) / level.seconds if level.seconds else 0.0, **ttft, **tpot,
            "errors": len(level.errors), "first_errors": level.errors[:3],
            "batches": {str(k): v for k, v in sorted(formed.items())},
            "mean_batch": (sum(k * v for k, v in formed.items()) / sum(formed.values())) if formed else None,
            **check_tokens(level, ref)}


# ---- one entry ---------------------------------------------------------------------------------------------------
def loadtest_generation(repo: Path, rec: dict[str, Any], s, threads: int | None) -> dict[str, Any]:
    """``s``: serve.loadtest.Settings (``new_tokens``: tokens per request)."""
    entry = rec["python"]
    name, version = entry["entry"], repo / entry["entry"] / "1"
    prompts, source = load_prompts(rec["spec"].get("dataset"), s.pool, s.data)
    new = int(s.new_tokens)
    from runtime.ort_backend import OPT_LEVELS

    direct = Direct(version / entry["artifact"], entry["mode"] if entry["mode"] in OPT_LEVELS else None, threads)
    try:
        ref = direct.reference(prompts, new)
        bmax = max(1, int(entry.get("max_batch_size") or 1))
        direct_rows = [direct.throughput(prompts, 1, new, s.duration_s)]
        if bmax > 1:
            direct_rows.append(direct.throughput(prompts, min(bmax, max(s.concurrency)), new, s.duration_s))
    finally:
        direct.close()
    print(f"loadtest {name}: direct runtime {direct_rows[0]['tokens_per_s']:.1f} tokens/s one prompt at a time"
          + (f", {direct_rows[1]['tokens_per_s']:.1f} in batches of {direct_rows[1]['batch']}"
             if len(direct_rows) > 1 else ""), flush=True)
    rows = []
    for level, formed in serve_levels(repo, name, prompts, new, s):
        rows.append(level_row(level, formed, ref))
        r = rows[-1]
        print(f"loadtest {name}: {r['concurrency']:>3} streams: {r['tokens_per_s']:.1f} tokens/s, "
              f"{r['requests_per_s']:.2f} req/s, first token p50 {_ms(r['p50_ttft_ms'])} ms, per token p50 "
              f"{_ms(r['p50_token_ms'])} ms, mean batch {_ms(r['mean_batch'])}, errors {r['errors']}, "
              f"{r['identical']}/{r['checked']} token-identical to the direct runtime", flush=True)
    return {"model": rec["model"], "entry": name, "kind": rec["spec"].get("task"), "artifact": entry["artifact"],
            "precision": entry["precision"], "ort_opt_level": entry["mode"], "new_tokens": new,
            "inputs": {"n": len(prompts), "source": source}, "direct": direct_rows, "levels": rows}



def serve_levels(repo: Path, name: str, prompts: Sequence[str], new: int, s) -> list[tuple[GenLevel, dict]]:
    from serve.client import TritonStreamer, model_statistics
    from serve.server import TritonServer

    srv = None
    if s.url is None:
        srv = TritonServer(repo, [name]).start()
    try:
        url = s.url or srv.grpc_url
        with TritonStreamer(url, name, timeout_s=REQUEST_TIMEOUT_S) as w:
            for k in range(s.warmup_requests):
                w.generate(prompts[k % len(prompts)], new)
        def stats() -> dict:
            return model_statistics(url, name, "grpc", REQUEST_TIMEOUT_S)

        from serve.loadtest import measure_levels

        return measure_levels(name, s.concurrency, stats,
                              lambda conc: run_level(url, name, prompts, new, conc, s.duration_s))
    finally:
        if srv is not None:
            srv.stop()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


# ---- the report --------------------------------------------------------------------------------------------------
def markdown_lines(m: dict[str, Any]) -> list[str]:
    lines = [f"## {m['entry']} (decoder, streaming: {m['artifact']}, {m['precision']}, ONNX Runtime "
             f"{m['ort_opt_level']})", "",
             f"gRPC streaming, one response per token, greedy, {m['new_tokens']} new tokens per request at most (fewer "
             f"when the stop token comes first). Prompts: {m['inputs']['n']} ({m['inputs']['source']}). Every "
             "streamed sequence is compared with the direct runtime's greedy tokens for the prompt alone.", "",
             "| streams | requests | tokens/s | req/s | first token p50 ms | p99 | per token p50 ms | p99 | mean batch "
             "| "
             "batches formed (size: count) | errors | token-identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["levels"]:
        formed = ", ".join(f"{k}: {v}" for k, v in r["batches"].items()) or "-"
        ok = f"{r['identical']}/{r['checked']}" + ("" if r["matched"] else " (NOT all)")
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['requests_per_s']:.2f} | "
                     f"{_ms(r['p50_ttft_ms'])} | {_ms(r['p99_ttft_ms'])} | {_ms(r['p50_token_ms'])} | "
                     f"{_ms(r['p99_token_ms'])} | {_ms(r['mean_batch'])} | {formed} | {r['errors']} | {ok} |")
    lines += ["", "| direct runtime, this process | tokens/s |", "|---|---|"]
    lines += [f"| {d['batch']} prompt(s) per call ({d['calls']} calls) | {d['tokens_per_s']:.1f} |"
              for d in m["direct"]]
    bad = [x for r in m["levels"] for x in r["mismatches"]]
    if bad:
        lines += ["", "First differing sequences: " + "; ".join(
            f"prompt {b['prompt']} from step {b['step']} ({b['got']} tokens, expected {b['expected']})"
            for b in bad[:5])]
    errs = [e for r in m["levels"] for e in r["first_errors"]]
    if errs:
        lines += ["", "First errors:", *[f"- `{e}`" for e in errs[:5]]]
    return lines + [""]


def plot(models: list[dict[str, Any]], path: Path) -> None:
    """Tokens/s (with the direct runtime's as lines) and p50 time to first token against concurrent streams."""
    from serve.loadtest import concurrency_plot

    concurrency_plot(models, path, ("tokens_per_s", "tokens_per_s", "generated tokens/s", "{batch} per call"),
                     ("p50_ttft_ms", "p50 time to first token (ms)", "First token"), "streams")


def plot_figure(models: list[dict[str, Any]], folder: Path) -> tuple[str, str]:
    """The ``loadtest_plot`` of a decoder's streaming entry (zoo.tasks.text_generation): ``folder/PLOT``."""
    plot(models, folder / PLOT)
    return PLOT, "decoder tokens/s and first-token latency against streams"


def level_passed(r: dict[str, Any]) -> bool:
    return r["errors"] == 0 and r["matched"] and r["checked"] > 0


def passed(m: dict[str, Any]) -> bool:
    """The ``loadtest_passed`` of a decoder's entry: every level without errors, every streamed sequence identical."""
    return all(level_passed(r) for r in m["levels"])
