"""Federated evaluation rounds on a real Mosquitto with real agent and orchestrator processes.

``rounds.evaluate_every = 1`` for 2 rounds: training and evaluation rounds alternate; an
evaluation round stores the sample-weighted mean of the devices' reports (``fed_*``) and
makes no model version. The orchestrator is killed (SIGKILL) during an evaluation round and
restarted: it resumes the round with the reports it had and the run finishes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import numpy as np
import pytest
from support.fleet import Fleet, agent_config, orchestrator_config

from fedge.agent.backends import create_backend
from fedge.agent.local_evaluation import evaluate_global
from fedge.cli import main
from fedge.protocol.bundle import load_bundle
from fedge.protocol.sqlite_samples import DataSource, read_samples
from fedge.protocol.tensors import decode_tensors

pytestmark = pytest.mark.integration


def _query(db_path, sql, args=()):
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        rows = db.execute(sql, args).fetchall()
        db.close()
        return rows
    except sqlite3.Error:
        return []


def _poll(cond, fleet, timeout):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, fleet.all_logs()
        time.sleep(0.05)


def test_evaluation_rounds_alternate_and_survive_an_orchestrator_restart(
    mosquitto, digits_federation, digits_bundle_factory, tmp_path, capsys
):
    bundle_path = digits_bundle_factory("adamw", 0.01)
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    orch_cfg = orchestrator_config(
        mosquitto,
        bundle_path,
        db_path,
        None,
        {"rounds": 2, "evaluate_every": 1, "min_devices": 3, "deadline_seconds": 40},
    )
    configs = {
        f"dev-{i}": agent_config(
            f"dev-{i}", mosquitto, data, tmp_path / f"state-{i}", offer_retry_seconds=1.0
        )
        for i, data in enumerate(digits_federation.device_paths)
    }
    frozen = None
    try:
        for name, cfg in configs.items():
            fleet.start(name, "agent", cfg)
        fleet.start("orchestrator", "orchestrator", orch_cfg)
        # freeze the first device to report in round 1: the evaluation round then waits for it
        first = "SELECT agent_id FROM updates WHERE round=1 AND status='accepted' ORDER BY id"
        _poll(lambda: _query(db_path, first), fleet, 60)
        frozen = _query(db_path, first)[0][0]
        os.kill(fleet.procs[frozen].pid, signal.SIGSTOP)
        evaluated = "SELECT count(*) FROM updates WHERE round=2 AND status='evaluated'"
        _poll(lambda: (_query(db_path, evaluated) or [(0,)])[0][0] >= 2, fleet, 60)
        (state,) = _query(db_path, "SELECT state FROM rounds WHERE round=2")[0]
        assert state == "open", fleet.all_logs()
        fleet.kill("orchestrator")
        fleet.start("orchestrator", "orchestrator", orch_cfg)
        os.kill(fleet.procs[frozen].pid, signal.SIGCONT)
        frozen = None
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        if frozen is not None:
            os.kill(fleet.procs[frozen].pid, signal.SIGCONT)
        fleet.stop_all()

    logs = fleet.all_logs()
    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    rounds = db.execute(
        "SELECT round, kind, state, model_version, reports, metrics FROM rounds "
        "WHERE run_id=? ORDER BY round",
        (run_id,),
    ).fetchall()
    assert [r[:4] for r in rounds] == [
        (1, "train", "committed", 0),
        (2, "evaluate", "evaluated", 1),
        (3, "train", "committed", 1),
        (4, "evaluate", "evaluated", 2),
    ], (rounds, logs)
    # evaluation rounds make no model version: v1 from round 1, v2 from round 3
    versions = db.execute(
        "SELECT version, round FROM model_versions WHERE run_id=? ORDER BY version", (run_id,)
    ).fetchall()
    assert versions == [(0, None), (1, 1), (2, 3)]
    assert "was open at restart; continuing it" in fleet.logs("orchestrator")

    bundle = load_bundle(bundle_path)
    backend = create_backend("auto", threads=1)
    for round_no, _kind, _state, version, reports, metrics_json in rounds[1::2]:
        rows = db.execute(
            "SELECT agent_id, num_samples, metrics FROM updates WHERE run_id=? AND round=? "
            "AND status='evaluated'",
            (run_id, round_no),
        ).fetchall()
        assert reports == len(rows) == len({r[0] for r in rows}) == 3, (round_no, rows)
        n = np.array([r[1] for r in rows], float)
        loss = np.array([json.loads(r[2])["val_loss"] for r in rows])
        acc = np.array([json.loads(r[2])["val_accuracy"] for r in rows])
        metrics = json.loads(metrics_json)
        assert metrics["fed_samples"] == n.sum()
        assert metrics["fed_val_loss"] == pytest.approx((n * loss).sum() / n.sum(), rel=1e-9)
        assert metrics["fed_val_accuracy"] == pytest.approx((n * acc).sum() / n.sum(), rel=1e-9)
        # each device evaluated that round's model version on its own validation split
        params = decode_tensors(
            db.execute(
                "SELECT params FROM model_versions WHERE run_id=? AND version=?",
                (run_id, version),
            ).fetchone()[0]
        )
        for agent_id, num, report in rows:
            i = int(agent_id.split("-")[1])
            samples = read_samples(
                DataSource(path=str(digits_federation.device_paths[i]), table="samples")
            )
            want_n, want = evaluate_global(backend, bundle, params, samples, 0.1)
            assert num == want_n
            assert json.loads(report)["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    # the second model is better than the first on the devices' validation rows
    assert json.loads(rounds[3][5])["fed_val_loss"] < json.loads(rounds[1][5])["fed_val_loss"]
    db.close()
    # each device journaled the evaluation rounds
    journal = sqlite3.connect(tmp_path / "state-0" / "agent.db")
    assert dict(journal.execute("SELECT round, status FROM journal")) == {
        1: "acked",
        2: "evaluated",
        3: "acked",
        4: "evaluated",
    }
    journal.close()

    assert main(["history", "--database", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("evaluated") == 2, out
