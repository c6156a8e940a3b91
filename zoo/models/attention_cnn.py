"""A small CNN with a SAGAN-style spatial self-attention block, for 28x28 grayscale images."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class SelfAttention2d(nn.Module):
    """SAGAN self-attention over the H*W positions of a feature map.

    q, k: 1x1 conv to C/8 channels; v: 1x1 conv to C channels; softmax over positions;
    out = gamma * attention(x) + x with gamma a learnable scalar initialised to 0, so the block
    starts as the identity. Unlike the original we scale the logits by 1/sqrt(C/8) (standard
    dot-product attention), which keeps the softmax out of saturation at init and in FP16.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = inner ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(torch.bmm(q * self.scale, k), dim=-1)  # (B, N, N), rows sum to 1
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)  # (B, C, H, W)
        return self.gamma * out + x


@dataclass
class AttentionCNNConfig:
    in_channels: int = 1
    widths: tuple[int, int, int] = (16, 32, 64)
    num_classes: int = 10
    dropout: float = 0.2


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttentionCNN(nn.Module):
    def __init__(self, cfg: AttentionCNNConfig):
        super().__init__()
        self.cfg = cfg
        w1, w2, w3 = cfg.widths
        self.stage1 = nn.Sequential(_conv_bn(cfg.in_channels, w1), _conv_bn(w1, w1), nn.MaxPool2d(2))  # 14x14
        self.stage2 = nn.Sequential(_conv_bn(w1, w2), _conv_bn(w2, w2))  # 14x14
        self.attention = SelfAttention2d(w2)
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), _conv_bn(w2, w3))  # 7x7
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(w3, cfg.num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        x = self.stage2(self.stage1(pixels))
        x = self.stage3(self.attention(x))
        return self.head(self.drop(self.pool(x).flatten(1)))
