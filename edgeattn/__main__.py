"""``edgeattn <stage> [options]``: one command line for every stage (also ``python -m edgeattn``).

  edgeattn train     --models text_transformer              train our families (progress bars, seeded)
  edgeattn export    --models mymodels:tiny_text            PyTorch -> fp32.onnx (--weights w.safetensors)
  edgeattn simplify  --models vit                           -> fp32.sim.onnx (smallest graph that matches)
  edgeattn quantize  --models vit --max-drop 0.5            -> fp16.onnx, int8.qdq.onnx, int8.cpu.onnx
                     (a decoder: --kv-cache float16 for its CPU forms' cache; refused for a model without one)
  edgeattn engines   --models vit --flavor rtx              -> <precision>.<flavor>.engine + manifests
  edgeattn verify    --models vit --strict                  every artifact vs PyTorch -> verify.json/.md
  edgeattn bench     --models vit                           latency vs peers -> bench.json, plots
  edgeattn int8-peers --models hf:DIR                       CPU int8 vs ORT quantize_dynamic / NNCF -> int8_peers.json
  edgeattn report                                           -> artifacts/report.md
  edgeattn gpu-check                                        GPU self-check -> gpu-check.json
  edgeattn engine-timing artifacts/vit/fp16.trt10.engine    trtexec-grade engine timing (GPU)
  edgeattn run       --models mymodels:tiny_text            every stage above for these models, stage by stage;
                                                            exit 1 on a failed gating verify row (--keep-going:
                                                            summarise and exit 0, the demo's rule)
  edgeattn harden                                           hardening suite -> harden.json, harden.md
  edgeattn triton    --models bert_imdb                     Triton model repository -> artifacts/triton/
  edgeattn serve     --repository artifacts/triton          bundled tritonserver on 127.0.0.1 (Ctrl-C stops)
  edgeattn loadtest  --concurrency 1,4,16 --duration 10     load test vs the direct runtime -> triton-loadtest/

``edgeattn <stage> --help`` shows a stage's options; a bad argument is one line ``error: <stage>: ...`` and exit
status 2 before any file is touched (pipeline.args). A bad model, a missing file or a failed export is one line
``error: <stage> <model>: ...`` and exit status 2, never a traceback; the other models of the run go on.
"""
from __future__ import annotations

import importlib
import shlex
import sys
from typing import Sequence

from edgeattn import orchestrator
from edgeattn.orchestrator import RunOptions
from pipeline.args import (ArgumentsError, add_artifacts, add_flavor, add_kv_cache, add_max_drop, add_models,
                           existing_path, models_text, require_one_model, stage_parser)
from pipeline.artifacts import model_names
from pipeline.stage import EXIT_FAILED, cli

STAGES = {"train": "zoo.train", "export": "export.__main__", "simplify": "optimize.simplify",
          "quantize": "optimize.quantize", "engines": "optimize.engines", "verify": "verify.__main__",
          "bench": "bench.__main__", "report": "bench.report", "harden": "devtools.harden", "gpu-check": "devtools.gpu_check",
          "engine-timing": "bench.engine_timing", "triton": "serve.repository", "serve": "serve.server",
          "loadtest": "serve.loadtest", "int8-peers": "bench.int8_peers"}


