"""The buffered asynchronous machine alone: slots, verdicts, K-commits (pure, no I/O)."""

from __future__ import annotations

import pytest

from fedge.orchestrator.buffered_config import BufferedSettings
from fedge.orchestrator.buffered_machine import (
    BufferedMachine,
    Commit,
    Deny,
    Expire,
    Finish,
    Grant,
    Slot,
)
from fedge.orchestrator.staleness import StalenessWeight
from fedge.protocol.errors import ConfigError


def machine(versions: int = 5, **kw: object) -> BufferedMachine:
    m = BufferedMachine(BufferedSettings(**kw), versions=versions)  # type: ignore[arg-type]
    m.resume("run", version=0, slots=[], buffered=[], last_slot=0)
    return m


def grant(m: BufferedMachine, agent: str, now: float = 0.0) -> Slot:
    g = m.request(agent, now)
    assert isinstance(g, Grant), g
    return g.slot


def used(s: Slot) -> Slot:
    return Slot(s.slot, s.agent_id, s.version, s.granted, s.expires, "used")


def test_commits_every_k_accepted_deltas():
    m = machine(buffer_size=3, max_concurrency=10)
    slots = [grant(m, f"d{i}") for i in range(4)]
    for s in slots[:2]:
        assert m.judge(s, s.agent_id, 0).status == "accepted"
        m.on_accepted(s.slot)
        assert m.tick(1.0) is None  # 1, then 2 buffered: no commit yet
    m.on_accepted(slots[2].slot)
    decision = m.tick(1.0)
    assert decision == Commit(1, (slots[0].slot, slots[1].slot, slots[2].slot))
    m.on_committed(decision)
    assert m.version == 1 and m.state.buffered == []
    assert m.tick(1.0) is None


def test_staleness_functions():
    poly = StalenessWeight("polynomial", exponent=0.5)
    assert poly(0) == 1.0 and poly(3) == pytest.approx(0.5)
    hinge = StalenessWeight("hinge", exponent=1.0, hinge_after=2)
    assert [hinge(s) for s in (0, 2, 3, 4)] == [1.0, 1.0, 0.5, pytest.approx(1 / 3)]
    assert StalenessWeight("constant")(50) == 1.0
    with pytest.raises(ConfigError, match="unknown"):
        StalenessWeight("exponential")


def test_verdict_carries_the_staleness_weight_and_refuses_past_the_cap():
    m = machine(buffer_size=1, max_concurrency=10, max_staleness=2, staleness_exponent=1.0)
    old = grant(m, "slow")  # trains v0
    for v in range(1, 4):
        s = grant(m, f"fast{v}")
        m.on_accepted(s.slot)
        commit = m.tick(1.0)
        assert isinstance(commit, Commit)
        m.on_committed(commit)
        if v == 1:
            assert m.judge(old, "slow", 0).weight == pytest.approx(0.5)  # (1+1)^-1
    verdict = m.judge(old, "slow", 0)
    assert verdict.status == "refused" and verdict.staleness == 3
    assert "cap is 2" in verdict.reason


def test_at_most_c_devices_hold_a_slot_and_a_holder_gets_its_own_slot_again():
    m = machine(max_concurrency=2)
    a, b = grant(m, "a"), grant(m, "b")
    assert isinstance(m.request("c", 0.0), Deny)
    again = m.request("a", 1.0)
    assert isinstance(again, Grant) and again.slot == a and not again.new
    m.on_accepted(b.slot)  # b answered: its place is free
    assert grant(m, "c").slot == b.slot + 1


def test_slots_expire_and_free_their_place():
    m = machine(max_concurrency=1, slot_seconds=10.0)
    a = grant(m, "a", now=100.0)
    assert isinstance(m.request("b", 105.0), Deny)
    assert m.tick(109.9) is None
    assert m.tick(110.0) == Expire((a,))
    assert grant(m, "b", now=110.0).slot == a.slot + 1
    # a delta for the expired slot still counts (judged by staleness, not by the clock)
    expired = Slot(a.slot, "a", 0, a.granted, a.expires, "expired")
    assert m.judge(expired, "a", 0).status == "accepted"


def test_a_counted_slot_is_a_duplicate_and_other_devices_cannot_use_it():
    m = machine()
    s = grant(m, "a")
    assert m.judge(used(s), "a", 0).status == "duplicate"
    assert m.judge(s, "b", 0).status == "refused"
    assert m.judge(None, "a", 0).status == "refused"
    assert m.judge(s, "a", 7).status == "refused"  # not the slot's version


def test_finishes_when_every_version_exists():
    m = machine(buffer_size=1, versions=1)
    s = grant(m, "a")
    m.on_accepted(s.slot)
    commit = m.tick(0.0)
    assert isinstance(commit, Commit)
    m.on_committed(commit)
    assert isinstance(m.tick(0.0), Finish)
    assert isinstance(m.request("b", 0.0), Deny)


def test_resume_rebuilds_active_slots_and_the_buffer():
    m = BufferedMachine(BufferedSettings(buffer_size=2, max_concurrency=2), versions=5)
    active = Slot(7, "a", 3, 0.0, 100.0)
    m.resume("run", version=3, slots=[active], buffered=[5], last_slot=7)
    assert m.training == 1 and m.state.buffered == [5]
    again = m.request("a", 1.0)
    assert isinstance(again, Grant) and again.slot == active
    assert grant(m, "b").slot == 8
    m.on_accepted(7)
    assert m.tick(1.0) == Commit(4, (5, 7))


@pytest.mark.parametrize(
    ("key", "value"),
    [("buffer_size", 0), ("max_concurrency", 0), ("staleness", "linear"), ("slot_seconds", 0.0)],
)
def test_settings_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"buffered.{key}"):
        BufferedSettings(**{key: value}).validate()
