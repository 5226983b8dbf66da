"""The orchestrator database: numbered migrations, old databases adopted, read-only opens,
SQLite and disk failures turned into errors a person can act on."""

from __future__ import annotations

import errno
import hashlib
import re
import sqlite3
import subprocess
import sys

import pytest

from fedge.orchestrator.schema import LATEST_MIGRATION, MIGRATIONS
from fedge.orchestrator.store import RoundRecord, Store, StoreError
from fedge.protocol.sqlite_db import DatabaseError, Migration, apply_migrations, database_errors

# orchestrator/schema.py's SCHEMA and MIGRATIONS as they were on main before numbered migrations
# (`git show main:orchestrator/schema.py`), replayed by OLD_OPEN exactly as the old Store did.
OLD_SCHEMA = """
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
    goal INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'train',
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
CREATE UNIQUE INDEX IF NOT EXISTS one_eval_report
    ON updates(run_id, round, agent_id) WHERE status = 'evaluated';
CREATE TABLE IF NOT EXISTS model_versions (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, round INTEGER, sha256 TEXT NOT NULL,
    params BLOB NOT NULL, metrics TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS strategy_state (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (run_id, version)
);
"""
OLD_MIGRATIONS = [
    ("rounds", "goal", "INTEGER NOT NULL DEFAULT 0"),
    ("rounds", "dropped", "INTEGER NOT NULL DEFAULT 0"),
    ("rounds", "kind", "TEXT NOT NULL DEFAULT 'train'"),
]


