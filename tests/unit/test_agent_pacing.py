"""Pace steering on the device: the re-send and idle-wait decisions (agent/pacing.py)."""

from __future__ import annotations

from fedge.agent.pacing import (
    BUSY_POLL_SECONDS,
    IDLE_POLL_SECONDS,
    awaited,
    poll_seconds,
    resend_due,
    resend_interval,
)
from fedge.protocol.messages import BlobRef, RoundTask

REF = BlobRef("0" * 64, 1, 1)


def _task(state="open", participants=("dev-0",), round_no=3, retry_after=40.0) -> RoundTask:
    return RoundTask(
        run_id="run",
        round=round_no,
        model_version=2,
        state=state,
        bundle_hash="h",
        bundle=REF,
        params=REF,
        participants=list(participants),
        retry_after=retry_after,
    )


def test_a_device_the_open_round_awaits_resends_at_its_own_pace():
    task = _task()
    assert awaited(task, "dev-0", "run", 3)
    assert resend_interval(task, "dev-0", "run", 3, base=15.0) == 15.0


def test_the_hint_spaces_resends_when_not_selected_or_the_round_is_over():
    assert resend_interval(_task(participants=("dev-1",)), "dev-0", "run", 3, 15.0) == 40.0
    assert resend_interval(_task(state="closed"), "dev-0", "run", 3, 15.0) == 40.0
    assert resend_interval(_task(state="finished"), "dev-0", "run", 3, 15.0) == 40.0
    # an old round's offer while round 3 is open for us: the hint applies too
    assert resend_interval(_task(), "dev-0", "run", 2, 15.0) == 40.0
    assert resend_interval(_task(), "dev-0", "other-run", 3, 15.0) == 40.0
    # the hint never makes a device re-send faster than its own setting
    assert resend_interval(_task(state="closed", retry_after=1.0), "dev-0", "run", 3, 15.0) == 15.0
    assert resend_interval(None, "dev-0", "run", 3, 15.0) == 15.0


def test_resend_due():
    assert resend_due(None, 100.0, 40.0)  # never sent, or reconnected since
    assert not resend_due(80.0, 100.0, 40.0)
    assert resend_due(60.0, 100.0, 40.0)


def test_idle_devices_wake_less_often_but_stay_prompt():
    assert poll_seconds(_task(), "dev-0", busy=False) == BUSY_POLL_SECONDS  # in the round
    assert poll_seconds(_task(participants=()), "dev-0", busy=True) == BUSY_POLL_SECONDS
    assert poll_seconds(_task(participants=()), "dev-0", busy=False) == IDLE_POLL_SECONDS
    assert poll_seconds(_task(state="closed", retry_after=0.5), "dev-0", busy=False) == 0.5
    assert poll_seconds(None, "dev-0", busy=False) == IDLE_POLL_SECONDS
