"""The orchestrator's SQLite state (WAL): devices, runs, rounds, updates, model versions.

Every state change is one transaction, so ``kill -9`` at any point leaves a consistent file: a
restarted orchestrator finds the run, the committed versions, the open round and the updates it
had already accepted (their deltas are kept until the round commits). The schema evolves by the
numbered migrations in :mod:`.schema`; ``Store.open_read_only`` (status, history, plots) never
writes the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedge.protocol.sqlite_db import Database, DatabaseError, open_reader, open_writer

from .schema import LATEST_MIGRATION, MIGRATIONS, ROUND_COLS, RoundRecord, round_from_row

__all__ = ["RoundRecord", "Store", "StoreError"]

Statements = list[tuple[str, tuple]]
# the rounds columns an event can be counted in (``count``, ``reject_update``)
COUNTERS = ("rejected", "duplicates", "late", "aborted", "bytes_in", "dropped")


class StoreError(DatabaseError):
    """The orchestrator database cannot be opened, read or written."""


class Store:
    """The orchestrator database. ``Store(path)`` opens it for writing (creating and migrating
    it); ``Store.open_read_only(path)`` opens an existing one for reading only."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        if read_only:
            self._db: Database = open_reader(
                path,
                StoreError,
                missing_hint="pass --database PATH (the orchestrator's `database` setting)",
                newest_migration=LATEST_MIGRATION,
            )
        else:
            self._db = open_writer(path, MIGRATIONS, StoreError)

    @classmethod
    def open_read_only(cls, path: str | Path) -> Store:
        """Open an existing database without writing anything (no schema, no WAL switch)."""
        return cls(path, read_only=True)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def db(self) -> sqlite3.Connection:
        """The raw connection, for diagnostics only (errors from it are not translated): SQL
        belongs in this module's methods. Kept because tests read ``store.db``."""
        return self._db.conn

    def _tx(self, statements: Statements, action: str = "writing") -> None:
        """Run statements in one IMMEDIATE transaction."""
        with self._db.transaction(action) as conn:
            for sql, args in statements:
                conn.execute(sql, args)

    # ---- devices ----
    _UPSERT_DEVICE = (
        "INSERT INTO devices(agent_id, state, backend, num_samples, eligible, reason, "
        "version, last_seen) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(agent_id) DO UPDATE "
        "SET state=excluded.state, backend=excluded.backend, "
        "num_samples=excluded.num_samples, eligible=excluded.eligible, "
        "reason=excluded.reason, version=excluded.version, last_seen=excluded.last_seen"
    )

    def upsert_device(
        self,
        agent_id: str,
        state: str,
        backend: str,
        num_samples: int,
        eligible: bool,
        reason: str,
        version: str,
    ) -> None:
        self.upsert_devices([(agent_id, state, backend, num_samples, eligible, reason, version)])

    def upsert_devices(self, rows: list[tuple[str, str, str, int, bool, str, str]]) -> None:
        """Several devices' rows (agent id, state, backend, samples, eligible, reason,
        version) in one transaction."""
        now = time.time()
        self._tx(
            [
                (self._UPSERT_DEVICE, (a, st, b, n, int(e), r, v, now))
                for a, st, b, n, e, r, v in rows
            ]
        )

    def devices(self) -> list[dict[str, Any]]:
        return self._db.dicts("SELECT * FROM devices ORDER BY agent_id")

    # ---- runs ----
    def active_run(self) -> dict[str, Any] | None:
        row = self._db.row(
            "SELECT run_id, bundle_hash, config, state FROM runs WHERE state='running' "
            "ORDER BY started DESC LIMIT 1"
        )
        if not row:
            return None
        return {
            "run_id": row[0],
            "bundle_hash": row[1],
            "config": json.loads(row[2]),
            "state": row[3],
        }

    def latest_run_id(self) -> str | None:
        row = self._db.row("SELECT run_id FROM runs ORDER BY started DESC LIMIT 1")
        return row[0] if row else None

    def run_exists(self, run_id: str) -> bool:
        return self._db.row("SELECT 1 FROM runs WHERE run_id=?", (run_id,)) is not None

    def create_run(
        self, run_id: str, bundle_hash: str, config: dict[str, Any], params: bytes, sha: str
    ) -> None:
        now = time.time()
        self._tx(
            [
                (
                    "INSERT INTO runs(run_id, bundle_hash, config, state, started) "
                    "VALUES (?,?,?,?,?)",
                    (run_id, bundle_hash, json.dumps(config), "running", now),
                ),
                (
                    "INSERT INTO model_versions(run_id, version, round, sha256, params, created) "
                    "VALUES (?,?,?,?,?,?)",
                    (run_id, 0, None, sha, params, now),
                ),
            ]
        )

    def latest_finished_run(self, bundle_hash: str) -> str | None:
        row = self._db.row(
            "SELECT run_id FROM runs WHERE state='finished' AND bundle_hash=? "
            "ORDER BY started DESC LIMIT 1",
            (bundle_hash,),
        )
        return row[0] if row else None

    def reopen_run(self, run_id: str) -> None:
        self._tx([("UPDATE runs SET state='running', finished=NULL WHERE run_id=?", (run_id,))])

    def finish_run(self, run_id: str) -> None:
        self._tx(
            [("UPDATE runs SET state='finished', finished=? WHERE run_id=?", (time.time(), run_id))]
        )

    def runs(self) -> list[dict[str, Any]]:
        return self._db.dicts(
            "SELECT run_id, bundle_hash, state, started, finished FROM runs ORDER BY started"
        )

    # ---- model versions ----
    def latest_version(self, run_id: str) -> tuple[int, bytes, str]:
        row = self._db.row(
            "SELECT version, params, sha256 FROM model_versions WHERE run_id=? "
            "ORDER BY version DESC LIMIT 1",
            (run_id,),
        )
        if row is None:
            raise StoreError(f"run {run_id} has no model version")
        return row[0], row[1], row[2]

    def version_params(self, run_id: str, version: int) -> bytes:
        row = self._db.row(
            "SELECT params FROM model_versions WHERE run_id=? AND version=?", (run_id, version)
        )
        if row is None:
            raise StoreError(f"run {run_id} has no model version {version}")
        return row[0]

    def set_version_metrics(self, run_id: str, version: int, metrics: dict[str, Any]) -> None:
        self._tx(
            [
                (
                    "UPDATE model_versions SET metrics=? WHERE run_id=? AND version=?",
                    (json.dumps(metrics), run_id, version),
                )
            ]
        )

    def add_version_metrics(self, run_id: str, version: int, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` (a later central evaluation) into a committed version's metrics
        and those of the round that made it: one transaction."""
        with self._db.transaction("adding evaluation metrics to") as conn:
            row = conn.execute(
                "SELECT round, metrics FROM model_versions WHERE run_id=? AND version=?",
                (run_id, version),
            ).fetchone()
            if row is None:
                raise StoreError(f"run {run_id} has no model version {version}")
            conn.execute(
                "UPDATE model_versions SET metrics=? WHERE run_id=? AND version=?",
                (json.dumps({**json.loads(row[1] or "{}"), **metrics}), run_id, version),
            )
            rnd = conn.execute(
                "SELECT metrics FROM rounds WHERE run_id=? AND round=? AND state='committed'",
                (run_id, row[0]),
            ).fetchone()
            if rnd is not None:
                conn.execute(
                    "UPDATE rounds SET metrics=? WHERE run_id=? AND round=?",
                    (json.dumps({**json.loads(rnd[0] or "{}"), **metrics}), run_id, row[0]),
                )

    def strategy_state(self, run_id: str, version: int) -> bytes | None:
        row = self._db.row(
            "SELECT state FROM strategy_state WHERE run_id=? AND version=?", (run_id, version)
        )
        return row[0] if row else None

    # ---- rounds ----
    def open_round(self, rec: RoundRecord) -> None:
        self._tx(
            [
                (
                    "INSERT INTO rounds(run_id, round, model_version, state, participants, "
                    "opened, deadline, goal, kind) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        rec.run_id,
                        rec.round,
                        rec.model_version,
                        "open",
                        json.dumps(rec.participants),
                        rec.opened,
                        rec.deadline,
                        rec.goal,
                        rec.kind,
                    ),
                )
            ]
        )

    def rounds(self, run_id: str) -> list[RoundRecord]:
        rows = self._db.rows(
            f"SELECT {ROUND_COLS} FROM rounds WHERE run_id=? ORDER BY round", (run_id,)
        )
        return [round_from_row(r) for r in rows]

    def get_round(self, run_id: str, round_no: int) -> RoundRecord | None:
        row = self._db.row(
            f"SELECT {ROUND_COLS} FROM rounds WHERE run_id=? AND round=?", (run_id, round_no)
        )
        return round_from_row(row) if row else None

    def count(self, run_id: str, round_no: int, column: str, by: int = 1) -> None:
        if column not in COUNTERS:
            raise ValueError(f"unknown round counter {column!r}; counters are: {COUNTERS}")
        self._tx(
            [
                (
                    f"UPDATE rounds SET {column}={column}+? WHERE run_id=? AND round=?",
                    (by, run_id, round_no),
                )
            ]
        )

    def close_round(self, run_id: str, round_no: int, state: str, note: str) -> None:
        self._tx(
            [
                (
                    "UPDATE rounds SET state=?, closed=?, note=? WHERE run_id=? AND round=?",
                    (state, time.time(), note, run_id, round_no),
                )
            ]
        )

    def commit_round(
        self,
        run_id: str,
        round_no: int,
        version: int,
        params: bytes,
        sha: str,
        metrics: dict[str, Any],
        *,
        keep_deltas: bool = False,
        strategy_state: bytes | None = None,
    ) -> None:
        """Store the new model version (and the strategy's state), close the round and drop
        its deltas: one transaction."""
        now = time.time()
        stmts: Statements = []
        if strategy_state is not None:
            stmts.append(
                (
                    "INSERT OR REPLACE INTO strategy_state(run_id, version, state) VALUES (?,?,?)",
                    (run_id, version, strategy_state),
                )
            )
        stmts.append(
            (
                "INSERT INTO model_versions(run_id, version, round, sha256, params, metrics, "
                "created) VALUES (?,?,?,?,?,?,?)",
                (run_id, version, round_no, sha, params, json.dumps(metrics), now),
            )
        )
        stmts.append(
            (
                "UPDATE rounds SET state='committed', closed=?, metrics=? "
                "WHERE run_id=? AND round=?",
                (now, json.dumps(metrics), run_id, round_no),
            )
        )
        if not keep_deltas:
            stmts.append(
                ("UPDATE updates SET delta=NULL WHERE run_id=? AND round=?", (run_id, round_no))
            )
        self._tx(stmts, f"committing round {round_no} to")

    def drop_deltas(self, run_id: str, round_no: int) -> None:
        """Free a committed round's deltas (their rows stay: sha256, samples, metrics).

        Not in the commit's transaction: with SQLite's ``secure_delete`` (on in Debian's
        build) freeing 1,000 19 KB deltas zeroes and writes ~19 MB, 150-400 ms here, which
        the whole fleet waited for between two rounds. The orchestrator calls this once it
        is idle after the next round opened (``Orchestrator._drop_old_deltas``)."""
        self._tx(
            [
                (
                    "UPDATE updates SET delta=NULL WHERE run_id=? AND round=? "
                    "AND delta IS NOT NULL",
                    (run_id, round_no),
                )
            ],
            f"freeing the deltas of round {round_no} in",
        )

    def rounds_with_deltas(self, run_id: str) -> list[int]:
        """Committed rounds of a run that still hold deltas (a crash came between a commit and
        ``drop_deltas``, or the run kept them with ``rounds.keep_deltas``)."""
        return [
            r[0]
            for r in self._db.rows(
                "SELECT DISTINCT u.round FROM updates u JOIN rounds r "
                "ON r.run_id = u.run_id AND r.round = u.round "
                "WHERE u.run_id=? AND r.state='committed' AND u.delta IS NOT NULL "
                "ORDER BY u.round",
                (run_id,),
            )
        ]

    # ---- updates ----
    def accept_update(
        self,
        run_id: str,
        round_no: int,
        agent_id: str,
        sha: str,
        num_samples: int,
        metrics: dict[str, float],
        delta: bytes,
    ) -> None:
        self.accept_updates([(run_id, round_no, agent_id, sha, num_samples, metrics, delta)])

    def accept_updates(
        self, updates: list[tuple[str, int, str, str, int, dict[str, float], bytes]]
    ) -> None:
        """Record several accepted updates, (run_id, round, agent_id, sha256, num_samples,
        metrics, delta) each, in one transaction (one fsync for a whole burst of answers)."""
        now = time.time()
        stmts: Statements = []
        for run_id, round_no, agent_id, sha, num_samples, metrics, delta in updates:
            stmts.append(
                (
                    "INSERT INTO updates(run_id, round, agent_id, sha256, status, num_samples, "
                    "metrics, bytes, received, delta) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        round_no,
                        agent_id,
                        sha,
                        "accepted",
                        num_samples,
                        json.dumps(metrics),
                        len(delta),
                        now,
                        delta,
                    ),
                )
            )
            stmts.append(
                (
                    "UPDATE rounds SET reports=reports+1, bytes_in=bytes_in+? "
                    "WHERE run_id=? AND round=?",
                    (len(delta), run_id, round_no),
                )
            )
        self._tx(stmts, "saving updates to")

    def accepted_claims(self, run_id: str, round_no: int) -> list[tuple[str, int]]:
        """(agent_id, num_samples) of a round's accepted updates, without the deltas."""
        return [
            (r[0], r[1])
            for r in self._db.rows(
                "SELECT agent_id, num_samples FROM updates WHERE run_id=? AND round=? "
                "AND status='accepted' ORDER BY id",
                (run_id, round_no),
            )
        ]

    def accepted_delta(self, run_id: str, round_no: int, agent_id: str) -> bytes | None:
        """One accepted update's delta (None if it has none, e.g. after the commit)."""
        row = self._db.row(
            "SELECT delta FROM updates WHERE run_id=? AND round=? AND agent_id=? "
            "AND status='accepted'",
            (run_id, round_no, agent_id),
        )
        return row[0] if row else None

    def reject_update(
        self,
        run_id: str,
        round_no: int,
        agent_id: str,
        sha: str,
        reason: str,
        nbytes: int,
        counter: str = "rejected",
    ) -> None:
        """Record a refused update; count it on the round (if the round exists)."""
        if counter not in COUNTERS:
            raise ValueError(f"unknown round counter {counter!r}; counters are: {COUNTERS}")
        self._tx(
            [
                (
                    "INSERT INTO updates(run_id, round, agent_id, sha256, status, reason, bytes, "
                    "received) VALUES (?,?,?,?,?,?,?,?)",
                    (run_id, round_no, agent_id, sha, counter, reason[:500], nbytes, time.time()),
                ),
                (
                    f"UPDATE rounds SET {counter}={counter}+1 WHERE run_id=? AND round=?",
                    (run_id, round_no),
                ),
            ]
        )

    def accepted_update(self, run_id: str, round_no: int, agent_id: str) -> str | None:
        row = self._db.row(
            "SELECT sha256 FROM updates WHERE run_id=? AND round=? AND agent_id=? "
            "AND status='accepted'",
            (run_id, round_no, agent_id),
        )
        return row[0] if row else None

    def accepted_deltas(self, run_id: str, round_no: int) -> Iterator[tuple[str, int, bytes]]:
        """Yield (agent_id, num_samples, delta bytes) for a round's accepted updates, one row
        at a time (a round's deltas need not fit in memory together)."""
        ids = self._db.rows(
            "SELECT id FROM updates WHERE run_id=? AND round=? AND status='accepted' ORDER BY id",
            (run_id, round_no),
        )
        for (update_id,) in ids:
            row = self._db.row(
                "SELECT agent_id, num_samples, delta FROM updates WHERE id=?", (update_id,)
            )
            if row is not None:
                yield row[0], row[1], row[2]

    def update_metrics(self, run_id: str, round_no: int) -> list[tuple[int, dict[str, float]]]:
        rows = self._db.rows(
            "SELECT num_samples, metrics FROM updates WHERE run_id=? AND round=? "
            "AND status='accepted'",
            (run_id, round_no),
        )
        return [(n, json.loads(m)) for n, m in rows]

    def answered_agents(self, run_id: str, round_no: int) -> set[str]:
        """Agents whose update for the round was accepted or rejected, or who aborted it."""
        rows = self._db.rows(
            "SELECT DISTINCT agent_id FROM updates WHERE run_id=? AND round=? "
            "AND status IN ('accepted', 'rejected', 'aborted', 'evaluated')",
            (run_id, round_no),
        )
        return {r[0] for r in rows}

    def updates(self, run_id: str, round_no: int) -> list[dict[str, Any]]:
        """Every update record of a round (without the delta bytes), oldest first."""
        return self._db.dicts(
            "SELECT agent_id, sha256, status, reason, num_samples, bytes, received FROM updates "
            "WHERE run_id=? AND round=? ORDER BY id",
            (run_id, round_no),
        )

    # ---- federated evaluation ----
    def add_eval_report(
        self, run_id: str, round_no: int, agent_id: str, num_samples: int, metrics: dict
    ) -> bool:
        """Count a device's evaluation report once; False if it was already counted."""
        with self._db.transaction("saving an evaluation report to") as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO updates(run_id, round, agent_id, sha256, status, "
                "num_samples, metrics, received) VALUES (?,?,?,'','evaluated',?,?,?)",
                (run_id, round_no, agent_id, num_samples, json.dumps(metrics), time.time()),
            )
            if cur.rowcount != 1:  # the unique index one_eval_report
                return False
            conn.execute(
                "UPDATE rounds SET reports=reports+1 WHERE run_id=? AND round=?",
                (run_id, round_no),
            )
        return True

    def eval_reports(self, run_id: str, round_no: int) -> list[tuple[int, dict[str, float]]]:
        """(num_samples, metrics) of each device's evaluation report for the round."""
        rows = self._db.rows(
            "SELECT num_samples, metrics FROM updates WHERE run_id=? AND round=? "
            "AND status='evaluated' ORDER BY id",
            (run_id, round_no),
        )
        return [(n, json.loads(m)) for n, m in rows]

    def close_evaluation(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        """Close a federated evaluation round with its metrics (no new model version)."""
        self._tx(
            [
                (
                    "UPDATE rounds SET state='evaluated', closed=?, metrics=? "
                    "WHERE run_id=? AND round=?",
                    (time.time(), json.dumps(metrics), run_id, round_no),
                )
            ]
        )

    # ---- federated standardization ----
    def close_statistics(
        self,
        run_id: str,
        round_no: int,
        mean: list[float],
        std: list[float],
        metrics: dict[str, Any],
    ) -> None:
        """Store the run's combined feature statistics and close the statistics round, in one
        transaction (a restart finds both or neither)."""
        self._tx(
            [
                (
                    "INSERT OR REPLACE INTO run_statistics(run_id, round, features, rows, "
                    "devices, mean, std, created) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        round_no,
                        len(mean),
                        int(metrics.get("stat_rows", 0)),
                        int(metrics.get("stat_devices", 0)),
                        json.dumps(mean),
                        json.dumps(std),
                        time.time(),
                    ),
                ),
                (
                    "UPDATE rounds SET state='combined', closed=?, metrics=? "
                    "WHERE run_id=? AND round=?",
                    (time.time(), json.dumps(metrics), run_id, round_no),
                ),
            ]
        )

    def standardization(self, run_id: str) -> tuple[list[float], list[float]] | None:
        """The run's (mean, std) per feature, or None if no statistics round combined them."""
        if not self._db.row(  # a read-only database older than migration 8
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='run_statistics'"
        ):
            return None
        row = self._db.row("SELECT mean, std FROM run_statistics WHERE run_id=?", (run_id,))
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def close(self) -> None:
        self._db.close()
