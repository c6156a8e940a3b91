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
    """The project's one GPU check (runtime.gpu: the driver reports a GPU), so tests skip where the code would."""
    from runtime.gpu import nvidia_gpu_present

    return nvidia_gpu_present()


def pytest_collection_modifyitems(config, items):
    if has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA: none found (runtime.gpu.nvidia_gpu_present(): the driver reports no GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture
def module_from_source(tmp_path, monkeypatch):
    """``install(name, source) -> folder``: write a user's Python module into a fresh folder on sys.path (removed from
    sys.modules before and after), as a user's ``--models name:factory`` would find it."""
    names = []

    def install(name: str, source: str) -> Path:
        d = tmp_path / "usermods"
        d.mkdir(exist_ok=True)
        (d / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(d))
        sys.modules.pop(name, None)
        names.append(name)
        return d

    yield install
    for n in names:
        sys.modules.pop(n, None)

