"""The orchestrator's side of federated standardization: what a run may standardize, and the
statistics round's result from the stored reports (arithmetic: protocol/standardization.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedge.protocol.errors import ConfigError
from fedge.protocol.fields import MAX_FEATURES
from fedge.protocol.manifest import Manifest
from fedge.protocol.standardization import FeatureStats, combine

from .config import OrchestratorConfig


def check_standardizable(config: OrchestratorConfig, manifest: Manifest) -> int:
    """The features per sample of the model's input; with ``rounds.standardize`` on, a
    ConfigError at start if the input cannot be standardized (ids, too many features)."""
    spec = manifest.inputs[0]
    features = math.prod(spec.sample_shape)
    if not config.rounds.standardize:
        return features
    if len(manifest.inputs) != 1:
        raise ConfigError(
            f"rounds.standardize: the model has {len(manifest.inputs)} inputs; federated "
            "standardization covers a model with one input"
        )
    if np.dtype(spec.dtype).kind != "f":
        raise ConfigError(
            f"rounds.standardize: the model's input '{spec.name}' takes {spec.dtype} values "
            "(token or category ids), which are not standardized; turn rounds.standardize off"
        )
    if features > MAX_FEATURES:
        raise ConfigError(
            f"rounds.standardize: the model's input '{spec.name}' has {features} features "
            f"per sample; federated standardization covers at most {MAX_FEATURES} (scale "
            "pixel-like inputs with data.feature_scale instead)"
        )
    return features


def combine_reports(
    reports: list[tuple[int, dict[str, Any]]],
) -> tuple[list[float], list[float], dict[str, float]]:
    """(mean, std, round metrics) from the stored reports ``(rows, {count, sum, sumsq})``."""
    stats = [FeatureStats(r["count"], r["sum"], r["sumsq"]) for _n, r in reports]
    mean, std, rows = combine(stats)  # StatisticsError if nothing to combine or not finite
    metrics = {
        "stat_rows": float(rows),
        "stat_devices": float(len(stats)),
        "stat_features": float(len(mean)),
    }
    return mean, std, metrics
