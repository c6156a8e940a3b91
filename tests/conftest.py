"""Shared fixtures: tiny seeded models (fast), artifact folders, GPU detection for the `gpu` marker."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = {
    "text_transformer": dict(vocab_size=64, max_len=16, d_model=16, nhead=2, num_layers=1, dim_ff=32, dropout=0.0),
    "attention_cnn": dict(widths=(4, 8, 8)),
    "vit": dict(dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.0),
}


def tiny_model(name: str, seed: int = 0):
    """A tiny, seeded, eval-mode model. attention_cnn gets a non-zero gamma so attention is exercised."""
    import torch

    from zoo import create_model

    torch.manual_seed(seed)
    built = create_model(name, **TINY[name])
    if name == "attention_cnn":
        with torch.no_grad():
            built.module.attention.gamma.fill_(0.7)
            for m in built.module.modules():  # non-trivial BatchNorm statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
    built.module.eval()
    return built


@pytest.fixture(params=list(TINY))
def tiny_name(request):
    return request.param


def has_nvidia_gpu() -> bool:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config, items):
    if has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA: none found (nvidia-smi -L lists no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield
