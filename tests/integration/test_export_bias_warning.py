"""fedge export warns about a Conv bias feeding a BatchNorm directly (and only then)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from fedge.exporter.export import export_bundle


def conv_bn(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def test_export_warns(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="fedge.exporter.bias_check"):
        export_bundle(
            conv_bn(bias=True), input_shape=(1, 6, 6), out_dir=tmp_path / "b", portable=False
        )
    assert any("set bias=False on '0'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedge.exporter.bias_check"):
        export_bundle(
            conv_bn(bias=False), input_shape=(1, 6, 6), out_dir=tmp_path / "c", portable=False
        )
    assert not caplog.records
