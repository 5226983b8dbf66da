"""Per-device budgets: what one device's messages may cost the orchestrator, in one place.

A device (honest but broken, or hostile) must not be able to buy database rows, fsyncs, log
lines or memory with messages. Every limit lives here:

- **messages**: a token bucket per device for control messages (status and ``up/msg``) and one
  for chunk frames (``up/chunk``). The excess is dropped *before parsing* and counted by
  reason (``fedge_device_messages_dropped_total``), never written, never logged per message.
- **frames served**: a bucket of chunk frames the orchestrator sends a device (its fetches of
  the bundle and parameters): a fetch asks for up to 256 chunks, so without it one small
  message could buy 128 MiB of publishes. Frames over budget are not sent; the device's pull
  asks again when it stalls.
- **records**: refused, late and duplicate offers or reports from a device cost at most
  ``records_per_round`` database writes per device and round (the first ones, with their
  reasons: what an operator needs to debug a broken device); the rest are counted in memory
  (``fedge_refusals_unrecorded_total``). Nothing is ever written for a run other than the
  current one.
- **log lines**: at most ``log_lines`` per device and kind in each ``summary_seconds`` window;
  then one summary line per device and window, e.g.
  ``dev-3: 9,812 messages dropped in the last 10 s (rate limit)``.

Memory: one ``DeviceBudget`` (a few hundred bytes) per device the registry knows, plus an LRU
of at most ``unknown_devices`` other ids. Ids exist only where the broker ACL lets someone
publish under them; on a broker without ACL ids are free, so every id the registry does not
know also spends a token of one shared bucket (``unknown_devices_per_second``) and shares one
log allowance: invented ids cannot buy fresh budgets.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fedge.protocol.errors import ConfigError
from fedge.protocol.fields import Range, check_instance

if TYPE_CHECKING:
    from .metrics_exporter import Metrics

log = logging.getLogger(__name__)

# Why a message was dropped before parsing (the label values of the dropped counter).
DROP_REASONS = ("rate_limit", "retained", "empty", "unsolicited_chunk", "bad_topic", "queue_full")
MAX_PENDING_CLEARS = 4096  # topics whose cleared retained message may still echo back
_REASON_TEXT = {
    "rate_limit": "rate limit",
    "retained": "retained on an up topic: cleared",
    "empty": "empty payload",
    "unsolicited_chunk": "chunk without an upload in flight",
    "bad_topic": "bad topic",
    "queue_full": "the receive queue was full",
}


PerSecond = Annotated[float, Range(0.1, 1e5)]
Burst = Annotated[int, Range(1, 10**6)]


@dataclass
class DeviceLimits:
    """The ``[limits]`` section of the orchestrator's config: per-device budgets.

    Defaults are sized against honest agents: one round costs an honest agent about a dozen
    control messages, a few at a time (status changes, parameter fetches, one offer, its
    re-sends), and chunk frames only as fast as the orchestrator asks for them.
    """

    messages_per_second: PerSecond = 10.0  # control messages (status, up/msg) per device
    message_burst: Burst = 100  # ... and at once (the bucket's size)
    chunks_per_second: PerSecond = 50.0  # delta chunk frames per device, sustained (25 MiB/s)
    chunk_burst: Burst = 200  # ... and at once (both also bound the frames served to a device)
    # database writes for late/duplicate answers per device and round
    records_per_round: Annotated[int, Range(0, 1000)] = 3
    log_lines: Annotated[int, Range(0, 10**4)] = 5  # per device and kind in each window
    summary_seconds: Annotated[float, Range(1, 3600)] = 10.0  # the log limit's window
    # budgets kept for ids the registry does not know (LRU), and all those ids together:
    # messages per second (a new device's first status is one)
    unknown_devices: Annotated[int, Range(1, 10**6)] = 1024
    unknown_devices_per_second: Annotated[float, Range(0.1, 1e6)] = 100.0
    # the transport's receive queue (before any budget): beyond it, messages are dropped
    receive_queue_mib: Annotated[int, Range(1, 65536)] = 256


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class DeviceBudget:
    """One device's buckets, its record budget for the round, and its window's counts."""

    messages: TokenBucket
    chunks: TokenBucket
    served: TokenBucket
    record_key: tuple[str, int] = ("", -1)  # (run id, round) the record count is for
    records: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count, this window
    lines: Counter[str] = field(default_factory=Counter)  # kind -> lines logged, this window
    suppressed: Counter[str] = field(default_factory=Counter)  # kind -> lines not logged
    unrecorded: int = 0  # refusals not written, this window
    withheld: int = 0  # chunk frames asked for over the budget, this window


class DeviceBudgets:
    """The budget table. ``known(agent_id)``: whether the registry knows the device."""

    def __init__(
        self,
        limits: DeviceLimits | None = None,
        *,
        known: Callable[[str], bool] = lambda _id: False,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or DeviceLimits()
        check_instance(self.limits, "limits", ConfigError, max_str=None)  # built in code too
        self._known = known
        self._metrics = metrics
        self._clock = clock
        self._devices: dict[str, DeviceBudget] = {}  # known to the registry
        self._unknown: OrderedDict[str, DeviceBudget] = OrderedDict()  # LRU of the others
        rate = self.limits.unknown_devices_per_second
        self._strangers = self._new()  # shared by every id the registry does not know
        self._strangers.messages = TokenBucket(rate, max(1, int(rate * 10)), clock())
        self._window_start = clock()
        self._queue_full = self._new()
        self.dropped: Counter[str] = Counter()  # reason -> count since the process started
        self.frames_withheld = 0  # chunk frames a device asked for over its budget
        self._clears: OrderedDict[str, int] = OrderedDict()  # topic -> our clears not echoed

    def __len__(self) -> int:
        return len(self._devices) + len(self._unknown)

    def _entry(self, agent_id: str) -> DeviceBudget:
        entry = self._devices.get(agent_id)
        if entry is not None:
            return entry
        entry = self._unknown.get(agent_id)
        if self._known(agent_id):
            if entry is not None:
                del self._unknown[agent_id]
            else:
                entry = self._new()
            self._devices[agent_id] = entry
            return entry
        if entry is not None:
            self._unknown.move_to_end(agent_id)
            return entry
        entry = self._new()
        self._unknown[agent_id] = entry
        while len(self._unknown) > self.limits.unknown_devices:
            self._unknown.popitem(last=False)
        return entry

    def _new(self) -> DeviceBudget:
        lim, now = self.limits, self._clock()
        return DeviceBudget(
            messages=TokenBucket(lim.messages_per_second, lim.message_burst, now),
            chunks=TokenBucket(lim.chunks_per_second, lim.chunk_burst, now),
            served=TokenBucket(lim.chunks_per_second, lim.chunk_burst, now),
        )

    # ---- messages ----
    def admit(self, agent_id: str, *, chunk: bool = False, introduced: bool = False) -> bool:
        """Spend one token of the device's message (or chunk) bucket; False: drop it unread.

        ``introduced``: the broker's retained status of the device, which does not spend the
        budget shared by unknown ids (there is one per status topic: after a restart of the
        orchestrator, 10,000 of them arrive at once and none is ever sent again)."""
        entry, now = self._entry(agent_id), self._clock()
        bucket = entry.chunks if chunk else entry.messages
        if bucket.take(now) and (
            introduced or agent_id in self._devices or self._strangers.messages.take(now)
        ):
            return True
        self._count_drop(entry, "rate_limit")
        return False

    def screen(
        self,
        topic: str,
        agent_id: str,
        kind: str,
        payload: bytes,
        *,
        retained: bool,
        uploading: bool,
    ) -> str:
        """The checks before parsing: ``"admit"``, ``"drop"``, or ``"clear"`` (drop it and
        publish an empty retained payload on its topic). Every drop is counted by reason.

        Retained messages on a device's up topics are cleared and ignored: the broker would
        replay them on every connect. Status messages are retained by design (an empty one is
        a cleared status). Chunks count only while the device has an upload in flight
        (``uploading``); everything else spends a token of the device's budget.
        """
        if kind == "status":
            return "admit" if payload and self.admit(agent_id, introduced=retained) else "drop"
        if not payload:
            if self._clears.get(topic):  # our own clear, echoed back: not the device's doing
                self._clears[topic] -= 1
                if not self._clears[topic]:
                    del self._clears[topic]
            else:
                self.drop(agent_id, "empty")
            return "drop"
        if retained:
            self.drop(agent_id, "retained")
            self._clears[topic] = self._clears.get(topic, 0) + 1
            self._clears.move_to_end(topic)
            while len(self._clears) > MAX_PENDING_CLEARS:
                self._clears.popitem(last=False)
            return "clear"
        if kind == "up/chunk" and not uploading:
            self.drop(agent_id, "unsolicited_chunk")
            return "drop"
        return "admit" if self.admit(agent_id, chunk=kind == "up/chunk") else "drop"

    def frames_to_serve(self, agent_id: str, wanted: int) -> int:
        """How many of ``wanted`` chunk frames may be sent to the device now (spent)."""
        entry, now = self._entry(agent_id), self._clock()
        allowed = 0
        while allowed < wanted and entry.served.take(now):
            allowed += 1
        if allowed < wanted:
            entry.withheld += wanted - allowed
            self.frames_withheld += wanted - allowed
            if self._metrics is not None:
                self._metrics.count_withheld_frames(wanted - allowed)
        return allowed

    def queue_full(self, n: int) -> None:
        """``n`` messages the transport dropped because its receive queue was full (whose
        they were is unknown: they were never read)."""
        if n > 0:
            self._queue_full.dropped["queue_full"] += n
            self.dropped["queue_full"] += n
            if self._metrics is not None:
                self._metrics.count_dropped("queue_full", n)

    def drop(self, agent_id: str, reason: str) -> None:
        """Count a message dropped before parsing for ``reason`` (one of DROP_REASONS)."""
        self._count_drop(self._entry(agent_id), reason)

    def _count_drop(self, entry: DeviceBudget, reason: str) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason {reason!r} unknown; one of {DROP_REASONS}")
        entry.dropped[reason] += 1
        self.dropped[reason] += 1
        if self._metrics is not None:
            self._metrics.count_dropped(reason)

    # ---- database records ----
    def may_record(self, agent_id: str, run_id: str, current_run: str, round_no: int) -> bool:
        """Whether a refusal (rejected, late, duplicate, aborted) may cost a database write.

        Never for another run than the current one; at most ``records_per_round`` per device
        and (run, round). A refusal that may not be written is counted in memory instead.
        """
        entry = self._entry(agent_id)
        if run_id == current_run and run_id:
            if entry.record_key != (run_id, round_no):
                entry.record_key, entry.records = (run_id, round_no), 0
            if entry.records < self.limits.records_per_round:
                entry.records += 1
                return True
        entry.unrecorded += 1
        if self._metrics is not None:
            self._metrics.count_unrecorded()
        return False

    # ---- log lines ----
    def should_log(self, agent_id: str, kind: str) -> bool:
        """Whether a per-message log line about ``agent_id`` may be written now."""
        entry = self._entry(agent_id)
        if agent_id not in self._devices:
            entry = self._strangers
        if entry.lines[kind] < self.limits.log_lines:
            entry.lines[kind] += 1
            return True
        entry.suppressed[kind] += 1
        if self._metrics is not None:
            self._metrics.count_suppressed_log_line()
        return False

    def tick(self, *, now_or_never: bool = False) -> None:
        """Once per window (or now, e.g. as a round closes): one summary line per device that
        lost messages, rows or log lines in the window."""
        now = self._clock()
        window = now - self._window_start
        if window < self.limits.summary_seconds and not now_or_never:
            return
        self._window_start = now
        for agent_id, entry in self._entries():
            if entry.dropped or entry.suppressed or entry.unrecorded or entry.withheld:
                log.warning("%s", summary_line(agent_id, entry, window))
            entry.dropped.clear()
            entry.lines.clear()
            entry.suppressed.clear()
            entry.unrecorded = 0
            entry.withheld = 0

    def _entries(self) -> Iterator[tuple[str, DeviceBudget]]:
        yield from self._devices.items()
        yield from self._unknown.items()
        yield "devices the registry does not know", self._strangers
        yield "all devices", self._queue_full


def summary_line(agent_id: str, entry: DeviceBudget, window: float) -> str:
    """E.g. ``dev-3: 9,812 messages dropped in the last 10 s (rate limit)``."""
    parts = []
    total = sum(entry.dropped.values())
    if total:
        reasons = entry.dropped.most_common()
        why = (
            _REASON_TEXT[reasons[0][0]]
            if len(reasons) == 1
            else ", ".join(f"{n:,} {_REASON_TEXT[r]}" for r, n in reasons)
        )
        plural = "s" if total != 1 else ""
        parts.append(f"{total:,} message{plural} dropped in the last {window:.0f} s ({why})")
    if entry.withheld:
        parts.append(f"{entry.withheld:,} chunk frames asked for but not sent")
    if entry.unrecorded:
        parts.append(f"{entry.unrecorded:,} refusals counted but not stored")
    if entry.suppressed:
        lines = sum(entry.suppressed.values())
        kinds = ", ".join(sorted(entry.suppressed))
        parts.append(f"{lines:,} log lines suppressed ({kinds})")
    return f"{agent_id}: " + "; ".join(parts)
