"""Robust weighting: no single update can claim more weight or move the model further than
the orchestrator can justify. Pure decisions, no I/O.

Two defences, applied to every round's accepted updates before the strategy aggregates them:

* **Capped weights.** A device's weight is its claimed sample count, capped by (a) the count it
  registered in its status (when known), (b) a configured maximum, and (c) ``sample_cap_multiple``
  times the round's median count. FedAvg weighs by the claim, so without the cap one device
  claiming 10^15 samples *is* the new model.
* **Adaptive norm clipping.** Every update is scaled down (not rejected) to at most
  ``norm_multiple`` times the median update norm of the recent rounds (this round's and the
  previous ``norm_window - 1``'s), never below ``norm_floor``. This is the simple robust form of
  adaptive clipping (Andrew et al. 2021 track a quantile of the norms; the median x a multiplier
  needs no learning rate and no initial guess, and a minority of devices cannot move it). An
  explicit ``max_update_norm`` still rejects outright.

Medians are *lower* medians (with an even count, the lower middle value): with two devices,
neither one can drag the bound up to itself.

How the round close calls it (two passes over the stored deltas, O(model) memory)::

    updates = [
        RoundUpdate(agent, n, registered.get(agent), l2_norm(decode_delta(blob)))
        for agent, n, blob in store.accepted_deltas(run_id, rnd)
    ]
    plan = robust.weigh(updates)          # robust: one RobustWeighting kept across rounds
    log.info("round %d: %s", rnd, plan.summary())
    aggregator = strategy.start_aggregation(global_params)
    for agent, _n, blob in store.accepted_deltas(run_id, rnd):
        w = plan.get(agent)
        if w.accepted:
            aggregator.add(scale_delta(decode_delta(blob), w.scale), w.weight)
    metrics.update(plan.metrics())
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedge.protocol.errors import ConfigError

Params = dict[str, np.ndarray]

DEFAULT_MAX_SAMPLES = 10_000_000  # no edge device trains on more rows than this in one round


@dataclass(frozen=True)
class RoundUpdate:
    """One accepted update as the round close sees it (its delta stays in the store)."""

    agent_id: str
    claimed_samples: int  # the update's own num_samples
    registered_samples: int | None  # from the device's status; None or 0 = not known
    norm: float  # L2 norm of the whole delta (``fedge.protocol.tensors.l2_norm``)


@dataclass(frozen=True)
class UpdateWeight:
    """What the round does with one update: add ``scale * delta`` with ``weight``."""

    agent_id: str
    weight: int  # 0 when rejected
    scale: float  # in (0, 1] when accepted; 0 when rejected
    claimed_samples: int
    cap_reason: str  # "" (claim stands) | "registered" | "max_samples" | "median"
    norm: float
    rejected: str = ""  # why the update does not count ("" = it counts)

    @property
    def accepted(self) -> bool:
        return not self.rejected

    @property
    def capped(self) -> bool:
        return self.accepted and self.weight < self.claimed_samples

    @property
    def clipped(self) -> bool:
        return self.accepted and self.scale < 1.0


@dataclass(frozen=True)
class RoundWeights:
    """The decisions for one round, in the order of the updates given, plus the statistics."""

    updates: tuple[UpdateWeight, ...]
    median_samples: int  # lower median of the counts after caps (a) and (b); 0 if none
    median_norm: float  # lower median of the recent norms the bound came from
    norm_bound: float  # updates above this were scaled down to it (inf = clipping off)
    # agent id -> decision: a 10,000-update round looks each one up once (no list scans)
    _index: dict[str, UpdateWeight] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {u.agent_id: u for u in self.updates})

    def get(self, agent_id: str) -> UpdateWeight:
        u = self._index.get(agent_id)
        if u is None:
            raise KeyError(f"no weighting decision for agent {agent_id!r} in this round")
        return u

    def accepted(self) -> list[UpdateWeight]:
        return [u for u in self.updates if u.accepted]

    def metrics(self) -> dict[str, float]:
        """Round metrics: how many updates were capped, clipped, rejected; the bound."""
        return {
            "robust_capped": float(sum(u.capped for u in self.updates)),
            "robust_clipped": float(sum(u.clipped for u in self.updates)),
            "robust_rejected": float(sum(not u.accepted for u in self.updates)),
            "robust_median_samples": float(self.median_samples),
            "robust_median_norm": self.median_norm,
            "robust_norm_bound": self.norm_bound if math.isfinite(self.norm_bound) else 0.0,
        }

    def summary(self) -> str:
        """One log line naming every capped, clipped or rejected update."""
        parts = [f"norm bound {self.norm_bound:.4g} (median {self.median_norm:.4g})"]
        for u in self.updates:
            if not u.accepted:
                parts.append(f"{u.agent_id} rejected: {u.rejected}")
                continue
            if u.capped:
                parts.append(
                    f"{u.agent_id} weight {u.claimed_samples} -> {u.weight} ({u.cap_reason})"
                )
            if u.clipped:
                parts.append(f"{u.agent_id} norm {u.norm:.4g} scaled by {u.scale:.3g}")
        return "; ".join(parts)


def lower_median(values: Sequence[float]) -> float:
    """The middle value, or with an even count the lower of the two middle values."""
    if not values:
        raise ValueError("lower_median of no values")
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def scale_delta(delta: Params, scale: float) -> Params:
    """``scale * delta`` in each tensor's dtype (the same dict when ``scale`` is 1)."""
    if scale == 1.0:
        return delta
    return {name: (value * scale).astype(value.dtype) for name, value in delta.items()}


