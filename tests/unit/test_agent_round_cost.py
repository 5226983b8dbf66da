"""What a round costs the agent outside training: one fsync, and the rows read only when the
data file changed (real Agent, real state database and data file, in-memory transport)."""

from __future__ import annotations

import sqlite3

from support import agent_world
from support.agent_world import pump

from fedge.agent.daemon import Agent
from fedge.protocol.fields import MAX_INLINE_BYTES

world = agent_world.world  # the fixture: a real Agent, scripted orchestrator, in-memory broker


def durable_commits(agent: Agent) -> list[str]:
    """Record every COMMIT of the agent's state database made with synchronous=FULL (an
    fsync); returns the list the trace callback appends to."""
    commits: list[str] = []
    mode = ["FULL"]

    def trace(sql: str) -> None:
        text = sql.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            mode[0] = text.split("=", 1)[1]
        elif text == "COMMIT" and mode[0] == "FULL":
            commits.append(text)

    agent.state._db.conn.set_trace_callback(trace)
    return commits


def test_a_trained_and_acked_round_costs_one_fsync_that_holds_the_delta_and_the_budget(world):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(1, inline_max_bytes=MAX_INLINE_BYTES))
    pump(agent, orch)  # round 1 installs the bundle (its own commits)
    minutes_after_1 = agent.state.training_minutes(_today(agent))
    assert minutes_after_1 > 0

    commits = durable_commits(agent)
    orch.publish_task(orch.task(2, inline_max_bytes=MAX_INLINE_BYTES))
    pump(agent, orch)
    agent.state._db.conn.set_trace_callback(None)

    assert agent.state.journal_status("run-1", 2) == "acked" and not agent.state.has_outbox()
    # the outbox entry + "offered" + the training seconds: one transaction, one fsync; the
    # "training" marker and the ack's removal commit without one (agent/state.py says why)
    assert len(commits) == 1
    assert agent.state.training_minutes(_today(agent)) > minutes_after_1


def test_a_stopped_training_still_counts_its_seconds(world):
    from support.scripted_orchestrator import FakeBackend

    _, _, orch, make_agent, _ = world
    box: list[Agent] = []
    agent = make_agent(FakeBackend(on_step=lambda n: box[0].stop() if n == 2 else None))
    box.append(agent)
    orch.publish_task(orch.task())
    pump(agent, orch)
    assert agent.state.journal_status("run-1", 1) == "interrupted"
    assert agent.state.training_minutes(_today(agent)) > 0


def test_rows_are_read_again_only_when_the_data_file_changed(world, tmp_path):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    for r in (1, 2):
        orch.publish_task(orch.task(r, inline_max_bytes=MAX_INLINE_BYTES))
        pump(agent, orch)
    assert agent.runner._rows.reads == 1  # round 2 reused round 1's rows
    assert orch.offers[-1].num_samples == 30

    with sqlite3.connect(tmp_path / "data.db") as conn:  # the user adds rows between rounds
        cols = [r[1] for r in conn.execute("PRAGMA table_info(samples)") if r[1] != "id"]
        names = ", ".join(cols)
        conn.execute(f"INSERT INTO samples({names}) SELECT {names} FROM samples LIMIT 4")
    orch.publish_task(orch.task(3, inline_max_bytes=MAX_INLINE_BYTES))
    pump(agent, orch)
    assert agent.runner._rows.reads == 2
    assert orch.offers[-1].num_samples == 33  # 44 rows, a quarter kept for validation


def _today(agent: Agent) -> str:
    import time

    return time.strftime("%Y-%m-%d", time.localtime(agent.clock.time()))
