"""Pure aggregation arithmetic (no I/O), shared by the strategies.

Everything works on parameter dicts (name -> array) and computes in float64; callers cast back
to each parameter's dtype with ``apply_delta``.
"""

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


def weighted_mean(deltas: list[Params], weights: list[float]) -> Params:
    """The weighted mean of a list of deltas (the stacking reference for ``WeightedMean``)."""
    if not deltas:
        raise ValueError("no deltas to average")
    w = np.asarray(weights, dtype=np.float64)
    return {
        name: np.tensordot(w, np.stack([d[name] for d in deltas]).astype(np.float64), axes=1)
        / w.sum()
        for name in deltas[0]
    }


def apply_delta(global_params: Params, delta: Params, scale: float = 1.0) -> Params:
    """global + scale * delta, keeping each parameter's dtype."""
    return {
        name: (value + scale * delta[name]).astype(value.dtype) if name in delta else value.copy()
        for name, value in global_params.items()
    }


# ---- robust statistics (need every update at once: O(devices x model) memory) ----
def coordinate_median(deltas: list[Params]) -> Params:
    """Coordinate-wise median (Yin et al. 2018); unweighted, so one device is one vote."""
    if not deltas:
        raise ValueError("no deltas for the median")
    return {
        name: np.median(np.stack([d[name] for d in deltas]).astype(np.float64), axis=0)
        for name in deltas[0]
    }


def trimmed_mean(deltas: list[Params], trim_fraction: float) -> Params:
    """Coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values.

    ``k = floor(trim_fraction * n)`` values go from each end; at least one value stays.
    """
    n = len(deltas)
    if not n:
        raise ValueError("no deltas for the trimmed mean")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    k = min(int(np.floor(trim_fraction * n)), (n - 1) // 2)
    out: Params = {}
    for name in deltas[0]:
        stacked = np.sort(np.stack([d[name] for d in deltas]).astype(np.float64), axis=0)
        out[name] = stacked[k : n - k].mean(axis=0)
    return out


def flatten(delta: Params, names: list[str]) -> np.ndarray:
    return np.concatenate([np.ravel(delta[n]).astype(np.float64) for n in names])


def krum_scores(deltas: list[Params], byzantine: int) -> np.ndarray:
    """Krum score per delta (Blanchard et al. 2017): summed squared distances to its
    ``n - f - 2`` nearest neighbours (at least 1)."""
    n = len(deltas)
    if not n:
        raise ValueError("no deltas for Krum")
    names = sorted(deltas[0])
    flat = np.stack([flatten(d, names) for d in deltas])
    sq = (flat**2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    neighbours = max(1, n - byzantine - 2)
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[: min(neighbours, len(others))].sum() if len(others) else 0.0
    return scores


def multi_krum_select(deltas: list[Params], byzantine: int, keep: int) -> list[int]:
    """Indices of the ``keep`` deltas with the lowest Krum scores (``keep=1`` is Krum)."""
    scores = krum_scores(deltas, byzantine)
    keep = max(1, min(keep, len(deltas)))
    return sorted(np.argsort(scores, kind="stable")[:keep].tolist())


# ---- server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization") ----
def momentum_update(velocity: Params | None, delta: Params, momentum: float) -> Params:
    """FedAvgM (Hsu et al. 2019): ``v = momentum * v + delta``."""
    if velocity is None:
        return {n: d.astype(np.float64) for n, d in delta.items()}
    return {n: momentum * velocity[n] + delta[n] for n in delta}


def adaptive_update(
    kind: str,
    m: Params | None,
    v: Params | None,
    delta: Params,
    *,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[Params, Params, Params]:
    """One server step of FedAdagrad/FedAdam/FedYogi; returns (m, v, step).

    ``m = b1*m + (1-b1)*delta``; ``v`` per ``kind``:
    adagrad ``v + delta^2``, adam ``b2*v + (1-b2)*delta^2``,
    yogi ``v - (1-b2)*delta^2*sign(v - delta^2)``; ``step = m / (sqrt(v) + tau)``.
    ``m`` starts at 0 and ``v`` at ``tau^2`` (the paper's initialisation).
    """
    if kind not in ("adagrad", "adam", "yogi"):
        raise ValueError(f"unknown adaptive optimizer {kind!r}")
    new_m: Params = {}
    new_v: Params = {}
    step: Params = {}
    for name, d in delta.items():
        d = d.astype(np.float64)
        m0 = m[name] if m is not None else np.zeros_like(d)
        v0 = v[name] if v is not None else np.full_like(d, tau * tau)
        m1 = beta1 * m0 + (1.0 - beta1) * d
        d2 = d * d
        if kind == "adagrad":
            v1 = v0 + d2
        elif kind == "adam":
            v1 = beta2 * v0 + (1.0 - beta2) * d2
        else:
            v1 = v0 - (1.0 - beta2) * d2 * np.sign(v0 - d2)
        new_m[name], new_v[name] = m1, v1
        step[name] = m1 / (np.sqrt(v1) + tau)
    return new_m, new_v, step
