"""Open fedge's own SQLite databases, migrate them by number, and turn failures into errors.

Writers (the orchestrator, the agent) open with WAL, ``synchronous=FULL`` and a busy timeout,
then apply the numbered migrations they have not applied yet, each in one transaction together
with its row in the ``migrations`` table (number, name, applied_at). Readers (``fedge status``,
``fedge history``) open with a ``mode=ro`` URI: they never create a file, a schema or a WAL, and
never switch the journal mode. Every ``sqlite3.Error`` and ``OSError`` raised inside
:func:`database_errors` becomes a :class:`DatabaseError` subclass naming the file, what failed
and what to do.
"""

from __future__ import annotations

import datetime
import errno
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import FedgeError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS migrations (
    number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL
)
"""


class DatabaseError(FedgeError):
    """One of fedge's own SQLite databases cannot be opened, read, migrated or written."""


@dataclass(frozen=True)
class Migration:
    """One numbered schema change: SQL statements, or a function of the connection."""

    number: int
    name: str
    apply: str | Callable[[sqlite3.Connection], None]


def add_column(table: str, column: str, definition: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step adding a column unless the table already has it (databases written
    before migrations were numbered may have it without a record)."""

    def step(conn: sqlite3.Connection) -> None:
        if column not in table_columns(conn, table):
            conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {definition}')

    step.__name__ = f"add_{table}_{column}"
    return step


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Column names of a table, in order (empty if it does not exist)."""
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]


def _advice(exc: BaseException, path: Path, action: str) -> str:
    """The message for a failure of ``action`` on ``path``: what happened and what to do."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return f"disk full {action} {path} ({exc.strerror}): free space and retry"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"no permission {action} {path} ({exc.strerror}): check the file's and its "
                "directory's owner and mode"
            )
        return f"{action} {path} failed ({exc}): check the disk and the path"
    code = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    lowered = text.lower()
    if (
        code in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        or "malformed" in lowered
        or ("not a database" in lowered)
    ):
        return f"database {path} is damaged ({text}): move it aside and restart"
    if code == "SQLITE_FULL" or "database or disk is full" in lowered:
        return f"disk full {action} {path} ({text}): free space and retry"
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        return (
            f"database {path} is locked ({text}) while {action}: another process holds it; "
            "stop it or retry"
        )
    if code.startswith("SQLITE_READONLY") or "readonly" in lowered:
        return (
            f"database {path} cannot be written ({text}) while {action}: check the file's "
            "permissions (read-only commands never write)"
        )
    if code.startswith("SQLITE_CANTOPEN") or "unable to open" in lowered:
        return (
            f"database {path} cannot be opened ({text}): check that it exists and that its "
            "directory is writable"
        )
    if code.startswith("SQLITE_IOERR") or "disk i/o error" in lowered:
        return f"disk I/O error {action} {path} ({text}): check the disk and free space"
    if "no such table" in lowered or "no such column" in lowered:
        return (
            f"{action} {path} failed ({text}): the database lacks part of the schema; if an "
            "older fedge wrote it, start the orchestrator or agent that owns it once to migrate "
            "it (read-only commands never do)"
        )
    return f"{action} {path} failed ({text})"


@contextmanager
def database_errors(path: str | Path, error: type[DatabaseError], action: str) -> Iterator[None]:
    """Turn every ``sqlite3.Error`` and ``OSError`` raised inside into ``error`` with advice."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise error(_advice(exc, Path(path), action)) from exc


class Database:
    """One connection to a fedge database plus the lock and error class that go with it."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, error: type[DatabaseError], read_only: bool
    ) -> None:
        self.conn = conn
        self.path = path
        self.error = error
        self.read_only = read_only
        self._lock = threading.RLock()

    def errors(self, action: str) -> AbstractContextManager[None]:
        """Context manager: SQLite/OS failures inside become ``self.error``."""
        return database_errors(self.path, self.error, action)

    def rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """All rows of a query."""
        with self._lock, self.errors("reading"):
            return self.conn.execute(sql, tuple(args)).fetchall()

    def row(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or None."""
        with self._lock, self.errors("reading"):
            row: tuple[Any, ...] | None = self.conn.execute(sql, tuple(args)).fetchone()
            return row

    def dicts(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, object]]:
        """All rows of a query as dicts keyed by column name."""
        with self._lock, self.errors("reading"):
            cur = self.conn.execute(sql, tuple(args))
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Several reads that see one committed state (a deferred read transaction). In WAL
        mode a reader never blocks the writer; keep the block short all the same, since a
        checkpoint cannot pass a snapshot that is still open."""
        with self._lock, self.errors("reading"):
            self.conn.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    @contextmanager
    def transaction(
        self, action: str = "writing", *, durable: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed when the block ends, rolled back on error.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this one
        transaction; ~0.2 ms instead of ~3 ms). In WAL mode that is still atomic and survives
        ``kill -9``; only a power loss or OS crash before the next fsync may undo it -- and
        then only together with every later commit, since the WAL is replayed up to the first
        missing frame and the next durable commit syncs every earlier frame. Use it only for
        a change whose loss the owner handles anyway (e.g. a marker that leads to the same
        outcome when missing)."""
        if self.read_only:
            raise self.error(f"database {self.path} is open read-only; cannot {action} it")
        with self._lock, self.errors(action):
            if not durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                    self.conn.execute("COMMIT")
                except BaseException:  # the block failed, or COMMIT did (disk full, I/O error)
                    if self.conn.in_transaction:
                        self.conn.rollback()
                    raise
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self._lock, self.errors("closing"):
            self.conn.close()


