"""SQLite rows of buffered asynchronous runs: slots, the buffer of accepted deltas, commits.

Every method is one transaction on the orchestrator's database (the same file and connection
as :class:`~.store.Store`, whose numbered migrations create these tables). A delta's row is
keyed by its slot, so it is stored -- and counted -- once; a commit writes the new version, the
strategy state and marks the deltas it applied in one transaction, so ``kill -9`` leaves the
buffer either still full or applied, never half.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from typing import Any

from .buffered_machine import Slot
from .store import Store

SLOT_COLS = "slot, agent_id, version, granted, expires, state"


class BufferedStore:
    """The asynchronous-run tables of one orchestrator database."""

    def __init__(self, store: Store) -> None:
        self._db = store._db  # noqa: SLF001 - same connection, lock and error translation

    def _tx(self, statements: list[tuple[str, tuple]], action: str) -> None:
        with self._db.transaction(action) as conn:
            for sql, args in statements:
                conn.execute(sql, args)

    # ---- slots ----
    def grant_slot(self, run_id: str, s: Slot) -> None:
        self._tx(
            [
                (
                    "INSERT OR IGNORE INTO async_slots(run_id, slot, agent_id, version, granted, "
                    "expires, state) VALUES (?,?,?,?,?,?,?)",
                    (run_id, s.slot, s.agent_id, s.version, s.granted, s.expires, s.state),
                )
            ],
            f"granting slot {s.slot} in",
        )

    def expire_slots(self, run_id: str, slots: list[int]) -> None:
        self._tx(
            [
                (
                    "UPDATE async_slots SET state='expired' WHERE run_id=? AND slot=? "
                    "AND state='active'",
                    (run_id, n),
                )
                for n in slots
            ]
            + [self._bump(run_id, "expired", len(slots))],
            "expiring slots in",
        )

    def slot(self, run_id: str, slot: int) -> Slot | None:
        row = self._db.row(
            f"SELECT {SLOT_COLS} FROM async_slots WHERE run_id=? AND slot=?", (run_id, slot)
        )
        return Slot(*row) if row else None

    def active_slots(self, run_id: str) -> list[Slot]:
        rows = self._db.rows(
            f"SELECT {SLOT_COLS} FROM async_slots WHERE run_id=? AND state='active' ORDER BY slot",
            (run_id,),
        )
        return [Slot(*r) for r in rows]

    def last_slot(self, run_id: str) -> int:
        row = self._db.row("SELECT MAX(slot) FROM async_slots WHERE run_id=?", (run_id,))
        return int(row[0]) if row and row[0] is not None else 0

    # ---- deltas ----
    def accept(
        self,
        run_id: str,
        s: Slot,
        *,
        sha256: str,
        staleness: int,
        weight: float,
        num_samples: int,
        metrics: dict[str, float],
        delta: bytes,
    ) -> bool:
        """Store an accepted delta and mark its slot used; False if the slot was counted."""
        try:
            with self._db.transaction(f"accepting slot {s.slot}'s delta into") as conn:
                conn.execute(
                    "INSERT INTO async_updates(run_id, slot, agent_id, sha256, from_version, "
                    "staleness, weight, num_samples, metrics, bytes, received, delta) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        s.slot,
                        s.agent_id,
                        sha256,
                        s.version,
                        staleness,
                        weight,
                        num_samples,
                        json.dumps(metrics),
                        len(delta),
                        time.time(),
                        delta,
                    ),
                )
                conn.execute(
                    "UPDATE async_slots SET state='used' WHERE run_id=? AND slot=?",
                    (run_id, s.slot),
                )
        except self._db.error as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                return False
            raise
        return True

    def refuse(self, run_id: str, slot: int, reason: str, counter: str = "refused") -> None:
        self._tx(
            [
                (
                    "UPDATE async_slots SET state='refused', note=? WHERE run_id=? AND slot=? "
                    "AND state IN ('active', 'expired')",
                    (reason[:500], run_id, slot),
                ),
                self._bump(run_id, counter),
            ],
            f"refusing slot {slot}'s delta in",
        )

    def count(self, run_id: str, name: str, by: int = 1) -> None:
        self._tx([self._bump(run_id, name, by)], f"counting {name} in")

    @staticmethod
    def _bump(run_id: str, name: str, by: int = 1) -> tuple[str, tuple]:
        return (
            "INSERT INTO async_counters(run_id, name, n) VALUES (?,?,?) "
            "ON CONFLICT(run_id, name) DO UPDATE SET n = n + excluded.n",
            (run_id, name, by),
        )

    def buffered(self, run_id: str) -> list[int]:
        """Slots of accepted deltas not yet committed, oldest first."""
        rows = self._db.rows(
            "SELECT slot FROM async_updates WHERE run_id=? AND committed IS NULL ORDER BY received",
            (run_id,),
        )
        return [r[0] for r in rows]

    def buffered_deltas(
        self, run_id: str, slots: tuple[int, ...]
    ) -> list[tuple[int, str, int, float, bytes]]:
        """(slot, agent, num_samples, staleness weight, delta) of the given buffered slots."""
        out = []
        for n in slots:
            row = self._db.row(
                "SELECT agent_id, num_samples, weight, delta FROM async_updates "
                "WHERE run_id=? AND slot=? AND committed IS NULL",
                (run_id, n),
            )
            if row is not None and row[3] is not None:
                out.append((n, str(row[0]), int(row[1]), float(row[2]), bytes(row[3])))
        return out

    def commit(
        self,
        run_id: str,
        version: int,
        slots: tuple[int, ...],
        params: bytes,
        sha: str,
        metrics: dict[str, Any],
        strategy_state: bytes | None,
        *,
        keep_deltas: bool = False,
    ) -> None:
        """The new version, the optimizer state and the applied deltas: one transaction."""
        now = time.time()
        stmts: list[tuple[str, tuple]] = [
            (
                "INSERT INTO model_versions(run_id, version, round, sha256, params, metrics, "
                "created) VALUES (?,?,?,?,?,?,?)",
                (run_id, version, None, sha, params, json.dumps(metrics), now),
            )
        ]
        if strategy_state is not None:
            stmts.append(
                (
                    "INSERT OR REPLACE INTO strategy_state(run_id, version, state) VALUES (?,?,?)",
                    (run_id, version, strategy_state),
                )
            )
        drop = "" if keep_deltas else ", delta=NULL"
        stmts += [
            (
                f"UPDATE async_updates SET committed=?{drop} WHERE run_id=? AND slot=? "
                "AND committed IS NULL",
                (version, run_id, n),
            )
            for n in slots
        ]
        self._tx(stmts, f"committing async version {version} to")

    # ---- views (status, history, tests) ----
    def run_mode(self, run_id: str) -> str:
        """ "sync" or "async", as the run was created ("sync" for runs before async mode)."""
        row = self._db.row("SELECT config FROM runs WHERE run_id=?", (run_id,))
        return str(json.loads(row[0]).get("mode", "sync")) if row else "sync"

    def versions(self, run_id: str) -> list[dict[str, Any]]:
        """Every model version: number, creation time, metrics."""
        rows = self._db.rows(
            "SELECT version, created, metrics FROM model_versions WHERE run_id=? ORDER BY version",
            (run_id,),
        )
        return [{"version": v, "created": c, "metrics": json.loads(m)} for v, c, m in rows]

    def most_slots_per_device(self, run_id: str) -> int:
        """The most slots any one device was handed in the run: each is at most one upload."""
        row = self._db.rows(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM async_slots WHERE run_id=? "
            "GROUP BY agent_id)",
            (run_id,),
        )
        return int(row[0][0] or 0) if row else 0

    def counters(self, run_id: str) -> dict[str, int]:
        rows = self._db.rows("SELECT name, n FROM async_counters WHERE run_id=?", (run_id,))
        return {name: int(n) for name, n in rows}

    def staleness_histogram(self, run_id: str) -> dict[int, int]:
        rows = self._db.rows("SELECT staleness FROM async_updates WHERE run_id=?", (run_id,))
        return dict(sorted(Counter(int(r[0]) for r in rows).items()))

    def updates(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.dicts(
            "SELECT slot, agent_id, sha256, from_version, staleness, weight, num_samples, "
            "committed FROM async_updates WHERE run_id=? ORDER BY slot",
            (run_id,),
        )
