"""PNG plots from a bench.json document (matplotlib, Agg backend, no display needed).

- ``<folder>_latency.png``: p50 latency (and throughput) vs batch size, one line per candidate; peers dashed.
- ``<folder>_generation.png``: a decoder's decode tokens/s vs batch size (bench.generation), peers dashed.
- ``<folder>_generation_size.png``: a decoder's decode tokens/s at batch 1 (filled) and 8 (hollow) against the size of
  its model files, ours and the peers (PyTorch, CTranslate2, ONNX Runtime GenAI): speed per byte at a glance.
- ``<folder>_pareto.png``: accuracy (or top-1 agreement with PyTorch for parity-only models) vs p50 latency at
  batch 1, one numbered point per candidate (legend: ^ peer, o verified artifact, X not verified); the Pareto
  front (no other point both at most as slow and at least as accurate) is drawn and ringed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.results import ok
from pipeline.artifacts import artifact_name
from zoo.io import atomic_write


def _label(r: dict) -> str:
    if r["backend"] == "pytorch":
        return f"PyTorch {r['mode']}"
    lab = f"{r['backend']} {r['artifact']} ({r['mode']})"
    return ("peer " + lab) if r["is_peer"] else lab


def folder(model: str) -> str:
    return artifact_name(model)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of non-dominated points (lower latency x, higher accuracy y), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _plain_ticks(axis, dense: bool = False) -> None:
    """Log axes with 0.3 / 12 / 1,000 labels instead of 3x10^-1; ``dense``: ticks at 1, 2, 5 per decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if dense:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    axis.set_minor_formatter(NullFormatter())


def _batch_axes(ax, batches: list[int], ylabel: str) -> None:
    """Batch size on a log2 x axis with a tick per batch timed, ``ylabel`` on a log y axis, a grid."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches)
    _plain_ticks(ax.xaxis)
    _plain_ticks(ax.yaxis, dense=True)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, path: Path, **kw) -> Path:
    """Atomic PNG write (temp file + rename)."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, **kw))
    finally:
        plt.close(fig)
    return path