def applied_migrations(conn: sqlite3.Connection) -> dict[int, str]:
    """{number: name} of the migrations recorded in the database (empty before the first)."""
    if not table_columns(conn, "migrations"):
        return {}
    return dict(conn.execute("SELECT number, name FROM migrations ORDER BY number").fetchall())


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration],
    path: Path,
    error: type[DatabaseError],
) -> list[int]:
    """Apply the migrations not yet recorded, in number order, each in one transaction with its
    record; return the numbers applied. Refuses a database migrated by a newer fedge."""
    numbers = [m.number for m in migrations]
    if numbers != sorted(set(numbers)):
        raise ValueError(f"migration numbers must be unique and increasing: {numbers}")
    with database_errors(path, error, "reading the migrations of"):
        conn.execute(MIGRATIONS_TABLE)
        done = applied_migrations(conn)
    newest = max(numbers, default=0)
    if done and max(done) > newest:
        raise error(
            f"database {path} has schema version {max(done)} but this fedge knows only "
            f"{newest}: upgrade fedge (or move the file aside to start afresh)"
        )
    applied = []
    for m in migrations:
        if m.number in done:
            continue
        with database_errors(path, error, f"applying migration {m.number} ({m.name}) to"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if isinstance(m.apply, str):
                    for statement in _statements(m.apply):
                        conn.execute(statement)
                else:
                    m.apply(conn)
                conn.execute(
                    "INSERT INTO migrations(number, name, applied_at) VALUES (?,?,?)",
                    (m.number, m.name, datetime.datetime.now(datetime.timezone.utc).isoformat()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        log.info("database %s: applied migration %d (%s)", path, m.number, m.name)
        applied.append(m.number)
    return applied


def _statements(script: str) -> list[str]:
    """Split a script of plain DDL statements (no triggers) at semicolons."""
    return [s.strip() for s in script.split(";") if s.strip()]


def open_writer(
    path: str | Path, migrations: Sequence[Migration], error: type[DatabaseError]
) -> Database:
    """Open (creating it and its directory if needed) a database this process writes: WAL,
    ``synchronous=FULL``, a busy timeout, pending migrations applied."""
    p = Path(path)
    with database_errors(p, error, "opening"):
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(p),
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    try:
        with database_errors(p, error, "opening"):
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
        apply_migrations(conn, migrations, p, error)
    except BaseException:
        conn.close()
        raise
    return Database(conn, p, error, read_only=False)


def read_only_uri(path: Path) -> str:
    """The ``file:`` URI that reads ``path`` without creating anything beside it.

    A plain ``mode=ro`` reader of a WAL database creates ``-wal`` and ``-shm`` files. While a
    writer has it open its ``-wal`` exists and the reader shares it (seeing every committed
    transaction); otherwise nothing is in a WAL and ``immutable=1`` reads the file as it is,
    creating nothing. A rollback-journal database is read with ordinary locking (a plain
    ``mode=ro`` reader creates nothing there).
    """
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    with path.open("rb") as f:
        header = f.read(20)
    wal_mode = len(header) == 20 and header[18] == 2  # file format "write version" 2 = WAL
    return uri + ("&immutable=1" if wal_mode and not Path(f"{path}-wal").exists() else "")


def open_reader(
    path: str | Path,
    error: type[DatabaseError],
    *,
    missing_hint: str = "check the path",
    newest_migration: int | None = None,
) -> Database:
    """Open an existing database read-only: never creates the file, a schema or a WAL.

    While a writer has the database open (its ``-wal`` file exists) the reader shares the WAL
    and sees committed transactions; otherwise it opens the file ``immutable`` so that SQLite
    does not create ``-wal``/``-shm`` files beside it. ``newest_migration``: refuse a database
    migrated by a newer fedge than this one.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"database {p} does not exist: {missing_hint}")
    with database_errors(p, error, "opening"):
        conn = sqlite3.connect(
            read_only_uri(p), uri=True, isolation_level=None, check_same_thread=False
        )
    try:
        with database_errors(p, error, "reading"):
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            done = applied_migrations(conn)
        if newest_migration is not None and done and max(done) > newest_migration:
            raise error(
                f"database {p} has schema version {max(done)} but this fedge knows only "
                f"{newest_migration}: upgrade fedge"
            )
    except BaseException:
        conn.close()
        raise
    return Database(conn, p, error, read_only=True)
