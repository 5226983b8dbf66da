"""InferenceRunner must use the parameters it is given, for every kind of layer.

Regression: with ORT's graph optimizations on, Conv+BatchNorm fusion read the exported weights
before add_initializer's replacements, so CNNs were scored with their starting weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zoo.models import ZOO

from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle
from fedge.protocol.inference import InferenceRunner

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["mobilenet_block", "cnn2d", "embedding"])
def test_runner_uses_given_parameters(name, tmp_path):
    spec = ZOO[name]
    model = spec.build()
    bundle = load_bundle(
        export_bundle(
            model,
            input_shape=spec.input_shape,
            input_dtype=spec.input_dtype,
            out_dir=tmp_path / name,
            optimizer="sgd",
            lr=0.1,
            verify=False,
            portable=False,
            **spec.options,
        )
    )
    rng = np.random.default_rng(0)
    params = {}
    for pname, value in bundle.initial_parameters().items():
        if value.dtype.kind == "f" and "running_var" not in pname:
            value = value + rng.normal(0, 0.3, value.shape).astype(value.dtype)
        params[pname] = value
    with torch.no_grad():
        state = model.state_dict()
        for pname, value in params.items():
            state[pname].copy_(torch.from_numpy(value))
        model.load_state_dict(state)
        model.eval()
        if spec.input_dtype == "int64":
            x = rng.integers(0, 10, (4, *spec.input_shape))
            expected = model(torch.from_numpy(x)).numpy()
        else:
            x = rng.standard_normal((4, *spec.input_shape)).astype(np.float32)
            expected = model(torch.from_numpy(x)).numpy()
    got = InferenceRunner(bundle, params).run(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
