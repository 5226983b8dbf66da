import numpy as np
import pytest

from fedge.orchestrator.strategies import DeviceInfo, FedAvg
from fedge.orchestrator.strategies.aggregate import WeightedMean
from fedge.orchestrator.validation import UpdateRejected, validate_delta
from fedge.protocol.tensors import encode_tensors


def test_fedavg_is_the_sample_weighted_mean_of_deltas():
    g = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}
    agg = FedAvg().start_aggregation(g)
    agg.add({"w": np.array([1.0, 0.0], np.float32), "b": np.array([1.0], np.float32)}, 100)
    agg.add({"w": np.array([-1.0, 3.0], np.float32), "b": np.array([0.0], np.float32)}, 300)
    new = agg.result()
    np.testing.assert_allclose(new["w"], [1.0 + (100 - 300) / 400, 2.0 + 900 / 400])
    np.testing.assert_allclose(new["b"], [0.5 + 100 / 400])
    assert new["w"].dtype == np.float32


def test_streaming_mean_matches_stacked_mean_and_is_order_free():
    rng = np.random.default_rng(1)
    deltas = [{"w": rng.standard_normal((5, 4)).astype(np.float32)} for _ in range(7)]
    weights = rng.integers(1, 50, 7)
    m1, m2 = WeightedMean(), WeightedMean()
    for d, w in zip(deltas, weights, strict=False):
        m1.add(d, float(w))
    for d, w in reversed(list(zip(deltas, weights, strict=False))):
        m2.add(d, float(w))
    stacked = np.average(np.stack([d["w"] for d in deltas]), axis=0, weights=weights)
    np.testing.assert_allclose(m1.mean()["w"], stacked, rtol=1e-6)
    np.testing.assert_allclose(m1.mean()["w"], m2.mean()["w"], rtol=1e-12)


def test_no_updates_keeps_the_model():
    assert FedAvg().start_aggregation({"w": np.ones(2, np.float32)}).result() is None


def test_participant_selection_is_seeded_and_bounded():
    devices = [DeviceInfo(f"dev-{i}", 10, "ort-training") for i in range(10)]
    a = FedAvg().configure_round(3, devices, per_round=4, seed=7)
    b = FedAvg().configure_round(3, devices, per_round=4, seed=7)
    assert a == b and len(a) == 4
    assert FedAvg().configure_round(3, devices, per_round=0, seed=7) == sorted(
        d.agent_id for d in devices
    )


@pytest.mark.parametrize(
    "delta, fragment",
    [
        ({"w": np.array([np.nan, 1.0], np.float32)}, "non-finite"),
        ({"w": np.ones(3, np.float32)}, "shape"),
        ({"w": np.ones(2, np.float64)}, "dtype"),
        ({"w": np.ones(2, np.float32), "x": np.ones(1, np.float32)}, "unknown"),
        ({}, "missing"),
        ({"w": np.array([300.0, 400.0], np.float32)}, "norm 500"),
    ],
)
def test_validation_rejects_bad_updates(delta, fragment):
    ref = {"w": np.zeros(2, np.float32)}
    with pytest.raises(UpdateRejected, match=fragment):
        validate_delta(encode_tensors(delta), ref, max_norm=100.0)


def test_validation_rejects_garbage_bytes():
    with pytest.raises(UpdateRejected, match="safetensors"):
        validate_delta(b"\x00\x01garbage", {"w": np.zeros(2, np.float32)})
