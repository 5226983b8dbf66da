"""Buffered asynchronous aggregation (FedBuff) as a state machine: no I/O, no clock, no threads.

The orchestrator feeds it events -- a device asks for a slot, a delta arrives for a slot, the
clock ticks, a version was committed -- and carries out what it returns: a ``Grant`` to send,
a ``Verdict`` on a delta, ``Expire``/``Commit``/``Finish`` from ``tick``. Persisting each
outcome (slots, the buffer, versions) is the caller's job, in SQLite, before announcing it;
``resume`` rebuilds the machine from those rows, so a restart decides the same way.

Rules:
- at most ``max_concurrency`` slots are active (granted, not answered, not expired); a device
  asking while it holds an active slot gets that same slot again (a restarted agent);
- a slot expires ``slot_seconds`` after it was granted, or as soon as its device is offline
  (the caller decides when that is, with a grace for blips): its place is free again; a delta
  for it that still arrives is judged like any other (the work is done; staleness bounds it);
- a delta counts once per slot: a second delta for a counted slot is a duplicate;
- staleness = newest version - the slot's version; above ``max_staleness`` it is refused;
  otherwise its weight is the staleness function's value;
- every ``buffer_size`` accepted deltas, a commit (the server optimizer applies the buffer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .buffered_config import BufferedSettings


@dataclass(frozen=True)
class Slot:
    slot: int
    agent_id: str
    version: int  # the model version the device trains from
    granted: float
    expires: float
    state: str = "active"  # active | expired | used | refused


@dataclass(frozen=True)
class Grant:
    slot: Slot
    new: bool  # False: the device already held this slot (sent again)


@dataclass(frozen=True)
class Deny:
    reason: str


@dataclass(frozen=True)
class Verdict:
    """What to do with a delta: ``status`` is accepted, duplicate or refused."""

    status: str
    reason: str = ""
    staleness: int = 0
    weight: float = 0.0


@dataclass(frozen=True)
class Expire:
    slots: tuple[Slot, ...]


@dataclass(frozen=True)
class Commit:
    version: int  # the version to create
    buffered: tuple[int, ...]  # the slots whose deltas it applies


@dataclass(frozen=True)
class Finish:
    """Every configured version exists."""


@dataclass
class BufferedState:
    version: int = 0
    next_slot: int = 1
    active: dict[int, Slot] = field(default_factory=dict)  # slot number -> slot
    buffered: list[int] = field(default_factory=list)  # accepted, not committed (slot numbers)


class BufferedMachine:
    """Decides slots, delta verdicts and commits of one asynchronous run."""

    def __init__(self, settings: BufferedSettings, *, versions: int) -> None:
        settings.validate()
        self.settings = settings
        self.versions = versions  # versions to produce before the run finishes
        self.weight = settings.weight()
        self.run_id = ""
        self.state = BufferedState()
        self.finished = False

    def resume(
        self,
        run_id: str,
        *,
        version: int,
        slots: list[Slot],
        buffered: list[int],
        last_slot: int,
    ) -> None:
        """Start from a run's stored state: active slots, uncommitted accepted deltas."""
        self.run_id = run_id
        self.state = BufferedState(
            version=version,
            next_slot=last_slot + 1,
            active={s.slot: s for s in slots if s.state == "active"},
            buffered=list(buffered),
        )
        self.finished = False

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def training(self) -> int:
        return len(self.state.active)

    @property
    def slots_free(self) -> int:
        return max(0, self.settings.max_concurrency - len(self.state.active))

    # ---- slots ----
    def request(self, agent_id: str, now: float) -> Grant | Deny:
        """A device is idle and eligible: its active slot, a new slot, or why not."""
        if self.finished or self.version >= self.versions:
            return Deny("the run has all its versions")
        for s in self.state.active.values():
            if s.agent_id == agent_id:
                return Grant(s, new=False)
        if len(self.state.active) >= self.settings.max_concurrency:
            return Deny(f"{self.settings.max_concurrency} devices are training already")
        s = Slot(
            self.state.next_slot, agent_id, self.version, now, now + self.settings.slot_seconds
        )
        self.state.next_slot += 1
        self.state.active[s.slot] = s
        return Grant(s, new=True)

    # ---- deltas ----
    def judge(self, slot: Slot | None, agent_id: str, model_version: int) -> Verdict:
        """The verdict on a delta for ``slot`` (the stored slot row, or None if unknown)."""
        if slot is None or slot.agent_id != agent_id:
            return Verdict("refused", "no such slot was granted to this device")
        if slot.state == "used":
            return Verdict("duplicate", "already counted")
        if slot.state == "refused":
            return Verdict("refused", "this slot's delta was already refused")
        if model_version != slot.version:
            return Verdict(
                "refused", f"delta is for v{model_version}, the slot trains v{slot.version}"
            )
        staleness = self.version - slot.version
        if staleness > self.settings.max_staleness:
            return Verdict(
                "refused",
                f"delta is {staleness} versions stale; the cap is {self.settings.max_staleness}",
                staleness,
            )
        return Verdict("accepted", "", staleness, self.weight(staleness))

    def on_accepted(self, slot: int) -> None:
        self.state.active.pop(slot, None)
        if slot not in self.state.buffered:
            self.state.buffered.append(slot)

    def on_refused(self, slot: int) -> None:
        self.state.active.pop(slot, None)

    # ---- the clock ----
    def tick(
        self, now: float, offline: Callable[[str], bool] | None = None
    ) -> Expire | Commit | Finish | None:
        """One time-based decision: expire overdue slots (and those whose device ``offline``
        says is gone), commit a full buffer, or finish."""
        if self.finished:
            return None
        overdue = tuple(
            s
            for s in self.state.active.values()
            if now >= s.expires or (offline is not None and offline(s.agent_id))
        )
        if overdue:
            for s in overdue:
                del self.state.active[s.slot]
            return Expire(overdue)
        k = self.settings.buffer_size
        if len(self.state.buffered) >= k and self.version < self.versions:
            return Commit(self.version + 1, tuple(self.state.buffered[:k]))
        if self.version >= self.versions:
            self.finished = True
            return Finish()
        return None

    def on_committed(self, commit: Commit) -> None:
        self.state.version = commit.version
        done = set(commit.buffered)
        self.state.buffered = [s for s in self.state.buffered if s not in done]
