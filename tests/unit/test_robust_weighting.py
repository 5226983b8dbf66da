"""Robust weighting: the weight caps, the adaptive clip, outright rejection, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.orchestrator.robust_weighting import (
    RobustWeighting,
    RoundUpdate,
    lower_median,
    scale_delta,
)
from fedge.orchestrator.strategies import create_strategy
from fedge.protocol.errors import ConfigError
from fedge.protocol.tensors import l2_norm


def ups(*rows: tuple) -> list[RoundUpdate]:
    """(claimed, registered, norm) rows -> updates from agents a0, a1, ..."""
    return [RoundUpdate(f"a{i}", c, r, n) for i, (c, r, n) in enumerate(rows)]


def test_lower_median() -> None:
    assert lower_median([5.0]) == 5.0
    assert lower_median([9.0, 1.0]) == 1.0
    assert lower_median([3.0, 1.0, 2.0]) == 2.0
    assert lower_median([4.0, 1.0, 3.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        lower_median([])


# ---- weight caps ----
def test_cap_a_registered_count() -> None:
    plan = RobustWeighting(sample_cap_multiple=0, norm_multiple=0).weigh(
        ups((500, 100, 1.0), (80, None, 1.0), (90, 0, 1.0))
    )
    assert [u.weight for u in plan.updates] == [100, 80, 90]  # None and 0 = not known
    assert plan.updates[0].capped and plan.updates[0].cap_reason == "registered"
    assert not plan.updates[1].capped and not plan.updates[2].capped


def test_cap_b_configured_maximum() -> None:
    plan = RobustWeighting(sample_cap_multiple=0, max_samples=1000, norm_multiple=0).weigh(
        ups((10**15, 10**15, 1.0), (999, None, 1.0))
    )
    assert [u.weight for u in plan.updates] == [1000, 999]
    assert plan.updates[0].cap_reason == "max_samples"


def test_cap_c_multiple_of_the_median() -> None:
    rw = RobustWeighting(sample_cap_multiple=3.0, max_samples=0, norm_multiple=0)
    plan = rw.weigh(ups((10**15, None, 1.0), (100, None, 1.0), (120, None, 1.0), (90, None, 1.0)))
    assert plan.median_samples == 100  # lower median of 90, 100, 120, 10^15
    assert [u.weight for u in plan.updates] == [300, 100, 120, 90]
    assert plan.updates[0].cap_reason == "median"
    assert plan.metrics()["robust_capped"] == 1.0


def test_cap_c_configurable_and_median_of_the_justified_counts() -> None:
    rw = RobustWeighting(sample_cap_multiple=1.5, max_samples=0, norm_multiple=0)
    # a0 registered 10: its justified count 10 enters the median, not its claim of 10^9
    plan = rw.weigh(ups((10**9, 10, 1.0), (100, None, 1.0), (200, None, 1.0)))
    assert plan.median_samples == 100
    assert [u.weight for u in plan.updates] == [10, 100, 150]


def test_two_devices_one_liar_cannot_own_the_round() -> None:
    plan = RobustWeighting(sample_cap_multiple=2.0, max_samples=0, norm_multiple=0).weigh(
        ups((10**15, None, 1.0), (100, None, 1.0))
    )
    assert [u.weight for u in plan.updates] == [200, 100]


def test_defaults_are_the_benchmarked_ones() -> None:
    rw = RobustWeighting()  # docs/learning-quality.md, "Robust weighting"
    assert (rw.sample_cap_multiple, rw.norm_multiple, rw.norm_window) == (1.5, 1.5, 5)
    assert rw.max_samples == 10_000_000 and rw.max_update_norm == 0.0


def test_honest_counts_untouched() -> None:
    plan = RobustWeighting().weigh(ups((89, 89, 1.0), (147, 147, 1.1), (207, 207, 0.9)))
    assert [u.weight for u in plan.updates] == [89, 147, 207]
    assert all(u.scale == 1.0 for u in plan.updates)
    assert plan.summary().startswith("norm bound")


# ---- adaptive clipping ----
def test_clip_scales_only_above_the_bound() -> None:
    rw = RobustWeighting(norm_multiple=2.0, norm_window=1)
    plan = rw.weigh(ups((10, None, 1.0), (10, None, 2.0), (10, None, 3.0), (10, None, 50.0)))
    assert plan.median_norm == 2.0 and plan.norm_bound == 4.0
    assert [u.scale for u in plan.updates[:3]] == [1.0, 1.0, 1.0]
    assert plan.updates[3].scale == pytest.approx(4.0 / 50.0)
    assert plan.updates[3].clipped and plan.updates[3].accepted  # scaled, not rejected
    assert plan.updates[3].weight == 10


def test_clip_at_exactly_the_bound_is_not_clipped() -> None:
    plan = RobustWeighting(norm_multiple=2.0, norm_window=1).weigh(
        ups((1, None, 1.0), (1, None, 2.0))
    )
    assert plan.norm_bound == 2.0 and plan.updates[1].scale == 1.0


def test_median_with_one_device_does_not_clip_it() -> None:
    plan = RobustWeighting(norm_multiple=2.0).weigh(ups((10, None, 7.0)))
    assert plan.median_norm == 7.0 and plan.norm_bound == 14.0
    assert plan.updates[0].scale == 1.0 and plan.updates[0].weight == 10


def test_median_with_two_devices_is_the_lower_one() -> None:
    plan = RobustWeighting(norm_multiple=2.0).weigh(ups((10, None, 1.0), (10, None, 100.0)))
    assert plan.median_norm == 1.0 and plan.norm_bound == 2.0
    assert plan.updates[0].scale == 1.0
    assert plan.updates[1].scale == pytest.approx(0.02)


def test_floor_in_round_one_when_every_update_is_zero() -> None:
    rw = RobustWeighting(norm_floor=1e-3)
    plan = rw.weigh(ups((10, None, 0.0), (10, None, 0.0), (10, None, 0.5)))
    assert plan.median_norm == 0.0 and plan.norm_bound == 1e-3
    assert plan.updates[0].scale == 1.0  # a zero delta needs no scaling
    assert plan.updates[2].scale == pytest.approx(1e-3 / 0.5)
    assert 0 < plan.updates[2].scale <= 1


def test_recent_rounds_bound_a_lone_outlier() -> None:
    rw = RobustWeighting(norm_multiple=2.0, norm_window=3)
    rw.weigh(ups((10, None, 1.0), (10, None, 1.0), (10, None, 1.0)))
    plan = rw.weigh(ups((10, None, 100.0)))  # alone in its round
    assert plan.norm_bound == 2.0 and plan.updates[0].scale == pytest.approx(0.02)
    assert rw.recent_norms() == [[1.0, 1.0, 1.0], [100.0]]
    rw.weigh(ups((10, None, 5.0)))
    assert rw.recent_norms() == [[100.0], [5.0]]  # window 3 = this round + 2 before


def test_history_restore_and_window_one_keeps_nothing() -> None:
    rw = RobustWeighting(norm_multiple=2.0, norm_window=4)
    rw.restore([[1.0, 1.0], [1.0]])
    assert rw.weigh(ups((10, None, 10.0))).norm_bound == 2.0
    single = RobustWeighting(norm_window=1)
    single.weigh(ups((10, None, 1.0)))
    assert single.recent_norms() == []


def test_clipping_off() -> None:
    plan = RobustWeighting(norm_multiple=0).weigh(ups((10, None, 1.0), (10, None, 1e9)))
    assert math.isinf(plan.norm_bound) and plan.updates[1].scale == 1.0
    assert plan.metrics()["robust_norm_bound"] == 0.0


# ---- outright rejection ----
def test_explicit_max_update_norm_still_rejects() -> None:
    rw = RobustWeighting(max_update_norm=10.0)
    plan = rw.weigh(ups((10, None, 1.0), (10, None, 1.0), (10**15, None, 11.0)))
    bad = plan.get("a2")
    assert not bad.accepted and bad.weight == 0 and bad.scale == 0.0
    assert "max_update_norm" in bad.rejected
    assert plan.median_samples == 10  # the rejected claim does not enter the median
    assert [u.agent_id for u in plan.accepted()] == ["a0", "a1"]
    assert plan.metrics()["robust_rejected"] == 1.0
    assert rw.recent_norms() == [[1.0, 1.0]]


def test_non_finite_norm_rejected() -> None:
    plan = RobustWeighting().weigh(ups((10, None, math.inf), (10, None, 1.0)))
    assert not plan.get("a0").accepted and plan.get("a1").scale == 1.0


def test_bad_inputs_and_options_raise() -> None:
    rw = RobustWeighting()
    with pytest.raises(ValueError, match="two updates"):
        rw.weigh(ups((1, None, 1.0)) * 2)
    with pytest.raises(ValueError, match="claimed_samples"):
        rw.weigh(ups((0, None, 1.0)))
    with pytest.raises(KeyError):
        rw.weigh(ups((1, None, 1.0))).get("nobody")
    with pytest.raises(ConfigError, match="sample_cap_multiple"):
        RobustWeighting(sample_cap_multiple=0.5)
    with pytest.raises(ConfigError, match="norm_floor"):
        RobustWeighting(norm_floor=0)
    with pytest.raises(ConfigError, match="norm_window"):
        RobustWeighting(norm_window=0)


# ---- the two-pass use with a real strategy ----
def test_two_pass_fedavg_neutralises_a_liar() -> None:
    g = {"w": np.zeros(4, np.float32)}
    honest = [{"w": np.full(4, 0.1, np.float32)} for _ in range(8)]
    liar = {"w": np.full(4, -1000.0, np.float32)}
    stored = [(f"h{i}", 100, d) for i, d in enumerate(honest)] + [("liar", 10**15, liar)]
    plan = RobustWeighting().weigh([RoundUpdate(a, n, None, l2_norm(d)) for a, n, d in stored])
    agg = create_strategy("fedavg").start_aggregation(g)
    for agent, _n, delta in stored:
        w = plan.get(agent)
        agg.add(scale_delta(delta, w.scale), w.weight)
    new = agg.result()["w"]
    # honest norm 0.2; the liar is weighted 150 of 950 and scaled to norm 0.3 (-0.15 an entry):
    # at most 1.5 x 1.5 = 2.25 honest devices' worth of pull, so 8 honest devices win
    assert np.allclose(new, (8 * 100 * 0.1 + 150 * -0.15) / 950, atol=1e-6)
    assert new[0] > 0
    today = create_strategy("fedavg").start_aggregation(g)  # weight = claim, no clipping
    for _agent, n, delta in stored:
        today.add(delta, n)
    assert today.result()["w"][0] < -999  # the liar is the new model


def test_scale_delta_keeps_dtype_and_identity_at_one() -> None:
    d = {"w": np.ones(3, np.float32)}
    assert scale_delta(d, 1.0) is d
    half = scale_delta(d, 0.5)
    assert half["w"].dtype == np.float32 and np.allclose(half["w"], 0.5)


# ---- invariants over random rounds ----
update_rows = st.lists(
    st.tuples(
        st.integers(1, 10**15),
        st.one_of(st.none(), st.integers(0, 10**15)),
        st.one_of(st.just(0.0), st.floats(1e-12, 1e12, allow_nan=False)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    rows=update_rows,
    multiple=st.floats(1.0, 10.0),
    max_samples=st.integers(0, 10**9),
    norm_multiple=st.floats(0.5, 5.0),
    max_update_norm=st.one_of(st.just(0.0), st.floats(1e-3, 1e6)),
    rounds=st.integers(1, 3),
)
def test_no_weight_exceeds_its_cap_and_scales_in_unit_interval(
    rows, multiple, max_samples, norm_multiple, max_update_norm, rounds
) -> None:
    rw = RobustWeighting(
        sample_cap_multiple=multiple,
        max_samples=max_samples,
        norm_multiple=norm_multiple,
        max_update_norm=max_update_norm,
    )
    for _ in range(rounds):
        plan = rw.weigh(ups(*rows))
    for (claimed, registered, norm), u in zip(rows, plan.updates, strict=True):
        if max_update_norm and norm > max_update_norm:
            assert not u.accepted and u.weight == 0
            continue
        assert u.accepted
        assert 1 <= u.weight <= claimed
        if registered:
            assert u.weight <= registered
        if max_samples:
            assert u.weight <= max_samples
        assert u.weight <= max(1, math.floor(multiple * plan.median_samples))
        assert 0 < u.scale <= 1
        assert u.scale * norm <= plan.norm_bound * (1 + 1e-12)
        if norm <= plan.norm_bound:
            assert u.scale == 1.0
