"""A real Prometheus scraping a live run (Mosquitto, 3 agent processes, an orchestrator process)."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support.fleet import Fleet, agent_config, orchestrator_config
from support.mosquitto import free_port
from support.prometheus import PrometheusServer, find_tool

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "fedge-alerts.yml"
DEVICES = 3


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


def test_prometheus_scrapes_a_live_run(mosquitto, digits_federation, digits_bundle, tmp_path):
    find_tool("prometheus")  # fail early with "install prometheus", before starting the fleet
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    metrics_port = free_port()
    prom = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"], [RULES])
    try:
        prom.start()
        for i, data in enumerate(digits_federation.device_paths):
            fleet.start(
                f"dev-{i}", "agent", agent_config(f"dev-{i}", mosquitto, data, tmp_path / f"s{i}")
            )
        cfg = orchestrator_config(
            mosquitto,
            digits_bundle,
            db_path,
            digits_federation.test_path,
            {
                "rounds": 3,
                "min_devices": DEVICES,
                "min_reports": DEVICES,
                "deadline_seconds": 60,
                "local_epochs": 1,
                "batch_size": 32,
            },
        )
        cfg["exit_when_done"] = False  # keeps running rounds (a new run after each 3)
        cfg["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
        fleet.start("orchestrator", "orchestrator", cfg)

        seen: dict[str, float] = {}
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(seen) < 4:
            assert fleet.procs["orchestrator"].poll() is None, fleet.all_logs()
            checks = {
                "scrapes": 'count_over_time(up{job="fedge-orchestrator"}[5m])',
                "accepted_rate": 'sum(rate(fedge_updates_total{outcome="accepted"}[15s]))',
                "round_observations": "sum(fedge_round_duration_seconds_count)",
                "devices": "sum(fedge_devices)",
            }
            for key, promql in checks.items():
                value = prom.scalar(promql)
                if (
                    value
                    and (key != "scrapes" or value >= 2)
                    and (key != "devices" or value == DEVICES)
                ):
                    seen.setdefault(key, value)
            time.sleep(1)
        assert len(seen) == 4, f"only {seen} within 150 s\n{fleet.all_logs()}\n{prom.logs()}"

        # the device gauge never summed to more than the known devices in any scrape
        peak = prom.scalar("max_over_time(sum(fedge_devices)[5m:1s])")
        assert peak == DEVICES
        assert prom.scalar("sum(fedge_devices)") == DEVICES
        median = prom.scalar(
            "histogram_quantile(0.5, sum by (le) (fedge_round_duration_seconds_bucket))"
        )
        assert median is not None and math.isfinite(median) and median > 0
        assert prom.scalar('fedge_run_state{state="running"}') == 1.0
        assert prom.scalar("sum(fedge_devices_by_eligibility)") == DEVICES  # one code each
        accuracy = prom.scalar('fedge_model_evaluation{metric="test_accuracy"}')
        assert accuracy is not None and 0.0 <= accuracy <= 1.0
        assert (prom.scalar('fedge_wire_bytes_total{direction="down"}') or 0) > 0
        # the alert rules load and evaluate against the live series without errors
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) >= 5 and all(r["health"] == "ok" for r in rules), rules
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
        check = subprocess.run(
            [find_tool("promtool"), "check", "metrics"],
            input=body,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        fleet.stop_all()
        prom.stop()

    db = sqlite3.connect(db_path)
    (known,) = db.execute("SELECT COUNT(*) FROM devices").fetchone()
    assert known == DEVICES
