"""Text classifier: token + learned positional embedding, pre-norm nn.TransformerEncoder, head on [CLS].

Improvements over the textbook version for deployment:
- a real [CLS] token at position 0 (the tokenizer adds it), so the head reads one well-defined token;
- a key padding mask computed *inside* the model from ``input_ids == pad_id``: a device feeds only ids,
  and a padded batch gives the same logits as the unpadded sentences (tested to 1e-5);
- ``enable_nested_tensor=False`` so eval mode does not switch to nested tensors on padded batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TextTransformerConfig:
    vocab_size: int = 8000
    max_len: int = 128  # size of the positional table = the largest sequence the model accepts
    d_model: int = 96
    nhead: int = 4
    num_layers: int = 2
    dim_ff: int = 192
    dropout: float = 0.1
    num_classes: int = 2
    pad_id: int = 0
    cls_id: int = 2
    dataset: str = "imdb"  # "imdb" or "rotten_tomatoes" (the model itself does not depend on it)
    truncation_side: str = "left"  # long texts keep their end (see zoo.tokenizer)


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.d_model))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.nhead, cfg.dim_ff, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, classes)
        t = input_ids.shape[1]
        pad_mask = input_ids == self.cfg.pad_id  # (B, T) True = ignore
        x = self.tok_emb(input_ids) + self.pos_emb[:, :t]  # (B, T, D)
        x = self.encoder(x, src_key_padding_mask=pad_mask)  # (B, T, D)
        cls = self.norm(x[:, 0])  # (B, D)
        return self.head(self.drop(cls))
