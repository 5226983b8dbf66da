"""The agent's SQLite state: outbox expiry at the round's deadline, schema migration."""

from __future__ import annotations

import sqlite3

import pytest
from support.toy_bundle import PARAMS, toy_manifest

from fedge.agent.bundle_cache import BundleCache
from fedge.agent.state import AgentState, OutboxItem, StateError
from fedge.protocol.bundle import pack_bundle, write_manifest
from fedge.protocol.manifest import REQUIRED_FILES
from fedge.protocol.tensors import encode_tensors


def _item(sha: str, round_no: int, deadline: float) -> OutboxItem:
    return OutboxItem(sha * 64, "run", round_no, b"{}", b"delta" + sha.encode(), deadline)


def test_outbox_rows_past_their_deadline_expire_and_are_journaled(tmp_path):
    state = AgentState(tmp_path / "agent.db")
    state.add_outbox(_item("a", 1, deadline=1000.0))
    state.add_outbox(_item("b", 2, deadline=2000.0))
    state.add_outbox(_item("c", 3, deadline=0.0))  # deadline unknown: kept until acked
    assert [i.deadline for i in state.outbox()] == [1000.0, 2000.0, 0.0]

    assert state.expire_outbox(before=999.0) == []
    expired = state.expire_outbox(before=1500.0)
    assert [i.round for i in expired] == [1]
    assert [i.round for i in state.outbox()] == [2, 3]
    assert state.journal_entry("run", 1) == (
        "expired",
        "the round's deadline passed unacknowledged",
    )
    assert state.outbox_blob("a" * 64) is None
    assert state.journal_status("run", 2) == "offered"

    assert [i.round for i in state.expire_outbox(before=1e12)] == [2]
    assert [i.round for i in state.outbox()] == [3]
    state.close()
    # the outcome survives a restart
    again = AgentState(tmp_path / "agent.db")
    assert [i.round for i in again.outbox()] == [3]
    assert again.journal_status("run", 2) == "expired"
    again.close()


def test_an_old_agent_database_gains_the_deadline_column(tmp_path):
    path = tmp_path / "agent.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE outbox (
            sha256 TEXT PRIMARY KEY, run_id TEXT NOT NULL, round INTEGER NOT NULL,
            offer BLOB NOT NULL, blob BLOB NOT NULL, created REAL NOT NULL
        );
        INSERT INTO outbox VALUES ('old', 'run', 1, x'7b7d', x'00', 1.0);
        """
    )
    db.commit()
    db.close()
    state = AgentState(path)
    (old,) = state.outbox()
    assert (old.sha256, old.deadline) == ("old", 0.0)
    assert state.expire_outbox(before=1e12) == []  # no known deadline: never expired
    state.add_outbox(_item("n", 2, deadline=5.0))
    assert [i.sha256 for i in state.expire_outbox(before=10.0)] == ["n" * 64]
    state.close()


# agent/state.py's SCHEMA as it was on main before numbered migrations
OLD_AGENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', updated REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS outbox (
    sha256 TEXT PRIMARY KEY, run_id TEXT NOT NULL, round INTEGER NOT NULL,
    offer BLOB NOT NULL, blob BLOB NOT NULL, created REAL NOT NULL,
    deadline REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT PRIMARY KEY, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS residual (
    run_id TEXT PRIMARY KEY, blob BLOB NOT NULL, updated REAL NOT NULL
);
"""


def test_a_database_written_by_the_old_code_is_adopted_and_numbered(tmp_path):
    path = tmp_path / "agent.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_AGENT_SCHEMA)
    db.executescript(
        """
        INSERT INTO journal VALUES ('run', 1, 'offered', 'sha', 1.0);
        INSERT INTO outbox VALUES ('sha', 'run', 1, x'7b7d', x'0102', 1.0, 50.0);
        INSERT INTO usage VALUES ('2026-12-01', 120.0);
        INSERT INTO residual VALUES ('run', x'ff', 1.0);
        """
    )
    db.commit()
    db.close()
    state = AgentState(path)
    assert state.journal_entry("run", 1) == ("offered", "sha")
    assert [(i.sha256, i.deadline) for i in state.outbox()] == [("sha", 50.0)]
    assert state.outbox_blob("sha") == b"\x01\x02"
    assert state.training_minutes("2026-12-01") == 2.0
    assert state.residual("run") == b"\xff"
    state.close()
    applied = sqlite3.connect(path).execute("SELECT number, name FROM migrations").fetchall()
    assert applied == [(1, "initial schema"), (2, "outbox.deadline"), (3, "cached bundles")]


