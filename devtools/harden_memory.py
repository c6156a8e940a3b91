"""``python -m devtools.harden_memory --path MODEL --backend B --requests N --out JSON``: resident memory of one runner
over N requests after warm-up (the hardening suite's memory check; a child process of its own, so other work does
not blur the figure). Linux: VmRSS from /proc/self/status."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from runtime.loader import open_runner
from runtime.ort_backend import dummy_feed

WARMUP = 500


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise OSError("no VmRSS in /proc/self/status (not Linux?)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open_runner(a.path, a.backend) as r:
        feeds = [dummy_feed(r, r.spec, seed=i) for i in range(8)]  # a few different inputs, reused
        for i in range(WARMUP):
            r.infer(feeds[i % len(feeds)])
        warm = rss_mb()
        t0 = time.perf_counter()
        samples = []
        for i in range(a.requests):
            r.infer(feeds[i % len(feeds)])
            if i % max(1, a.requests // 10) == 0:
                samples.append(round(rss_mb(), 2))
        secs = time.perf_counter() - t0
        end = rss_mb()
    growth = (end - warm) * 10_000 / max(1, a.requests)
    Path(a.out).write_text(json.dumps({"requests": a.requests, "warmup": WARMUP, "rss_warm_mb": round(warm, 2),
                                       "rss_end_mb": round(end, 2), "growth_mb_per_10k": round(growth, 3),
                                       "rss_samples_mb": samples, "seconds": round(secs, 2),
                                       "requests_per_s": round(a.requests / secs, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
