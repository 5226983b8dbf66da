"""The device registry: what each agent last said about itself, kept in memory and SQLite.

Fed by the agents' retained status messages; the broker publishes an agent's Last Will
(``offline``) when its connection dies, so a crashed device drops out of selection.
Decisions read the in-memory view; with ``batch_writes`` (the orchestrator's) the ``devices``
table (for `fedge status`, metrics) is written in one transaction per burst (``flush``, called
at every orchestrator tick): 10,000
statuses after a broker restart were 10,000 fsyncs otherwise. The table is a report, rebuilt
from the retained statuses after a restart, so a status not yet flushed by a crash is not lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from fedge.protocol.errors import MessageError
from fedge.protocol.messages import Status

from .selection import matches_target
from .store import Store
from .strategies import DeviceInfo

log = logging.getLogger(__name__)


REWRITE_SECONDS = 60.0  # an unchanged status is written again at most this often (last_seen)
# A device flips idle -> training -> idle every round: such a flip (nothing else changed) is
# written at most this often per device, the latest one by ``flush`` -- a SQLite commit per
# flip would sit on the round's critical path. Selection reads the memory, never the table.
FLIP_SECONDS = 1.0
BUSY_STATES = frozenset({"online", "idle", "training", "uploading"})


class DeviceRegistry:
    """``may_log(agent_id, kind)``: whether a per-message log line may be written now (the
    per-device log budget, ``device_budget.DeviceBudgets.should_log``)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        may_log: Callable[[str, str], bool] = lambda _agent, _kind: True,
        batch_writes: bool = False,
    ) -> None:
        self.store = store
        self._clock = clock
        self._may_log = may_log
        self._written: dict[str, float] = {}  # agent id -> when its status was last stored
        self._unwritten: set[str] = set()  # flips held back by FLIP_SECONDS
        self._flushed = clock()  # when flush() last wrote
        self.devices: dict[str, Status] = {}
        # devices per state, kept as statuses arrive: every status asks for it (the
        # fedge_devices gauge), and counting 10,000 devices per status made a round O(n^2)
        self._counts: dict[str, int] = {}
        self.last_seen: dict[str, float] = {}
        self.offline_since: dict[str, float] = {}
        self._dirty: dict[str, Status] = {}  # statuses to write at the next flush()
        self._batch = batch_writes  # False: every status is written at once (no flush needed)

    def on_status(self, agent_id: str, status: Status) -> None:
        if status.agent != agent_id:
            raise MessageError(f"status for {status.agent!r} published on {agent_id}'s topic")
        previous = self.devices.get(agent_id)
        self.devices[agent_id] = status
        if previous is not None:
            self._counts[previous.state] -= 1
        self._counts[status.state] = self._counts.get(status.state, 0) + 1
        self.last_seen[agent_id] = self._clock()
        if status.state == "offline":
            self.offline_since.setdefault(agent_id, self._clock())
        else:
            self.offline_since.pop(agent_id, None)
        if (previous is None or previous.state != status.state) and self._may_log(
            agent_id, "status"
        ):
            log.info(
                "device %s is %s (backend %s, %d samples%s)",
                agent_id,
                status.state,
                status.backend or "?",
                status.num_samples,
                f", ineligible: {status.reason}" if not status.eligible else "",
            )
        if (
            previous is not None
            and replace(previous, ts=status.ts) == status
            and self._clock() - self._written.get(agent_id, float("-inf")) < REWRITE_SECONDS
        ):
            return  # the same status again (a re-send, or a flood): no write
        flip = (
            previous is not None
            and {previous.state, status.state} <= BUSY_STATES
            and replace(previous, ts=status.ts, state=status.state) == status
        )
        if flip and self._clock() - self._written.get(agent_id, float("-inf")) < FLIP_SECONDS:
            self._unwritten.add(agent_id)  # written by flush() within FLIP_SECONDS
            self._dirty.pop(agent_id, None)
            return
        self._unwritten.discard(agent_id)
        self._written[agent_id] = self._clock()
        self._dirty[agent_id] = status
        if not self._batch:
            self._write_dirty()

    def flush(self, *, everything: bool = False) -> None:
        """Write the statuses received since the last flush in one transaction; the held-back
        idle/training flips at most every FLIP_SECONDS (``everything``: all of them now, e.g.
        on stop)."""
        now = self._clock()
        if self._unwritten and (everything or now - self._flushed >= FLIP_SECONDS):
            self._flushed = now
            for agent_id in sorted(self._unwritten):
                self._dirty[agent_id] = self.devices[agent_id]
                self._written[agent_id] = now
            self._unwritten.clear()
        self._write_dirty()

    def _write_dirty(self) -> None:
        if not self._dirty:
            return
        rows = [
            (a, s.state, s.backend, s.num_samples, s.eligible, s.reason, s.version)
            for a, s in self._dirty.items()
        ]
        self._dirty.clear()
        self.store.upsert_devices(rows)

    def registered_samples(self, agent_id: str) -> int | None:
        """The sample count the device announced in its status (None if unknown): a ceiling for
        the count it may claim in an update (robust weighting)."""
        s = self.devices.get(agent_id)
        return s.num_samples if s is not None and s.num_samples > 0 else None

    def is_offline(self, agent_id: str, grace: float = 0.0) -> bool:
        """Offline (Last Will or a goodbye) for at least ``grace`` seconds.

        The grace keeps a blip — a broker restart, a Wi-Fi hiccup, a retained "offline" seen
        before the device re-announces itself — from counting as a drop-out.
        """
        s = self.devices.get(agent_id)
        if s is None or s.state != "offline":
            return False
        since = self.offline_since.get(agent_id)
        return since is None or self._clock() - since >= grace

    def why_not_eligible(self, status: Status, patterns: list[str], backends: list[str]) -> str:
        """Empty if the device can be selected, else the reason."""
        if status.state == "offline":
            return "offline"
        if status.state == "ineligible" or not status.eligible:
            return f"device says: {status.reason or 'ineligible'}"
        if not matches_target(status.agent, status.backend, patterns, backends):
            return "not in the targeted group"
        return ""

    def eligible(self, patterns: list[str], backends: list[str]) -> list[DeviceInfo]:
        return [
            DeviceInfo(s.agent, s.num_samples, s.backend, s.version)
            for s in self.devices.values()
            if not self.why_not_eligible(s, patterns, backends)
        ]

    def counts(self) -> dict[str, int]:
        """Devices per state; a state every device has left counts 0 (its gauge drops)."""
        return dict(self._counts)