def test_a_state_file_that_is_not_sqlite_is_moved_aside_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "agent.db"
    path.write_bytes(b"not sqlite at all" * 200)
    with caplog.at_level("ERROR"):
        state = AgentState(path)  # used to raise: the agent could not start at all
    assert state.outbox() == [] and state.journal_status("run", 1) == ""
    aside = list(tmp_path.glob("agent.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"not sqlite")
    assert "was damaged" in caplog.text and "moved it to" in caplog.text


def _fill(path, outbox: int, journal: int) -> None:
    state = AgentState(path)
    for i in range(outbox):
        state.add_outbox(_item("abcdef"[i], i + 1, 0.0))
    for i in range(journal):
        state.set_journal("old-run", 1000 + i, "acked", "x" * 200)
    state.close()


def _corrupt_tail(path, pages: int = 3, page_size: int = 4096) -> None:
    """Overwrite pages near the end of the file (the journal's, written last) with garbage."""
    data = bytearray(path.read_bytes())
    start = len(data) - (pages + 1) * page_size
    data[start : start + pages * page_size] = b"\xde\xad\xbe\xef" * (pages * page_size // 4)
    path.write_bytes(bytes(data))


def _sqlite_reports_damage(path) -> bool:
    raw = sqlite3.connect(path)
    try:
        return raw.execute("PRAGMA quick_check").fetchone()[0] != "ok"
    except sqlite3.DatabaseError:
        return True
    finally:
        raw.close()


def test_a_corrupted_page_is_found_at_open_and_the_outbox_is_salvaged(tmp_path, caplog):
    path = tmp_path / "agent.db"
    _fill(path, outbox=3, journal=400)
    _corrupt_tail(path)
    assert _sqlite_reports_damage(path)  # the damage is real: SQLite itself says so
    with caplog.at_level("ERROR"):
        state = AgentState(path)
    # the unacknowledged deltas survive, blobs intact (the orchestrator may still count them)
    assert [i.round for i in state.outbox()] == [1, 2, 3]
    assert state.outbox_blob("a" * 64) == b"deltaa"
    assert "salvaged 3 outbox rows" in caplog.text
    assert list(tmp_path.glob("agent.db.damaged-*"))
    state.set_journal("run", 9, "training")  # the new file works
    assert state.journal_status("run", 9) == "training"


def test_damage_found_while_running_rebuilds_in_place(tmp_path):
    path = tmp_path / "agent.db"
    _fill(path, outbox=2, journal=400)
    state = AgentState(path)
    holder = state.outbox_blob  # another object's reference (e.g. the blob server's lookup)
    _corrupt_tail(path)
    assert not state.recover_if_damaged(StateError("disk full writing x: free space"))
    assert state.recover_if_damaged(StateError("database x is damaged (malformed): ..."))
    assert holder("b" * 64) == b"deltab"  # same object, new file
    assert len(state.outbox()) == 2


def test_disk_full_saving_an_update_is_a_state_error_and_keeps_the_old_rows(tmp_path):
    state = AgentState(tmp_path / "agent.db")
    state.add_outbox(_item("a", 1, deadline=0.0))
    conn = state._db.conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = OutboxItem("b" * 64, "run", 2, b"{}", b"x" * 1_000_000, 0.0)
    with pytest.raises(StateError, match=r"disk full saving the update to .*agent.db.*free space"):
        state.add_outbox(big)
    assert [i.round for i in state.outbox()] == [1]
    assert state.journal_status("run", 2) == ""  # the journal row rolled back with the delta
    state.close()


def _toy_archive(tmp_path, name: str) -> tuple[bytes, str]:
    root = tmp_path / f"src-{name}"
    root.mkdir()
    for file in REQUIRED_FILES:
        (root / file).write_bytes(f"fake {file} of {name}".encode())
    (root / "parameters.safetensors").write_bytes(encode_tensors(PARAMS))
    manifest = write_manifest(root, {**toy_manifest(), "model_name": name})
    return pack_bundle(root), manifest.content_hash


def test_the_bundle_cache_keeps_the_most_recently_used_bundles(tmp_path):
    state = AgentState(tmp_path / "agent.db")
    cache = BundleCache(tmp_path / "bundles", state=state, keep=2)
    a, b, c = (_toy_archive(tmp_path, n) for n in ("a", "b", "c"))
    cache.add(*a)
    cache.add(*b)
    assert cache.get(a[1]) is not None  # a is used again: b is now the least recently used
    cache.add(*c)
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == sorted([a[1], c[1]])
    assert cache.get(b[1]) is None
    cached = state.cached_bundles()
    assert [h for h, _, _ in cached] == [c[1], a[1]]
    assert all(n > 0 for _, n, _ in cached)
    state.close()
    # the index survives a restart and goes on ordering the pruning
    state = AgentState(tmp_path / "agent.db")
    assert [h for h, _, _ in state.cached_bundles()] == [c[1], a[1]]
    state.close()


def test_a_corrupt_cached_bundle_is_dropped_from_disk_and_index(tmp_path):
    state = AgentState(tmp_path / "agent.db")
    cache = BundleCache(tmp_path / "bundles", state=state)
    archive, content_hash = _toy_archive(tmp_path, "a")
    cache.add(archive, content_hash)
    (tmp_path / "bundles" / content_hash / "checkpoint").write_bytes(b"tampered")
    fresh = BundleCache(tmp_path / "bundles", state=state)  # a restarted agent re-verifies
    assert fresh.get(content_hash) is None
    assert state.cached_bundles() == []
    assert not (tmp_path / "bundles" / content_hash).exists()
    state.close()
