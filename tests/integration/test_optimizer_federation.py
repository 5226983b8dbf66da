"""A run whose orchestrator chooses SGD from a bundle carrying adamw and sgd, on Mosquitto.

Real processes: an orchestrator and two agents (one per backend) on a real broker. The round
task carries ``optimizer = "sgd"``; each agent trains with the bundle's SGD graph and the run
learns.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from support.fleet import Fleet, agent_config, orchestrator_config

pytestmark = pytest.mark.integration

ROUNDS = 3


def test_a_run_trains_with_the_optimizer_its_config_chooses(
    mosquitto, digits_federation, digits_bundle_factory, tmp_path
):
    bundle = digits_bundle_factory("adamw,sgd", 0.01)  # default adamw; the run picks sgd
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    backends = ["ort-training", "ort-portable"]
    try:
        for i, backend in enumerate(backends):
            data = digits_federation.device_paths[i]
            cfg = agent_config(f"dev-{i}", mosquitto, data, tmp_path / f"state-{i}")
            cfg["backend"] = backend
            fleet.start(f"dev-{i}", "agent", cfg)
        fleet.start(
            "orchestrator",
            "orchestrator",
            orchestrator_config(
                mosquitto,
                bundle,
                db_path,
                digits_federation.test_path,
                {
                    "rounds": ROUNDS,
                    "min_devices": 2,
                    "min_reports": 2,
                    "deadline_seconds": 60,
                    "local_epochs": 2,
                    "batch_size": 16,
                    "optimizer": "sgd",
                    "learning_rate": 0.1,
                },
            ),
        )
        assert fleet.wait("orchestrator", timeout=120) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    assert "client optimizer: sgd (lr 0.1" in fleet.logs("orchestrator"), fleet.all_logs()
    for i in range(len(backends)):
        assert "training with sgd (lr 0.1, weight decay 0)" in fleet.logs(f"dev-{i}")
        assert "training with adamw" not in fleet.logs(f"dev-{i}")
    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    metrics = {
        v: json.loads(m)
        for v, m in db.execute(
            "SELECT version, metrics FROM model_versions WHERE run_id=?", (run_id,)
        )
    }
    acc0, acc = metrics[0]["test_accuracy"], metrics[ROUNDS]["test_accuracy"]
    assert acc > acc0 + 0.3 and acc > 0.6, (acc0, acc)
