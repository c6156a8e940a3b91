"""``edgeattn loadtest``: N concurrent clients for a fixed time against a served Python-backend entry, loopback only.

Per concurrency level: requests/s, p50/p90/p99 latency, the batch sizes Triton formed (the difference of its
statistics endpoint before and after the level), errors; every response is compared with the direct runtime's
output on the same input (the same artifact opened in this process, one item per call) under the artifact's
tolerance (``judge.figures``, the project's one comparison: max |diff| relative to the logits' RMS for fp32, cosine
for reduced precisions). The direct runtime's own throughput (one item per call, and whole batches) is measured in
this process before the server starts, so the two never share the CPU. Writes ``<out>/loadtest.{json,md}`` and
``<out>/loadtest.png`` (throughput and p99 against concurrency).

Each served model is load-tested, reported, judged and plotted as its task says (zoo.tasks: ``loadtest``,
``loadtest_markdown``, ``loadtest_passed``, ``loadtest_plot``; the classifier entry above is the default). A decoder's
streaming entry gets its own test (``serve.genload``: concurrent gRPC streams, tokens/s, time to first token, every
streamed token sequence against the direct runtime's greedy tokens), in the same report.

Each level runs ``--duration`` seconds; every request has a timeout and every thread is joined with one, so the
run is bounded. The server is the bundled one started here on free loopback ports (or ``--url`` on loopback).
"""
from __future__ import annotations

import io
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.args import (existing_folder, existing_path, int_list, models_text, positive_int, positive_seconds,
                           stage_parser)
from runtime.files import atomic_write_json, atomic_write_text
from runtime.modelspec import ModelSpec, Tolerance, default_tolerances
from serve.client import TritonClassifier, batch_sizes
from serve.errors import ClientError, LoadTestError
from serve.repository import read_manifest
from zoo.tasks import task_named

log = logging.getLogger("edgeattn.serve.loadtest")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_TIMEOUT_S = 30.0


