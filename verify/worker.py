"""Run one artifact on one backend over a saved input array, in its own process:
``python -m verify.worker --artifact A --backend B --inputs X.npy --out Y.npy``.

A backend that crashes (ONNX Runtime 1.32 CPU segfaults on FP16 ViT-B/16 at ORT_ENABLE_ALL) takes down only this process; the
parent records the crash and carries on. Imports the thin runtime only (no torch).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pipeline.faults import fault_point
from runtime.loader import open_mode
from runtime.preprocess import feed_batches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--mode", default="")
    ap.add_argument("--inputs", required=True, help=".npz of one (N, ...) array per model input")
    ap.add_argument("--out", required=True, help=".npz written with one (N, ...) float32 array per model output")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pad-id", type=int, default=-1, help="trim this padding id per batch (-1: none)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    with np.load(args.inputs) as z:
        x = {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    fault_point(args.artifact)
    with open_mode(args.artifact, args.backend, args.mode, args.threads) as runner:
        ran = getattr(runner, "execution_precision", None)  # what really ran (OpenVINO: not always the hint)
        provider = (getattr(runner, "providers", None) or [getattr(runner, "device", None) or args.backend])[0]
        outs: dict[str, list[np.ndarray]] = {o.name: [] for o in runner.outputs}
        for feed in feed_batches(x, args.batch, None if args.pad_id < 0 else args.pad_id):
            res = runner.infer(feed)
            for k in outs:
                outs[k].append(np.asarray(res[k], np.float32))
    np.savez(args.out, **{k: np.concatenate(v) for k, v in outs.items()})
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "precision_ran": ran,
                      "execution_provider": provider}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
