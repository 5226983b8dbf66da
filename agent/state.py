"""The agent's own SQLite state: round journal and outbox (crash-safe, WAL).

A delta is written to the outbox (one transaction) before it is offered, and deleted only when
the orchestrator acknowledges it, so ``kill -9`` at any point loses nothing: on restart the
outbox is offered again and the orchestrator drops what it already counted.

One fsync per trained round (~3 ms each here; they were four): the outbox entry, its journal
row and the round's training seconds (the daily budget) are one durable transaction, written
before the offer goes out. Two writes commit without an fsync (``durable=False``: atomic and
safe from ``kill -9``, undone only by a power loss before the next fsync), because losing
them leads where keeping them does: the "training" marker (without it the round is trained
again, as with it), and an ack's removal of the outbox entry (the entry is offered again and
the orchestrator answers "already counted", which removes it again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fedge.protocol.sqlite_db import Database, DatabaseError, Migration, add_column, open_writer

from .state_recovery import describe, is_damage, move_aside, salvage_rows

log = logging.getLogger(__name__)

# The first release's tables. A database written before migrations were numbered has them but no
# `migrations` table: every step is idempotent on it, so it is adopted without losing a row.
INITIAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', updated REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS outbox (
    sha256 TEXT PRIMARY KEY, run_id TEXT NOT NULL, round INTEGER NOT NULL,
    offer BLOB NOT NULL, blob BLOB NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT PRIMARY KEY, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS residual (
    run_id TEXT PRIMARY KEY, blob BLOB NOT NULL, updated REAL NOT NULL
)
"""
# Append only: a released migration never changes (its number is recorded in databases).
MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema", INITIAL_SCHEMA),
    # 0 = unknown: kept until acked
    Migration(2, "outbox.deadline", add_column("outbox", "deadline", "REAL NOT NULL DEFAULT 0")),
    Migration(
        3,
        "cached bundles",
        "CREATE TABLE IF NOT EXISTS bundles (content_hash TEXT PRIMARY KEY, "
        "bytes INTEGER NOT NULL, added REAL NOT NULL, last_used REAL NOT NULL)",
    ),
]


class StateError(DatabaseError):
    """The agent's state database cannot be opened or written (disk full, permissions)."""


@dataclass
class OutboxItem:
    sha256: str
    run_id: str
    round: int
    offer: bytes  # the encoded UpdateOffer
    blob: bytes | None  # None in listings: read only when served (outbox_blob)
    deadline: float = 0.0  # the round's deadline (orchestrator's clock); 0 = none known


