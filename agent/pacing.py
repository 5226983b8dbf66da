"""Pace steering on the device: how often to re-send and how long to wait when idle.

The orchestrator puts ``retry_after`` (seconds) in every ``RoundTask``: devices that are not in
the open round, or whose round is over, should not come back sooner. A device the open round
is waiting for re-sends at its own ``offer_retry_seconds``: the hint is not meant for it.
"""

from __future__ import annotations

from fedge.protocol.messages import RoundTask

BUSY_POLL_SECONDS = 0.2  # main-loop wake-up while a round needs this device
IDLE_POLL_SECONDS = 1.0  # at most this long between wake-ups when idle (stop stays prompt)


def awaited(task: RoundTask | None, agent_id: str, run_id: str, round_no: int) -> bool:
    """Whether the open round is (run_id, round_no) and this device is one of its participants."""
    return (
        task is not None
        and task.state == "open"
        and agent_id in task.participants
        and (task.run_id, task.round) == (run_id, round_no)
    )


def resend_interval(
    task: RoundTask | None, agent_id: str, run_id: str, round_no: int, base: float
) -> float:
    """Seconds between two sends of an offer or report for round (run_id, round_no):
    ``base`` while the open round awaits it, else ``max(base, task.retry_after)``."""
    if awaited(task, agent_id, run_id, round_no):
        return base
    return max(base, task.retry_after if task is not None else 0.0)


def resend_due(last: float | None, now: float, interval: float) -> bool:
    """Never sent (or reconnected since: ``last`` None), or ``interval`` seconds have passed."""
    return last is None or now - last >= interval


def poll_seconds(task: RoundTask | None, agent_id: str, *, busy: bool) -> float:
    """How long the main loop may sleep when no message arrives: short while this device has
    work (a round it is in, transfers, an outbox), else up to the hint (messages wake it)."""
    if busy or (task is not None and task.state == "open" and agent_id in task.participants):
        return BUSY_POLL_SECONDS
    hint = task.retry_after if task is not None else IDLE_POLL_SECONDS
    return min(IDLE_POLL_SECONDS, max(BUSY_POLL_SECONDS, hint))
