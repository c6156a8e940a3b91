"""No verdict on a degenerate reference, tolerances relative to the reference's scale, and random-initialised
models whose logits have a spread (zoo.init_spread)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from judge.figures import compare, figures
from zoo.init_spread import MIN_SPREAD, ensure_spread
from zoo.registry import create_model
from zoo.spec import DEFAULT_TOLERANCES

FP32, FP16 = DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["fp16"]


def _logits(scale: float, n: int = 8, classes: int = 1000, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, classes)) * scale).astype(np.float32)


def _degenerate(c) -> bool:
    return not c and c.degenerate_reference and c.reasons[0].startswith("degenerate reference: PyTorch's logits")


def test_tiny_reference_fails_even_when_the_artifact_matches_exactly():
    ref = _logits(1e-14)  # random-init efficientnet_b0's scale
    for tol in (FP32, FP16):
        c = compare(ref, ref.copy(), None, tol)
        assert c.max_abs_diff == 0 and c.cosine_min == pytest.approx(1.0)  # a check that cannot fail ...
        assert _degenerate(c), c.reasons  # ... gets no verdict
        assert "cannot fail on them" in c.reasons[0] and "\n" not in c.reasons[0]
        assert c.reference_spread == pytest.approx(1e-14, rel=0.1) and c.to_dict()["degenerate_reference"] is True
    flushed = compare(ref, np.zeros_like(ref), None, FP16)  # what fp16 makes of them: degenerate first, cosine after
    assert _degenerate(flushed) and any(r.startswith("cosine_min") for r in flushed.reasons)


def test_constant_logits_fail():
    row = _logits(3.0, n=1)
    same_for_every_input = np.repeat(row, 16, axis=0)  # O(1) logits that do not depend on the input
    c = compare(same_for_every_input, same_for_every_input.copy(), None, FP32)
    assert _degenerate(c) and c.reference_spread > 1 and c.reference_sample_spread == 0
    flat_over_classes = np.full((16, 10), 5.0, np.float32) + _logits(1e-7, 16, 10)  # an offset with rounding noise
    c = compare(flat_over_classes, flat_over_classes.copy(), np.zeros(16, int), FP32)
    assert _degenerate(c) and c.reference_scale == pytest.approx(5.0)
    ref = _logits(2.0, 4, 10)
    ref[1, 3] = np.nan
    c = compare(ref, np.nan_to_num(ref), None, FP32)
    assert _degenerate(c) and c.reference_nonfinite == 1 and "1 NaN/Inf values" in c.reasons[0]


def test_a_normal_reference_passes_as_before():
    ref = _logits(3.0, 64, 10)
    got = ref + _logits(1e-6, 64, 10, seed=1)  # the project's fp32 artifacts: 1e-6..8e-6 off PyTorch
    c = compare(ref, got, None, FP32)
    assert c and not c.degenerate_reference and c.reasons == []
    per_sample = np.abs(got - ref).max(1) / np.sqrt((ref.astype(np.float64) ** 2).mean(1))
    assert 2.5 < c.reference_scale < 3.5 and c.scaled_max_abs_diff == pytest.approx(per_sample.max())
    spiky = ref.copy()
    spiky[0] *= 100.0  # one sample with 100x larger logits (a random-init outlier) and float32 error at its scale
    c = compare(spiky, spiky + np.where(np.arange(64)[:, None] == 0, 3e-4, 1e-6), None, FP32)
    assert c and c.scaled_max_abs_diff < 1e-4  # judged against its own scale, not the batch's RMS
    f = figures(ref, got)  # the one vocabulary, in every stage's figures too
    assert {"reference_scale", "reference_spread", "reference_sample_spread", "reference_nonfinite",
            "degenerate_reference", "scaled_max_abs_diff"} <= set(f) and f["degenerate_reference"] is False
    two_classes = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]], np.float32)  # test_export's reference: unchanged
    assert compare(two_classes, two_classes.copy(), np.array([0, 1, 1]), FP32)
    one_sample = ref[:1]  # `verify --limit 1`: no spread over samples to judge, and none asked for
    assert compare(one_sample, one_sample.copy(), None, FP32)


def test_max_abs_is_relative_to_the_reference_scale():
    big = _logits(1e4, 32, 100)
    ulps = np.random.default_rng(2).integers(-4, 5, big.shape)
    rounded = big + ulps * np.spacing(big)  # float32 rounding: a few ulps of 1e4-scale logits
    c = compare(big, rounded, None, FP32)
    assert c.max_abs_diff > FP32.max_abs  # an absolute 1e-4 would fail it on rounding alone
    assert c, c.reasons
    small = _logits(1e-3, 32, 100)
    off = small + np.float32(1e-3) * np.sign(_logits(1.0, 32, 100, seed=3))  # an error as large as the logits
    c = compare(small, off, None, FP32)
    assert not c.degenerate_reference and c.max_abs_diff <= 2e-3  # not degenerate; small in absolute terms ...
    assert not c and any(r.startswith("max_abs_diff") and "its sample's logit RMS" in r for r in c.reasons)  # fails


def _tiny_cnn(conv_scale: float) -> nn.Module:
    """Two conv/BatchNorm layers whose weights are scaled by ``conv_scale``: a small version of what fan-out init does
    to efficientnet_b0 in eval mode (BatchNorm's running statistics 0/1 do not follow the shrinking signal)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        net[0].weight.mul_(conv_scale)
        net[3].weight.mul_(conv_scale)
        net[8].bias.zero_()
    return net


def _probe(net: nn.Module, seed: int = 1234) -> np.ndarray:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((4, 3, 16, 16)).astype(np.float32))
    net.eval()
    with torch.no_grad():
        return net(x).numpy()


def test_ensure_spread_gives_a_flat_model_a_spread_deterministically():
    net = _tiny_cnn(1e-3)
    assert compare(_probe(net), _probe(net), None, FP32).degenerate_reference  # as built: no signal
    rec = ensure_spread(net, (3, 16, 16), seed=0)
    assert rec["spread_before"] < 1e-5 and rec["spread"] == pytest.approx(1.0, rel=1e-3)
    assert rec["steps"][0].startswith("BatchNorm") and rec["steps"][-1].startswith("output Linear scaled")
    y = _probe(net)
    assert y.std(1).mean() > MIN_SPREAD and not compare(y, y, None, FP32).degenerate_reference
    again = _tiny_cnn(1e-3)
    ensure_spread(again, (3, 16, 16), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_ensure_spread_leaves_a_model_with_a_spread_as_built():
    net = _tiny_cnn(1.0)
    with torch.no_grad():
        net[8].weight.mul_(10.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rec = ensure_spread(net, (3, 16, 16), seed=0)
    assert rec["steps"] == [] and rec["spread"] > MIN_SPREAD and net.training  # mode as it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_torchvision_efficientnet_b0_random_init_has_a_spread():
    import torchvision

    b = create_model("torchvision:efficientnet_b0")  # random init, never downloads
    x = torch.from_numpy(b.spec.example_inputs({"batch": 2}, seed=1234)["pixels"])  # verify's parity images
    b.module.eval()
    with torch.no_grad():
        y = b.module(x).numpy()
    assert y.std() > 0.1 and y.std(1).min() > 0.1 and np.isfinite(y).all()
    assert not compare(y, y.copy(), None, FP32).degenerate_reference
    torch.manual_seed(0)
    raw = torchvision.models.efficientnet_b0(weights=None).eval()  # what torchvision gives: logits of ~1e-14
    with torch.no_grad():
        r = raw(x).numpy()
    assert r.std() < 1e-9 and _degenerate(compare(r, r.copy(), None, FP32))
