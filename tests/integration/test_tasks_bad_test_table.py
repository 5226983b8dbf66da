"""The orchestrator refuses a central-evaluation table that does not fit the bundle when it
starts (one clear line, exit code 1), instead of crashing when the first round commits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.toy_bundle import write_toy_bundle

from fedge.demo.data import write_samples_sqlite
from fedge.demo.run import write_toml

pytestmark = pytest.mark.integration


def test_orchestrator_exits_at_start_naming_the_bad_label(mosquitto, tmp_path):
    bundle = write_toy_bundle(tmp_path / "bundle")  # 3 features, 2 classes
    x = np.zeros((4, 3), np.float32)
    test_db = write_samples_sqlite(tmp_path / "test.db", x, np.array([0, 1, 12, 1]))
    user = "fedge-orchestrator"
    cfg = write_toml(
        tmp_path / "orchestrator.toml",
        {
            "federation": mosquitto.federation,
            "bundle": str(bundle),
            "database": str(tmp_path / "orchestrator.db"),
            "client_id": user,
            "mqtt": {"url": mosquitto.url, "username": user, "password": mosquitto.users[user]},
            "evaluation": {"enabled": True, "data": {"path": str(test_db), "table": "samples"}},
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fedge", "orchestrator", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "central evaluation table ([evaluation.data])" in out
    assert "1 rows have a label outside the model's 2 classes (row 3: 12)" in out


def test_fedge_data_check_with_the_bundle_names_the_problem_and_exits_1(tmp_path):
    bundle = write_toy_bundle(tmp_path / "bundle")  # input 'input' takes 3 features
    data = write_samples_sqlite(
        tmp_path / "data.db", np.zeros((6, 1), np.float32), np.array([0, 1, 0, 1, 0, 1])
    )
    cfg = write_toml(tmp_path / "agent.toml", {"data": {"path": str(data)}})
    base = [sys.executable, "-m", "fedge", "data", "check", "--config", str(cfg)]
    alone = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0 and "problems:    none" in alone.stdout  # nothing to compare
    proc = subprocess.run(
        [*base, "--bundle", str(bundle)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "features:    [1] float32 per sample (columns f0)" in proc.stdout
    assert (
        "  - features match 1 column (f0) but the model's input 'input' needs 3: "
        "check data.features"
    ) in proc.stdout