class RobustWeighting:
    """Caps each update's weight and clips its norm; keeps the recent rounds' norms.

    Every option set to 0 turns its defence off (``max_update_norm`` 0 = no outright bound).
    """

    def __init__(
        self,
        *,
        sample_cap_multiple: float = 1.5,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        norm_multiple: float = 1.5,
        norm_floor: float = 1e-6,
        norm_window: int = 5,
        max_update_norm: float = 0.0,
    ) -> None:
        ok_multiple = sample_cap_multiple == 0 or sample_cap_multiple >= 1
        _check(ok_multiple, "sample_cap_multiple", sample_cap_multiple, "0 (off) or >= 1")
        _check(max_samples >= 0, "max_samples", max_samples, ">= 0 (0 = off)")
        _check(norm_multiple >= 0, "norm_multiple", norm_multiple, ">= 0 (0 = off)")
        _check(norm_floor > 0, "norm_floor", norm_floor, "> 0")
        _check(norm_window >= 1, "norm_window", norm_window, ">= 1 (1 = this round only)")
        _check(max_update_norm >= 0, "max_update_norm", max_update_norm, ">= 0 (0 = off)")
        self.sample_cap_multiple = float(sample_cap_multiple)
        self.max_samples = int(max_samples)
        self.norm_multiple = float(norm_multiple)
        self.norm_floor = float(norm_floor)
        self.norm_window = int(norm_window)
        self.max_update_norm = float(max_update_norm)
        self._recent: deque[tuple[float, ...]] = deque(maxlen=self.norm_window - 1)

    # ---- state kept across rounds (persist it to survive a restart; losing it is safe) ----
    def recent_norms(self) -> list[list[float]]:
        """The accepted norms of the previous rounds still in the window, oldest first."""
        return [list(r) for r in self._recent]

    def restore(self, recent: Iterable[Iterable[float]]) -> None:
        """Reload what ``recent_norms`` returned."""
        self._recent.clear()
        for norms in recent:
            self._recent.append(tuple(float(n) for n in norms))

    # ---- the decision ----
    def weigh(self, updates: Sequence[RoundUpdate]) -> RoundWeights:
        """Decide every update's weight and scale; remember this round's norms."""
        seen: set[str] = set()
        for u in updates:
            if u.agent_id in seen:
                raise ValueError(f"agent {u.agent_id!r} has two updates in one round")
            seen.add(u.agent_id)
            if u.claimed_samples <= 0:
                raise ValueError(
                    f"{u.agent_id}: claimed_samples must be > 0, got {u.claimed_samples}"
                )
            if u.norm < 0:
                raise ValueError(f"{u.agent_id}: a norm cannot be negative, got {u.norm}")
        rejected = {u.agent_id: self._reject_reason(u) for u in updates}
        kept = [u for u in updates if not rejected[u.agent_id]]
        justified = {u.agent_id: self._justified(u) for u in kept}
        median_samples = int(lower_median([n for n, _ in justified.values()])) if kept else 0
        median_cap = self._median_cap(median_samples)
        norms = tuple(u.norm for u in kept)
        pool = [n for r in self._recent for n in r] + list(norms)
        median_norm = float(lower_median(pool)) if pool else 0.0
        bound = (
            max(self.norm_floor, self.norm_multiple * median_norm)
            if self.norm_multiple > 0
            else math.inf
        )
        decisions = []
        for u in updates:
            if rejected[u.agent_id]:
                decisions.append(
                    UpdateWeight(
                        u.agent_id, 0, 0.0, u.claimed_samples, "", u.norm, rejected[u.agent_id]
                    )
                )
                continue
            weight, reason = justified[u.agent_id]
            if median_cap is not None and median_cap < weight:
                weight, reason = median_cap, "median"
            scale = bound / u.norm if u.norm > bound else 1.0
            decisions.append(
                UpdateWeight(u.agent_id, weight, scale, u.claimed_samples, reason, u.norm)
            )
        if norms:
            self._recent.append(norms)  # a no-op when norm_window is 1
        return RoundWeights(tuple(decisions), median_samples, median_norm, bound)

    def _reject_reason(self, u: RoundUpdate) -> str:
        if not math.isfinite(u.norm):
            return f"update norm {u.norm} is not finite"
        if self.max_update_norm > 0 and u.norm > self.max_update_norm:
            return f"update norm {u.norm:.4g} exceeds max_update_norm {self.max_update_norm:.4g}"
        return ""

    def _justified(self, u: RoundUpdate) -> tuple[int, str]:
        """The claim capped by caps (a) the registered count and (b) the configured maximum."""
        weight, reason = u.claimed_samples, ""
        if u.registered_samples is not None and 0 < u.registered_samples < weight:
            weight, reason = u.registered_samples, "registered"
        if self.max_samples > 0 and self.max_samples < weight:
            weight, reason = self.max_samples, "max_samples"
        return weight, reason

    def _median_cap(self, median_samples: int) -> int | None:
        """Cap (c): ``sample_cap_multiple`` x the median, at least 1; None when off."""
        if self.sample_cap_multiple <= 0 or median_samples <= 0:
            return None
        return max(1, math.floor(self.sample_cap_multiple * median_samples))


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"robust weighting: {name} must be {expected}, got {value!r}")
