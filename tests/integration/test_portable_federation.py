"""A depthwise-separable CNN federated on the ``ort-portable`` backend only (issue 12).

The Raspberry Pi story: devices without the training wheel train a depthwise CNN through the
portable step. Three real agent processes forced onto ``ort-portable``, a real Mosquitto and
orchestrator, digits (8x8) stored as 64 REAL columns per row; the held-out accuracy must rise
well above the initial model's over a few rounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.task_federation import run_federation, write_table
from torch import nn

from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle

pytestmark = pytest.mark.integration


def depthwise_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.Conv2d(8, 16, 1),  # pointwise
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def test_three_portable_devices_train_a_depthwise_cnn(mosquitto, tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    parts = np.array_split(order[: int(len(y) * 0.8)], 3)
    test = order[int(len(y) * 0.8) :]
    bundle = export_bundle(
        depthwise_cnn(),
        input_shape=(1, 8, 8),
        out_dir=tmp_path / "bundle",
        optimizer="sgd",
        lr=0.05,
        model_name="digits-depthwise",
    )
    manifest = load_bundle(bundle).manifest
    assert "ort-portable" in manifest.backends, manifest.portable
    devices = [
        (write_table(tmp_path / f"d{i}.db", x[p], y[p]), {"backend": "ort-portable"})
        for i, p in enumerate(parts)
    ]
    test_db = write_table(tmp_path / "test.db", x[test], y[test])
    result = run_federation(
        tmp_path, mosquitto, bundle, devices, test_db, rounds=4, local_epochs=2, batch_size=32
    )
    accuracy = [m["test_accuracy"] for m in result.metrics]
    assert result.accepted == 12, result.logs
    assert result.logs.count("backend ort-portable (onnxruntime") == 3, result.logs
    assert accuracy[-1] > accuracy[0] + 0.4 and accuracy[-1] > 0.8, accuracy
    assert accuracy[2] > accuracy[0], accuracy  # rising, not one lucky version
    print("test accuracy per version:", [round(a, 3) for a in accuracy])
