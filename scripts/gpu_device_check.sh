#!/usr/bin/env bash
# The GPU checks to run whenever a GPU machine is at hand (#10): `make gpu-check` and `pytest -m gpu`, with the
# machine's own Python when there is no venv (a lent GPU box has PyTorch and cuda-bindings but no internet, so
# `make setup` cannot install). Writes gpu-check.json and the two logs under $OUT (default: artifacts/).
set -u
out=${OUT:-artifacts}
mkdir -p "$out"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u
  nvidia-smi -L || echo "nvidia-smi: not found"
  "$py" - <<'PY'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("numpy", "torch", "cuda.bindings", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx", "pytest"):
    try:
        mod = importlib.import_module(m)
        print(f"{m}: {getattr(mod, '__version__', 'present')}")
    except Exception as e:  # noqa: BLE001
        print(f"{m}: missing ({type(e).__name__})")
PY
} 2>&1 | tee "$out/gpu-env.txt"
"$py" -m devtools.gpu_check --artifacts "$out" 2>&1 | tee "$out/gpu-check.txt"
echo "gpu-check exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu-check.txt"
"$py" -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_gpu_check.py tests/test_tensorrt_runner.py 2>&1 \
  | tail -40 | tee "$out/pytest-gpu.txt"
