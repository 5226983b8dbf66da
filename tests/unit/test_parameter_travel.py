"""Only trainable tensors (and BatchNorm running statistics) travel; the orchestrator counts a
missing frozen entry as a zero delta."""

from __future__ import annotations

import numpy as np
import pytest
from support.toy_bundle import toy_manifest

from fedge.orchestrator.strategies import create_strategy
from fedge.orchestrator.validation import UpdateRejected, validate_delta
from fedge.protocol.manifest import Manifest
from fedge.protocol.parameter_travel import static_names, travelling_delta
from fedge.protocol.tensors import encode_tensors


def _bn_manifest() -> Manifest:
    """fc.weight trains; bn.running_mean is frozen but updated by training; fc.bias frozen."""
    m = toy_manifest()
    m["parameters"].append(
        {"name": "bn.running_mean", "shape": [2], "dtype": "float32", "trainable": False}
    )
    m["running_stats"] = [{"param": "bn.running_mean", "output": "bn_mean_out"}]
    return Manifest.from_dict(m, draft=True)


REFERENCE = {
    "fc.weight": np.ones((2, 3), np.float32),
    "fc.bias": np.ones(2, np.float32),
    "bn.running_mean": np.zeros(2, np.float32),
}


def test_frozen_parameters_stay_home_but_running_statistics_travel():
    manifest = _bn_manifest()
    assert static_names(manifest) == {"fc.bias"}
    delta = {n: np.full_like(v, 0.5) for n, v in REFERENCE.items()}
    assert sorted(travelling_delta(manifest, delta)) == ["bn.running_mean", "fc.weight"]


def test_the_orchestrator_fills_a_missing_frozen_entry_with_zeros():
    sent = {"fc.weight": np.full((2, 3), 0.5, np.float32), "bn.running_mean": np.ones(2, "f4")}
    got = validate_delta(encode_tensors(sent), REFERENCE, omittable=frozenset({"fc.bias"}))
    np.testing.assert_array_equal(got["fc.bias"], np.zeros(2))
    np.testing.assert_array_equal(got["fc.weight"], sent["fc.weight"])
    # a trainable parameter or a running statistic may not be left out
    with pytest.raises(UpdateRejected, match="missing \\['bn.running_mean'\\]"):
        validate_delta(
            encode_tensors({"fc.weight": sent["fc.weight"]}),
            REFERENCE,
            omittable=frozenset({"fc.bias"}),
        )
    with pytest.raises(UpdateRejected, match="missing \\['fc.bias'\\]"):  # not declared: refused
        validate_delta(encode_tensors(sent), REFERENCE)


@pytest.mark.parametrize("strategy", ["fedavg", "median", "trimmed_mean", "krum"])
def test_every_strategy_keeps_a_frozen_parameter_some_updates_leave_out(strategy):
    agg = create_strategy(strategy, {}).start_aggregation(REFERENCE)
    agg.add({"fc.weight": np.full((2, 3), 0.1, np.float32), "fc.bias": np.zeros(2, "f4")}, 10)
    for scale in (0.2, 0.3, 0.4, 0.5):  # newer agents send no zero delta for fc.bias
        agg.add({"fc.weight": np.full((2, 3), scale, np.float32)}, 10)
    new = agg.result()
    assert new is not None and sorted(new) == sorted(REFERENCE)
    np.testing.assert_array_equal(new["fc.bias"], REFERENCE["fc.bias"])
    assert float(new["fc.weight"][0, 0]) > 1.0
