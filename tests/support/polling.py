"""Waiting on real processes: poll a condition, read a live SQLite database read-only.

The fault suites (agent kill -9, async kill -9) watch an orchestrator's and agents' databases
while those processes write them; these two helpers are what they share.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(
    what: str, cond: Callable[[], Any], fleet: Any, timeout: float = 60.0, every: float = 0.02
) -> Any:
    """``cond()``'s first truthy value within ``timeout`` s, else a failure naming ``what``
    with every process log of ``fleet``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.all_logs()}")


def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` on a database another process is writing; [] until it exists and has
    its tables (read-only, so the test never takes the writer's lock)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()