def run_stage(stage: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(STAGES[stage])
    return int(cli(stage, lambda: module.main(list(argv))) or 0)


def run_parser():
    from optimize.kv_cache import CACHE_TYPES
    from zoo.gpt2 import RECIPES as GPT2_RECIPES

    ap = stage_parser("run", run_all.__doc__)
    add_models(ap)
    add_artifacts(ap, must_exist=False)
    ap.add_argument("--weights", type=existing_path, default=None,
                    help="weights file for one torchvision / module:factory model")
    ap.add_argument("--data", type=existing_path, default=None,
                    help="your calibration/evaluation data for one model (calibration.user_data)")
    add_max_drop(ap)
    add_kv_cache(ap, CACHE_TYPES)
    add_flavor(ap)
    ap.add_argument("--gpt2-recipe", choices=sorted(GPT2_RECIPES), default=None,
                    help="gpt2_imdb's training recipe (default: train's, full; the demo: demo)")
    ap.add_argument("--skip-quantize", type=models_text, default=None, help="models quantize leaves out")
    ap.add_argument("--skip-engines", type=models_text, default=None, help="models engines leaves out")
    ap.add_argument("--no-bench", action="store_true", help="skip the latency benchmark")
    ap.add_argument("--bench-args", default="",
                    help="more options for bench, one string: --bench-args='--quick --batches 1,8'")
    ap.add_argument("--keep-going", action="store_true", help="the demo's rule: go on past a budget miss or a "
                    "failed gating verify row, summarise, exit 0 (errors still fail)")
    ap.add_argument("--summary", action="store_true", help="end with report's short summary (the demo's)")
    ap.add_argument("--strict", action="store_true", help="(the default now: a failed gating row is exit 1)")
    return ap


def run_options(argv: Sequence[str]) -> RunOptions:
    """``edgeattn run`` arguments -> RunOptions; every check before any stage starts."""
    a = run_parser().parse_args(list(argv))
    models = tuple(model_names(a.models))
    for flag, value in (("--weights", a.weights), ("--data", a.data)):
        require_one_model(flag, value, len(models))
    skip_q, skip_e = (tuple(model_names(x or "")) for x in (a.skip_quantize, a.skip_engines))
    for flag, names in (("--skip-quantize", skip_q), ("--skip-engines", skip_e)):
        extra = [n for n in names if n not in models]
        if extra:
            raise ArgumentsError(f"{flag}: got {', '.join(extra)}, expected some of --models ({', '.join(models)})")
    bench_args = check_bench_args(a.bench_args, models)
    return RunOptions(models, str(a.artifacts), None if a.max_drop is None else str(a.max_drop), a.flavor, a.gpt2_recipe,
                      a.weights and str(a.weights), a.data and str(a.data), skip_q, skip_e, not a.no_bench,
                      bench_args, a.keep_going, a.summary, a.kv_cache)


def check_bench_args(text: str, models: Sequence[str]) -> tuple[str, ...]:
    """``--bench-args`` as bench's own parser takes them, checked now (not after the stages before bench ran)."""
    from bench.__main__ import bench_parser

    try:
        words = tuple(shlex.split(text))
    except ValueError as e:
        raise ArgumentsError(f"--bench-args: got {text!r} ({e}), expected shell words") from None
    taken = sorted({w.split("=")[0] for w in words} & {"--models", "--artifacts"})
    if taken:
        raise ArgumentsError(f"--bench-args: got {', '.join(taken)}, expected bench's other options (run's own "
                             "--models and --artifacts are passed to bench)")
    try:
        bench_parser().parse_args(["--models", ",".join(models), "--artifacts", ".", *words])
    except ArgumentsError as e:
        raise ArgumentsError(f"--bench-args: {e}") from None
    return words


def run_all(argv: Sequence[str]) -> int:
    """Every stage for the models of ``--models``, stage-major as `make demo` runs them: train (our families only),
    export, simplify, quantize, engines, verify, bench (unless --no-bench), then one report, each stage in its own
    process. A model whose train, export or simplify fails is dropped from the later stages and the others go on
    (exit 2 at the end); a quantize budget miss is recorded; a failed gating verify row is exit 1 unless
    --keep-going (the demo: summarise and exit 0). Laps per stage and a summary at the end."""
    return orchestrator.run(run_options(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else EXIT_FAILED
    stage, rest = argv[0], argv[1:]
    if stage == "run":
        return cli("run", lambda: run_all(rest))
    if stage not in STAGES:
        print(f"error: edgeattn: unknown stage '{stage}'; expected one of {', '.join([*STAGES, 'run'])}",
              file=sys.stderr)
        return EXIT_FAILED
    return run_stage(stage, rest)


if __name__ == "__main__":
    raise SystemExit(main())
