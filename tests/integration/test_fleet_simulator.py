"""Smoke test of bench/fleet_simulator.py: a tiny fleet on the epoll devices trains in both
modes against the real orchestrator and broker (the numbers themselves are the bench's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~25 s: a bundle export, a broker, two worker processes, an orchestrator
def test_a_small_fleet_trains_in_async_mode_and_reports_its_curve(tmp_path):
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "fleet_simulator.py"),
        *("--devices", "8", "--budget", "6", "--base-seconds", "0.3", "--epochs", "1"),
        *("--availability", "always", "--dropout", "0", "--sync", "none"),
        # strategy and buffered options ride on the setting (key=value joined by /)
        *("--async-grid", "2:4:polynomial:fedavgm:server_lr=0.5/staleness_exponent=1"),
        *("--json", str(out), "--workdir", str(tmp_path / "w")),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (r,) = json.loads(out.read_text())
    name = "async-k2-c4-polynomial-fedavgm-server_lr=0.5-staleness_exponent=1"
    assert r["name"] == name
    toml = (tmp_path / "w" / f"{name}.toml").read_text()
    assert 'strategy = "fedavgm"' in toml and "server_lr = 0.5" in toml
    assert "staleness_exponent = 1.0" in toml and "offline_grace_seconds = 0.5" in toml
    assert r["connected"] == 8  # every device on the workers' epoll loops
    assert r["lost"] == 0
    assert r["versions"] >= 2 and r["jobs"] >= 4  # slots granted, deltas in, versions out
    accs = [a for _t, a in r["points"]]
    assert accs[-1] > accs[0]  # the digits MLP learned (real ONNX Runtime training)
    assert r["bytes"] > 0 and "best async" not in done.stdout  # no sync rows to compare