# ---- inputs ------------------------------------------------------------------------------------------------
def synthetic_texts(tokenizer: Path, n: int, seed: int = 0) -> list[str]:
    """Seeded sentences of 5..40 whole words from the tokenizer's own vocabulary (no special tokens or pieces)."""
    from tokenizers import Tokenizer

    vocab = [w for w in Tokenizer.from_file(str(tokenizer)).get_vocab() if w.isalpha() and len(w) > 1]
    if not vocab:
        raise LoadTestError(f"tokenizer {tokenizer}: no whole-word tokens to build sentences from; pass --data FILE")
    rng = np.random.default_rng(seed)
    vocab.sort()
    return [" ".join(rng.choice(vocab, size=int(rng.integers(5, 41)))) for _ in range(n)]


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_images(spec: ModelSpec, n: int, seed: int = 0) -> list[bytes]:
    """Seeded PNGs of the model's input size: a bright rectangle of random size and place on a dark, noisy field."""
    h, w = spec.preprocess["size"]
    ch = int(spec.preprocess.get("channels", 1))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 30, size=(h, w), dtype=np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y0: y0 + int(rng.integers(h // 4, h // 2)), x0: x0 + int(rng.integers(w // 4, w // 2))] += 180
        out.append(png_bytes(img if ch == 1 else np.repeat(img[..., None], 3, axis=2)))
    return out


def dataset_items(spec: ModelSpec, n: int) -> list[str | bytes] | None:
    """The first ``n`` test items of the model's dataset (images as PNG bytes), or None where it cannot be loaded."""
    if not spec.dataset:
        return None
    try:
        from zoo.data import DataError, load_dataset
    except ImportError:
        return None
    try:
        test = load_dataset(spec.dataset).test
    except DataError as e:
        log.warning("dataset %s: %s; using synthetic inputs", spec.dataset, e)
        return None
    if spec.preprocess.get("kind") == "text":
        return [str(t) for t in list(test.x)[:n]]
    imgs = np.asarray(test.x[:n])
    if spec.preprocess.get("invert"):  # the model inverts what it reads: send what the model was trained on
        imgs = 255 - imgs
    return [png_bytes(im) for im in imgs]


def load_items(spec: ModelSpec, version_dir: Path, n: int, data: str | None) -> tuple[list[str | bytes], str]:
    """(``n`` inputs, where they came from): ``data`` (a text file, one input a line, or a folder of images), else
    the model's test split, else seeded synthetic inputs."""
    kind = spec.preprocess.get("kind", "text" if spec.task == "text_classification" else "image")
    if data:
        p = Path(data)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
            items: list[str | bytes] = [f.read_bytes() for f in files]
        elif p.is_file():
            items = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
        else:
            raise LoadTestError(f"--data {p}: no such file or folder; expected a text file or a folder of images")
        if not items or (kind == "image") != isinstance(items[0], bytes):
            raise LoadTestError(f"--data {p}: got {len(items)} {'image' if items and isinstance(items[0], bytes) else 'text'}"
                                f" items, expected {kind} inputs for this {kind} model")
        return items, str(p)
    items = dataset_items(spec, n)
    if items:
        return items, f"{spec.dataset} test split, first {len(items)}"
    if kind == "text":
        return synthetic_texts(version_dir / spec.preprocess.get("tokenizer", "tokenizer.json"), n), "synthetic sentences"
    return synthetic_images(spec, n), "synthetic images"


# ---- the direct runtime -----------------------------------------------------------------------------------
class Direct:
    """The served artifact (the repository's copy) opened in this process with the same settings as the Python
    model, on this checkout's runtime (the repository holds a copy of it)."""

    def __init__(self, version_dir: Path, artifact: str, mode: str, threads: int | None,
                 backend: str = "onnxruntime"):
        from runtime.classify import Classifier
        from runtime.loader import open_mode

        self.path = version_dir / artifact
        self.clf = Classifier(self.path, runner=open_mode(self.path, backend, mode, threads=threads))

    def feed(self, items: Sequence[str | bytes]) -> np.ndarray:
        if self.clf.kind == "text":
            return self.clf.encode_text([str(x) for x in items])
        from runtime.preprocess import decode_image

        return np.concatenate([decode_image(data, self.clf.preprocess) for data in items])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.clf.runner.infer({self.clf.input_name: x})[self.clf.output_name].astype(np.float32)

    def reference(self, items: Sequence[str | bytes]) -> np.ndarray:
        """(K, classes): each item alone, as a client of the runtime would run it."""
        return np.concatenate([self.logits(self.feed([x])) for x in items])

    def throughput(self, items: Sequence[str | bytes], batch: int, duration_s: float) -> dict[str, Any]:
        """Items/s and per-call latency running ``batch`` items per call (encoding included) for ``duration_s``."""
        lat, n, i = [], 0, 0
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end or not lat:
            chunk = [items[(i + k) % len(items)] for k in range(batch)]
            t0 = time.perf_counter()
            self.logits(self.feed(chunk))
            lat.append(time.perf_counter() - t0)
            n += batch
            i += batch
        total = float(sum(lat))
        return {"batch": batch, "calls": len(lat), "items": n, "items_per_s": n / total, **latency_ms(lat)}

    def close(self) -> None:
        self.clf.close()


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    if not len(seconds):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


# ---- the clients ------------------------------------------------------------------------------------------
@dataclass
class Level:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    responses: list[tuple[int, np.ndarray, str]] = field(default_factory=list)  # (item, logits, label)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _client_loop(url: str, model: str, protocol: str, items: Sequence, start: int, stride: int, end_at: float,
                 level: Level, lock: threading.Lock) -> None:
    try:
        client = TritonClassifier(url, model, protocol, timeout_s=REQUEST_TIMEOUT_S)
    except ClientError as e:
        with lock:
            level.errors.append(f"connect: {e}")
        return
    i = start
    try:
        while time.perf_counter() < end_at:
            k = i % len(items)
            t0 = time.perf_counter()
            try:
                logits, labels = client.infer([items[k]])
                dt = time.perf_counter() - t0
                with lock:
                    level.latencies.append(dt)
                    level.responses.append((k, logits[0], labels[0]))
            except ClientError as e:
                with lock:
                    level.errors.append(str(e)[:300])
            i += stride
    finally:
        client.close()


def run_clients(level, loop, args: tuple, concurrency: int, duration_s: float, name: str,
                request_timeout_s: float = REQUEST_TIMEOUT_S):
    """``concurrency`` threads running ``loop(*args, c, concurrency, end_at, level, lock)`` (c: the client's index)
    until ``duration_s`` is up; ``level`` gets the wall time and an error per thread still waiting after the request
    timeout. The classifier and the streaming decoder load tests (serve.genload) share it."""
    lock = threading.Lock()
    end_at = time.perf_counter() + duration_s
    threads = [threading.Thread(target=loop, daemon=True, name=f"{name}-client-{c}",
                                args=(*args, c, concurrency, end_at, level, lock))
               for c in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end_at - time.perf_counter()) + request_timeout_s + 5)
    level.seconds = time.perf_counter() - t0
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        level.errors.append(f"{len(stuck)} client thread(s) still waiting after the request timeout: {stuck}")
    return level


