"""ort-training's one-logit loss stays finite for confident logits.

onnxblock's BCEWithLogitsLoss is log(1 - sigmoid(x)): NaN once a logit passes ~17, so the
second round of a binary federation diverged on every ort-training device (found by the
breast_cancer federation in test_tasks_federation.py). The exporter now builds PyTorch's
stable formulation (exporter/stable_bce.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedge.agent.backends import create_backend
from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle

pytestmark = pytest.mark.integration


def test_confident_logits_train_to_a_finite_loss_like_pytorch(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    path = export_bundle(
        model,
        input_shape=(4,),
        out_dir=tmp_path / "bundle",
        loss="bce_with_logits",
        optimizer="sgd",
        lr=0.01,
        portable=False,
    )
    backend = create_backend("ort-training")
    bundle = load_bundle(path)
    backend.load(bundle)
    weight = np.full((1, 4), 10.0, np.float32)  # logits of +-40 on these rows
    backend.set_parameters({"weight": weight, "bias": np.zeros(1, np.float32)})
    x = np.array([[1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, 1, 1]], np.float32)
    y = np.array([1.0, 0.0, 0.0], np.float32)  # the last row is confidently wrong
    result = backend.train(x, y, epochs=1, batch_size=3, seed=0)
    with torch.no_grad():
        expected = nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(x @ weight.T), torch.from_numpy(y[:, None])
        )
    assert np.isfinite(result.loss)
    np.testing.assert_allclose(result.loss, float(expected), rtol=1e-5)
    params = backend.get_parameters()
    assert all(np.isfinite(v).all() for v in params.values())
