"""The orchestrator database's tables and the round record read from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedge.protocol.sqlite_db import Migration, add_column

# The schema of the first release. Databases written before migrations were numbered have these
# tables (and maybe later columns) but no `migrations` table: every step below is idempotent on
# them (CREATE ... IF NOT EXISTS, add_column skips a column that exists), so they are adopted.
INITIAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    agent_id TEXT PRIMARY KEY, state TEXT NOT NULL, backend TEXT NOT NULL DEFAULT '',
    num_samples INTEGER NOT NULL DEFAULT 0, eligible INTEGER NOT NULL DEFAULT 1,
    reason TEXT NOT NULL DEFAULT '', version TEXT NOT NULL DEFAULT '', last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, bundle_hash TEXT NOT NULL, config TEXT NOT NULL,
    state TEXT NOT NULL, started REAL NOT NULL, finished REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, model_version INTEGER NOT NULL,
    state TEXT NOT NULL, participants TEXT NOT NULL, opened REAL NOT NULL, deadline REAL NOT NULL,
    closed REAL, reports INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, late INTEGER NOT NULL DEFAULT 0,
    aborted INTEGER NOT NULL DEFAULT 0, bytes_in INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}', note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, round INTEGER NOT NULL, agent_id TEXT NOT NULL,
    sha256 TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    num_samples INTEGER NOT NULL DEFAULT 0, metrics TEXT NOT NULL DEFAULT '{}',
    bytes INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL, delta BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS one_accepted_update
    ON updates(run_id, round, agent_id) WHERE status = 'accepted';
CREATE TABLE IF NOT EXISTS model_versions (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, round INTEGER, sha256 TEXT NOT NULL,
    params BLOB NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS strategy_state (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (run_id, version)
)
"""

# Buffered asynchronous runs (orchestrator/buffered_store.py). A delta is counted once: its
# row's primary key is the slot it was trained in. ``committed`` is the version that applied it
# (NULL while it waits in the buffer); ``counters`` holds refused/duplicate/expired counts.
BUFFERED_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_slots (
    run_id TEXT NOT NULL, slot INTEGER NOT NULL, agent_id TEXT NOT NULL,
    version INTEGER NOT NULL, granted REAL NOT NULL, expires REAL NOT NULL,
    state TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, slot)
);
CREATE TABLE IF NOT EXISTS async_updates (
    run_id TEXT NOT NULL, slot INTEGER NOT NULL, agent_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    from_version INTEGER NOT NULL, staleness INTEGER NOT NULL, weight REAL NOT NULL,
    num_samples INTEGER NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', bytes INTEGER NOT NULL,
    received REAL NOT NULL, committed INTEGER, delta BLOB,
    PRIMARY KEY (run_id, slot)
);
CREATE TABLE IF NOT EXISTS async_counters (
    run_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, name)
)
"""

# Federated standardization (protocol/standardization.py): the per-feature mean and std a
# statistics round combined, one row per run (JSON lists of float64; a restart keeps them).
STATISTICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_statistics (
    run_id TEXT PRIMARY KEY, round INTEGER NOT NULL, features INTEGER NOT NULL,
    rows INTEGER NOT NULL, devices INTEGER NOT NULL, mean TEXT NOT NULL, std TEXT NOT NULL,
    created REAL NOT NULL
)
"""

# Append only: a migration, once released, never changes (its number is recorded in databases).
MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema", INITIAL_SCHEMA),
    Migration(2, "rounds.goal", add_column("rounds", "goal", "INTEGER NOT NULL DEFAULT 0")),
    Migration(3, "rounds.dropped", add_column("rounds", "dropped", "INTEGER NOT NULL DEFAULT 0")),
    Migration(4, "rounds.kind", add_column("rounds", "kind", "TEXT NOT NULL DEFAULT 'train'")),
    Migration(
        5,
        "one evaluation report per device and round",
        "CREATE UNIQUE INDEX IF NOT EXISTS one_eval_report "
        "ON updates(run_id, round, agent_id) WHERE status = 'evaluated'",
    ),
    Migration(
        6,
        "index updates by round",
        "CREATE INDEX IF NOT EXISTS updates_by_round ON updates(run_id, round)",
    ),
    Migration(7, "buffered asynchronous runs: slots, buffered deltas", BUFFERED_SCHEMA),
    Migration(8, "federated standardization: a run's feature statistics", STATISTICS_SCHEMA),
]
LATEST_MIGRATION = MIGRATIONS[-1].number


@dataclass
class RoundRecord:
    run_id: str
    round: int
    model_version: int
    state: str
    participants: list[str]
    opened: float
    deadline: float
    reports: int
    rejected: int
    duplicates: int
    late: int
    aborted: int
    bytes_in: int
    metrics: dict[str, Any]
    closed: float | None = None
    note: str = ""
    goal: int = 0  # reports to accept; the round closes as soon as it has them
    dropped: int = 0  # participants that went offline without reporting
    # train | evaluate (federated evaluation: no new model version) | statistics (federated
    # standardization: feature statistics, no new model version; closes as "combined")
    kind: str = "train"


ROUND_COLS = (
    "run_id, round, model_version, state, participants, opened, deadline, closed, reports, "
    "rejected, duplicates, late, aborted, bytes_in, metrics, note, goal, dropped, kind"
)


def round_from_row(row: tuple) -> RoundRecord:
    """A RoundRecord from a row selected with ``ROUND_COLS``."""
    (run_id, rnd, version, state, participants, opened, deadline, closed, *counters) = row
    reports, rejected, duplicates, late, aborted, bytes_in, metrics, note, goal, dropped, kind = (
        counters
    )
    return RoundRecord(
        run_id,
        rnd,
        version,
        state,
        json.loads(participants),
        opened,
        deadline,
        reports,
        rejected,
        duplicates,
        late,
        aborted,
        bytes_in,
        json.loads(metrics),
        closed,
        note,
        goal,
        dropped,
        kind,
    )
