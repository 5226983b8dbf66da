"""Which integer inputs an Embedding reads, found on the data flow (exporter/embedding_ids)."""

from __future__ import annotations

import torch
from torch import nn

from fedge.exporter.embedding_ids import with_embedding_ids
from fedge.protocol.manifest import TensorSpec

SPECS = (
    TensorSpec("tokens", "int64", (None, 4)),
    TensorSpec("positions", "int64", (None, 4)),
    TensorSpec("mask", "float32", (None, 4)),
)


class TwoTables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(50, 3)
        self.small = nn.Embedding(30, 3)
        self.pos = nn.Embedding(8, 3)

    def forward(self, tokens, positions, mask):
        # tokens reach two tables (the smaller bounds them); positions are shifted first
        x = self.words(tokens) + self.small(tokens) + self.pos(positions + 1)
        return (x * mask.unsqueeze(-1)).sum(dim=1)


def _example():
    return (
        torch.zeros(2, 4, dtype=torch.int64),
        torch.zeros(2, 4, dtype=torch.int64),
        torch.ones(2, 4),
    )


def test_the_smallest_table_reading_an_input_bounds_it_and_derived_ids_are_not_bounded():
    specs = with_embedding_ids(TwoTables(), _example(), SPECS)
    assert [(s.ids_below, s.ids_module) for s in specs] == [(30, "small"), (None, ""), (None, "")]


def test_a_model_without_embeddings_keeps_its_specs_and_its_mode():
    model = nn.Linear(4, 2).train()
    spec = TensorSpec("input", "float32", (None, 4))
    assert with_embedding_ids(model, (torch.ones(2, 4),), (spec,)) == (spec,)
    assert model.training
