"""``edgeattn <stage> [options]``: one command line for every stage (also ``python -m edgeattn``).

  edgeattn train     --models text_transformer              train our families (progress bars, seeded)
  edgeattn export    --models mymodels:tiny_text            PyTorch -> fp32.onnx (--weights w.safetensors)
  edgeattn simplify  --models vit                           -> fp32.sim.onnx (smallest graph that matches)
  edgeattn quantize  --models vit --max-drop 0.5            -> fp16.onnx, int8.qdq.onnx, int8.cpu.onnx
  edgeattn engines   --models vit --flavor rtx              -> <precision>.<flavor>.engine + manifests
  edgeattn verify    --models vit --strict                  every artifact vs PyTorch -> verify.json/.md
  edgeattn bench     --models vit                           latency vs peers -> bench.json, plots
  edgeattn report                                           -> artifacts/report.md
  edgeattn gpu-check                                        GPU self-check -> gpu-check.json
  edgeattn engine-timing artifacts/vit/fp16.trt10.engine    trtexec-grade engine timing (GPU)
  edgeattn run       --models mymodels:tiny_text            every stage above for these models, in order
  edgeattn harden                                           hardening suite -> harden.json, harden.md
  edgeattn triton    --models bert_imdb                     Triton model repository -> artifacts/triton/
  edgeattn serve     --repository artifacts/triton          bundled tritonserver on 127.0.0.1 (Ctrl-C stops)
  edgeattn loadtest  --concurrency 1,4,16 --duration 10     load test vs the direct runtime -> triton-loadtest/

``edgeattn <stage> --help`` shows a stage's options. A bad model, a missing file or a failed export is one line
``error: <stage> <model>: ...`` and exit status 2, never a traceback; the other models of the run go on.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

from pipeline.artifacts import resolve_models
from pipeline.stage import EXIT_FAILED, cli

STAGES = {"train": "zoo.train", "export": "export.__main__", "simplify": "optimize.simplify",
          "quantize": "optimize.quantize", "engines": "optimize.engines", "verify": "verify.__main__",
          "bench": "bench.__main__", "report": "bench.report", "harden": "devtools.harden", "gpu-check": "devtools.gpu_check",
          "engine-timing": "bench.engine_timing", "triton": "serve.repository", "serve": "serve.server",
          "loadtest": "serve.loadtest"}
TRAINED = ("text_transformer", "attention_cnn", "vit", "bert_imdb", "gpt2_imdb")  # the models `train` has recipes for


def run_stage(stage: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(STAGES[stage])
    return int(cli(stage, lambda: module.main(list(argv))) or 0)


def run_all(argv: Sequence[str]) -> int:
    """Every stage for each model of ``--models``, as `make demo` runs them: train (our families only), export,
    simplify, quantize, engines, verify, bench (unless --no-bench), then one report. Each model goes on its own: an
    export or simplify failure ends that model's run (the later stages need its file) and the other models go on;
    a quantize miss or an engines failure is recorded and the model's run goes on."""
    ap = argparse.ArgumentParser(prog="edgeattn run", description=run_all.__doc__)
    ap.add_argument("--models", required=True)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--weights", default=None, help="weights file for one torchvision / module:factory model")
    ap.add_argument("--data", default=None, help="your calibration/evaluation data for one model (calibration.user_data)")
    ap.add_argument("--max-drop", default="0.5", help="INT8 accuracy budget, points")
    ap.add_argument("--flavor", default="auto", help="engine flavour: auto, trt, trt10, trt11, rtx")
    ap.add_argument("--no-bench", action="store_true", help="skip the latency benchmark")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a gating verify row failed")
    a = ap.parse_args(list(argv))
    refs = resolve_models(a.models, a.artifacts)
    for flag, value in (("--weights", a.weights), ("--data", a.data)):
        if value and len(refs) != 1:
            ap.error(f"{flag}: one file goes with one model; got {len(refs)} models")
    worst, stopped = 0, []
    for ref in refs:
        rc = run_model(ref.name, a)
        worst = max(worst, rc)
        if rc == EXIT_FAILED:
            stopped.append(ref.name)
    run_stage("report", ["--artifacts", a.artifacts])
    if stopped:
        print(f"edgeattn run: {len(stopped)} of {len(refs)} model(s) stopped early: {', '.join(stopped)}",
              file=sys.stderr)
    print(f"edgeattn run: done; read {Path(a.artifacts) / 'report.md'}")
    return worst


def run_model(name: str, a: argparse.Namespace) -> int:
    """One model through the stages of :func:`run_all`; the exit status that matters (2: stopped, verify's)."""
    common = ["--models", name, "--artifacts", a.artifacts]
    plan: list[tuple[str, list[str], bool]] = [  # (stage, argv, stop this model's run when it fails)
        ("export", common + (["--weights", a.weights] if a.weights else []) + (["--data", a.data] if a.data else []),
         True),
        ("simplify", common, True),
        ("quantize", common + ["--max-drop", a.max_drop], False),
        ("engines", common + ["--flavor", a.flavor], False),
        ("verify", common + (["--strict"] if a.strict else []), False),
    ] + ([] if a.no_bench else [("bench", common, False)])
    if name in TRAINED:
        plan.insert(0, ("train", common, True))
    worst = 0
    for stage, args, stop in plan:
        print(f"== edgeattn {stage} {' '.join(args)}", flush=True)
        rc = run_stage(stage, args)
        if rc and stop:
            print(f"edgeattn run {name}: {stage} failed (exit {rc}); the later stages need its output", file=sys.stderr)
            return EXIT_FAILED
        if rc:
            print(f"edgeattn run {name}: {stage} exit {rc} (recorded above); going on", file=sys.stderr)
        if stage == "verify":
            worst = rc
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else EXIT_FAILED
    stage, rest = argv[0], argv[1:]
    if stage == "run":
        return run_all(rest)
    if stage not in STAGES:
        print(f"error: edgeattn: unknown stage '{stage}'; expected one of {', '.join([*STAGES, 'run'])}",
              file=sys.stderr)
        return EXIT_FAILED
    return run_stage(stage, rest)


if __name__ == "__main__":
    raise SystemExit(main())
