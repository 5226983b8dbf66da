"""A damaged agent state database is moved aside and rebuilt, keeping what can still be read.

The state file (outbox, journal, usage, residual, bundle list) is the agent's own, so unlike the
user's data file it may be replaced. A corrupted page used to raise ``sqlite3.DatabaseError`` at
every round; now the agent checks the file when it opens it (``PRAGMA quick_check``) and again
when a write reports damage, moves the damaged file (and its -wal/-shm) to
``agent.db.damaged-<UTC stamp>``, starts a fresh one and copies over, row by row, whatever the
damaged file still yields: the outbox first (unacknowledged deltas are the only thing another
process is waiting for), then the journal, the error-feedback residuals and the usage counters.
Cached bundle files are re-listed by the cache itself when they are next used.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Salvage order: what an orchestrator is waiting for first. Columns as in agent/state.py.
SALVAGE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("outbox", ("sha256", "run_id", "round", "offer", "blob", "created", "deadline")),
    ("journal", ("run_id", "round", "status", "detail", "updated")),
    ("residual", ("run_id", "blob", "updated")),
    ("usage", ("day", "seconds")),
)
_DAMAGE_WORDS = ("is damaged", "malformed", "not a database", "corrupt")
Insert = Callable[[str, tuple[object, ...]], None]


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the file itself is damaged (not full, locked or unwritable)."""
    text = str(exc).lower()
    return any(word in text for word in _DAMAGE_WORDS)


def move_aside(path: Path, reason: str, error: type[Exception]) -> Path:
    """Rename the damaged file and its -wal/-shm to ``<name>.damaged-<UTC stamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            try:
                src.replace(Path(f"{aside}{suffix}"))
            except OSError as exc:
                raise error(
                    f"state database {path} is damaged ({reason}) and could not be moved aside "
                    f"({exc}): stop the agent, move {src} away by hand, and start it again"
                ) from exc
    return aside


def salvage_rows(damaged: Path, insert: Insert) -> dict[str, int]:
    """Copy every row still readable from ``damaged`` with ``insert``; counts per table."""
    counts: dict[str, int] = {}
    try:
        old = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    except sqlite3.Error:
        return counts
    try:
        for table, columns in SALVAGE:
            counts[table] = _copy_table(old, insert, table, columns)
    finally:
        old.close()
    return counts


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {table} rows" for table, n in counts.items() if n) or "nothing"


def _copy_table(
    old: sqlite3.Connection, insert: Insert, table: str, columns: tuple[str, ...]
) -> int:
    """Rows one rowid at a time, so one bad page costs only the rows on it."""
    try:
        rowids = [r[0] for r in old.execute(f"SELECT rowid FROM {table}")]
    except sqlite3.Error:
        rowids = []
    names = ",".join(columns)
    sql = f"INSERT OR IGNORE INTO {table}({names}) VALUES ({','.join('?' * len(columns))})"
    copied = 0
    for rowid in rowids:
        try:
            row = old.execute(f"SELECT {names} FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            insert(sql, tuple(row))
            copied += 1
    return copied
