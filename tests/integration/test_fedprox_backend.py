"""FedProx on the device: the proximal term keeps local weights closer to the global model."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.backends import available_backends, create_backend
from fedge.demo.data import load_sklearn_dataset
from fedge.protocol.bundle import load_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlp_bundle(digits_bundle_factory):
    return load_bundle(digits_bundle_factory("sgd", 0.1))


@pytest.mark.parametrize("backend_name", ["ort-training", "ort-portable"])
def test_proximal_term_shrinks_the_drift(mlp_bundle, backend_name):
    assert backend_name in available_backends()
    x, y = load_sklearn_dataset("digits")
    x, y = x[:300], y[:300]
    anchor = mlp_bundle.initial_parameters()

    def drift(mu: float) -> float:
        backend = create_backend(backend_name)
        backend.load(mlp_bundle)
        backend.set_parameters(anchor)
        backend.train(x, y, epochs=2, batch_size=16, seed=0, proximal_mu=mu, anchor=anchor)
        params = backend.get_parameters()
        return float(
            np.sqrt(sum(((params[n] - anchor[n]) ** 2).sum() for n in mlp_bundle.trainable_names))
        )

    free, prox = drift(0.0), drift(5.0)
    assert prox < 0.8 * free, (free, prox)
