"""Round decisions as a state machine: no I/O, no clock of its own, no threads.

The orchestrator feeds it events — the clock (``tick``, with the eligible devices and who is
offline), a counted update, a refused update or abort, a committed or abandoned round — and
carries out the decisions it returns (``OpenRound``, ``CloseRound``, ``Finish``, ``Wait``): the
SQLite writes, the MQTT publishes and the aggregation stay at the edge, in ``server.py``.

Only devices invited to the open round can affect it. ``LiveRound.accepted`` and
``LiveRound.refused`` hold participants only; anything from another device is counted by the
intake and ignored, so it can neither close the round early nor make it wait.
The live report count is ``len(accepted)``: one place in memory, rebuilt from the stored
update rows on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fedge.protocol.fields import MAX_PARTICIPANTS

from .config import RoundSettings
from .schema import RoundRecord
from .selection import over_selected
from .strategies import DeviceInfo

log = logging.getLogger(__name__)

# (round number, eligible devices, how many to invite) -> the invited agent ids
Select = Callable[[int, list[DeviceInfo], int], list[str]]


@dataclass
class LiveRound:
    """The open round as the decisions see it."""

    run_id: str
    round: int
    kind: str  # "train", "evaluate" or "statistics"
    model_version: int
    participants: list[str]
    goal: int
    opened: float
    deadline: float
    accepted: set[str] = field(default_factory=set)  # participants whose report counts
    refused: set[str] = field(default_factory=set)  # participants refused, or who aborted
    ignored: int = 0  # messages for this round from devices that were not invited
    # the participants as a set: every message of a 10,000-device round asks ``invited``
    invited_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.invited_set = frozenset(self.participants)

    @classmethod
    def resumed(cls, rec: RoundRecord, updates: list[dict[str, Any]]) -> LiveRound:
        """The open round of a restarted run, rebuilt from its stored update rows."""
        invited = set(rec.participants)
        counted = {u["agent_id"] for u in updates if u["status"] in ("accepted", "evaluated")}
        refused = {u["agent_id"] for u in updates if u["status"] in ("rejected", "aborted")}
        return cls(
            run_id=rec.run_id,
            round=rec.round,
            kind=rec.kind,
            model_version=rec.model_version,
            participants=list(rec.participants),
            goal=rec.goal,
            opened=rec.opened,
            deadline=rec.deadline,
            accepted=counted & invited,
            refused=(refused - counted) & invited,
        )

    def record(self) -> RoundRecord:
        """The row the store writes when the round opens."""
        return RoundRecord(
            self.run_id,
            self.round,
            self.model_version,
            "open",
            list(self.participants),
            self.opened,
            self.deadline,
            *(0, 0, 0, 0, 0, 0),  # reports, rejected, duplicates, late, aborted, bytes_in
            {},
            goal=self.goal,
            kind=self.kind,
        )

    @property
    def reports(self) -> int:
        return len(self.accepted)

    @property
    def answered(self) -> set[str]:
        return self.accepted | self.refused

    def invited(self, agent_id: str) -> bool:
        return agent_id in self.invited_set

    @property
    def goal_reached(self) -> bool:
        return self.reports >= (self.goal or len(self.participants))


@dataclass(frozen=True)
class Wait:
    """Not enough eligible devices to open a round."""

    eligible: int
    needed: int


@dataclass(frozen=True)
class OpenRound:
    round: LiveRound


@dataclass(frozen=True)
class CloseRound:
    """Close ``round``; ``abandon`` is the reason when it cannot produce a result."""

    round: LiveRound
    why: str  # "goal", "answered" or "deadline"
    dropped: int  # participants that went offline without answering
    abandon: str = ""


@dataclass(frozen=True)
class Finish:
    """Every configured model version exists."""


Decision = Wait | OpenRound | CloseRound | Finish


class RoundMachine:
    """Decides when rounds open and close; the caller persists and announces each decision."""

    def __init__(self, settings: RoundSettings, select: Select) -> None:
        self.settings = settings
        self._select = select
        self.run_id = ""
        self.version = 0  # the newest committed model version
        self.last_round = 0
        self.current: LiveRound | None = None
        self.next_round_at = 0.0
        self.finished = False  # Finish was decided; nothing more until the next resume()
        self._evaluated: set[int] = set()  # versions that already had their evaluation round
        self.statistics_ready = False  # the run's feature statistics are combined (standardize)

    def resume(
        self,
        run_id: str,
        *,
        version: int,
        last_round: int,
        evaluated_versions: set[int],
        current: LiveRound | None,
        statistics_ready: bool = False,
    ) -> None:
        """Start from a run's stored state (a new run: version 0, round 0, nothing open)."""
        self.run_id = run_id
        self.statistics_ready = statistics_ready
        self.version = version
        self.last_round = last_round
        self._evaluated = set(evaluated_versions)
        self.current = current
        self.next_round_at = 0.0
        self.finished = False

    def evaluation_due(self) -> bool:
        """After every ``evaluate_every`` committed versions, one federated evaluation round of
        that version (one attempt: an evaluation that gets no report is not retried)."""
        every = self.settings.evaluate_every
        if every <= 0 or self.version == 0 or self.version % every:
            return False
        return self.version not in self._evaluated

    # ---- the clock ----
    def tick(
        self,
        now: float,
        *,
        eligible: Callable[[], list[DeviceInfo]],
        offline: Callable[[str], bool],
        offline_ids: Callable[[], Iterable[str]] | None = None,
    ) -> Decision | None:
        """The time-based decision, or None when nothing is to be done now.

        ``eligible`` is asked only when no round is open; ``offline(agent)`` is True for a
        device offline longer than the grace. ``offline_ids``, when given, names every device
        that may be offline (a superset): only those are asked, not every participant at every
        tick (10,000 calls a tick in a 10,000-device round).
        """
        if self.finished:
            return None
        if self.current is None:
            return self._maybe_open(now, eligible)
        return self._maybe_close(now, offline, offline_ids)

    def statistics_due(self) -> bool:
        """Federated standardization: one statistics round before the first training round
        (retried after an abandoned attempt); a device joining later uses the stored result."""
        return self.settings.standardize and not self.statistics_ready

    def _maybe_open(self, now: float, eligible: Callable[[], list[DeviceInfo]]) -> Decision | None:
        if self.statistics_due():
            kind = "statistics"
        else:
            kind = "evaluate" if self.evaluation_due() else "train"
        rs = self.settings
        if kind == "train" and self.version >= rs.rounds:
            self.finished = True
            return Finish()
        if now < self.next_round_at:
            return None
        devices = eligible()
        needed = max(1, rs.min_devices)
        if len(devices) < needed:
            return Wait(len(devices), needed)
        round_no = self.last_round + 1
        goal = min(rs.devices_per_round or len(devices), len(devices))
        invited = over_selected(goal, rs.over_selection, len(devices))
        if kind == "statistics":  # every eligible device: the estimate covers the most rows
            participants = sorted(d.agent_id for d in devices)[:MAX_PARTICIPANTS]
            goal = len(participants)
        else:
            participants = list(self._select(round_no, devices, invited))
        if kind == "evaluate":  # every invited device's metrics count: no goal short of all
            goal = len(participants)
            self._evaluated.add(self.version)
        live = LiveRound(
            run_id=self.run_id,
            round=round_no,
            kind=kind,
            model_version=self.version,
            participants=participants,
            goal=goal,
            opened=now,
            deadline=now + rs.deadline_seconds,
        )
        self.current = live
        self.last_round = round_no
        return OpenRound(live)

    def _maybe_close(
        self,
        now: float,
        offline: Callable[[str], bool],
        offline_ids: Callable[[], Iterable[str]] | None = None,
    ) -> CloseRound | None:
        r = self.current
        if r is None:
            return None
        invited = r.invited_set
        answered = r.answered & invited
        candidates = invited - answered if offline_ids is None else offline_ids()
        gone = {p for p in candidates if p in invited and p not in answered and offline(p)}
        if r.goal_reached:
            why = "goal"
        elif len(answered | gone) >= len(invited):
            why = "answered"
        elif now >= r.deadline:
            why = "deadline"
        else:
            return None
        self.current = None
        return CloseRound(r, why, len(gone), self._abandon_reason(r))

    def _abandon_reason(self, r: LiveRound) -> str:
        if r.kind == "evaluate":
            return "" if r.reports else "no evaluation reports"
        if r.kind == "statistics":
            return "" if r.reports else "no statistics reports"
        need = max(1, self.settings.min_reports)
        if r.reports < need:
            return f"{r.reports} reports < min_reports {self.settings.min_reports}"
        return ""

    # ---- events of the open round (participants only; the intake checks first) ----
    def on_accepted(self, agent_id: str) -> None:
        """A participant's update (or evaluation report) counts."""
        r = self.current
        if r is not None and r.invited(agent_id):
            r.accepted.add(agent_id)
            r.refused.discard(agent_id)

    def on_refused(self, agent_id: str) -> None:
        """A participant's update was refused, or it aborted: it will not report."""
        r = self.current
        if r is not None and r.invited(agent_id) and agent_id not in r.accepted:
            r.refused.add(agent_id)

    def on_ignored(self) -> None:
        """A message for the open round from a device that was not invited."""
        if self.current is not None:
            self.current.ignored += 1

    # ---- outcomes of a closed round (carried out by the caller) ----
    def on_committed(self, version: int) -> None:
        self.version = version

    def on_statistics(self) -> None:
        """The statistics round combined the run's feature statistics."""
        self.statistics_ready = True

    def on_abandoned(self, now: float) -> None:
        self.next_round_at = now + self.settings.retry_seconds