def _old_open(path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    for table, column, definition in OLD_MIGRATIONS:
        cols = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in cols:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return db


def _fill_old(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO runs VALUES ('run-1', 'h', '{}', 'running', 1.0, NULL)")
    db.execute("INSERT INTO model_versions VALUES ('run-1', 0, NULL, 's0', x'00', '{}', 1.0)")
    db.execute("INSERT INTO model_versions VALUES ('run-1', 1, 1, 's1', x'01', '{}', 2.0)")
    db.execute(
        "INSERT INTO rounds(run_id, round, model_version, state, participants, opened, deadline, "
        "closed, reports, metrics, goal, kind) "
        "VALUES ('run-1', 1, 0, 'committed', '[\"a\",\"b\"]', 1.0, 9.0, 2.0, 2, "
        "'{\"train_loss\": 0.5}', 2, 'train')"
    )
    db.execute(
        "INSERT INTO rounds(run_id, round, model_version, state, participants, opened, deadline) "
        "VALUES ('run-1', 2, 1, 'open', '[\"a\"]', 3.0, 99.0)"
    )
    db.execute(
        "INSERT INTO updates(run_id, round, agent_id, sha256, status, num_samples, bytes, "
        "received, delta) VALUES ('run-1', 2, 'a', 'x', 'accepted', 40, 3, 4.0, x'010203')"
    )
    db.execute("INSERT INTO devices VALUES ('a', 'idle', 'ort-portable', 40, 1, '', '0.1', 5.0)")


def _applied(path) -> list[tuple[int, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT number, name FROM migrations ORDER BY number").fetchall()
    finally:
        db.close()


def test_a_database_written_by_the_old_code_is_adopted_without_losing_rows(tmp_path):
    path = tmp_path / "orchestrator.db"
    db = _old_open(path)
    _fill_old(db)
    db.close()

    store = Store(path)
    assert [n for n, _ in _applied(path)] == [m.number for m in MIGRATIONS]
    assert store.active_run()["run_id"] == "run-1"
    assert store.latest_version("run-1")[0] == 1
    r1, r2 = store.rounds("run-1")
    assert (r1.state, r1.reports, r1.goal, r1.metrics) == ("committed", 2, 2, {"train_loss": 0.5})
    assert (r2.state, r2.participants, r2.kind) == ("open", ["a"], "train")
    assert list(store.accepted_deltas("run-1", 2)) == [("a", 40, b"\x01\x02\x03")]
    assert store.devices()[0]["backend"] == "ort-portable"
    # the migrated database keeps working: the open round takes another report
    store.accept_update("run-1", 2, "b", "y", 10, {}, b"dd")
    assert store.get_round("run-1", 2).reports == 1
    store.close()


def test_a_pre_goal_database_gains_the_later_columns_with_their_defaults(tmp_path):
    path = tmp_path / "orchestrator.db"
    db = _old_open(path)
    _fill_old(db)
    for column in ("goal", "dropped", "kind"):
        db.execute(f"ALTER TABLE rounds DROP COLUMN {column}")
    db.execute("DROP INDEX one_eval_report")
    db.close()

    store = Store(path)
    r1, r2 = store.rounds("run-1")
    assert (r1.goal, r1.dropped, r1.kind) == (0, 0, "train")
    assert store.add_eval_report("run-1", 2, "a", 5, {"val_loss": 1.0}) is True
    assert store.add_eval_report("run-1", 2, "a", 5, {"val_loss": 1.0}) is False  # index back
    store.close()


def test_migrations_are_recorded_once_with_name_and_time(tmp_path):
    path = tmp_path / "o.db"
    Store(path).close()
    first = (
        sqlite3.connect(path).execute("SELECT number, name, applied_at FROM migrations").fetchall()
    )
    assert [(n, name) for n, name, _ in first] == [(m.number, m.name) for m in MIGRATIONS]
    assert all(at.startswith("20") for _, _, at in first)
    Store(path).close()  # reopening applies nothing
    again = (
        sqlite3.connect(path).execute("SELECT number, name, applied_at FROM migrations").fetchall()
    )
    assert again == first


def test_a_failing_migration_is_rolled_back_and_stays_pending(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half (a)")
        c.execute("INSERT INTO nowhere VALUES (1)")

    steps = [Migration(1, "t", "CREATE TABLE t (a)"), Migration(2, "broken", broken)]
    with pytest.raises(DatabaseError, match=r"applying migration 2 \(broken\).*no such table"):
        apply_migrations(conn, steps, tmp_path / "x.db", DatabaseError)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables and "t" in tables
    assert conn.execute("SELECT number FROM migrations").fetchall() == [(1,)]
    fixed = [steps[0], Migration(2, "fixed", "CREATE TABLE half (a)")]
    assert apply_migrations(conn, fixed, tmp_path / "x.db", DatabaseError) == [2]


def test_a_database_from_a_newer_fedge_is_refused(tmp_path):
    path = tmp_path / "o.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO migrations VALUES (?, 'from the future', '2099-01-01')",
        (LATEST_MIGRATION + 1,),
    )
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade fedge"):
        Store(path)
    with pytest.raises(StoreError, match="upgrade fedge"):
        Store.open_read_only(path)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_database(tmp_path):
    path = tmp_path / "orchestrator.db"
    db = _old_open(path)
    _fill_old(db)
    db.close()
    assert not (tmp_path / "orchestrator.db-wal").exists()
    return path


def _fedge(*args: str) -> subprocess.CompletedProcess:
    """The real command line, in its own process (its logging setup stays out of pytest's)."""
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args], capture_output=True, text=True, timeout=60
    )


def test_status_and_history_leave_the_database_untouched(tmp_path):
    path = _old_database(tmp_path)  # not migrated: a read-only command must not migrate it
    before = _digest(path)
    status = _fedge("status", "--database", str(path))
    assert status.returncode == 0, status.stderr
    assert "run run-1: running" in status.stdout
    history = _fedge("history", "--database", str(path))
    assert history.returncode == 0, history.stderr
    assert "committed" in history.stdout
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestrator.db"]  # no -wal, no -shm


def test_a_reader_sees_what_a_live_writer_committed(tmp_path):
    path = tmp_path / "o.db"
    writer = Store(path)
    writer.create_run("r", "h", {}, b"p", "s")
    reader = Store.open_read_only(path)
    assert reader.latest_run_id() == "r"
    writer.open_round(RoundRecord("r", 1, 0, "open", ["a"], 0.0, 9.0, 0, 0, 0, 0, 0, 0, {}))
    assert [r.round for r in reader.rounds("r")] == [1]
    with pytest.raises(StoreError, match="read-only"):
        reader.finish_run("r")
    reader.close()
    writer.close()


def test_status_on_a_missing_or_damaged_file_is_one_error_line(tmp_path):
    missing = tmp_path / "nope.db"
    proc = _fedge("status", "--database", str(missing))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "--database" in proc.stderr
    assert not missing.exists()

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not an SQLite database" * 100)
    proc = _fedge("history", "--database", str(damaged))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"database {damaged} is damaged" in proc.stderr and "move it aside" in proc.stderr


def test_a_damaged_database_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "orchestrator.db"
    path.write_bytes(b"\0garbage" * 1000)
    with pytest.raises(StoreError, match=r"orchestrator.db is damaged \(.*\): move it aside"):
        Store(path)


def test_disk_full_while_writing_is_a_store_error(tmp_path):
    store = Store(tmp_path / "o.db")
    store.create_run("r", "h", {}, b"p", "s")
    # the database may not grow past its current size: SQLite reports SQLITE_FULL
    conn = store._db.conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match=r"disk full committing round 1 to .*o.db .*free space"):
        store.commit_round("r", 1, 1, b"x" * 1_000_000, "s1", {})
    assert store.latest_version("r")[0] == 0  # the failed transaction left nothing behind
    conn.execute("PRAGMA max_page_count = 1000000")  # space freed: the store works on
    store.commit_round("r", 1, 1, b"x" * 1_000_000, "s1", {})
    assert store.latest_version("r")[:1] == (1,)
    store.close()


def test_an_unwritable_location_is_a_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"opening .*a-file/o.db failed"):
        Store(blocker / "o.db")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), "is locked (database is locked) while"),
        (
            sqlite3.OperationalError("attempt to write a readonly database"),
            "cannot be written (attempt to write a readonly database) while writing",
        ),
        (sqlite3.DatabaseError("file is not a database"), "is damaged (file is not a database)"),
        (sqlite3.OperationalError("disk I/O error"), "disk I/O error writing /x/o.db"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full writing /x/o.db"),
        (OSError(errno.EACCES, "Permission denied"), "no permission writing /x/o.db"),
    ],
)
def test_each_failure_gets_its_advice(exc, expected):
    with pytest.raises(StoreError, match=re.escape(expected)):
        with database_errors("/x/o.db", StoreError, "writing"):
            raise exc


def test_reading_a_users_wal_database_creates_no_files_beside_it(tmp_path):
    from fedge.agent.data_check import check_data
    from fedge.protocol.sqlite_samples import DataSource, read_samples

    path = tmp_path / "readings.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE samples (f0 REAL, f1 REAL, label INTEGER)")
    db.executemany("INSERT INTO samples VALUES (?,?,?)", [(i, -i, i % 2) for i in range(20)])
    db.commit()
    db.close()
    before = _digest(path)
    assert len(read_samples(DataSource(path=str(path)))) == 20
    assert check_data(DataSource(path=str(path))).ok
    assert _digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["readings.db"]
