"""Pure aggregation arithmetic (no I/O), shared by the strategies."""

from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]


class WeightedMean:
    """Running weighted mean of parameter dicts in float64: O(model) memory, any order."""

    def __init__(self) -> None:
        self._sum: Params = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, values: Params, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        for name, arr in values.items():
            acc = self._sum.get(name)
            if acc is None:
                self._sum[name] = arr.astype(np.float64) * weight
            else:
                acc += arr.astype(np.float64, copy=False) * weight
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Params | None:
        if not self.count:
            return None
        return {name: acc / self.total_weight for name, acc in self._sum.items()}


def apply_delta(global_params: Params, delta: Params, scale: float = 1.0) -> Params:
    """global + scale * delta, keeping each parameter's dtype."""
    return {
        name: (value + scale * delta[name]).astype(value.dtype) if name in delta else value.copy()
        for name, value in global_params.items()
    }


def l2_norm(delta: Params) -> float:
    return float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in delta.values())))
