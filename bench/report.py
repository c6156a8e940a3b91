"""``python -m bench.report --artifacts DIR``: ``DIR/report.md``, the one page a user reads first.

It brings together ``<model>/train.json`` (test accuracy, dataset, training time), ``verify.json`` (pass/fail
per model/artifact/backend) and ``bench.json`` (batch-1 latency, ours vs peers, speed-ups, targets, the INT8
guard, the environment) and links the plots. Missing inputs are said to be missing, never invented.
"""
from __future__ import annotations

import math
from pathlib import Path

from bench.generation import greedy_text, mib
from bench.int8_peers import report_section as int8_peers_section
from bench.peers import EAGER_PEER
from bench.results import device_of, ok, per_device, summarize
from zoo.io import atomic_write_text, read_json
from pipeline.args import add_artifacts, stage_parser
from pipeline.artifacts import ModelRef, artifact_name
from pipeline.sources import source_of
from pipeline.stage import cli
from verify.plan import ROLE_TEXT
from zoo.tasks import task_named, task_of_rows

PEER_NAMES = {"eager": "PyTorch eager FP32", "bf16_autocast": "PyTorch bf16 autocast",
              "dynamic_int8": "PyTorch dynamic INT8 (Linear)", "compile": "torch.compile (inductor)",
              "ort_plain": "ONNX Runtime, plain export", "cuda_eager": "PyTorch CUDA eager FP32",
              "cuda_fp16_autocast": "PyTorch CUDA fp16 autocast", "cuda_compile": "torch.compile on CUDA (inductor)"}


# ---- formatting --------------------------------------------------------------------------------------------
def ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:.0f}"


