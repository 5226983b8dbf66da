"""When an agent asks for a training slot of an asynchronous run (pure decision)."""

from __future__ import annotations

from fedge.agent.round_machine import slot_request_due
from fedge.protocol.async_messages import AsyncAnnounce
from fedge.protocol.messages import BlobRef, RoundTask

SHA = "a" * 64
ANNOUNCE = AsyncAnnounce("run", 0, "open", SHA, slots_free=2, retry_after=2.0)


def slot(journal_round: int = 5, deadline: float = 200.0) -> RoundTask:
    ref = BlobRef(SHA, 1, 1)
    return RoundTask("run", journal_round, 0, "open", SHA, ref, ref, ["me"], deadline=deadline)


def due(announce=ANNOUNCE, task=None, **kw) -> bool:
    facts = dict(
        agent_id="me",
        journal="",
        now=100.0,
        mono_now=10.0,
        last_request=None,
        outbox_busy=False,
        eligible=True,
        connected=True,
    )
    return slot_request_due(announce, task, **(facts | kw))


def test_an_idle_eligible_device_asks():
    assert due()


def test_no_asking_without_an_open_async_run_or_a_free_slot():
    assert not due(None)
    assert not due(AsyncAnnounce("run", 3, "finished", SHA, slots_free=2))
    assert not due(AsyncAnnounce("run", 3, "open", SHA, slots_free=0))


def test_no_asking_while_busy_offline_ineligible_or_stopping():
    assert not due(outbox_busy=True)  # one delta in flight at a time
    assert not due(connected=False)
    assert not due(eligible=False)
    assert not due(stopping=True)


def test_no_asking_while_working_on_a_slot_until_it_is_done_or_expired():
    assert not due(task=slot(), journal="training")
    assert not due(task=slot(), journal="")
    assert due(task=slot(), journal="acked")
    assert due(task=slot(deadline=50.0), journal="training")  # expired: ask for a new one


def test_asks_at_most_once_per_retry_after():
    assert not due(last_request=9.0, mono_now=10.0)
    assert due(last_request=8.0, mono_now=10.0)
