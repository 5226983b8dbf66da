"""The agent's side of delta compression: encode as the round asks, keep top-k's residual."""

from __future__ import annotations

import logging

import numpy as np

from fedge.protocol.compression import encode_delta
from fedge.protocol.messages import RoundTask
from fedge.protocol.tensors import decode_tensors, encode_tensors

from .state import AgentState

log = logging.getLogger(__name__)


def encode_for_round(
    state: AgentState, task: RoundTask, delta: dict[str, np.ndarray]
) -> tuple[bytes, bytes | None]:
    """The delta's wire bytes and the error-feedback residual to save with it (top-k only).

    The residual of this run's previous round is added before top-k selection; the new one must
    be stored in the same transaction as the outbox entry (``AgentState.add_outbox``).
    """
    method = task.config.compression
    if not method:
        return encode_tensors(delta), None
    previous = state.residual(task.run_id) if method == "topk" else None
    residual = decode_tensors(previous) if previous else None
    blob, new_residual = encode_delta(delta, method, task.config.topk_fraction, residual=residual)
    plain = sum(a.nbytes for a in delta.values())
    log.info(
        "round %d: %s delta is %d bytes (%.1f%% of %d)",
        task.round,
        method,
        len(blob),
        100.0 * len(blob) / max(plain, 1),
        plain,
    )
    return blob, encode_tensors(new_residual) if method == "topk" else None
