"""The agent's round decisions as plain functions (agent/round_machine.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedge.agent.eligibility import Decision
from fedge.agent.round_machine import (
    FINAL_STATES,
    OUTBOX_GRACE_SECONDS,
    Action,
    RoundFacts,
    after_training,
    next_step,
    objects_to_keep,
    outbox_steps,
    report_step,
    round_news,
    task_changed,
)
from fedge.agent.state import OutboxItem
from fedge.protocol.messages import BlobRef, RoundTask, TrainConfig

BUNDLE = BlobRef("b" * 64, 10, 1)
PARAMS = BlobRef("c" * 64, 10, 1)


def _task(state="open", participants=("dev-0",), deadline=1000.0, **config) -> RoundTask:
    return RoundTask(
        run_id="run",
        round=2,
        model_version=1,
        state=state,
        bundle_hash="h",
        bundle=BUNDLE,
        params=PARAMS,
        participants=list(participants),
        config=TrainConfig(**config),
        deadline=deadline,
    )


def _never():
    raise AssertionError("must not be consulted")


def _step(task, journal="", now=500.0, connected=True, stopping=False, **probes):
    facts = RoundFacts(task, "dev-0", journal, now, connected, stopping)
    return next_step(
        facts,
        eligibility=probes.get("eligibility", lambda: Decision(True)),
        bundle_ready=probes.get("bundle_ready", lambda: True),
        params_ready=probes.get("params_ready", lambda: True),
    )


@pytest.mark.parametrize(
    ("task", "journal", "now", "reason"),
    [
        (None, "", 0.0, "no round"),
        (_task(state="closed"), "", 0.0, "round 2 is closed"),
        (_task(participants=("dev-1",)), "", 0.0, "not a participant of round 2"),
        (_task(), "offered", 0.0, "round 2 already offered"),
        (_task(deadline=400.0), "", 500.0, "the deadline of round 2 has passed"),
    ],
)
def test_nothing_to_do_is_decided_before_any_sensor_or_cache_is_read(task, journal, now, reason):
    step = _step(task, journal, now, eligibility=_never, bundle_ready=_never, params_ready=_never)
    assert (step.action, step.reason) == (Action.IGNORE, reason)


def test_every_final_journal_state_is_ignored_and_the_others_are_trained_again():
    for status in FINAL_STATES:
        assert _step(_task(), status).action is Action.IGNORE
    for status in ("", "training", "interrupted"):
        assert _step(_task(), status).action is Action.TRAIN


def test_offline_or_stopping_waits_without_aborting():
    assert _step(_task(), connected=False, eligibility=_never).action is Action.WAIT
    assert _step(_task(), stopping=True, eligibility=_never).action is Action.WAIT


def test_the_order_is_eligibility_bundle_parameters_then_work():
    no = Decision(False, "too hot")
    assert _step(_task(), eligibility=lambda: no, bundle_ready=_never).reason == (
        "not eligible: too hot"
    )
    assert _step(_task(), bundle_ready=lambda: False, params_ready=_never).action is (
        Action.FETCH_BUNDLE
    )
    assert _step(_task(), params_ready=lambda: False).action is Action.FETCH_PARAMS
    assert _step(_task()).action is Action.TRAIN
    assert _step(_task(evaluate_only=True)).action is Action.EVALUATE


def test_parameters_are_kept_only_while_the_round_needs_this_device():
    assert objects_to_keep(None, "dev-0", "") == set()
    assert objects_to_keep(_task(), "dev-0", "") == {BUNDLE.sha256, PARAMS.sha256}
    assert objects_to_keep(_task(), "dev-0", "offered") == {BUNDLE.sha256}
    assert objects_to_keep(_task(state="closed"), "dev-0", "") == {BUNDLE.sha256}
    assert objects_to_keep(_task(participants=()), "dev-0", "") == {BUNDLE.sha256}


def test_a_stop_request_interrupts_other_problems_abort_a_finished_run_is_offered():
    assert after_training("", stopping=True).action is Action.OFFER
    assert after_training("training stopped: agent stopping", stopping=True).action is (
        Action.INTERRUPT
    )
    step = after_training("training stopped: no longer eligible: too hot", stopping=False)
    assert (step.action, step.reason) == (
        Action.ABORT,
        "training stopped: no longer eligible: too hot",
    )


def test_outbox_entries_are_offered_reoffered_on_time_and_expire_after_the_grace():
    items = [
        OutboxItem("a" * 64, "run", 2, b"{}", None, deadline=1000.0),
        OutboxItem("d" * 64, "run", 1, b"{}", None, deadline=100.0),
    ]

    def steps(now, mono, last, connected=True):
        got = outbox_steps(
            items,
            task=_task(),
            agent_id="dev-0",
            now=now,
            mono_now=mono,
            last_sent=last,
            base_interval=15.0,
            connected=connected,
        )
        return [(s.action, s.sha256[0]) for s in got]

    assert steps(120.0, 0.0, {}) == [(Action.OFFER, "a"), (Action.OFFER, "d")]
    assert steps(120.0, 10.0, {"a" * 64: 0.0, "d" * 64: 0.0}) == []
    assert steps(120.0, 15.0, {"a" * 64: 0.0, "d" * 64: 0.0}) == [
        (Action.REOFFER, "a"),
        (Action.REOFFER, "d"),
    ]
    late = 100.0 + OUTBOX_GRACE_SECONDS + 1
    assert steps(late, 0.0, {}, connected=False) == [(Action.EXPIRE, "d")]


def test_an_evaluation_report_is_sent_until_acked():
    def step(task=None, **kw):
        args = dict(
            agent_id="dev-0",
            journal="evaluated",
            acked=False,
            connected=True,
            mono_now=20.0,
            last_sent=None,
            base_interval=15.0,
        )
        return report_step(task or _task(evaluate_only=True), **(args | kw)).action

    assert step() is Action.OFFER
    assert step(last_sent=10.0) is Action.IGNORE
    assert step(last_sent=5.0) is Action.REOFFER
    assert step(acked=True) is Action.IGNORE
    assert step(journal="aborted") is Action.IGNORE
    assert step(connected=False) is Action.IGNORE
    assert step(task=_task()) is Action.IGNORE  # a training round has no report


def test_round_news_after_a_restart_and_across_runs():
    closed = replace(_task(state="closed", participants=()), round=0)
    # a restarted agent finds the retained "between rounds" task: nothing to say
    assert round_news(None, closed, "dev-0", now=0.0) == ""
    finished = replace(closed, state="finished")
    assert round_news(closed, finished, "dev-0", 0.0).startswith("run run finished")
    assert round_news(finished, finished, "dev-0", 0.0) == ""
    # the next run's first round is news again, the closing of a round never seen open is not
    new_run = replace(_task(), run_id="run-2")
    assert round_news(finished, new_run, "dev-0", 400.0) == (
        "round 2 of run run-2 open: this device is one of 1 invited (deadline in 600 s)"
    )
    assert round_news(closed, replace(closed, run_id="run-2"), "dev-0", 0.0) == ""


def test_a_redelivered_task_is_not_a_change():
    assert task_changed(None, _task())
    assert not task_changed(_task(), _task())
    assert task_changed(_task(), _task(state="closed"))