def x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def rate(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def yn(v: bool | None) -> str:
    return {True: "yes", False: "**NO**", None: "-"}[v]


def what(r: dict | None) -> str:
    if not r:
        return "-"
    if r.get("peer_kind") in PEER_NAMES and r.get("backend") == "pytorch":
        return PEER_NAMES[r["peer_kind"]]
    return f"{r['artifact']} on {r['backend']} ({r['mode']})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


# ---- sections ----------------------------------------------------------------------------------------------
def models_in(bench: dict | None, verify: list | None, artifacts: Path) -> list[str]:
    names: list[str] = []
    for r in (bench or {}).get("rows", []) + (verify or []):
        if r.get("model") and r["model"] not in names:
            names.append(r["model"])
    folders = {artifact_name(n) for n in names}
    for tj in sorted(artifacts.glob("*/train.json")):  # trained but not yet verified / benched
        name = (read_json(tj, {}) or {}).get("model") or tj.parent.name
        if tj.parent.name not in folders:
            names.append(name)
            folders.add(tj.parent.name)
    for mf in sorted(artifacts.glob("*/manifest.json")):  # built (e.g. quantised) but not yet verified / benched
        if mf.parent.name not in folders:
            names.append((read_json(mf.parent / "spec.json", {}) or {}).get("name") or mf.parent.name)
            folders.add(mf.parent.name)
    return names


def section_targets(bench: dict | None) -> list[str]:
    out = ["## Targets (batch 1, measured in one interleaved run)", ""]
    if not bench:
        return out + ["No bench.json yet: run `make bench`.", ""]
    summ = bench.get("summary") or summarize(bench["rows"])
    rows, unstable = [], []
    for model, top in summ.items():
        for s in per_device(top):
            fv = s.get("fastest_verified")
            for t in s.get("targets", []):
                met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
                m, mm = t.get("measured"), t.get("measured_at_min_latency")
                if m and mm and max(m / mm, mm / m) > 1.5:
                    unstable.append(f"{model} ({t['name']}: {x(m)} at p50, {x(mm)} at min latency)")
                rows.append([model, t["name"], f">= {t['target']:.1f}x", x(m), x(mm), met,
                             what(fv), ms((fv or {}).get("p50_ms"))])
    for model, sec in (bench.get("generation") or {}).items():
        gs = sec.get("summary") or {}
        t, fv = gs.get("target") or {}, gs.get("fastest_verified")
        if not t:
            continue
        m = t.get("measured")
        mm = _at_min(sec, fv, gs.get("eager"))
        if m and mm and max(m / mm, mm / m) > 1.5:
            unstable.append(f"{model} ({t['name']}: {x(m)} at p50, {x(mm)} at min latency)")
        rows.append([model, t["name"], f">= {t['target']:.1f}x", x(m), x(mm),
                     {True: "met", False: "**not met**", None: "not measured"}[t.get("met")], what(fv),
                     f"{rate((fv or {}).get('tokens_per_s'))} tok/s"])
    out += table(["model", "target", "wanted", "measured (p50)", "at min latency", "status",
                  "fastest verified artifact", "its p50 ms (decoders: tok/s)"], rows)
    out += ["", "Speed-up = p50 of the reference / p50 of the fastest *verified* artifact (peers and unverified "
            "rows are never picked); targets are judged on p50. \"Best PyTorch peer\" = the fastest of eager FP32, "
            "bf16 autocast, dynamic INT8 and torch.compile at batch 1. \"At min latency\" is the same ratio from the "
            "fastest single call of each: when the two differ a lot, load from other processes moved the medians."]
    if unstable:
        out += ["", "**Load-sensitive ratios (p50 and min-latency ratios differ by more than 1.5x)**: "
                + "; ".join(unstable) + ". Re-run `make bench` on a quiet machine before quoting these."]
    return out + [""]


def section_models(artifacts: Path, names: list[str]) -> list[str]:
    out = ["## Models and training", ""]
    rows = []
    for m in names:
        tj = read_json(ModelRef.resolve(m, artifacts).file("train.json"), None)  # hf:<dir> too
        if tj:
            ds = tj.get("dataset") or {}
            rows.append([m, str(ds.get("name", "?")), pct(tj.get("test_accuracy")), str(tj.get("n_test", "-")),
                         pct(tj.get("val_accuracy")), f"{tj.get('train_seconds', 0) / 60:.1f} min"])
        elif source_of(m).policy.no_training:
            rows.append([m, source_of(m).policy.no_training, "- (parity only)", "-", "-", "-"])
        else:
            rows.append([m, "?", "- (no train.json)", "-", "-", "-"])
    return out + table(["model", "dataset", "test accuracy %", "n test", "val accuracy %", "training time"], rows) + [""]


def in_generation(row: dict) -> bool:
    """Whether a verify row belongs in the text generation section (its task's ``report_section``, zoo.tasks)."""
    return task_named(row.get("task")).report_section == "generation"


def section_verify(verify: list | None) -> list[str]:
    out = ["## Verification against PyTorch (verify.json)", ""]
    if not verify:
        return out + ["No verify.json yet: run `make verify`.", ""]
    rows = []
    for r in (r for r in verify if not in_generation(r)):  # decoders: in the text generation section
        delta = r.get("accuracy_delta")
        prec = r.get("precision", "-") + (f" ({r['precision_asked']} asked)" if r.get("precision_asked") else "")
        verdict = yn(bool(r.get("passed"))) if r.get("passed") or r.get("gating", True) else "no (advisory)"
        rows.append([r.get("model", "?"), r.get("artifact", "-"), r.get("backend", "-"),
                     str(r.get("mode", "-")).split(" ")[0], ROLE_TEXT.get(r.get("role"), "-"), prec,
                     pct(r.get("accuracy")), "-" if delta is None else f"{delta:+.2f}",
                     pct(r.get("top1_agreement")), "-" if r.get("cosine_mean") is None else f"{r['cosine_mean']:.4f}",
                     "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}", verdict])
    out += table(["model", "artifact", "backend", "mode", "judged as", "precision", "accuracy %", "delta pts",
                  "top-1 agree %", "cosine mean", "max abs diff", "passed"], rows)
    gating, fails, adv = gating_split(verify)
    if any(in_generation(r) for r in verify):
        out += ["", "Decoders (greedy generation, token for token): see \"Text generation\" below."]
    out += ["", f"{len(gating) - len(fails)}/{len(gating)} gating rows passed. Details: [verify.md](verify.md). "
            "int8.qdq.onnx (the TensorRT graph) is judged by its float simulation (Q/DQ as float ops, the same on "
            "every CPU); its runs on CPU integer kernels are advisory rows for this machine only."]
    for r in fails:
        out.append(f"- FAILED {r.get('model')} {r.get('artifact')} on {r.get('backend')}: "
                   f"{'; '.join(str(s) for s in (r.get('reasons') or [r.get('error')]))[:300]}")
    for r in adv:
        out.append(f"- advisory, this CPU ({r.get('cpu_isa')}): {r.get('model')} {r.get('artifact')} on "
                   f"{r.get('backend')} integer kernels: {'; '.join(str(s) for s in (r.get('reasons') or []))[:300]}")
    return out + [""]


def int8_section(artifacts: Path, model: str) -> dict:
    """The model's manifest.json ``int8`` section ({} before `make quantize`)."""
    return ModelRef.resolve(model, artifacts).manifest().get("int8") or {}


def gating_split(verify: list) -> tuple[list, list, list]:
    """(gating rows, failed gating rows, advisory rows that missed on this CPU)."""
    gating = [r for r in verify if r.get("gating", True)]
    return (gating, [r for r in gating if not r.get("passed")],
            [r for r in verify if not r.get("gating", True) and not r.get("passed")])


def section_quantize(artifacts: Path, names: list[str]) -> list[str]:
    """What each model's INT8 budget search and CPU choice decided (manifest.json), misses and fallbacks included."""
    out = ["## Quantisation (manifest.json)", ""]
    rows, notes = [], []
    for m in names:
        i8 = int8_section(artifacts, m)
        if not i8:
            continue
        q, c = i8.get("qdq") or {}, i8.get("cpu") or {}
        v = q.get("val") or {}
        cv = c.get("val") or {}
        rows.append([m, "yes" if q.get("passed") else "**NO**", f"{len(q.get('excluded_nodes') or [])}",
                     "-" if v.get("accuracy_delta") is None else f"{v['accuracy_delta']:+.2f}",
                     "-" if v.get("cosine_mean") is None else f"{v['cosine_mean']:.4f}",
                     str(c.get("cpu_isa", "-")), c.get("file") and f"{c.get('method')} ({c.get('backend') or 'onnxruntime'})" or "fp32 kept",
                     "-" if c.get("latency_ms") is None else f"{c['latency_ms']:.3f} / {c.get('fp32_latency_ms') or 0:.3f}",
                     "-" if cv.get("cosine_mean") is None else f"{cv['cosine_mean']:.4f}"])
        if q.get("miss"):
            notes.append(f"- **{m} int8.qdq.onnx missed its budget**: {q['miss']}. Fallback: {q.get('fallback')}.")
        if not c.get("file"):
            notes.append(f"- {m}: no int8.cpu.onnx on this CPU ({c.get('cpu_isa')}): {c.get('why')}.")
        c4 = (i8.get("cpu_forms") or {}).get("int4.cpu")  # decoders: the 4-bit weight-only CPU file, when written
        if c4 and c4.get("file"):
            v4 = c4.get("val") or {}
            notes.append(f"- {m}: int4.cpu.onnx = {c4.get('method')} ({c4.get('latency_ms', 0):.3f} ms per token vs fp32 "
                         f"{c4.get('fp32_latency_ms') or 0:.3f}; agreement {v4.get('top1_agreement', float('nan')):.4f}, "
                         f"perplexity {v4.get('perplexity_delta_pct', float('nan')):+.3f} %).")
    if not rows:
        return out + ["No INT8 artifacts yet: run `make quantize`.", ""]
    out += table(["model", "int8.qdq within budget", "nodes kept float", "accuracy delta pts (val, simulated)",
                  "cosine mean (simulated)", "CPU class", "int8.cpu.onnx form", "int8 / fp32 ms", "CPU cosine mean"],
                 rows)
    return out + [""] + notes + ([""] if notes else [])


def summary_lines(artifacts: Path) -> list[str]:
    """A few lines for the end of `make demo`: what passed, what missed and where to read more."""
    verify = read_json(artifacts / "verify.json", None) or []
    bench = read_json(artifacts / "bench.json", None) or {}
    names = models_in(bench, verify, artifacts)
    lines = []
    gating, fails, _ = gating_split(verify)
    lines.append(f"verify: {len(gating) - len(fails)}/{len(gating)} gating rows passed"
                 + "".join(f"\n  FAILED {r.get('model')} {r.get('artifact')} on {r.get('backend')}: "
                           f"{'; '.join(str(s) for s in (r.get('reasons') or [r.get('error')]))[:200]}" for r in fails))
    for m in names:
        i8 = int8_section(artifacts, m)
        q = i8.get("qdq") or {}
        if q.get("miss"):
            lines.append(f"quantize {m}: int8.qdq.onnx MISSED its budget ({q['miss']}); {q.get('fallback')}")
        if i8 and not (i8.get("cpu") or {}).get("file"):
            lines.append(f"quantize {m}: no int8.cpu.onnx on this CPU: {(i8.get('cpu') or {}).get('why')}")
    for m, sec in (bench.get("generation") or {}).items():
        t, fv = ((sec.get("summary") or {}).get(k) or {} for k in ("target", "fastest_verified"))
        if sec.get("error"):
            lines.append(f"bench {m}: generation FAILED: {sec['error'][:200]}")
        elif t:
            lines.append(f"bench {m}: fastest verified decoder {what(fv)} {rate(fv.get('tokens_per_s'))} tok/s at "
                         f"batch 1; {t['name']} {x(t.get('measured'))} (target {t['target']:.1f}x)")
    summ = bench.get("summary") or {}
    for m, top in summ.items():
        for s in per_device(top):
            fv = s.get("fastest_verified") or {}
            ts = ", ".join(f"{t['name']} {x(t.get('measured'))} (target {t['target']:.1f}x)" for t in s.get("targets", []))
            if fv:
                lines.append(f"bench {m}: fastest verified {what(fv)} {ms(fv.get('p50_ms'))} ms at batch 1; {ts}")
    return lines


def section_latency(bench: dict | None) -> list[str]:
    out = ["## Latency at batch 1: ours vs peers (bench.json)", ""]
    if not bench:
        return out + ["No bench.json yet.", ""]
    rows_all = bench["rows"]
    for model in dict.fromkeys(r["model"] for r in rows_all):
        at = [r for r in rows_all if r["model"] == model and r["batch"] == 1]
        if not at:
            continue
        eager = {dev: next((r for r in at if r.get("peer_kind") == kind and ok(r)), None)
                 for dev, kind in EAGER_PEER.items()}  # speed-ups within a device: CPU vs CPU eager, GPU vs CUDA
        seq = next((r.get("seq_len") for r in at if r.get("seq_len")), None)
        out += [f"### {model}" + (f" (sequence length {seq})" if seq else ""), ""]
        how = next((r.get("seq_len_source") for r in at if r.get("seq_len_source")), None)
        if seq and how:
            out += [f"Sequence length: {how}.", ""]
        rows = []
        for r in sorted(at, key=lambda r: (not ok(r), r.get("p50_ms") or 0)):
            kind = "peer" if r["is_peer"] else "ours"
            if not ok(r):
                rows.append([kind, what(r), r["precision"], "failed", "-", "-", "-", "-", "-",
                             yn(r.get("verified")) if not r["is_peer"] else "(ref)"])
                continue
            ref = eager[device_of(r["backend"], r["mode"], r.get("peer_kind"))]
            sp = ref["p50_ms"] / r["p50_ms"] if ref else None
            accv = r.get("accuracy")
            acc = "-" if accv is None else (pct(accv) + (" agr" if r.get("accuracy_metric") == "top1_agreement" else ""))
            extra = f" (compile {r['compile_seconds']:.0f} s)" if r.get("compile_seconds") else ""
            rows.append([kind, what(r) + extra, r["precision"], ms(r["p50_ms"]), ms(r["p90_ms"]), ms(r["p99_ms"]),
                         rate(r["throughput_per_s"]), x(sp), acc, "(ref)" if r["is_peer"] else yn(r.get("verified"))])
        out += table(["", "how", "precision", "p50 ms", "p90 ms", "p99 ms", "samples/s", "vs eager", "accuracy %",
                      "verified"], rows)
        failed = [r for r in at if not ok(r)]
        for r in failed:
            out.append(f"- failed: {what(r)}: {str(r.get('error'))[:240]}")
        sm_all = (bench.get("summary") or {}).get(model) or {}
        for sm in per_device(sm_all):
            dev, peer = ("GPU", "CUDA PyTorch") if sm.get("device") == "gpu" else ("CPU", "PyTorch")
            fv, bp = sm.get("fastest_verified"), sm.get("best_torch_peer")
            if fv:
                out += ["", f"**{dev} fastest verified: {what(fv)}, {ms(fv['p50_ms'])} ms** = "
                            f"{x(sm.get('speedup_vs_eager'))} vs {peer} eager FP32 and "
                            f"{x(sm.get('speedup_vs_best_torch_peer'))} vs the best {peer} peer "
                            f"({what(bp)}, {ms((bp or {}).get('p50_ms'))} ms)."]
            else:
                fa = sm.get("fastest_any_ours")
                out += ["", f"**{dev}: no verified artifact was timed for this model**" + (
                    f" (fastest unverified: {what(fa)}, {ms(fa['p50_ms'])} ms; run `make verify`)." if fa else ".")]
        sources = sorted({r["accuracy_source"] for r in at if r.get("accuracy_source")})
        if sources:
            out += ["", "Accuracy sources: " + "; ".join(sources) + "."]
        out.append("")
    return out


def section_batches(bench: dict | None) -> list[str]:
    if not bench:
        return []
    out = ["## Larger batches (fastest verified artifact vs PyTorch eager FP32)", ""]
    rows = []
    for model in dict.fromkeys(r["model"] for r in bench["rows"]):
        mine = [r for r in bench["rows"] if r["model"] == model and ok(r)]
        for b in sorted({r["batch"] for r in mine}):
            at = [r for r in mine if r["batch"] == b]
            eager = next((r for r in at if r.get("peer_kind") == "eager"), None)
            ver = [r for r in at if not r["is_peer"] and r.get("verified") is True]
            best = min(ver, key=lambda r: r["p50_ms"]) if ver else None
            rows.append([model, str(b), what(best), ms((best or {}).get("p50_ms")),
                         rate((best or {}).get("throughput_per_s")), ms((eager or {}).get("p50_ms")),
                         rate((eager or {}).get("throughput_per_s")),
                         x(eager["p50_ms"] / best["p50_ms"] if (eager and best) else None)])
    return out + table(["model", "batch", "fastest verified", "p50 ms", "samples/s", "eager p50 ms", "eager samples/s",
                        "speed-up"], rows) + [""]


def _at_min(sec: dict, a: dict | None, b: dict | None) -> float | None:
    """The decode speed-up of ``a`` over ``b`` (summary briefs) from the fastest single calls."""
    by_key = {c.get("key"): c for c in sec.get("candidates", [])}
    ra, rb = (((by_key.get((c or {}).get("key")) or {}).get("decode") or {}).get("1", {}).get("tokens_per_s_at_min")
              for c in (a, b))
    return ra / rb if ra and rb else None


def section_generation(bench: dict | None, verify: list | None, artifacts: Path) -> list[str]:
    """Decoders with a KV cache: training (perplexity), verify (greedy tokens vs PyTorch), speed (bench.generation)."""
    gen = (bench or {}).get("generation") or {}
    vrows = [r for r in verify or [] if in_generation(r)]
    names = list(dict.fromkeys([*gen, *(r["model"] for r in vrows)]))
    if not names:
        return []
    out = ["## Text generation (decoders with a KV cache)", ""]
    for m in names:
        out += [f"### {m}", ""]
        tj = read_json(ModelRef.resolve(m, artifacts).file("train.json"), None) or {}
        if tj.get("val_perplexity") is not None:
            c = tj.get("config") or {}
            out += [f"Trained here: {c.get('n_layer')} layers, width {c.get('n_embd')}, {c.get('n_head')} heads, "
                    f"vocabulary {c.get('vocab_size')}, {c.get('parameters', 0) / 1e6:.1f}M parameters; validation "
                    f"perplexity **{tj['val_perplexity']:.1f}** (unigram floor {tj.get('unigram_perplexity', 0):.1f}, "
                    f"{'beaten' if tj.get('beats_unigram_floor') else '**not beaten**'}) after {tj.get('steps')} steps "
                    f"({tj.get('stopped_by')}, {tj.get('total_seconds', 0) / 60:.1f} min, budget "
                    f"{tj.get('budget_seconds', 0):.0f} s).", ""]
        mine = [r for r in vrows if r["model"] == m]
        if mine:  # verify.md's tables for the model, without its heading
            out += task_of_rows(mine).run("verify_markdown", m, mine)[2:]
        sec = gen.get(m)
        if not sec:
            out += ["No generation bench yet: run `make bench`.", ""]
            continue
        if sec.get("error"):
            out += [f"Bench failed: {sec['error']}", ""]
            continue
        pts = sec.get("points") or {}
        prompts = sorted({p["prompt"] for b in pts.values() for p in b if p["new"] == 1 and p["batch"] == 1})
        batches = sorted(int(b) for b in pts)
        dec = next((p for b in pts.values() for p in b if p["new"] > 1), {})
        rows = []
        for c in sorted(sec.get("candidates", []), key=lambda c: -(((c.get("decode") or {}).get("1") or {})
                                                                    .get("tokens_per_s") or 0)):
            name = gen_row_name(c)
            if c.get("skipped") or (c.get("error") and not c.get("decode")):
                why = f"skipped: {c['skipped']}" if c.get("skipped") else f"failed: {c['error']}"
                rows.append([name, why[:160].replace("|", "/")] + ["-"] * (len(prompts) + 2 * len(batches) + 5))
                continue
            d = c.get("decode") or {}
            rows.append([name, c["precision"]] + [ms((c.get("ttft_ms") or {}).get(str(p))) for p in prompts]
                        + [rate((d.get(str(b)) or {}).get("tokens_per_s")) for b in batches]
                        + [ms((d.get(str(b)) or {}).get("ms_per_step")) for b in batches]
                        + [f"{c.get('kv_bytes_per_token'):,}", mib(c.get("model_bytes")), mib(c.get("peak_rss_bytes")),
                           greedy_text(c), "(ref)" if c["is_peer"] else yn(c.get("verified"))])
        out += [f"Speed ({sec.get('threads')} threads; TTFT = one generate call for 1 new token at batch 1; decode "
                f"tokens/s = batch x (N-1) / (t_N - t_1) with N = {dec.get('new', '?')} new tokens after a "
                f"{dec.get('prompt', '?')}-token prompt, p50 times, all candidates interleaved; KV bytes per token = "
                f"2 x {sec.get('layers')} layers x {sec.get('cache_shape', ['', '?'])[1]} heads x "
                f"{sec.get('cache_shape', ['', '', '', '?'])[3]} head dim x bytes per value):", ""]
        out += table(["how", "precision"] + [f"TTFT {p} ms" for p in prompts] + [f"tok/s b{b}" for b in batches]
                     + [f"ms/step b{b}" for b in batches]
                     + ["KV bytes/token", "files MiB", "peak RSS MiB", "greedy tokens", "verified"], rows)
        out += peer_notes(sec)
        gs = sec.get("summary") or {}
        fv, t = gs.get("fastest_verified"), gs.get("target") or {}
        if fv:
            out += ["", f"**Fastest verified: {what(fv)}, {rate(fv.get('tokens_per_s'))} tokens/s at batch 1 = "
                        f"{x(gs.get('speedup_vs_eager'))} PyTorch eager generate** (target {t.get('target', 2):.1f}x: "
                        f"{'met' if t.get('met') else 'not met'}) and {x(gs.get('speedup_vs_best_torch_peer'))} the "
                        f"best PyTorch peer ({what(gs.get('best_torch_peer'))})."]
        else:
            out += ["", "**No verified decoder was timed** (run `make verify`)."]
        out.append("")
    return out


def gen_row_name(c: dict) -> str:
    """A generation row's name: the PyTorch peer (and its compile time), the converted peer, or our artifact."""
    if c.get("backend") == "pytorch":
        return f"PyTorch {c['mode']}" + (f" (compile {c['compile_seconds']:.0f} s)" if c.get("compile_seconds") else "")
    return f"{c['backend']} {c['mode']}" if c["is_peer"] else f"{c['artifact']} on {c['backend']}"


def peer_notes(sec: dict) -> list[str]:
    """Below the generation table: what the greedy column compares, the converted peers' conversion (apart from the
    timing) and our decode rates over the peers'."""
    g = sec.get("greedy_reference") or {}
    out = ["", f"Greedy tokens: every candidate's {g.get('new', '?')} new tokens on {g.get('rows', '?')} prompts of "
               f"{g.get('prompt', '?')} tokens, compared with {g.get('key') or 'no reference'}'s; a difference gives "
               "its first position. Peak RSS: the candidate's own worker process (VmHWM). Files: the model's weights "
               "and graph files."]
    conv = [c for c in sec.get("candidates", []) if (c.get("conversion") or {}).get("convert_seconds") is not None
            and not c.get("skipped")]
    if conv:
        out += ["", "Peers converted from the same Hugging Face folder (once; reused while the folder and the "
                    "converter are unchanged): " + "; ".join(
                        f"{gen_row_name(c)} {c['conversion']['convert_seconds']:.1f} s"
                        + (" (reused)" if c["conversion"].get("reused") else "") for c in conv) + "."]
    vs = ((sec.get("summary") or {}).get("versus_peers") or {})
    for b, v in sorted(vs.items(), key=lambda kv: int(kv[0])):
        if v.get("fastest_peer"):
            out += ["", f"Batch {b}: fastest verified ({v.get('fastest_verified') or '-'}) "
                        f"{x(v.get('fastest_verified_over_fastest_peer'))} the fastest peer ({v['fastest_peer']}); "
                        f"our verified fp32 {x(v.get('fp32_over_ctranslate2_fp32'))} CTranslate2 fp32."]
    return out


def section_engine_timing(bench: dict | None) -> list[str]:
    """The GPU engine timing of bench.json (bench.engine_timing), when a GPU run measured it."""
    et = (bench or {}).get("engine_timing")
    if not et:
        return []
    out = ["## TensorRT engines on the GPU (bench.engine_timing)", "",
           "End to end = numpy in, numpy out; compute / H2D / D2H = CUDA events on the runner's stream; samples/s with "
           "1, 2, 4 threads sharing one runner (a context and stream each); trtexec / tensorrt_rtx on the same engine "
           "and shapes where installed. GPU: " + _gpu_text(et.get("env") or {}), ""]
    rows = []
    for e in et.get("engines", []):
        name = Path(e["engine"]).name
        if e.get("error"):
            rows.append([name, "-", "-", f"failed: {e['error'][:120]}", "-", "-", "-", "-", "-", "-"])
        for p in e.get("points", []):
            if p.get("error"):
                rows.append([name, str(p["batch"]), "on" if p["cuda_graph"] else "off",
                             f"failed: {p['error'][:120]}"] + ["-"] * 6)
                continue
            g, c = p.get("gpu", {}), p.get("cli") or {}
            tp = " / ".join(rate(t.get("samples_per_s")) for t in p.get("throughput", []))
            cli = ("-" if not c else f"failed: {c['error'][:60]}" if c.get("error") else
                   f"{ms((c.get('compute') or {}).get('median_ms'))} compute, {ms((c.get('latency') or {}).get('median_ms'))} latency")
            rows.append([name, str(p["batch"]), "on" if p["cuda_graph"] else "off", ms(p["e2e"]["p50_ms"]),
                         ms(p["e2e"]["p99_ms"]),
                         ms(g.get("compute", {}).get("p50_ms")), ms(g.get("h2d", {}).get("p50_ms")),
                         ms(g.get("d2h", {}).get("p50_ms")), tp, cli])
    out += table(["engine", "batch", "CUDA graph", "e2e p50 ms", "e2e p99 ms", "compute p50 ms", "H2D p50 ms",
                  "D2H p50 ms", "samples/s (1/2/4 threads)", "trtexec median ms"], rows)
    return out + [""]


def _gpu_text(env: dict) -> str:
    g = ((env.get("gpu") or {}).get("gpus") or [{}])[0]
    parts = [str(g.get(k)) for k in ("name",) if g.get(k)]
    parts += [f"{k.replace('_', ' ')} {g[k]}" for k in ("sm_clock_mhz", "max_sm_clock_mhz", "power_limit_w")
              if g.get(k) is not None]
    jet = env.get("jetson") or {}
    if jet.get("nvpmodel"):
        parts.append(f"nvpmodel {jet['nvpmodel']}")
    return ", ".join(parts) or "not recorded"


def section_guard(bench: dict | None) -> list[str]:
    if not bench:
        return []
    out = ["## INT8 guard", ""]
    flags = bench.get("guard") or []
    if not flags:
        return out + ["No INT8 artifact was slower (p50, by more than 5 %) than its model's FP32 artifact on the same "
                      "backend and batch.", ""]
    out += [f"{len(flags)} INT8 row(s) slower (p50, by more than 5 % timing noise) than the same model's FP32 artifact "
            "on the same backend and batch:", ""]
    out += table(["model", "backend", "batch", "INT8 artifact", "p50 ms", "FP32 artifact", "p50 ms", "slower by"],
                 [[g["model"], g["backend"], str(g["batch"]), f"{g['int8_artifact']} ({g['int8_mode']})",
                   ms(g["int8_p50_ms"]), f"{g['fp32_artifact']} ({g['fp32_mode']})", ms(g["fp32_p50_ms"]),
                   x(g["slowdown"])] for g in flags])
    return out + [""]


def section_plots(artifacts: Path, names: list[str]) -> list[str]:
    out = ["## Plots", ""]
    for m in names:
        f = artifact_name(m)
        links = [f"[{kind}](plots/{f}_{kind}.png)" for kind in ("latency", "pareto", "generation", "generation_size")
                 if (artifacts / "plots" / f"{f}_{kind}.png").is_file()]
        if links:
            out.append(f"- {m}: " + ", ".join(links))
    return out + ([""] if len(out) > 2 else ["No plots yet (`make bench` writes them).", ""])


def section_env(bench: dict | None) -> list[str]:
    if not bench:
        return []
    env = bench.get("env") or {}
    cpu = env.get("cpu") or {}
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "-"
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libs") or {}).items() if v)
    t = env.get("timing") or {}
    load = env.get("loadavg_start")
    runs = sorted({r.get("run") for r in bench.get("rows", []) if r.get("run")})
    out = ["## Environment and method", "",
           f"- CPU: {cpu.get('model')} ({cpu.get('usable_cpus')} usable CPUs, {cpu.get('physical_cores')} cores); "
           f"ISA: {isa}",
           f"- Threads: {env.get('threads')} for every backend (torch.set_num_threads, ORT intra-op, OpenVINO "
           "INFERENCE_NUM_THREADS); OpenVINO with the LATENCY performance hint",
           f"- Libraries: {libs}; Python {env.get('python')}",
           f"- GPU: {env.get('gpu') or 'none'}" + (f"; Jetson: {env['jetson']}" if env.get("jetson") else ""),
           f"- Run: {env.get('time_utc')}, {env.get('bench_seconds')} s, load average at start "
           f"{'/'.join(f'{v:.1f}' for v in load) if load else '-'} (a shared machine: absolute times move between "
           "runs; compare ratios within one run)",
           f"- Timing: all candidates of a model interleaved round-robin at each batch size ({t.get('rounds')} rounds, "
           f"{t.get('budget_s')} s per candidate per batch, at least {t.get('min_iters_batch1')} timed calls at batch 1 "
           f"and {t.get('min_iters')} at other batches, warm-up excluded); percentiles with numpy's linear method; samples/s = batch / p50"
           + ("; **--quick run: few iterations, numbers are indicative only**" if t.get("quick") else ""),
           f"- Worker processes: one per artifact/backend, one for the PyTorch peers; environment {env.get('worker_env')}",
           ""]
    if len(runs) > 1:
        out.insert(-1, f"- **Rows come from {len(runs)} bench runs** ({', '.join(runs)}): compare ratios only within a "
                       "model (each model's rows come from one run); the environment above is the latest run's")
    return out


def build_report(artifacts: Path) -> str:
    bench = read_json(artifacts / "bench.json", None)
    verify = read_json(artifacts / "verify.json", None)
    names = models_in(bench, verify, artifacts)
    head = ["# edgeattn report", "",
            "PyTorch attention models exported to ONNX, optimised (FP16, INT8), verified against PyTorch, and timed "
            "side by side with PyTorch and plain ONNX Runtime. Sources: `<model>/train.json`, `verify.json`, "
            "`bench.json` in this folder.", ""]
    parts = (head + section_targets(bench) + section_models(artifacts, names) + section_latency(bench)
             + section_batches(bench) + section_engine_timing(bench) + section_guard(bench) + section_quantize(artifacts, names)
             + int8_peers_section(artifacts, names)
             + section_verify(verify) + section_generation(bench, verify, artifacts) + section_plots(artifacts, names)
             + section_env(bench))
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("report", __doc__)
    add_artifacts(ap, must_exist=True)
    ap.add_argument("--out", type=Path, default=None, help="default: <artifacts>/report.md")
    ap.add_argument("--summary", action="store_true", help="also print a short summary (the end of `make demo`)")
    args = ap.parse_args(argv)
    out = args.out or args.artifacts / "report.md"
    atomic_write_text(out, build_report(args.artifacts))
    print(f"report -> {out}")
    if args.summary:
        print("\n".join(["", "== summary =="] + summary_lines(args.artifacts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli("report", main))
