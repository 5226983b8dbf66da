"""protocol.privacy: clipping bounds the norm, noise has the asked std, epsilon from dp-accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedge.protocol.errors import ConfigError
from fedge.protocol.privacy import (
    add_gaussian_noise,
    clip_delta,
    dp_epsilon,
    l2_norm,
    privatize_delta,
)


def _delta(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.normal(size=(64, 32)) * scale).astype(np.float32),
        "b": (rng.normal(size=32) * scale).astype(np.float32),
    }


@pytest.mark.parametrize("scale", [0.001, 0.1, 10.0, 1000.0])
def test_clipping_bounds_the_norm_and_keeps_direction(scale: float) -> None:
    delta = _delta(scale)
    clipped, before = clip_delta(delta, 1.5)
    assert before == pytest.approx(l2_norm(delta))
    assert l2_norm(clipped) <= 1.5 * (1 + 1e-6)
    if before <= 1.5:  # small deltas pass unchanged
        np.testing.assert_array_equal(clipped["w"], delta["w"])
    else:  # large ones are scaled, not truncated: same direction, norm exactly the bound
        assert l2_norm(clipped) == pytest.approx(1.5, rel=1e-5)
        np.testing.assert_allclose(clipped["w"] * (before / 1.5), delta["w"], rtol=1e-4)
    assert clipped["w"].dtype == np.float32


def test_zero_delta_and_bad_bound() -> None:
    zero = {"w": np.zeros(3, np.float32)}
    assert l2_norm(clip_delta(zero, 1.0)[0]) == 0.0
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_delta(zero, 0.0)


def test_noise_has_the_requested_std_and_zero_mean() -> None:
    zero = {"w": np.zeros((400, 500), np.float32)}
    noisy = add_gaussian_noise(zero, 0.3, np.random.default_rng(1))["w"].astype(np.float64)
    # 200k samples: the sample std is within ~0.5% of 0.3, the mean within ~0.003.
    assert noisy.std() == pytest.approx(0.3, rel=0.01)
    assert abs(noisy.mean()) < 0.003


def test_privatize_uses_multiplier_times_clip_norm_and_fresh_entropy() -> None:
    delta = _delta(100.0)
    out = privatize_delta(delta, clip_norm=2.0, noise_multiplier=0.5)
    assert out.clipped and out.norm_before > 2.0
    clipped, _ = clip_delta(delta, 2.0)
    noise = np.concatenate([(out.delta[k] - clipped[k]).ravel() for k in delta])
    assert noise.std() == pytest.approx(1.0, rel=0.05)  # 0.5 * 2.0 over 2080 entries
    again = privatize_delta(delta, clip_norm=2.0, noise_multiplier=0.5)
    assert not np.array_equal(again.delta["w"], out.delta["w"])  # OS entropy, no fixed seed


def _exact_gaussian_epsilon(sigma: float, target_delta: float) -> float:
    """Balle & Wang (2018): the tight epsilon of one Gaussian mechanism, sensitivity 1."""

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(
            -eps * sigma - 1 / (2 * sigma)
        )

    return brentq(lambda e: delta_of(e) - target_delta, 1e-9, 500)


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 10), (5.0, 100)])
def test_epsilon_is_a_tight_upper_bound(z: float, rounds: int) -> None:
    eps = dp_epsilon(z, rounds, target_delta=1e-5)
    # T Gaussian releases with multiplier z compose exactly to one with z / sqrt(T).
    exact = _exact_gaussian_epsilon(z / math.sqrt(rounds), 1e-5)
    assert exact <= eps <= 1.1 * exact, (eps, exact)


def test_epsilon_for_a_known_configuration() -> None:
    # dp-accounting 0.6 RDP accountant: z=1.0, one round, delta=1e-5.
    assert dp_epsilon(1.0, 1, target_delta=1e-5) == pytest.approx(4.7285, abs=1e-3)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    assert dp_epsilon(1.0, 0) == 0.0
    assert dp_epsilon(0.0, 5) == math.inf
    assert dp_epsilon(1.0, 20) > dp_epsilon(1.0, 10) > dp_epsilon(2.0, 10)
    assert dp_epsilon(1.0, 10, sampling_rate=0.1) < dp_epsilon(1.0, 10)
