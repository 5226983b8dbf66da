"""Client-level differential privacy: clip a device's delta, add Gaussian noise, count epsilon.

A device clips its whole delta (all tensors together) to L2 norm ``clip_norm`` and adds
independent Gaussian noise with std ``noise_multiplier * clip_norm`` to every entry before
the delta leaves the device. Each upload is then the Gaussian mechanism on that device's data
with sensitivity ``clip_norm`` (add/remove one device), whoever sees it, the orchestrator
included; FedAvg's weighting is post-processing.

The privacy budget of a run comes from Google's ``dp-accounting`` library (Renyi DP
accountant), not from a formula written here. Without subsampling amplification (the
orchestrator knows who it selected) a device that took part in ``rounds`` rounds has spent
``dp_epsilon(noise_multiplier, rounds, delta)``.

The noise comes from the operating system's entropy, never from the round's seed: a noise
seed the orchestrator could guess would let it subtract the noise.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .tensors import l2_norm

log = logging.getLogger(__name__)

DEFAULT_TARGET_DELTA = 1e-5


@dataclass(frozen=True)
class PrivatizedDelta:
    """The noisy, clipped delta, and the norm it had before clipping (for the logs)."""

    delta: dict[str, np.ndarray]
    norm_before: float
    clipped: bool


def clip_delta(
    delta: Mapping[str, np.ndarray], clip_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``delta`` down so its L2 norm is at most ``clip_norm``; return it and the old norm."""
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be > 0, got {clip_norm}")
    norm = l2_norm(delta)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (v.astype(np.float64) * scale).astype(v.dtype) for k, v in delta.items()}, norm


def add_gaussian_noise(
    delta: Mapping[str, np.ndarray], std: float, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Add N(0, std^2) to every entry; ``rng`` defaults to one seeded from OS entropy."""
    if std < 0:
        raise ConfigError(f"noise std must be >= 0, got {std}")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return {
        k: (v.astype(np.float64) + rng.normal(0.0, std, size=v.shape)).astype(v.dtype)
        for k, v in delta.items()
    }


def privatize_delta(
    delta: Mapping[str, np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> PrivatizedDelta:
    """Clip to ``clip_norm``, then add noise with std ``noise_multiplier * clip_norm``."""
    if noise_multiplier < 0:
        raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    clipped, norm = clip_delta(delta, clip_norm)
    noisy = add_gaussian_noise(clipped, noise_multiplier * clip_norm, rng)
    return PrivatizedDelta(noisy, norm, norm > clip_norm)


def dp_epsilon(
    noise_multiplier: float,
    rounds: int,
    *,
    target_delta: float = DEFAULT_TARGET_DELTA,
    sampling_rate: float = 1.0,
) -> float:
    """Epsilon spent after ``rounds`` Gaussian releases (dp-accounting's RDP accountant).

    ``sampling_rate`` < 1 claims Poisson subsampling amplification: only valid when nobody
    who sees the uploads knows which devices took part. ``inf`` without noise.
    """
    if rounds < 0 or not 0 < sampling_rate <= 1 or not 0 < target_delta < 1:
        raise ConfigError("dp_epsilon needs rounds >= 0, 0 < sampling_rate <= 1, 0 < delta < 1")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    try:
        import dp_accounting
        from dp_accounting import rdp
    except ImportError:
        raise ConfigError(
            "reporting the privacy budget needs Google's dp-accounting: pip install dp-accounting"
        ) from None
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    absl = logging.getLogger("absl")  # it warns about orders that do not converge
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return float(accountant.get_epsilon(target_delta))
    finally:
        absl.setLevel(level)
