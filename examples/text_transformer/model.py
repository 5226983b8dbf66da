"""text_transformer: token ids (int64) -> Embedding -> one small transformer encoder layer ->
mean over the sequence -> 4 topic logits.

Export: fedge export examples/text_transformer/model.py:build --input-shape 16 \
            --input-dtype int64 --num-classes 4 --optimizer sgd --lr 0.2 --out bundle

``dropout=0.0``: ONNX Runtime's training gradient builder (1.19) refuses the dropout inside
``nn.TransformerEncoderLayer``; with dropout 0 the layer exports and trains. SGD: with AdamW
the exporter's parity check fails on ``self_attn.in_proj_bias`` (the key part of that bias
has no real gradient: softmax is unchanged by adding one number to every score, so only
rounding noise remains, which Adam turns into full-size steps of arbitrary sign).
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 64
SEQUENCE = 16


class TopicEncoder(nn.Module):
    """Embedding + learned positions, one encoder layer, mean-pooled, a linear head."""

    def __init__(self, vocab: int = VOCAB, length: int = SEQUENCE, dim: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(1, length, dim))
        self.encoder = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(h.mean(dim=1))


def build() -> nn.Module:
    """The same weights on every call (seed 0), so every export has the same content hash."""
    torch.manual_seed(0)
    return TopicEncoder()