class AgentState:
    """Journal of rounds (training, offered, acked, aborted) and the outbox of unacked deltas."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = open_writer(path, MIGRATIONS, StateError)
        except StateError as exc:
            if not is_damage(exc):
                raise
            self._db = self._rebuild(str(exc))
            return
        problem = self._integrity_problem()
        if problem:
            self._db.close()
            self._db = self._rebuild(problem)

    def recover_if_damaged(self, exc: BaseException) -> bool:
        """After a failed read or write: if the file is damaged, rebuild it in place (every
        holder of this object keeps working) and return True; else False."""
        if not is_damage(exc):
            return False
        self._db.close()
        self._db = self._rebuild(str(exc))
        return True

    def _integrity_problem(self) -> str:
        try:
            rows = [str(r[0]) for r in self._db.rows("PRAGMA quick_check")]
        except StateError as exc:
            return str(exc)
        return "" if rows == ["ok"] else "; ".join(rows[:3])

    def _rebuild(self, reason: str) -> Database:
        """Move the damaged file aside, start a fresh one, salvage what is readable
        (agent/state_recovery.py)."""
        aside = move_aside(self.path, reason, StateError)
        fresh = open_writer(self.path, MIGRATIONS, StateError)

        def insert(sql: str, row: tuple[object, ...]) -> None:
            with fresh.transaction("salvaging rows into") as conn:
                conn.execute(sql, row)

        counts = salvage_rows(aside, insert)
        log.error(
            "state database %s was damaged (%s): moved it to %s and started a new one; salvaged %s",
            self.path,
            reason,
            aside,
            describe(counts),
        )
        return fresh

    def _write(self, sql: str, args: tuple, action: str = "writing", durable: bool = True) -> None:
        with self._db.transaction(action, durable=durable) as conn:
            conn.execute(sql, args)

    def journal_status(self, run_id: str, round_no: int) -> str:
        return self.journal_entry(run_id, round_no)[0]

    def journal_entry(self, run_id: str, round_no: int) -> tuple[str, str]:
        """(status, detail) of a round in the journal; ("", "") if it has no entry."""
        row = self._db.row(
            "SELECT status, detail FROM journal WHERE run_id=? AND round=?", (run_id, round_no)
        )
        return (row[0], row[1]) if row else ("", "")

    def set_journal(
        self, run_id: str, round_no: int, status: str, detail: str = "", *, durable: bool = True
    ) -> None:
        """``durable=False`` for a status whose loss changes nothing (the "training" marker:
        a round without a final status is trained again either way)."""
        self._write(
            "INSERT INTO journal(run_id, round, status, detail, updated) VALUES (?,?,?,?,?) "
            "ON CONFLICT(run_id, round) DO UPDATE SET status=excluded.status, "
            "detail=excluded.detail, updated=excluded.updated",
            (run_id, round_no, status, detail, time.time()),
            durable=durable,
        )

    def add_outbox(
        self,
        item: OutboxItem,
        journal_status: str = "offered",
        *,
        residual: bytes | None = None,
        training_seconds: tuple[str, float] | None = None,
    ) -> None:
        """Store the delta and mark the round offered in one (durable) transaction.

        ``residual``: the top-k error-feedback residual for the next round of this run, saved in
        the same transaction so a crash can neither lose it nor apply it twice.
        ``training_seconds``: (day, seconds) the round's training spent, counted against the
        day's budget in the same transaction (one fsync instead of two before the offer).
        """
        with self._db.transaction("saving the update to") as conn:
            if training_seconds is not None:
                conn.execute(self._ADD_USAGE, (training_seconds[0], float(training_seconds[1])))
            if residual is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO residual(run_id, blob, updated) VALUES (?,?,?)",
                    (item.run_id, residual, time.time()),
                )
            conn.execute(
                "INSERT OR REPLACE INTO outbox(sha256, run_id, round, offer, blob, created, "
                "deadline) VALUES (?,?,?,?,?,?,?)",
                (
                    item.sha256,
                    item.run_id,
                    item.round,
                    item.offer,
                    item.blob,
                    time.time(),
                    item.deadline,
                ),
            )
            conn.execute(
                "INSERT OR REPLACE INTO journal(run_id, round, status, detail, updated) "
                "VALUES (?,?,?,?,?)",
                (item.run_id, item.round, journal_status, item.sha256, time.time()),
            )

    def outbox(self) -> list[OutboxItem]:
        """Pending updates, oldest first, without their deltas (the loop lists them often)."""
        rows = self._db.rows(
            "SELECT sha256, run_id, round, offer, NULL, deadline FROM outbox ORDER BY created"
        )
        return [OutboxItem(*r) for r in rows]

    def has_outbox(self) -> bool:
        return self._db.row("SELECT 1 FROM outbox LIMIT 1") is not None

    def outbox_blob(self, sha256: str) -> bytes | None:
        row = self._db.row("SELECT blob FROM outbox WHERE sha256=?", (sha256,))
        return row[0] if row else None

    def remove_outbox(
        self, sha256: str, journal_status: str, detail: str = "", *, durable: bool = True
    ) -> None:
        """Drop an acknowledged (or expired) delta and record why, atomically.

        ``durable=False`` for an ack: if a power loss undoes the removal, the entry is offered
        again and the orchestrator's answer ("already counted") removes it again."""
        with self._db.transaction(durable=durable) as conn:
            row = conn.execute(
                "SELECT run_id, round FROM outbox WHERE sha256=?", (sha256,)
            ).fetchone()
            conn.execute("DELETE FROM outbox WHERE sha256=?", (sha256,))
            if row:
                conn.execute(
                    "UPDATE journal SET status=?, detail=?, updated=? WHERE run_id=? AND round=?",
                    (journal_status, detail, time.time(), row[0], row[1]),
                )

    def expire_outbox(self, before: float) -> list[OutboxItem]:
        """Drop the deltas whose round's deadline is earlier than ``before`` (the round has
        closed: nobody will count them) and journal their rounds ``expired``; return them.
        Rows without a known deadline (0, written by older versions) stay until acked."""
        expired = [i for i in self.outbox() if 0 < i.deadline < before]
        for item in expired:
            self.remove_outbox(item.sha256, "expired", "the round's deadline passed unacknowledged")
        return expired

    def residual(self, run_id: str) -> bytes | None:
        """The error-feedback residual kept from this run's previous round, if any."""
        row = self._db.row("SELECT blob FROM residual WHERE run_id=?", (run_id,))
        return row[0] if row else None

    _ADD_USAGE = (
        "INSERT INTO usage(day, seconds) VALUES (?, ?) "
        "ON CONFLICT(day) DO UPDATE SET seconds = seconds + excluded.seconds"
    )

    def add_training_seconds(self, day: str, seconds: float) -> None:
        """Count training time against the day's budget (``day`` is YYYY-MM-DD, local time)."""
        self._write(self._ADD_USAGE, (day, float(seconds)))

    def training_minutes(self, day: str) -> float:
        row = self._db.row("SELECT seconds FROM usage WHERE day=?", (day,))
        return (row[0] if row else 0.0) / 60.0

    # ---- cached bundles (the files live in the bundle cache directory) ----
    def remember_bundle(self, content_hash: str, nbytes: int) -> None:
        """Record that a verified bundle is cached (or was just used again)."""
        now = time.time()
        self._write(
            "INSERT INTO bundles(content_hash, bytes, added, last_used) VALUES (?,?,?,?) "
            "ON CONFLICT(content_hash) DO UPDATE SET bytes=excluded.bytes, "
            "last_used=excluded.last_used",
            (content_hash, nbytes, now, now),
        )

    def forget_bundle(self, content_hash: str) -> None:
        self._write("DELETE FROM bundles WHERE content_hash=?", (content_hash,))

    def cached_bundles(self) -> list[tuple[str, int, float]]:
        """(content hash, bytes, last used) of the cached bundles, most recently used first."""
        return [
            (h, n, t)
            for h, n, t in self._db.rows(
                "SELECT content_hash, bytes, last_used FROM bundles "
                "ORDER BY last_used DESC, rowid DESC"
            )
        ]

    def close(self) -> None:
        self._db.close()
