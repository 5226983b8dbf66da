"""Robust weighting applied to stored deltas: the two passes both run modes share.

Synchronous rounds and asynchronous buffers (orchestrator/buffered.py) both aggregate deltas
kept in SQLite: a first pass reads each delta's norm and claimed sample count and decides its
weight and scale (orchestrator/robust_weighting.py), a second pass adds ``scale * delta`` with that
weight to the strategy's aggregator. Only one decoded delta is in memory at a time (O(model)).
Synchronous rounds keep each delta's norm as it is validated (orchestrator/intake.py) and weigh
from those (``weigh_norms``), so their close reads every delta once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from fedge.protocol.compression import decode_delta
from fedge.protocol.tensors import l2_norm

from .config import RobustSettings
from .robust_weighting import RobustWeighting, RoundUpdate, RoundWeights, scale_delta
from .strategies import Strategy

log = logging.getLogger(__name__)

Params = dict[str, np.ndarray]
# (key, agent id, claimed samples, delta blob): the key is the agent id in a round, the slot
# number in a buffer (one device may have several deltas in one buffer)
StoredDelta = tuple[str, str, int, bytes]


def robust_weighting(settings: RobustSettings) -> RobustWeighting:
    """The configured defences (``rounds.max_update_norm`` already rejects at intake)."""
    return RobustWeighting(
        sample_cap_multiple=settings.sample_cap_multiple,
        max_samples=settings.max_claimed_samples,
        norm_multiple=settings.norm_multiple,
        norm_floor=settings.norm_floor,
        norm_window=settings.norm_window,
    )


def weigh_stored(
    robust: RobustWeighting,
    deltas: Iterable[StoredDelta],
    registered: Callable[[str], int | None],
    label: str,
) -> RoundWeights:
    """First pass: every delta's norm and claim, weighed; one log line if anything was cut."""
    norms = (
        (key, agent, claimed, l2_norm(decode_delta(blob))) for key, agent, claimed, blob in deltas
    )
    return weigh_norms(robust, norms, registered, label)


def weigh_norms(
    robust: RobustWeighting,
    updates: Iterable[tuple[str, str, int, float]],
    registered: Callable[[str], int | None],
    label: str,
) -> RoundWeights:
    """The weighing from (key, agent id, claimed samples, delta norm) alone: when the norms
    were kept as the deltas arrived, no delta is read for it."""
    plan = robust.weigh(
        [
            RoundUpdate(key, claimed, registered(agent), norm)
            for key, agent, claimed, norm in updates
        ]
    )
    if any(w.capped or w.clipped or not w.accepted for w in plan.updates):
        log.info("%s robust weighting: %s", label, plan.summary())
    return plan


def aggregate_stored(
    strategy: Strategy,
    global_params: Params,
    plan: RoundWeights,
    deltas: Iterable[tuple[str, bytes, float]],
) -> Params | None:
    """Second pass: (key, delta blob, extra scale such as a staleness weight) into the
    strategy; None when nothing counted or the strategy keeps the model."""
    decoded = ((key, partial(decode_delta, blob), extra) for key, blob, extra in deltas)
    return aggregate_decoded(strategy, global_params, plan, decoded)


def aggregate_decoded(
    strategy: Strategy,
    global_params: Params,
    plan: RoundWeights,
    deltas: Iterable[tuple[str, Callable[[], Params], float]],
) -> Params | None:
    """``aggregate_stored`` for deltas already decoded, or decoded on demand: (key, a function
    returning the delta, extra scale); a refused key's delta is never asked for."""
    if not plan.accepted():
        return None
    aggregator = strategy.start_aggregation(global_params)
    for key, delta, extra in deltas:
        w = plan.get(key)
        if w.accepted:
            aggregator.add(scale_delta(delta(), w.scale * extra), w.weight)
    return aggregator.result()
