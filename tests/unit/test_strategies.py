"""Strategies against hand-computed values: server optimizers, robust aggregation, selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.orchestrator.config import OrchestratorConfig, StrategyOptions
from fedge.orchestrator.selection import matches_target, over_selected, select_devices
from fedge.orchestrator.strategies import STRATEGIES, DeviceInfo, create_strategy
from fedge.orchestrator.strategies.aggregate import (
    adaptive_update,
    coordinate_median,
    krum_scores,
    multi_krum_select,
    trimmed_mean,
)
from fedge.protocol.errors import ConfigError
from fedge.protocol.messages import TrainConfig
from fedge.protocol.settings import load_settings


def p(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, np.float32)}


def run_round(strategy, global_params, deltas, weights=None):
    agg = strategy.start_aggregation(global_params)
    for d, w in zip(deltas, weights or [1] * len(deltas), strict=True):
        agg.add(d, w)
    return agg.result()


def test_coordinate_median_by_hand():
    out = coordinate_median([p(1, 5, 3), p(2, -1, 0), p(10, 0, 1)])
    np.testing.assert_array_equal(out["w"], [2, 0, 1])


def test_trimmed_mean_drops_both_ends():
    deltas = [p(v, -v) for v in (1, 2, 3, 4, 100)]
    np.testing.assert_allclose(trimmed_mean(deltas, 0.2)["w"], [3, -3])  # mean(2, 3, 4)
    np.testing.assert_allclose(trimmed_mean(deltas, 0.0)["w"], [22, -22])


def test_krum_scores_and_selection_by_hand():
    deltas = [p(0), p(1), p(2), p(100)]
    # f=1, n=4: each score sums the n-f-2 = 1 nearest squared distance
    np.testing.assert_allclose(krum_scores(deltas, 1), [1, 1, 1, 98**2])
    assert multi_krum_select(deltas, 1, 3) == [0, 1, 2]
    out = run_round(create_strategy("krum", {"byzantine": 1}), p(10), deltas, [1, 1, 2, 5])
    np.testing.assert_allclose(out["w"], [10 + (0 + 1 + 4) / 4])  # weighted mean of kept ones


def test_fedavgm_momentum_by_hand():
    s = create_strategy("fedavgm", {"momentum": 0.9, "server_lr": 1.0})
    g = run_round(s, p(0), [p(1), p(1)])
    np.testing.assert_allclose(g["w"], [1.0])  # v = 1
    g = run_round(s, g, [p(1)])
    np.testing.assert_allclose(g["w"], [1.0 + 1.9])  # v = 0.9 * 1 + 1


@pytest.mark.parametrize(
    "kind, v1",
    [
        ("adam", 0.99 * 1e-6 + 0.01 * 0.01),
        ("yogi", 1e-6 + 0.01 * 0.01),  # sign(v0 - d^2) = -1
        ("adagrad", 1e-6 + 0.01),
    ],
)
def test_adaptive_first_step_by_hand(kind, v1):
    m, v, step = adaptive_update(kind, None, None, p(0.1), beta1=0.9, beta2=0.99, tau=1e-3)
    np.testing.assert_allclose(m["w"], [0.01], rtol=1e-6)
    np.testing.assert_allclose(v["w"], [v1], rtol=1e-6)
    np.testing.assert_allclose(step["w"], [0.01 / (math.sqrt(v1) + 1e-3)], rtol=1e-6)
    s = create_strategy(f"fed{kind}", {"eta": 0.5, "tau": 1e-3})
    out = run_round(s, p(1.0), [p(0.1)])
    np.testing.assert_allclose(out["w"], [1.0 + 0.5 * 0.01 / (math.sqrt(v1) + 1e-3)], rtol=1e-5)


def test_server_optimizer_state_survives_a_restart():
    deltas = [p(0.3, -0.1), p(-0.2, 0.4), p(0.05, 0.05)]
    a = create_strategy("fedadam", {"eta": 0.1})
    g = p(0, 0)
    for d in deltas:
        g = run_round(a, g, [d])
    b = create_strategy("fedadam", {"eta": 0.1})
    h = run_round(b, p(0, 0), [deltas[0]])
    c = create_strategy("fedadam", {"eta": 0.1})  # a "restarted" orchestrator
    c.load_state_dict(b.state_dict())
    for d in deltas[1:]:
        h = run_round(c, h, [d])
    np.testing.assert_allclose(h["w"], g["w"], rtol=1e-6)


def test_robust_strategies_resist_one_huge_update_and_fedavg_does_not():
    honest = [p(1.0, 1.0), p(1.1, 0.9), p(0.9, 1.1), p(1.0, 1.05), p(1.05, 1.0)]
    poisoned = honest + [p(-1000.0, 1000.0)]
    for name in ("median", "trimmed_mean", "krum"):
        out = run_round(create_strategy(name, StrategyOptions()), p(0, 0), poisoned)
        assert np.all(np.abs(out["w"] - 1.0) < 0.15), (name, out)
    out = run_round(create_strategy("fedavg"), p(0, 0), poisoned)
    assert np.abs(out["w"]).max() > 100


def test_no_updates_keep_the_model_for_every_strategy():
    for name in STRATEGIES:
        assert create_strategy(name).start_aggregation(p(1)).result() is None, name


def test_fedprox_sends_its_proximal_mu_and_others_leave_the_config_alone():
    base = TrainConfig(local_epochs=2)
    assert create_strategy("fedprox", {"proximal_mu": 0.1}).configure_train(base).proximal_mu == 0.1
    assert create_strategy("fedavg").configure_train(base) == base


def test_strategy_from_toml(tmp_path):
    cfg = tmp_path / "o.toml"
    cfg.write_text('strategy = "fedyogi"\n[strategy_options]\neta = 0.05\n')
    c = load_settings(OrchestratorConfig, cfg, overrides=["strategy_options.tau=0.01"], env={})
    s = create_strategy(c.strategy, c.strategy_options)
    assert (s.name, s.eta, s.tau) == ("fedyogi", 0.05, 0.01)
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'"):
        create_strategy("fedsgd")
    with pytest.raises(ConfigError, match="trim_fraction"):
        create_strategy("trimmed_mean", {"trim_fraction": 0.7})


def test_weighted_selection_prefers_big_devices_and_is_seeded():
    devices = [("big", 1000)] + [(f"small-{i}", 1) for i in range(9)]
    picks = [select_devices(devices, 2, seed=f"0/{r}", weighted=True) for r in range(50)]
    assert sum("big" in x for x in picks) >= 45
    assert all(len(x) == 2 for x in picks)
    assert select_devices(devices, 2, seed="s", weighted=True) == select_devices(
        devices, 2, seed="s", weighted=True
    )
    assert select_devices(devices, 0, seed="s") == sorted(a for a, _ in devices)


def test_over_selection_and_targets():
    assert over_selected(10, 1.3, 100) == 13
    assert over_selected(10, 1.3, 11) == 11
    assert over_selected(0, 1.3, 7) == 7
    assert matches_target("ward-a-3", "ort-training", ["ward-a-*"], [])
    assert not matches_target("ward-b-1", "ort-training", ["ward-a-*"], [])
    assert not matches_target("ward-a-1", "ort-portable", [], ["ort-training"])
    s = create_strategy("fedavg")
    devs = [DeviceInfo(f"d{i}", 10, "x") for i in range(5)]
    assert len(s.configure_round(1, devs, per_round=3, seed=0)) == 3
