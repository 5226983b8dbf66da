"""The agent's SQLite state: outbox expiry at the round's deadline, schema migration."""

from __future__ import annotations

import sqlite3

from fedge.agent.state import AgentState, OutboxItem


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
