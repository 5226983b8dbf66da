"""The round machine alone: events in, decisions out (no store, no transport)."""

from __future__ import annotations

from fedge.orchestrator.config import RoundSettings
from fedge.orchestrator.round_machine import CloseRound, Finish, OpenRound, RoundMachine, Wait
from fedge.orchestrator.strategies import DeviceInfo


def devices(n: int) -> list[DeviceInfo]:
    return [DeviceInfo(f"dev-{i}", 10, "fake", "") for i in range(n)]


def first(round_no: int, devs: list[DeviceInfo], invited: int) -> list[str]:
    return [d.agent_id for d in devs[:invited]]


def machine(**settings: object) -> RoundMachine:
    m = RoundMachine(RoundSettings(**({"min_devices": 2} | settings)), first)
    m.resume("run", version=0, last_round=0, evaluated_versions=set(), current=None)
    return m


def never(_agent: str) -> bool:
    return False


def test_waits_then_opens_with_over_selection_and_a_goal():
    m = machine(min_devices=3, devices_per_round=2, over_selection=1.5, deadline_seconds=10)
    assert m.tick(0.0, eligible=lambda: devices(2), offline=never) == Wait(2, 3)
    d = m.tick(5.0, eligible=lambda: devices(4), offline=never)
    assert isinstance(d, OpenRound)
    r = d.round
    assert (r.round, r.participants, r.goal, r.deadline) == (1, ["dev-0", "dev-1", "dev-2"], 2, 15)
    assert m.tick(6.0, eligible=lambda: [], offline=never) is None  # open, nothing due


def test_only_participants_count_toward_every_invited_device_answered():
    m = machine()
    r = m.tick(0.0, eligible=lambda: devices(2), offline=never).round
    m.on_refused("intruder")
    m.on_accepted("intruder")
    m.on_accepted("dev-0")
    assert r.answered == {"dev-0"} and r.reports == 1
    assert m.tick(1.0, eligible=list, offline=never) is None
    m.on_refused("dev-1")
    d = m.tick(1.0, eligible=list, offline=never)
    assert isinstance(d, CloseRound) and (d.why, d.abandon) == ("answered", "")


def test_a_dropout_and_too_few_reports_abandon_then_retry_after_the_pause():
    m = machine(min_reports=2, retry_seconds=5, rounds=1)
    m.tick(0.0, eligible=lambda: devices(2), offline=never)
    m.on_accepted("dev-0")
    d = m.tick(1.0, eligible=list, offline=lambda a: a == "dev-1")
    assert isinstance(d, CloseRound) and d.dropped == 1 and "min_reports" in d.abandon
    m.on_abandoned(1.0)
    assert m.tick(5.9, eligible=lambda: devices(2), offline=never) is None
    d = m.tick(6.0, eligible=lambda: devices(2), offline=never)
    assert isinstance(d, OpenRound) and d.round.round == 2


def test_the_deadline_closes_and_finish_is_decided_once():
    m = machine(rounds=1, deadline_seconds=10)
    m.tick(0.0, eligible=lambda: devices(2), offline=never)
    m.on_accepted("dev-0")
    assert m.tick(9.9, eligible=list, offline=never) is None
    d = m.tick(10.0, eligible=list, offline=never)
    assert isinstance(d, CloseRound) and d.why == "deadline" and not d.abandon
    m.on_committed(1)
    assert m.tick(10.0, eligible=list, offline=never) == Finish()
    assert m.tick(11.0, eligible=list, offline=never) is None


def test_one_evaluation_round_per_version_and_every_invited_device_is_the_goal():
    m = machine(rounds=2, evaluate_every=1, devices_per_round=1)
    m.on_committed(1)
    d = m.tick(0.0, eligible=lambda: devices(3), offline=never)
    assert isinstance(d, OpenRound) and d.round.kind == "evaluate"
    assert d.round.goal == len(d.round.participants) == 1
    assert isinstance(m.tick(999.0, eligible=list, offline=never), CloseRound)  # no report
    d = m.tick(999.0, eligible=lambda: devices(3), offline=never)
    assert isinstance(d, OpenRound) and d.round.kind == "train"  # not retried
