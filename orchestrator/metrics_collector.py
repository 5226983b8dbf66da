"""Metrics read from the orchestrator's SQLite database at scrape time (a prometheus_client
Collector): every gauge is the store's truth at that moment, never a value accumulated in memory.

The database is opened read-only for each scrape (WAL: readers never block the orchestrator's
writer). Counters and histograms are also derived from the stored rows (rounds, updates, model
versions), so they continue across orchestrator restarts instead of dropping to zero. Label
values come from closed sets only (device states, reason codes, round states): never a device id.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fedge.protocol.messages import Status
from fedge.protocol.reason_codes import (
    ABORT_CODES,
    ELIGIBILITY_CODES,
    REJECTION_CODES,
    abort_code,
    eligibility_code,
    rejection_code,
)

from .selection import matches_target

log = logging.getLogger(__name__)

ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DEVICE_STATES: tuple[str, ...] = tuple(sorted(Status.STATES))
UPDATE_OUTCOMES = ("accepted", "evaluated", "rejected", "late", "duplicate", "aborted", "dropped")
ROUND_STATES = ("committed", "abandoned", "evaluated", "combined")  # combined: statistics
RUN_STATES = ("running", "finished", "none")
# evaluation metrics exported per version: train_/val_/test_/fed_ prefixed, never *_samples
_EVAL_KEY = re.compile(r"^(train|val|test|fed_val|fed_test|fed)_[a-z0-9_]{1,40}$")
_MAX_EVAL_KEYS = 32


@dataclass(frozen=True)
class SelectionView:
    """What the collector needs of the round settings to count eligible devices and the goal."""

    target_agents: list[str] = field(default_factory=list)
    target_backends: list[str] = field(default_factory=list)
    min_devices: int = 1
    devices_per_round: int = 0


def histogram(
    name: str,
    doc: str,
    buckets: Iterable[float],
    labels: list[str],
    values: dict[tuple[str, ...], list[float]],
) -> HistogramMetricFamily:
    """A histogram family from raw observations, one series per tuple of label values."""
    bounds = sorted(buckets)
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, observed in sorted(values.items()):
        cumulative = [
            (floatToGoString(b), float(sum(1 for v in observed if v <= b))) for b in bounds
        ]
        cumulative.append(("+Inf", float(len(observed))))
        fam.add_metric(list(label_values), cumulative, sum_value=float(sum(observed)))
    return fam


class StoreCollector(Collector):
    """Reads devices, runs, rounds, updates and model versions from ``database`` per scrape."""

    def __init__(self, database: str | Path, selection: SelectionView | None = None) -> None:
        self.path = Path(database)
        self.selection = selection or SelectionView()
        self._lock = threading.Lock()  # scrapes may run in parallel (one thread each)
        self._scanned_id = 0  # updates rows up to this id are in _counts
        self._counts: dict[tuple[str, str], int] = {}
        self._origin: tuple | None = None  # the database's first run: a new file has another

    def describe(self) -> list[Metric]:
        return []  # families are known only after reading the store; no duplicate checks needed

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "fedge_store_up", "1 if the orchestrator database could be read for this scrape."
        )
        if not self.path.exists():
            up.add_metric([], 0.0)
            yield up
            return
        try:
            db = sqlite3.connect(
                f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, isolation_level=None
            )
        except sqlite3.Error as exc:
            log.warning("metrics: cannot open %s read-only: %s", self.path, exc)
            up.add_metric([], 0.0)
            yield up
            return
        try:
            families = list(self._families(db))
        except (sqlite3.Error, ValueError) as exc:  # an unknown schema, a locked file, bad JSON
            log.warning("metrics: reading %s failed: %s", self.path, exc)
            families = []
        finally:
            db.close()
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families

    # ---- families ----
    def _families(self, db: sqlite3.Connection) -> Iterator[Metric]:
        db.execute("BEGIN")  # one snapshot for every query of this scrape
        yield from self._devices(db)
        run = db.execute(
            "SELECT run_id, state, started FROM runs ORDER BY state='running' DESC, started DESC "
            "LIMIT 1"
        ).fetchone()
        yield from self._run(db, run)
        yield from self._counters(db)
        yield from self._durations(db)

    def _devices(self, db: sqlite3.Connection) -> Iterator[Metric]:
        by_state = dict.fromkeys(DEVICE_STATES, 0)
        by_code = dict.fromkeys(ELIGIBILITY_CODES, 0)
        s = self.selection
        for agent, state, eligible, reason, backend in db.execute(
            "SELECT agent_id, state, eligible, reason, backend FROM devices"
        ):
            key = state if state in by_state else "unknown"
            by_state[key] = by_state.get(key, 0) + 1
            targeted = matches_target(agent, backend, s.target_agents, s.target_backends)
            by_code[eligibility_code(state, bool(eligible), reason, targeted)] += 1
        g = GaugeMetricFamily(
            "fedge_devices",
            "Known devices by their last reported state; the states sum to the known devices.",
            labels=["state"],
        )
        for state, n in sorted(by_state.items()):
            g.add_metric([state], float(n))
        yield g
        e = GaugeMetricFamily(
            "fedge_devices_by_eligibility",
            "Known devices by eligibility: 'eligible', or the code of why not (bounded set).",
            labels=["reason"],
        )
        for code in ELIGIBILITY_CODES:
            e.add_metric([code], float(by_code[code]))
        yield e

    def _run(self, db: sqlite3.Connection, run: tuple | None) -> Iterator[Metric]:
        state = run[1] if run else "none"
        g = GaugeMetricFamily(
            "fedge_run_state",
            "1 for the state of the newest run (running first).",
            labels=["state"],
        )
        for s in RUN_STATES:
            g.add_metric([s], 1.0 if s == state else 0.0)
        yield g
        open_round = None
        version, created = 0, 0.0
        vmetrics: dict[str, object] = {}
        fed: dict[str, object] = {}
        if run is not None:
            run_id = run[0]
            row = db.execute(
                "SELECT version, created, metrics FROM model_versions WHERE run_id=? "
                "ORDER BY version DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            if row:
                version, created, vmetrics = row[0], row[1], json.loads(row[2] or "{}")
            ev = db.execute(
                "SELECT metrics FROM rounds WHERE run_id=? AND state='evaluated' "
                "ORDER BY round DESC LIMIT 1",
                (run_id,),
            ).fetchone()
            fed = json.loads(ev[0] or "{}") if ev else {}
            open_round = db.execute(
                "SELECT round, goal, participants, reports, opened, deadline FROM rounds "
                "WHERE run_id=? AND state='open' ORDER BY round DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        yield GaugeMetricFamily(
            "fedge_model_version", "Newest committed model version of the run.", value=version
        )
        yield GaugeMetricFamily(
            "fedge_last_commit_timestamp_seconds",
            "Unix time of the newest model version (the run's start while none is committed).",
            value=created,
        )
        yield from self._evaluation(vmetrics, fed)
        yield from self._open_round(open_round)

    def _evaluation(self, vmetrics: dict[str, object], fed: dict[str, object]) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "fedge_model_evaluation",
            "Evaluation metrics of the newest committed version (train_/val_/test_) and of the "
            "newest federated evaluation round (fed_).",
            labels=["metric"],
        )
        merged = {**vmetrics, **{k: v for k, v in fed.items() if k.startswith("fed_")}}
        numbers = {
            k: v
            for k in sorted(merged)
            if _EVAL_KEY.match(k)
            and not k.endswith("_samples")
            and (v := _number(merged[k])) is not None
        }
        for k in list(numbers)[:_MAX_EVAL_KEYS]:
            g.add_metric([k], numbers[k])
        yield g
        epsilon, delta = _number(vmetrics.get("dp_epsilon")), _number(vmetrics.get("dp_delta"))
        if epsilon is not None:
            yield GaugeMetricFamily(
                "fedge_privacy_epsilon",
                "Privacy budget spent by the run so far (client-level DP epsilon at dp_delta).",
                value=epsilon,
            )
            if delta is not None:
                yield GaugeMetricFamily(
                    "fedge_privacy_delta", "The delta the epsilon is stated at.", value=delta
                )

    def _open_round(self, r: tuple | None) -> Iterator[Metric]:
        s = self.selection
        if r is not None:
            number, goal, participants, reports, opened, deadline = r
            invited = len(json.loads(participants or "[]"))
            goal = goal or invited
        else:
            number, invited, reports, opened, deadline = 0, 0, 0, 0.0, 0.0
            goal = max(1, s.min_devices, s.devices_per_round)
        yield GaugeMetricFamily(
            "fedge_current_round", "Number of the open round, 0 if none is open.", value=number
        )
        yield GaugeMetricFamily(
            "fedge_round_goal_devices",
            "Reports the open round needs; with no round open, the eligible devices the next "
            "one waits for (max of min_devices and devices_per_round).",
            value=goal,
        )
        yield GaugeMetricFamily(
            "fedge_round_participants", "Devices invited to the open round.", value=invited
        )
        yield GaugeMetricFamily(
            "fedge_round_reports", "Reports the open round has accepted so far.", value=reports
        )
        yield GaugeMetricFamily(
            "fedge_round_age_seconds",
            "Seconds since the open round opened, 0 if none is open.",
            value=max(0.0, time.time() - opened) if r is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "fedge_round_deadline_timestamp_seconds",
            "Unix time of the open round's deadline, 0 if none is open.",
            value=deadline,
        )

    def _counters(self, db: sqlite3.Connection) -> Iterator[Metric]:
        rounds = dict(
            db.execute("SELECT state, COUNT(*) FROM rounds WHERE state!='open' GROUP BY state")
        )
        c = CounterMetricFamily("fedge_rounds", "Closed rounds by final state.", labels=["state"])
        for s in ROUND_STATES:
            c.add_metric([s], float(rounds.get(s, 0)))
        yield c
        late, dup, dropped, bytes_in = db.execute(
            "SELECT COALESCE(SUM(late),0), COALESCE(SUM(duplicates),0), COALESCE(SUM(dropped),0),"
            " COALESCE(SUM(bytes_in),0) FROM rounds"
        ).fetchone()
        by_status, rejected, aborted = self._update_counts(db)
        outcome = {**by_status, "late": late, "duplicate": dup, "dropped": dropped}
        u = CounterMetricFamily(
            "fedge_updates",
            "Device answers by outcome: accepted and evaluated count; rejected, late, duplicate, "
            "aborted and dropped (went offline without reporting) do not.",
            labels=["outcome"],
        )
        for o in UPDATE_OUTCOMES:
            u.add_metric([o], float(outcome.get(o, 0)))
        yield u
        yield _coded(
            "fedge_updates_rejected", "Rejected updates by reason code.", rejected, REJECTION_CODES
        )
        yield _coded(
            "fedge_updates_aborted",
            "Round aborts sent by devices, by reason code.",
            aborted,
            ABORT_CODES,
        )
        b = CounterMetricFamily(
            "fedge_update_bytes", "Bytes of accepted updates (deltas as received).", unit="bytes"
        )
        b.add_metric([], float(bytes_in))
        yield b

    def _update_counts(
        self, db: sqlite3.Connection
    ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Updates by status, rejections and aborts by code. Rows are only ever appended, so
        each scrape reads just the rows added since the last one (a full scan of a long run's
        table costs ~0.2 s per 100,000 rows); a smaller max id or another first run means a new database: rescan."""
        with self._lock:
            (top,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM updates").fetchone()
            first = db.execute("SELECT run_id, started FROM runs ORDER BY started LIMIT 1")
            origin = first.fetchone()
            if top < self._scanned_id or origin != self._origin:
                self._scanned_id, self._counts, self._origin = 0, {}, origin
            for status, reason in db.execute(
                "SELECT status, reason FROM updates WHERE id > ? AND id <= ?",
                (self._scanned_id, top),
            ):
                if status == "rejected":
                    code = rejection_code(reason)
                elif status == "aborted":
                    code = abort_code(reason)
                else:
                    code = ""
                self._counts[(status, code)] = self._counts.get((status, code), 0) + 1
            self._scanned_id = top
            counts = dict(self._counts)
        by_status: dict[str, int] = {}
        rejected = dict.fromkeys(REJECTION_CODES, 0)
        aborted = dict.fromkeys(ABORT_CODES, 0)
        for (status, code), n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
            if status == "rejected":
                rejected[code] += n
            elif status == "aborted":
                aborted[code] += n
        return by_status, rejected, aborted

    def _durations(self, db: sqlite3.Connection) -> Iterator[Metric]:
        by_state: dict[tuple[str, ...], list[float]] = {(s,): [] for s in ROUND_STATES}
        for state, seconds in db.execute(
            "SELECT state, closed - opened FROM rounds WHERE state!='open' AND closed IS NOT NULL"
        ):
            key = (state,) if (state,) in by_state else ("other",)
            by_state.setdefault(key, []).append(max(0.0, seconds))
        yield histogram(
            "fedge_round_duration_seconds",
            "Wall time from a round's opening to its close, by final state.",
            ROUND_BUCKETS,
            ["state"],
            by_state,
        )
        gaps: list[float] = []
        previous: dict[str, float] = {}
        for run_id, created in db.execute(
            "SELECT run_id, created FROM model_versions ORDER BY run_id, version"
        ):
            if run_id in previous:
                gaps.append(max(0.0, created - previous[run_id]))
            previous[run_id] = created
        yield histogram(
            "fedge_version_duration_seconds",
            "Wall time from one committed model version to the next (retries included).",
            ROUND_BUCKETS,
            [],
            {(): gaps},
        )


def _coded(name: str, doc: str, counts: dict[str, int], codes: tuple[str, ...]) -> Metric:
    c = CounterMetricFamily(name, doc, labels=["reason"])
    for code in codes:
        c.add_metric([code], float(counts[code]))
    return c


def _number(v: object) -> float | None:
    """``v`` as a float if it is a real number (not a bool, not NaN), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
        return float(v)
    return None
