"""A round's metrics from the devices' reports: weighted means, pure functions.

Training rounds weigh ``val_*`` by validation rows and the rest by training samples; federated
evaluation rounds weigh every metric by the rows each device evaluated and prefix it ``fed_``.
"""

from __future__ import annotations

from collections.abc import Iterable

Report = tuple[int, dict[str, float]]  # (num_samples, metrics) of one device


def training_metrics(reports: Iterable[Report]) -> dict[str, float]:
    """Weighted means of the devices' training metrics: ``val_*`` by validation rows, the rest
    by training samples; ``*_samples`` are summed."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in reports:
        for k, v in metrics.items():
            if k.endswith("_samples"):
                sums[k] = sums.get(k, 0.0) + v
                weights[k] = 1.0
                continue
            w = metrics.get("val_samples", n) if k.startswith("val_") else n
            if w > 0:
                sums[k] = sums.get(k, 0.0) + v * w
                weights[k] = weights.get(k, 0.0) + w
    return {
        k: sums[k] if k.endswith("_samples") else sums[k] / weights[k]
        for k in sums
        if weights.get(k)
    }


def federated_metrics(reports: Iterable[Report]) -> dict[str, float]:
    """Sample-weighted means of the devices' evaluation metrics, named ``fed_<metric>``, plus
    ``fed_samples`` (rows evaluated in all). A metric only some devices report (accuracy of a
    regression head, say) is averaged over the devices that report it."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0
    for n, metrics in reports:
        if n <= 0:
            continue
        total += n
        for k, v in metrics.items():
            if k.endswith("_samples"):
                continue
            sums[k] = sums.get(k, 0.0) + v * n
            weights[k] = weights.get(k, 0.0) + n
    out = {f"fed_{k}": sums[k] / weights[k] for k in sums}
    if total:
        out["fed_samples"] = float(total)
    return out
