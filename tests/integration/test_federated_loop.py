"""The whole loop on a real Mosquitto: exporter bundle, 3 agent processes, an orchestrator process."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from support.fleet import Fleet, agent_config, orchestrator_config

from fedge.protocol.tensors import decode_tensors

pytestmark = pytest.mark.integration

ROUNDS = 3


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


def test_three_agents_three_rounds_on_mosquitto(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    try:
        for i, data in enumerate(digits_federation.device_paths):
            fleet.start(
                f"dev-{i}",
                "agent",
                agent_config(f"dev-{i}", mosquitto, data, tmp_path / f"state-{i}"),
            )
        fleet.start(
            "orchestrator",
            "orchestrator",
            orchestrator_config(
                mosquitto,
                digits_bundle,
                db_path,
                digits_federation.test_path,
                {
                    "rounds": ROUNDS,
                    "min_devices": 3,
                    "min_reports": 3,
                    "deadline_seconds": 90,
                    "local_epochs": 2,
                    "batch_size": 16,
                    "keep_deltas": True,
                },
            ),
        )
        assert fleet.wait("orchestrator", timeout=180) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    rounds = db.execute(
        "SELECT round, model_version, state, reports, participants FROM rounds WHERE run_id=? ORDER BY round",
        (run_id,),
    ).fetchall()
    assert [r[2] for r in rounds] == ["committed"] * ROUNDS, fleet.all_logs()
    versions = {
        v: (decode_tensors(p), json.loads(m))
        for v, p, m in db.execute(
            "SELECT version, params, metrics FROM model_versions WHERE run_id=?", (run_id,)
        )
    }
    assert sorted(versions) == list(range(ROUNDS + 1))
    for round_no, version, _state, reports, participants in rounds:
        assert sorted(json.loads(participants)) == ["dev-0", "dev-1", "dev-2"]
        updates = db.execute(
            "SELECT agent_id, num_samples, delta FROM updates WHERE run_id=? AND round=? AND status='accepted'",
            (run_id, round_no),
        ).fetchall()
        # exactly one accepted delta per device, and the round record counts exactly those
        assert sorted(u[0] for u in updates) == ["dev-0", "dev-1", "dev-2"]
        assert reports == len(updates) == 3
        # the committed version is exactly FedAvg over the deltas received in this round
        before, after = versions[version][0], versions[version + 1][0]
        total = sum(u[1] for u in updates)
        for name in before:
            expected = (
                before[name]
                + sum(n * decode_tensors(d)[name].astype(np.float64) for _, n, d in updates) / total
            )
            np.testing.assert_allclose(after[name], expected, rtol=1e-5, atol=1e-6)

    # bytes on the wire are recorded per round: the bundle and parameters went down in round 1
    # (every agent fetched both), only parameters later; deltas came up every round
    wire = [versions[v + 1][1] for v in range(ROUNDS)]
    assert wire[0]["bytes_down"] > wire[1]["bytes_down"] > 0, wire
    assert all(w["bytes_up"] > 0 for w in wire), wire
    first, last = versions[0][0], versions[ROUNDS][0]
    assert any(not np.allclose(first[n], last[n]) for n in first), "the global model did not change"
    acc0 = versions[0][1]["test_accuracy"]
    acc = versions[ROUNDS][1]["test_accuracy"]
    assert acc > 0.80 and acc > acc0 + 0.5, (acc0, acc)