def measure_levels(name: str, concurrency: Sequence[int], stats, run) -> list[tuple[Any, dict[int, int]]]:
    """``run(conc)`` for each concurrency level, with the batch sizes Triton formed during it (the difference of
    ``stats()``' batch counts before and after). The classifier and streaming decoder load tests share it."""
    from tqdm import tqdm

    out = []
    for conc in tqdm(concurrency, desc=f"loadtest {name}", unit="level", leave=False):
        before = batch_sizes(stats())
        level = run(conc)
        after = batch_sizes(stats())
        out.append((level, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}))
    return out


def run_level(url: str, model: str, protocol: str, items: Sequence, concurrency: int, duration_s: float) -> Level:
    """``concurrency`` threads, one client each, sending one item per request until ``duration_s`` is up."""
    return run_clients(Level(concurrency), _client_loop, (url, model, protocol, items), concurrency, duration_s,
                       "loadtest")


def check_responses(level: Level, ref: np.ndarray, tol: Tolerance, labels: list[str]) -> dict[str, Any]:
    """The level's responses against the direct runtime's logits of the same items, judged as verify judges the
    artifact (``judge.figures`` with its tolerance: max |diff| per sample relative to its logits' RMS and the
    cosine over samples by ``cosine_on``: every response for fp32/fp16, the mean for int8/bf16) plus top-1 agreement
    with the direct runtime; also how many single responses fall outside the per-sample bounds (a dynamically
    quantised artifact gives a request other logits in another batch), and labels against their own logits."""
    from judge.figures import compare, cosine_rows, scaled_max_abs

    if not level.responses:
        return {"checked": 0, "matched": False, "outside_per_sample": 0, "top1_agreement": None,
                "label_mismatches": 0, "worst_scaled_max_abs_diff": None, "worst_cosine": None, "reasons": [
                    "no responses to check"]}
    ks = np.array([k for k, _, _ in level.responses])
    got = np.stack([g for _, g, _ in level.responses]).astype(np.float32)  # (N, classes)
    want = ref[ks]
    c = compare(want, got, None, tol)
    top1 = float((want.argmax(1) == got.argmax(1)).mean())
    reasons = list(c.reasons) + ([f"top1_agreement {top1:.4f} < {tol.min_top1_agreement:g}"]
                                 if top1 < tol.min_top1_agreement else [])
    cos = cosine_rows(want, got)
    diff = np.abs(got.astype(np.float64) - want)
    scaled = np.array([scaled_max_abs(want[i:i + 1].astype(np.float64), diff[i:i + 1]) for i in range(len(got))])
    outside = (cos < tol.min_cosine) | ((scaled > tol.max_abs) if tol.max_abs is not None else False)
    names = labels if len(labels) == got.shape[1] else [str(i) for i in range(got.shape[1])]
    label_bad = sum(names[int(g.argmax())] != lab for (_, g, lab) in level.responses)
    return {"checked": int(len(got)), "matched": not reasons, "reasons": reasons,
            "outside_per_sample": int(outside.sum()), "top1_agreement": top1, "label_mismatches": int(label_bad),
            "worst_scaled_max_abs_diff": float(scaled.max()), "worst_cosine": float(cos.min()),
            "first_outside": [int(k) for k in ks[outside][:5]]}


