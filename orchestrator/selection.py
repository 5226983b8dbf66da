"""Choosing a round's participants among eligible devices (pure, seeded)."""

from __future__ import annotations

import fnmatch
import hashlib
import random

import numpy as np


def select_devices(
    devices: list[tuple[str, int]], count: int, *, seed: str, weighted: bool = False
) -> list[str]:
    """``count`` distinct agent ids (all when ``count`` is 0 or too large), sorted.

    ``weighted`` draws without replacement with probability proportional to each device's
    sample count (devices reporting 0 samples get weight 1).
    """
    ids = sorted(a for a, _ in devices)
    if not count or count >= len(ids):
        return ids
    if not weighted:
        return sorted(random.Random(seed).sample(ids, count))
    sizes = dict(devices)
    w = np.array([max(1, sizes[a]) for a in ids], dtype=np.float64)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    picked = rng.choice(len(ids), size=count, replace=False, p=w / w.sum())
    return sorted(ids[i] for i in picked)


def matches_target(agent_id: str, backend: str, patterns: list[str], backends: list[str]) -> bool:
    """True if the device is in the targeted subset (empty lists target everyone).

    ``patterns`` are shell globs on the agent id (``ward-a-*``): the groups of a fleet.
    """
    if patterns and not any(fnmatch.fnmatchcase(agent_id, p) for p in patterns):
        return False
    return not backends or backend in backends


def over_selected(goal: int, factor: float, available: int) -> int:
    """How many devices to invite so that ``goal`` reports arrive despite dropouts."""
    if goal <= 0:
        return available
    return min(available, max(goal, int(np.ceil(goal * max(1.0, factor)))))
