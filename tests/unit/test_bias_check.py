"""The exporter's warning about a Conv/Linear bias feeding a BatchNorm directly."""

from __future__ import annotations

import logging

import torch
from torch import nn

from fedge.exporter.bias_check import biases_before_batchnorm, warn_biases_before_batchnorm


def conv_bn(bias: bool = True, between: list[nn.Module] | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias),
        *(between or []),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


class Named(nn.Module):
    """A nested model: the warning must name the full module paths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(8, 16))
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.stem(x))))


def test_a_bias_feeding_batchnorm_is_found_by_module_path():
    assert biases_before_batchnorm(conv_bn(), torch.randn(4, 1, 6, 6)) == [("0", "1")]
    assert biases_before_batchnorm(Named(), torch.randn(4, 8)) == [("stem.0", "norm")]


def test_no_bias_an_operator_in_between_or_a_frozen_bias_is_not_reported():
    x = torch.randn(4, 1, 6, 6)
    assert biases_before_batchnorm(conv_bn(bias=False), x) == []
    assert biases_before_batchnorm(conv_bn(between=[nn.ReLU()]), x) == []
    assert biases_before_batchnorm(conv_bn(), x, trainable={"0.weight", "5.weight"}) == []


def test_the_warning_names_the_layer_and_the_fix(caplog):
    with caplog.at_level(logging.WARNING, logger="fedge.exporter.bias_check"):
        warn_biases_before_batchnorm(Named(), torch.randn(4, 8))
    (record,) = caplog.records
    message = record.getMessage()
    assert "'stem.0' (Linear)" in message and "'norm' (BatchNorm1d)" in message
    assert "set bias=False on 'stem.0'" in message
