"""Which parameters' deltas travel from a device to the orchestrator, from the manifest.

A device sends the delta of every trainable parameter and of every BatchNorm running statistic
(frozen for the optimizer, but changed by training: the manifest's ``running_stats``). The other
frozen parameters (a frozen backbone under ``fedge export --trainable 'head.*'``) cannot change
during local training, so their deltas are zero and are not sent; the orchestrator counts a
missing entry of that set as a zero delta. With a frozen backbone this is most of the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .manifest import Manifest


def static_names(manifest: Manifest) -> frozenset[str]:
    """Frozen parameters that training never changes: an update may leave them out."""
    stats = {s.param for s in manifest.running_stats}
    return frozenset(n for n in manifest.frozen_names if n not in stats)


def travelling_delta(manifest: Manifest, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``delta`` without the entries of ``static_names`` (trainable and running stats stay)."""
    static = static_names(manifest)
    return {name: value for name, value in delta.items() if name not in static}