def latency_plot(rows: list[dict], model: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["model"] == model and ok(r)]
    if not mine:
        return None
    series: dict[str, list[dict]] = {}
    for r in mine:
        series.setdefault(_label(r), []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, (lab, rs) in enumerate(sorted(series.items())):
        rs = sorted(rs, key=lambda r: r["batch"])
        style = "--" if rs[0]["is_peer"] else "-"
        marker = "^" if rs[0]["is_peer"] else ("o" if rs[0].get("verified") else "x")
        bs = [r["batch"] for r in rs]
        c = colors[i % len(colors)]
        ax1.plot(bs, [r["p50_ms"] for r in rs], style, marker=marker, color=c, label=lab)
        ax2.plot(bs, [r["throughput_per_s"] for r in rs], style, marker=marker, color=c, label=lab)
    batches = sorted({r["batch"] for r in mine})
    for ax, yl in ((ax1, "p50 latency (ms)"), (ax2, "throughput (samples/s)")):
        _batch_axes(ax, batches, yl)
    seq = next((r["seq_len"] for r in mine if r.get("seq_len")), None)
    thr = next((r.get("threads") for r in mine if r.get("threads")), None)
    fig.suptitle(f"{model}: latency vs batch ({thr} threads" + (f", sequence {seq}" if seq else "") +
                 "); dashed = peers, o = verified, x = not verified")
    ax2.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def pareto_plot(rows: list[dict], model: str, path: Path, batch: int = 1) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["model"] == model and r["batch"] == batch and ok(r) and r.get("accuracy") is not None]
    if not pts:
        return None
    pts.sort(key=lambda r: r["p50_ms"])
    metric = "top1_agreement" if all(r.get("accuracy_metric") == "top1_agreement" for r in pts) else "accuracy"
    xy = [(r["p50_ms"], 100 * r["accuracy"]) for r in pts]
    front = set(pareto_front(xy))
    fig, ax = plt.subplots(figsize=(12, 6))
    colors = plt.get_cmap("tab20").colors
    for i, (r, (x, y)) in enumerate(zip(pts, xy)):
        marker = "^" if r["is_peer"] else ("o" if r.get("verified") else "X")
        tag = "peer" if r["is_peer"] else ("verified" if r.get("verified") else "NOT verified")
        ax.scatter([x], [y], s=70, marker=marker, color=colors[i % len(colors)], edgecolors="black", linewidths=0.4,
                   label=f"{i + 1}. {_label(r).removeprefix('peer ')} [{tag}]" + (" (Pareto)" if i in front else ""),
                   zorder=3)
        ax.annotate(str(i + 1), (x, y), fontsize=8, xytext=(5, 4), textcoords="offset points")
    order = sorted(front, key=lambda i: xy[i][0])
    fx, fy = [xy[i][0] for i in order], [xy[i][1] for i in order]
    ax.step(fx, fy, where="post", color="tab:blue", alpha=0.5, zorder=2)
    ax.scatter(fx, fy, s=260, facecolors="none", edgecolors="tab:blue", zorder=2)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, dense=True)
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
    ax.set_ylabel("top-1 agreement with PyTorch fp32 (%)" if metric == "top1_agreement" else "test accuracy (%)")
    ax.set_title(f"{model}: accuracy vs latency at batch {batch}; ringed + line = Pareto front")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def generation_plot(sec: dict[str, Any], path: Path) -> Path | None:
    """A decoder's decode tokens/s vs batch size (bench.generation), one line per candidate; peers dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(c, sorted((int(b), d["tokens_per_s"]) for b, d in (c.get("decode") or {}).items()
                        if d.get("tokens_per_s"))) for c in sec.get("candidates", [])]
    lines = [(c, pts) for c, pts in lines if pts]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab10").colors
    for i, (c, pts) in enumerate(lines):
        marker = "^" if c["is_peer"] else ("o" if c.get("verified") else "x")
        ax.plot([b for b, _ in pts], [v for _, v in pts], "--" if c["is_peer"] else "-", marker=marker,
                color=colors[i % len(colors)], label=_gen_label(c))
    _batch_axes(ax, sorted({b for _, pts in lines for b, _ in pts}), "decode tokens/s (all rows of the batch)")
    ax.set_title(f"{sec['model']}: greedy decode tokens/s vs batch ({sec.get('threads')} threads); "
                 "dashed = peers, o = verified, x = not verified", fontsize=9)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def _gen_label(c: dict) -> str:
    if c.get("backend") == "pytorch":
        return f"PyTorch {c['mode']}"
    return f"{c['backend']} {c['mode']}" if c["is_peer"] else f"{c['backend']} {c['artifact']} ({c['mode']})"


def generation_size_plot(sec: dict[str, Any], path: Path, batches: tuple[int, ...] = (1, 8)) -> Path | None:
    """Decode tokens/s against model file size (MiB), one colour per candidate: filled = batch 1, hollow = batch 8;
    peers are triangles, ours circles (x where not verified)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = {c["key"]: {b: ((c.get("decode") or {}).get(str(b)) or {}).get("tokens_per_s") for b in batches}
            for c in sec.get("candidates", [])}
    pts = [c for c in sec.get("candidates", []) if c.get("model_bytes") and any(rate[c["key"]].values())]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab10").colors
    for i, c in enumerate(pts):
        size, color = c["model_bytes"] / 2**20, colors[i % len(colors)]
        marker = "^" if c["is_peer"] else ("o" if c.get("verified") else "X")
        for j, b in enumerate(batches):
            if rate[c["key"]][b]:
                ax.scatter([size], [rate[c["key"]][b]], s=70, marker=marker, edgecolors=color, linewidths=1.2,
                           facecolors=color if j == 0 else "none", label=_gen_label(c) if j == 0 else None, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis, dense=True)
    _plain_ticks(ax.yaxis, dense=True)
    ax.set_xlabel("model files (MiB, log scale)")
    ax.set_ylabel("greedy decode tokens/s (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{sec['model']}: decode tokens/s vs model size ({sec.get('threads')} threads); filled = batch "
                 f"{batches[0]}, hollow = batch {batches[-1]}; ^ peer, o verified, X not verified", fontsize=9)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def write_plots(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    rows = doc["rows"]
    paths = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for fn, suffix in ((latency_plot, "latency"), (pareto_plot, "pareto")):
            p = fn(rows, model, Path(out_dir) / f"{folder(model)}_{suffix}.png")
            if p:
                paths.append(p)
    for model, sec in (doc.get("generation") or {}).items():
        for fn, suffix in ((generation_plot, "generation"), (generation_size_plot, "generation_size")):
            p = fn(sec, Path(out_dir) / f"{folder(model)}_{suffix}.png")
            if p:
                paths.append(p)
    return paths
