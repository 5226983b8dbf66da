"""Federated feature standardization: per-feature statistics on devices, combined centrally.

Each device reports, per feature, the count ``n``, the sum ``s`` and the sum of squares ``q``
of its rows (float64, after ``feature_scale``; a few numbers per feature, never a row). The
orchestrator adds them up: ``mean = S / N``, ``var = Q / N - mean^2`` (population variance),
``std = sqrt(max(var, EPS))``. Devices and the central evaluator then feed
``(x - mean) / std`` to the model, before the data contract's cast to the input's dtype; the
exported inference model does the same step itself (orchestrator/model_export.py).

The arithmetic here is shared by agent and orchestrator so both sides agree to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fields import MAX_FEATURES
from .sqlite_samples import DataError

EPS = 1e-12  # variance floor: a feature constant over the federation maps to 0, not NaN


class StatisticsError(DataError):
    """Feature statistics cannot be computed, combined or applied (a data problem)."""


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature count, sum and sum of squares of one device's rows (or of many)."""

    count: list[int]
    sum: list[float]
    sumsq: list[float]

    @property
    def features(self) -> int:
        return len(self.count)


# A device's mean square per feature at most this (values up to ~1e100): the sums of up to
# 10,000 devices of up to 10^9 rows each then stay finite when the orchestrator adds them up,
# so one device's near-overflow report cannot turn the federation's mean into inf / NaN.
MAX_MEAN_SQUARE = 1e200


def local_stats(x: np.ndarray) -> FeatureStats:
    """The statistics of rows ``x`` (``[n, ...]``; each sample flattened to its features).

    Raises StatisticsError when a sum is not finite (values so large their squares overflow
    float64): such a report would poison the federation's mean."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[1] > MAX_FEATURES:
        raise StatisticsError(
            f"the model's input has {flat.shape[1]} features; federated standardization covers "
            f"at most {MAX_FEATURES} (scale pixel-like inputs with data.feature_scale instead)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        s = flat.sum(axis=0)
        q = np.square(flat).sum(axis=0)
    bad = np.flatnonzero(~(np.isfinite(s) & np.isfinite(q) & (q <= MAX_MEAN_SQUARE * len(flat))))
    if len(bad):
        raise StatisticsError(
            f"the feature statistics are not finite for feature {int(bad[0])} "
            f"({len(bad)} features): values too large for float64 sums of squares; "
            "rescale them with data.feature_scale"
        )
    return FeatureStats([len(flat)] * flat.shape[1], s.tolist(), q.tolist())


def report_problem(stats: FeatureStats, features: int, num_samples: int) -> str:
    """Why a device's report cannot be counted ("" if it can): it must describe ``features``
    features of at most ``num_samples`` rows, with finite numbers that real rows can give."""
    if stats.features != features:
        return (
            f"statistics for {stats.features} features, but the model's input has {features}: "
            "check data.features on the device"
        )
    n = np.asarray(stats.count, np.float64)
    s = np.asarray(stats.sum, np.float64)
    q = np.asarray(stats.sumsq, np.float64)
    if not (np.isfinite(s).all() and np.isfinite(q).all()):
        return "statistics are not finite"
    if (n > num_samples).any() or (n <= 0).any():
        return f"a feature count is outside 1..{num_samples} (the report's rows)"
    mean_square = q / n
    too_large = np.flatnonzero(mean_square > MAX_MEAN_SQUARE)
    if len(too_large):
        return (
            f"feature {int(too_large[0])}: values too large to standardize (mean square above "
            f"{MAX_MEAN_SQUARE:g}); rescale them with data.feature_scale"
        )
    # Cauchy-Schwarz: (s/n)^2 <= q/n for any real rows (a little slack for rounding); in means,
    # so a forged sum near the float64 limit cannot overflow its way past the check
    with np.errstate(over="ignore"):
        impossible = np.flatnonzero((s / n) ** 2 > mean_square * (1 + 1e-9) + 1e-300)
    if len(impossible):
        return f"feature {int(impossible[0])}: the sum of squares is smaller than real rows allow"
    return ""


def combine(reports: list[FeatureStats]) -> tuple[list[float], list[float], int]:
    """(mean, std, rows) of the union of the reports' rows."""
    if not reports:
        raise StatisticsError("no statistics reports to combine")
    n = np.sum([r.count for r in reports], axis=0, dtype=np.float64)
    s = np.sum([r.sum for r in reports], axis=0, dtype=np.float64)
    q = np.sum([r.sumsq for r in reports], axis=0, dtype=np.float64)
    mean = s / n
    var = q / n - mean * mean
    std = np.sqrt(np.maximum(var, EPS))
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise StatisticsError("the combined feature statistics are not finite")
    means: list[float] = [float(v) for v in np.atleast_1d(mean)]
    stds: list[float] = [float(v) for v in np.atleast_1d(std)]
    return means, stds, int(n.max())


def standardize(x: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """``(x - mean) / std`` per feature, in float64 (x: ``[n, ...]``, samples flattened)."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if flat.shape[1] != len(mean) or len(mean) != len(std):
        raise StatisticsError(
            f"the run's standardization covers {len(mean)} features but the rows have "
            f"{flat.shape[1]}: check data.features"
        )
    out: np.ndarray = (flat - np.asarray(mean)) / np.asarray(std)
    return out.reshape(np.shape(x))
