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

from runtime.loader import open_mode
from runtime.preprocess import trim_padding


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--mode", default="")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--input-name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    x = np.load(args.inputs, mmap_mode="r")
    outs = []
    t0 = time.perf_counter()
    with open_mode(args.artifact, args.backend, args.mode, args.threads) as runner:
        ran = getattr(runner, "execution_precision", None)  # what really ran (OpenVINO: not always the hint)
        provider = (getattr(runner, "providers", None) or [getattr(runner, "device", None) or args.backend])[0]
        out_name = runner.outputs[0].name
        for i in range(0, len(x), args.batch):
            xb = trim_padding(np.ascontiguousarray(x[i:i + args.batch]), args.pad_id)
            outs.append(runner.infer({args.input_name: xb})[out_name])
    np.save(args.out, np.concatenate(outs).astype(np.float32))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "precision_ran": ran,
                      "execution_provider": provider}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
