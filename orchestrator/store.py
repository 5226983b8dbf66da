"""The orchestrator's SQLite state (WAL): devices, runs, rounds, updates, model versions.

Every state change is one transaction, so ``kill -9`` at any point leaves a consistent file: a
restarted orchestrator finds the run, the committed versions, the open round and the updates it
had already accepted (their deltas are kept until the round commits).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from fedge.protocol.errors import FedgeError

from .schema import MIGRATIONS, ROUND_COLS, SCHEMA, RoundRecord, round_from_row

__all__ = ["RoundRecord", "Store", "StoreError"]


class StoreError(FedgeError):
    """The orchestrator database cannot be opened or written."""


class Store:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            for table, column, definition in MIGRATIONS:
                cols = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in cols:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"orchestrator database {path} cannot be opened: {exc}") from None

    def tx(self, statements: list[tuple[str, tuple]]) -> None:
        """Run statements in one IMMEDIATE transaction."""
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    self.db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"database write failed ({exc}); free disk space and restart"
            ) from None

    # ---- devices ----
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
        self.tx(
            [
                (
                    "INSERT INTO devices(agent_id, state, backend, num_samples, eligible, reason, version, last_seen) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(agent_id) DO UPDATE SET state=excluded.state, "
                    "backend=excluded.backend, num_samples=excluded.num_samples, eligible=excluded.eligible, "
                    "reason=excluded.reason, version=excluded.version, last_seen=excluded.last_seen",
                    (
                        agent_id,
                        state,
                        backend,
                        num_samples,
                        int(eligible),
                        reason,
                        version,
                        time.time(),
                    ),
                )
            ]
        )

    def devices(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM devices ORDER BY agent_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=False)) for row in cur.fetchall()]

    # ---- runs ----
    def active_run(self) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT run_id, bundle_hash, config, state FROM runs WHERE state='running' ORDER BY started DESC LIMIT 1"
        ).fetchone()
        if not row:
            return None
        return {
            "run_id": row[0],
            "bundle_hash": row[1],
            "config": json.loads(row[2]),
            "state": row[3],
        }

    def latest_run_id(self) -> str | None:
        row = self.db.execute("SELECT run_id FROM runs ORDER BY started DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def create_run(
        self, run_id: str, bundle_hash: str, config: dict[str, Any], params: bytes, sha: str
    ) -> None:
        now = time.time()
        self.tx(
            [
                (
                    "INSERT INTO runs(run_id, bundle_hash, config, state, started) VALUES (?,?,?,?,?)",
                    (run_id, bundle_hash, json.dumps(config), "running", now),
                ),
                (
                    "INSERT INTO model_versions(run_id, version, round, sha256, params, created) VALUES (?,?,?,?,?,?)",
                    (run_id, 0, None, sha, params, now),
                ),
            ]
        )

    def finish_run(self, run_id: str) -> None:
        self.tx(
            [("UPDATE runs SET state='finished', finished=? WHERE run_id=?", (time.time(), run_id))]
        )

    # ---- model versions ----
    def latest_version(self, run_id: str) -> tuple[int, bytes, str]:
        row = self.db.execute(
            "SELECT version, params, sha256 FROM model_versions WHERE run_id=? ORDER BY version DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"run {run_id} has no model version")
        return row[0], row[1], row[2]

    def version_params(self, run_id: str, version: int) -> bytes:
        row = self.db.execute(
            "SELECT params FROM model_versions WHERE run_id=? AND version=?", (run_id, version)
        ).fetchone()
        if row is None:
            raise StoreError(f"run {run_id} has no model version {version}")
        return row[0]

    # ---- rounds ----
    def open_round(self, rec: RoundRecord) -> None:
        self.tx(
            [
                (
                    "INSERT INTO rounds(run_id, round, model_version, state, participants, opened, deadline, goal, kind) VALUES (?,?,?,?,?,?,?,?,?)",
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
        rows = self.db.execute(
            f"SELECT {ROUND_COLS} FROM rounds WHERE run_id=? ORDER BY round", (run_id,)
        ).fetchall()
        return [round_from_row(r) for r in rows]

    def get_round(self, run_id: str, round_no: int) -> RoundRecord | None:
        row = self.db.execute(
            f"SELECT {ROUND_COLS} FROM rounds WHERE run_id=? AND round=?", (run_id, round_no)
        ).fetchone()
        return round_from_row(row) if row else None

    def count(self, run_id: str, round_no: int, column: str, by: int = 1) -> None:
        if column not in ("rejected", "duplicates", "late", "aborted", "bytes_in", "dropped"):
            raise ValueError(column)
        self.tx(
            [
                (
                    f"UPDATE rounds SET {column}={column}+? WHERE run_id=? AND round=?",
                    (by, run_id, round_no),
                )
            ]
        )

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
        self.tx(
            [
                (
                    "INSERT INTO updates(run_id, round, agent_id, sha256, status, num_samples, metrics, bytes, received, delta) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        round_no,
                        agent_id,
                        sha,
                        "accepted",
                        num_samples,
                        json.dumps(metrics),
                        len(delta),
                        time.time(),
                        delta,
                    ),
                ),
                (
                    "UPDATE rounds SET reports=reports+1, bytes_in=bytes_in+? WHERE run_id=? AND round=?",
                    (len(delta), run_id, round_no),
                ),
            ]
        )

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
        stmts: list[tuple[str, tuple]] = [
            (
                "INSERT INTO updates(run_id, round, agent_id, sha256, status, reason, bytes, received) VALUES (?,?,?,?,?,?,?,?)",
                (run_id, round_no, agent_id, sha, counter, reason[:500], nbytes, time.time()),
            )
        ]
        if self.get_round(run_id, round_no):
            stmts.append(
                (
                    f"UPDATE rounds SET {counter}={counter}+1 WHERE run_id=? AND round=?",
                    (run_id, round_no),
                )
            )
        self.tx(stmts)

    def accepted_update(self, run_id: str, round_no: int, agent_id: str) -> str | None:
        row = self.db.execute(
            "SELECT sha256 FROM updates WHERE run_id=? AND round=? AND agent_id=? AND status='accepted'",
            (run_id, round_no, agent_id),
        ).fetchone()
        return row[0] if row else None

    def accepted_deltas(self, run_id: str, round_no: int):
        """Yield (agent_id, num_samples, delta bytes) for a round's accepted updates."""
        cur = self.db.execute(
            "SELECT agent_id, num_samples, delta FROM updates WHERE run_id=? AND round=? AND status='accepted' ORDER BY id",
            (run_id, round_no),
        )
        yield from cur

    def update_metrics(self, run_id: str, round_no: int) -> list[tuple[int, dict[str, float]]]:
        rows = self.db.execute(
            "SELECT num_samples, metrics FROM updates WHERE run_id=? AND round=? AND status='accepted'",
            (run_id, round_no),
        ).fetchall()
        return [(n, json.loads(m)) for n, m in rows]

    def add_eval_report(
        self, run_id: str, round_no: int, agent_id: str, num_samples: int, metrics: dict
    ) -> bool:
        """Count a device's evaluation report once; False if it was already counted."""
        try:
            self.tx(
                [
                    (
                        "INSERT INTO updates(run_id, round, agent_id, sha256, status, num_samples, "
                        "metrics, received) VALUES (?,?,?,'','evaluated',?,?,?)",
                        (run_id, round_no, agent_id, num_samples, json.dumps(metrics), time.time()),
                    ),
                    (
                        "UPDATE rounds SET reports=reports+1 WHERE run_id=? AND round=?",
                        (run_id, round_no),
                    ),
                ]
            )
        except sqlite3.IntegrityError:  # the unique index one_eval_report
            return False
        return True

    def eval_reports(self, run_id: str, round_no: int) -> list[tuple[int, dict[str, float]]]:
        """(num_samples, metrics) of each device's evaluation report for the round."""
        rows = self.db.execute(
            "SELECT num_samples, metrics FROM updates WHERE run_id=? AND round=? "
            "AND status='evaluated' ORDER BY id",
            (run_id, round_no),
        ).fetchall()
        return [(n, json.loads(m)) for n, m in rows]

    def close_evaluation(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        """Close a federated evaluation round with its metrics (no new model version)."""
        self.tx(
            [
                (
                    "UPDATE rounds SET state='evaluated', closed=?, metrics=? "
                    "WHERE run_id=? AND round=?",
                    (time.time(), json.dumps(metrics), run_id, round_no),
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
        extra: list[tuple[str, tuple]] = []
        if strategy_state is not None:
            extra.append(
                (
                    "INSERT OR REPLACE INTO strategy_state(run_id, version, state) VALUES (?,?,?)",
                    (run_id, version, strategy_state),
                )
            )
        self.tx(
            extra
            + [
                (
                    "INSERT INTO model_versions(run_id, version, round, sha256, params, metrics, created) VALUES (?,?,?,?,?,?,?)",
                    (run_id, version, round_no, sha, params, json.dumps(metrics), now),
                ),
                (
                    "UPDATE rounds SET state='committed', closed=?, metrics=? WHERE run_id=? AND round=?",
                    (now, json.dumps(metrics), run_id, round_no),
                ),
            ]
            + (
                []
                if keep_deltas
                else [
                    (
                        "UPDATE updates SET delta=NULL WHERE run_id=? AND round=?",
                        (run_id, round_no),
                    ),
                ]
            )
        )

    def close_round(self, run_id: str, round_no: int, state: str, note: str) -> None:
        self.tx(
            [
                (
                    "UPDATE rounds SET state=?, closed=?, note=? WHERE run_id=? AND round=?",
                    (state, time.time(), note, run_id, round_no),
                )
            ]
        )

    def set_round_metrics(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        self.tx(
            [
                (
                    "UPDATE rounds SET metrics=? WHERE run_id=? AND round=?",
                    (json.dumps(metrics), run_id, round_no),
                )
            ]
        )

    def set_version_metrics(self, run_id: str, version: int, metrics: dict[str, Any]) -> None:
        self.tx(
            [
                (
                    "UPDATE model_versions SET metrics=? WHERE run_id=? AND version=?",
                    (json.dumps(metrics), run_id, version),
                )
            ]
        )

    def strategy_state(self, run_id: str, version: int) -> bytes | None:
        row = self.db.execute(
            "SELECT state FROM strategy_state WHERE run_id=? AND version=?", (run_id, version)
        ).fetchone()
        return row[0] if row else None

    def answered_agents(self, run_id: str, round_no: int) -> set[str]:
        """Agents whose update for the round was accepted or rejected, or who aborted it."""
        rows = self.db.execute(
            "SELECT DISTINCT agent_id FROM updates WHERE run_id=? AND round=? "
            "AND status IN ('accepted', 'rejected', 'aborted', 'evaluated')",
            (run_id, round_no),
        ).fetchall()
        return {r[0] for r in rows}

    def updates(self, run_id: str, round_no: int) -> list[dict[str, Any]]:
        """Every update record of a round (without the delta bytes), oldest first."""
        cur = self.db.execute(
            "SELECT agent_id, sha256, status, reason, num_samples, bytes, received FROM updates "
            "WHERE run_id=? AND round=? ORDER BY id",
            (run_id, round_no),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def runs(self) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT run_id, bundle_hash, state, started, finished FROM runs ORDER BY started"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def version_metrics(self, run_id: str) -> dict[int, dict[str, Any]]:
        rows = self.db.execute(
            "SELECT version, metrics FROM model_versions WHERE run_id=? ORDER BY version", (run_id,)
        ).fetchall()
        return {v: json.loads(m) for v, m in rows}

    def close(self) -> None:
        self.db.close()
