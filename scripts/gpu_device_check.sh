#!/usr/bin/env bash
# The GPU checks to run whenever a GPU machine is at hand (#10): `make gpu-check` and `pytest -m gpu`, with the
# machine's own Python when there is no venv (a lent GPU box has PyTorch and cuda-bindings but no internet, so
# `make setup` cannot install). Writes gpu-check.json and the logs under $OUT (default: artifacts/).
# Exit status: the worst of the steps' statuses (gpu-check: 0 pass, 1 a check failed, 2 no GPU; pytest: its own),
# so a caller sees a failure even though every step's output is also tee'd into a log (#22 item 13).
set -u
set -o pipefail
out=${OUT:-artifacts}
mkdir -p "$out"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
worst=0
note() {  # note STEP STATUS LOG: remember the worst status, say it and append it to the step's log
  echo "$1 exit: $2" | tee -a "$3"
  if [ "$2" -gt "$worst" ]; then worst=$2; fi
}
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
note environment $? "$out/gpu-env.txt"
"$py" -m devtools.gpu_check --artifacts "$out" 2>&1 | tee "$out/gpu-check.txt"
note gpu-check "${PIPESTATUS[0]}" "$out/gpu-check.txt"
"$py" -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_gpu_check.py tests/test_tensorrt_runner.py \
  > "$out/pytest-gpu-full.txt" 2>&1
status=$?
tail -40 "$out/pytest-gpu-full.txt" | tee "$out/pytest-gpu.txt"
note pytest-gpu "$status" "$out/pytest-gpu.txt"
echo "gpu_device_check: worst exit status $worst"
exit "$worst"
