"""Random-initialised models whose logits carry a signal, so that a parity check on them can fail.

torchvision's random initialisation is made for training, not for parity: ViT-B/16 zero-initialises its head (every
logit 0), and EfficientNet / MobileNetV3 scale their convolutions by fan-out, so in eval mode (BatchNorm with its
initial running statistics, mean 0 and variance 1) the signal shrinks layer after layer to logits of ~1e-14
(efficientnet_b0) or ~1e-9 (mobilenet_v3_small). On those, fp32 passes any absolute tolerance and fp16 flushes them to
zero. ``ensure_spread`` gives such a model a spread, deterministically per seed, each step only when the one before
left the logits flat (spread under ``MIN_SPREAD``, or degenerate as judge.figures judges a reference):

1. zero Linear weights (ViT's head) are re-initialised ~ N(0, 0.02^2) from ``seed``, as ViT's training init would;
2. one seeded probe batch (images ~ N(0, 1), the parity inputs' distribution; eval mode, no grad) measures the
   logits; if flat, the BatchNorm running statistics are set from a larger seeded batch of both kinds of input the
   pipeline feeds a parity-only model: N(0, 1) images (verify's parity inputs) and natural-ish images normalised
   like the model's inputs (calibration and the FP16/INT8 budget, zoo.synthetic), so every normalised activation is
   O(1) on both, in fp32 and fp16 alike (statistics from 2 noise images alone gave efficientnet_b0 logits of RMS
   ~1000 on natural-ish images, which no fp16 or int8 graph could follow);
3. if still flat, the Linear that produces the logits is rescaled so their spread is ``TARGET_SPREAD``.

A model that has a spread as built (vit_b_16 after step 1, resnet18, convnext_tiny) is not changed by the probe.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from judge.figures import degenerate_reason, reference_figures
from zoo.synthetic import normalize_nchw, synthetic_uint8_images

log = logging.getLogger("edgeattn.zoo")

# The probe: PROBE_BATCH images at 224x224 (ViT-B/16 costs ~0.3 s an image on a 2-core CPU), and as many pixels in
# all at smaller sizes (64x64: 24 images), so BatchNorm statistics come from enough values a channel at the last,
# smallest feature maps (2 images of 2x2 at 64x64 gave efficientnet_b0 logits of std 137 on other inputs).
PROBE_BATCH = 2
PROBE_PIXELS = PROBE_BATCH * 3 * 224 * 224
BN_BATCH = 8  # BatchNorm statistics: half noise, half natural-ish images (at 224x224; more at smaller sizes)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Logits' std over classes (on the probe batch) under MIN_SPREAD are flat: vit_b_16 (head re-initialised) and
# convnext_tiny have 0.56, resnet18 1.6, and are left as built; efficientnet_b0 has 1e-14, then 0.12 with BatchNorm
# statistics set, and its head is scaled to TARGET_SPREAD.
INIT_VERSION = "spread/2"  # part of a torchvision export's source: a new initialisation re-exports
MIN_SPREAD = 0.3
TARGET_SPREAD = 1.0
HEAD_INIT_STD = 0.02


def ensure_spread(module, input_shape: tuple[int, ...], seed: int, mean: Any = IMAGENET_MEAN,
                  std: Any = IMAGENET_STD) -> dict[str, Any]:
    """Give a random-initialised ``module`` logits with a spread (see the module doc); ``input_shape``: one sample's
    shape, e.g. (3, 224, 224). Returns what it did: ``steps`` (names), ``spread_before``, ``spread`` (std over
    classes of the probe's logits, mean over the batch)."""
    import torch

    steps = [f"reinit zero Linear {n}" for n in reinit_zero_linears(module, seed)]
    n = max(PROBE_BATCH, PROBE_PIXELS // int(np.prod(input_shape)))
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, *input_shape)).astype(np.float32))
    logits, head = probe(module, x)
    f = reference_figures(logits)
    before = f["reference_spread"]
    if _flat(f) and recalibrate_batchnorm(module, torch.from_numpy(bn_batch(input_shape, seed, mean, std))):
        steps.append("BatchNorm statistics from the probe batch")
        logits, head = probe(module, x)
        f = reference_figures(logits)
    spread = f["reference_spread"]
    if _flat(f) and spread and head is not None:
        scale_linear(head, TARGET_SPREAD / spread)
        steps.append(f"output Linear scaled by {TARGET_SPREAD / spread:.3g}")
        f = reference_figures(probe(module, x)[0])
    if f["degenerate_reference"]:
        log.warning("random-initialised model still has no signal after %s: %s", steps or "no step",
                    degenerate_reason(f))
    return {"steps": steps, "spread_before": before, "spread": f["reference_spread"]}


def bn_batch(input_shape: tuple[int, ...], seed: int, mean: Any, std: Any) -> np.ndarray:
    """The batch BatchNorm statistics come from: half N(0, 1) images, half natural-ish images normalised with
    ``mean``/``std`` (``input_shape``: (C, H, W); BN_BATCH images at 224x224, as many pixels at other sizes)."""
    n = max(BN_BATCH, BN_BATCH * 3 * 224 * 224 // int(np.prod(input_shape)))
    c, h, w = input_shape
    noise = np.random.default_rng(seed).standard_normal((n // 2, *input_shape)).astype(np.float32)
    natural = normalize_nchw(synthetic_uint8_images(n - n // 2, c, h, w, seed=seed), mean, std)
    return np.concatenate([noise, natural])


def _flat(f: dict[str, Any]) -> bool:
    return f["degenerate_reference"] or (f["reference_spread"] is not None and f["reference_spread"] < MIN_SPREAD)


def reinit_zero_linears(module, seed: int) -> list[str]:
    """Re-initialise every all-zero Linear (torchvision ViT's head) ~ N(0, HEAD_INIT_STD^2) from ``seed``; their
    names. A zero head makes every logit 0, on which any parity check passes."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    done = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and bool(torch.all(m.weight == 0)):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * HEAD_INIT_STD)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * HEAD_INIT_STD)
            done.append(name)
    return done


def probe(module, x):
    """(logits, head): ``module``'s (N, -1) float32 logits on ``x`` in eval mode, without grad (its mode restored),
    and the last Linear that ran with as many outputs as the model (the classifier head; None: none)."""
    import torch
    from torch import nn

    was, calls = module.training, []
    hooks = [m.register_forward_hook(lambda m, _i, o: calls.append((m, o.shape[-1])))
             for m in module.modules() if isinstance(m, nn.Linear)]
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        module.train(was)
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    logits = out.float().reshape(len(x), -1).numpy()
    heads = [m for m, width in calls if width == logits.shape[-1]]
    return logits, (heads[-1] if heads else None)


def recalibrate_batchnorm(module, x) -> int:
    """Set every BatchNorm's running statistics from batch ``x`` (BatchNorm in train mode with a cumulative average,
    the rest in eval: no dropout, no stochastic depth); how many layers. 0: none to set."""
    import torch
    from torch import nn

    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was, momenta = module.training, [m.momentum for m in bns]
    module.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, its statistics exactly
        m.train()
    try:
        with torch.no_grad():
            module(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        module.train(was)
    return len(bns)


def scale_linear(linear, factor: float) -> None:
    import torch

    with torch.no_grad():
        linear.weight.mul_(factor)
        if linear.bias is not None:
            linear.bias.mul_(factor)