# ---- the run ----------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    concurrency: list[int]
    duration_s: float
    protocol: str = "http"
    pool: int = 64
    data: str | None = None
    url: str | None = None  # a running server (loopback); None: start the bundled one
    warmup_requests: int = 4
    new_tokens: int = 32  # decoder entries: tokens per streamed request at most


def check_loopback(url: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host not in LOOPBACK:
        raise LoadTestError(f"--url {url}: host '{host}' is not loopback; expected 127.0.0.1, localhost or ::1 "
                            "(the load test never leaves this machine)")


def loadtest_model(repo: Path, rec: dict[str, Any], s: Settings, threads: int | None) -> dict[str, Any]:
    entry = rec["python"]
    name, version = entry["entry"], repo / entry["entry"] / "1"
    spec = ModelSpec.from_dict(rec["spec"])
    tol = spec.tolerances.get(entry["precision"]) or default_tolerances(spec.task)[entry["precision"]]  # older specs
    items, source = load_items(spec, version, s.pool, s.data)
    direct = Direct(version, entry["artifact"], entry["mode"], threads, entry.get("backend") or "onnxruntime")
    try:
        ref = direct.reference(items)
        bmax = max(1, int(entry.get("max_batch_size") or 1))
        direct_rows = [direct.throughput(items, 1, s.duration_s)]
        if bmax > 1:
            direct_rows.append(direct.throughput(items, min(bmax, len(items)), s.duration_s))
    finally:
        direct.close()
    print(f"loadtest {name}: direct runtime {direct_rows[0]['items_per_s']:.1f} items/s one at a time"
          + (f", {direct_rows[1]['items_per_s']:.1f} items/s in batches of {direct_rows[1]['batch']}"
             if len(direct_rows) > 1 else ""), flush=True)
    levels = _serve_levels(repo, name, items, s)
    rows = []
    for level, formed in levels:
        rows.append({"concurrency": level.concurrency, "seconds": level.seconds, "requests": len(level.latencies),
                     "requests_per_s": len(level.latencies) / level.seconds if level.seconds else 0.0,
                     **latency_ms(level.latencies), "errors": len(level.errors), "first_errors": level.errors[:3],
                     "batches": {str(k): v for k, v in sorted(formed.items())},
                     "mean_batch": (sum(k * v for k, v in formed.items()) / sum(formed.values())) if formed else None,
                     **check_responses(level, ref, tol, list(spec.labels))})
        r = rows[-1]
        print(f"loadtest {name}: concurrency {r['concurrency']:>3}: {r['requests_per_s']:.1f} req/s, p50 "
              f"{_ms(r['p50_ms'])} ms, p99 {_ms(r['p99_ms'])} ms, mean batch {_f(r['mean_batch'])}, errors "
              f"{r['errors']}, {'matched' if r['matched'] else 'NOT matched'} the direct runtime ({r['checked']} "
              f"checked, {r['outside_per_sample']} single responses outside the per-sample bound)", flush=True)
    return {"model": rec["model"], "entry": name, "artifact": entry["artifact"], "precision": entry["precision"],
            "backend": entry.get("backend") or "onnxruntime", "ort_opt_level": entry["mode"], "tolerance": {"precision": entry["precision"], **asdict(tol)},
            "inputs": {"n": len(items), "source": source}, "direct": direct_rows, "levels": rows}


def _serve_levels(repo: Path, name: str, items: Sequence, s: Settings) -> list[tuple[Level, dict[int, int]]]:
    from serve.server import TritonServer

    srv = None
    if s.url is None:
        srv = TritonServer(repo, [name]).start()
    try:
        url = s.url or (srv.http_url if s.protocol == "http" else srv.grpc_url)
        with TritonClassifier(url, name, s.protocol, timeout_s=REQUEST_TIMEOUT_S) as c:
            for k in range(s.warmup_requests):
                c.infer([items[k % len(items)]])
            return measure_levels(name, s.concurrency, c.statistics,
                                  lambda conc: run_level(url, name, s.protocol, items, conc, s.duration_s))
    finally:
        if srv is not None:
            srv.stop()


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _f4(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _f6(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


# ---- the report -----------------------------------------------------------------------------------------------
def concurrency_plot(models: list[dict[str, Any]], path: Path, rate: tuple[str, str, str, str],
                     latency: tuple[str, str, str], unit: str) -> None:
    """Two panels against concurrency, one line per entry: ``rate`` = (level key, direct-runtime key, y label,
    direct label's batch wording) with the direct runtime's rates as horizontal lines, and ``latency`` = (level key,
    y label, title); ``unit``: what a concurrent caller is ("clients", "streams"). Classifier and decoder load tests share
    it (serve.genload)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate_key, direct_key, rate_label, per_call = rate
    lat_key, lat_label, lat_title = latency
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for m in models:
        conc = [r["concurrency"] for r in m["levels"]]
        line = ax1.plot(conc, [r[rate_key] for r in m["levels"]], "o-", label=f"{m['entry']} via Triton")[0]
        for d, style in zip(m["direct"], (":", "--")):
            ax1.axhline(d[direct_key], color=line.get_color(), linestyle=style,
                        label=f"{m['entry']} direct runtime, {per_call.format(batch=d['batch'])}")
        ax2.plot(conc, [r[lat_key] for r in m["levels"]], "o-", label=m["entry"])
    ax1.set(xscale="log", xlabel=f"concurrent {unit}", ylabel=rate_label, title="Throughput")
    ax2.set(xscale="log", xlabel=f"concurrent {unit}", ylabel=lat_label, title=lat_title)
    ticks = sorted({r["concurrency"] for m in models for r in m["levels"]})
    for ax in (ax1, ax2):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(models: list[dict[str, Any]], path: Path) -> None:
    """Requests/s (with the direct runtime's as lines) and p99 latency against concurrent clients."""
    concurrency_plot(models, path, ("requests_per_s", "items_per_s", "requests/s (one item each)", "batch {batch}"),
                     ("p99_ms", "p99 latency (ms)", "p99 latency"), "clients")


PLOT = "loadtest.png"


def plot_figure(models: list[dict[str, Any]], folder: Path) -> tuple[str, str]:
    """The ``loadtest_plot`` of a classifier entry (zoo.tasks' default): ``folder/loadtest.png``."""
    plot(models, folder / PLOT)
    return PLOT, "throughput and p99 against concurrency"


def markdown_lines(m: dict[str, Any]) -> list[str]:
    """One classifier entry's section of loadtest.md."""
    on = "OpenVINO" if m.get("backend") == "openvino" else "ONNX Runtime"
    lines = [f"## {m['entry']} ({m['artifact']}, {m['precision']}, {on} {m['ort_opt_level']})", "",
             f"Inputs: {m['inputs']['n']} items ({m['inputs']['source']}).", "",
             "| concurrency | requests | req/s | p50 ms | p99 ms | mean batch | batches formed (size: count) | "
             "errors | matched | top-1 agree | outside per-sample bound | worst cosine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["levels"]:
        formed = ", ".join(f"{k}: {v}" for k, v in r["batches"].items()) or "-"
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p99_ms'])} | {_f(r['mean_batch'])} | {formed} | {r['errors']} | "
                     f"{'yes' if r['matched'] else 'NO: ' + '; '.join(r['reasons'])} | {_f4(r['top1_agreement'])} | "
                     f"{r['outside_per_sample']}/{r['checked']} | {_f6(r['worst_cosine'])} |")
    lines += ["", "| direct runtime, this process | items/s | p50 ms per call | p99 ms per call |", "|---|---|---|---|"]
    for d in m["direct"]:
        lines.append(f"| batch {d['batch']} per call ({d['calls']} calls) | {d['items_per_s']:.1f} | "
                     f"{_ms(d['p50_ms'])} | {_ms(d['p99_ms'])} |")
    best = max(m["levels"], key=lambda r: r["requests_per_s"]) if m["levels"] else None
    if best:
        lines += ["", f"Best through Triton: {best['requests_per_s']:.1f} req/s at concurrency "
                      f"{best['concurrency']} = {best['requests_per_s'] / m['direct'][0]['items_per_s']:.2f}x the "
                      "direct runtime one item per call"
                  + (f", {best['requests_per_s'] / m['direct'][-1]['items_per_s']:.2f}x it in batches of "
                     f"{m['direct'][-1]['batch']}" if len(m["direct"]) > 1 else "") + "."]
    errs = [e for r in m["levels"] for e in r["first_errors"]]
    if errs:
        lines += ["", "First errors:", *[f"- `{e}`" for e in errs[:5]]]
    return lines + [""]


def markdown(doc: dict[str, Any]) -> str:
    env = doc["env"]
    lines = ["# Triton load test", "",
             f"{env['cpu']} ({env['usable_cpus']} usable CPUs; clients, server and the direct runtime share them), "
             f"{doc['settings']['protocol'].upper()}, loopback only, {doc['settings']['duration_s']:g} s per level, "
             f"one item per request, {doc['written']}.", "",
             "Every response is compared with the direct runtime's logits for the same item (same artifact and code, "
             "one item per call), judged as verify judges the artifact (its tolerance: every response for fp32/fp16, "
             "the mean cosine for int8/bf16, and top-1 agreement); \"outside per-sample bound\" counts single "
             "responses beyond the cosine/max-abs bound (a dynamically quantised artifact gives an input other logits "
             "in another batch: its activation scales are computed over the whole batch). `label` is checked against "
             "the response's own logits. Batches are the sizes Triton formed (its statistics endpoint, difference "
             "over the level).", ""]
    for m in doc["models"]:
        lines += task_named(m.get("task")).run("loadtest_markdown", m)
    for p in doc["plots"]:
        lines += [f"![{p['caption']}]({p['file']})", ""]
    return "\n".join(lines)


def plots(results: list[dict[str, Any]], out: Path) -> list[dict[str, str]]:
    """One figure per ``loadtest_plot`` handler, of the results whose task names it (in the order they first come)."""
    groups: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for m in results:
        task = task_named(m.get("task"))
        groups.setdefault(task.handlers["loadtest_plot"], (task.name, []))[1].append(m)
    drawn = []
    for task_name, models in groups.values():
        file, caption = task_named(task_name).run("loadtest_plot", models, out)
        drawn.append({"file": file, "caption": caption})
    return drawn


def run(repo: Path, models: Sequence[str] | None, s: Settings, out: Path, threads: int | None = None) -> dict[str, Any]:
    from runtime.cpu import cpu_info

    if not s.concurrency or min(s.concurrency) < 1:
        raise LoadTestError(f"--concurrency: got {s.concurrency}, expected positive integers, e.g. 1,4,16")
    if s.duration_s <= 0:
        raise LoadTestError(f"--duration: got {s.duration_s}, expected seconds > 0")
    if s.url:
        check_loopback(s.url)
    manifest = read_manifest(repo)
    recs = [r for r in manifest["models"] if models is None or r["python"]["entry"] in models or r["model"] in models]
    if not recs:
        have = [r["python"]["entry"] for r in manifest["models"]]
        raise LoadTestError(f"--models {list(models or [])}: none is in {repo} (it serves {have})")
    results = []
    for rec in recs:  # each served model as its task load-tests it (zoo.tasks: a classifier's entry, a decoder's)
        task = task_named(rec["spec"].get("task"))
        results.append({**task.run("loadtest", repo, rec, s, threads), "task": task.name})
    info = cpu_info()
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": "edgeattn-loadtest/1", "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repository": str(repo),
           "settings": {"concurrency": s.concurrency, "duration_s": s.duration_s, "protocol": s.protocol,
                        "pool": s.pool, "url": s.url or "bundled tritonserver on 127.0.0.1"},
           "env": {"cpu": info.get("model"), "usable_cpus": info.get("usable_cpus") or info.get("logical_cpus"),
                   "int8_isa": info.get("int8_isa")},
           "models": results, "plots": plots(results, out)}
    atomic_write_json(out / "loadtest.json", doc)
    atomic_write_text(out / "loadtest.md", markdown(doc))
    return doc


def model_passed(m: dict[str, Any]) -> bool:
    """A classifier entry: no errors, the responses of every level matched the direct runtime (within the artifact's
    tolerance), every label is its logits' argmax, at least one checked response per level."""
    return all(r["errors"] == 0 and r["matched"] and r["label_mismatches"] == 0 and r["checked"] > 0
               for r in m["levels"])


def passed(doc: dict[str, Any]) -> bool:
    """Every served model's load test passed, as its task judges it (``loadtest_passed``)."""
    return all(task_named(m.get("task")).run("loadtest_passed", m) for m in doc["models"])


def main(argv: Sequence[str] | None = None) -> int:
    ap = stage_parser("loadtest", __doc__)
    ap.add_argument("--repository", type=existing_folder, default="artifacts/triton")
    ap.add_argument("--models", type=models_text, default=None,
                    help="entries or model names (default: every one in the repository)")
    ap.add_argument("--concurrency", type=int_list, default="1,4,16", help="concurrent clients per level")
    ap.add_argument("--duration", type=positive_seconds, default=10.0,
                    help="seconds per level (and per direct-runtime run)")
    ap.add_argument("--protocol", default="http", choices=["http", "grpc"])
    ap.add_argument("--pool", type=positive_int, default=64, help="distinct inputs the clients cycle through")
    ap.add_argument("--data", type=existing_path, default=None,
                    help="inputs: a text file (one a line) or a folder of images")
    ap.add_argument("--url", default=None, help="a running server on loopback (host:port; the gRPC port for a "
                    "decoder's streaming entry); default: start one")
    ap.add_argument("--new-tokens", type=positive_int, default=32,
                    help="decoder entries: new tokens per streamed request at most")
    ap.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads of the direct runtime")
    ap.add_argument("--out", default=None, help="report folder (default: <repository>-loadtest)")
    a = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    conc = a.concurrency
    repo = Path(a.repository)
    out = Path(a.out) if a.out else repo.parent / f"{repo.name}-loadtest"
    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else None
    settings = Settings(conc, a.duration, a.protocol, a.pool, a.data and str(a.data), a.url, new_tokens=a.new_tokens)
    doc = run(repo, models, settings, out, a.threads)
    ok = passed(doc)
    files = ["loadtest.md", "loadtest.json", *(p["file"] for p in doc["plots"])]
    print(f"loadtest: {'every response matched the direct runtime' if ok else 'ERRORS or MISMATCHES (see report)'}"
          f" -> {', '.join(str(out / f) for f in files)}")
    return 0 if ok else 1
