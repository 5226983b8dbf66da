"""The SQL behind the dashboard: read-only queries over the orchestrator's tables.

Like :class:`~fedge.orchestrator.buffered_store.BufferedStore` it shares the
:class:`~fedge.orchestrator.store.Store`'s connection, lock and error translation; unlike it,
it only reads. Every query is bounded (LIMIT, GROUP BY) so that a page polled every second
stays cheap on a federation of thousands of devices and rounds.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

from ..schema import ROUND_COLS, RoundRecord, round_from_row
from ..store import Store

# updates rows that are not a counted contribution: what the dashboard lists as refused
REFUSED_STATUSES = ("rejected", "duplicates", "late", "aborted", "dropped")


class DashboardQueries:
    """Read-only views of one orchestrator database for the dashboard."""

    def __init__(self, store: Store) -> None:
        self._db = store._db  # noqa: SLF001 - same connection, lock and error translation

    def snapshot(self) -> AbstractContextManager[None]:
        """The queries inside see one committed state (a WAL reader never blocks the writer)."""
        return self._db.read_snapshot()

    def fleet(self, limit: int) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
        """Up to ``limit`` devices (ineligible ones first, then by id), the fleet's totals
        (devices, eligible) and how many devices are in each state."""
        devices = self._db.dicts(
            "SELECT agent_id, state, backend, num_samples, eligible, reason, version, last_seen "
            "FROM devices ORDER BY eligible, agent_id LIMIT ?",
            (limit,),
        )
        row = self._db.row("SELECT COUNT(*), COALESCE(SUM(eligible), 0) FROM devices")
        total, eligible = (int(row[0]), int(row[1])) if row else (0, 0)
        by_state = self._db.rows("SELECT state, COUNT(*) FROM devices GROUP BY state")
        return devices, {"total": total, "eligible": eligible}, {str(s): n for s, n in by_state}

    def open_round(self, run_id: str) -> RoundRecord | None:
        row = self._db.row(
            f"SELECT {ROUND_COLS} FROM rounds WHERE run_id=? AND state='open' "
            "ORDER BY round DESC LIMIT 1",
            (run_id,),
        )
        return round_from_row(row) if row else None

    def round_states(self, run_id: str) -> dict[str, int]:
        """How many rounds of the run are in each state (committed, abandoned, open, ...)."""
        rows = self._db.rows(
            "SELECT state, COUNT(*) FROM rounds WHERE run_id=? GROUP BY state", (run_id,)
        )
        return {str(s): int(n) for s, n in rows}

    def versions(self, run_id: str) -> list[dict[str, Any]]:
        """Every model version: number, the round that made it (sync), when, its metrics."""
        rows = self._db.rows(
            "SELECT version, round, created, metrics FROM model_versions WHERE run_id=? "
            "ORDER BY version",
            (run_id,),
        )
        return [
            {"version": v, "round": r, "created": c, "metrics": json.loads(m)}
            for v, r, c, m in rows
        ]

    def last_round(self, run_id: str) -> int:
        row = self._db.row("SELECT MAX(round) FROM rounds WHERE run_id=?", (run_id,))
        return int(row[0]) if row and row[0] is not None else 0

    def refused_updates(self, run_id: str, since_round: int, limit: int) -> list[dict[str, Any]]:
        """The newest updates of a synchronous run from round ``since_round`` on that were not
        counted, with the reason. (The round bound keeps the scan on the updates_by_round
        index: a long run has millions of accepted rows and no index on the status.)"""
        marks = ",".join("?" * len(REFUSED_STATUSES))
        return self._db.dicts(
            "SELECT round, agent_id, status, reason, bytes, received FROM updates "
            f"WHERE run_id=? AND round>=? AND status IN ({marks}) ORDER BY id DESC LIMIT ?",
            (run_id, since_round, *REFUSED_STATUSES, limit),
        )

    def refused_slots(self, run_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest refused deltas of an asynchronous run (their slot's note is the reason)."""
        return self._db.dicts(
            "SELECT slot, agent_id, version, state AS status, note AS reason, granted AS received "
            "FROM async_slots WHERE run_id=? AND state='refused' ORDER BY slot DESC LIMIT ?",
            (run_id, limit),
        )

    def bytes_per_round(self, run_id: str, since_round: int) -> list[dict[str, Any]]:
        """Bytes received per round of a synchronous run from ``since_round`` on: counted
        updates and refused ones."""
        marks = ",".join("?" * len(REFUSED_STATUSES))
        return self._db.dicts(
            "SELECT round, "
            "SUM(CASE WHEN status='accepted' THEN bytes ELSE 0 END) AS accepted, "
            f"SUM(CASE WHEN status IN ({marks}) THEN bytes ELSE 0 END) AS refused "
            "FROM updates WHERE run_id=? AND round>=? GROUP BY round ORDER BY round",
            (*REFUSED_STATUSES, run_id, since_round),
        )

    def bytes_per_version(self, run_id: str, since_version: int) -> list[dict[str, Any]]:
        """Bytes of the deltas each version of an asynchronous run applied, from
        ``since_version`` on."""
        return self._db.dicts(
            "SELECT committed AS round, SUM(bytes) AS accepted, 0 AS refused FROM async_updates "
            "WHERE run_id=? AND committed>=? GROUP BY committed ORDER BY committed",
            (run_id, since_version),
        )
