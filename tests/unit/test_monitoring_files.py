"""deploy/prometheus, deploy/grafana and the compose monitoring services agree with the metrics
the orchestrator really exports (read from a scrape of a populated store, not from a list)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.prometheus import find_tool

from fedge.orchestrator.metrics_exporter import Metrics
from fedge.orchestrator.registry import DeviceRegistry
from fedge.orchestrator.store import RoundRecord, Store
from fedge.protocol.messages import Status

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
METRIC = re.compile(r"\bfedge_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    """(sample names, family names) of one scrape of a store with a DP run's committed round."""
    path = tmp_path_factory.mktemp("metrics") / "o.db"
    store = Store(path)
    store.create_run("r", "h" * 64, {}, b"p0", "s0")
    DeviceRegistry(store).on_status("a", Status(agent="a", state="idle"))
    now = time.time()
    store.open_round(RoundRecord("r", 1, 0, "open", ["a"], now, now + 9, 0, 0, 0, 0, 0, 0, {}))
    store.accept_update("r", 1, "a", "x" * 64, 5, {}, b"d")
    store.commit_round(
        "r", 1, 1, b"p1", "s1", {"test_accuracy": 0.5, "dp_epsilon": 1.0, "dp_delta": 1e-5}
    )
    m = Metrics(path)
    m.observe_aggregation(0.1)
    m.observe_commit(0.1)
    text = m.render().decode()
    store.close()
    fams = list(text_string_to_metric_families(text))
    samples = {s.name for f in fams for s in f.samples}
    names = {f.name + ("_total" if f.type == "counter" else "") for f in fams}
    return samples, names


def _promtool(*args: str) -> None:
    run = subprocess.run(
        [find_tool("promtool"), *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_check_and_their_unit_tests_pass() -> None:
    _promtool("check", "rules", "fedge-alerts.yml")
    _promtool("test", "rules", "fedge-alerts.test.yml")
    _promtool("check", "config", "prometheus.yml")


def test_alert_rules_use_only_exported_metrics(exported) -> None:
    samples, _ = exported
    rules = yaml.safe_load((PROMETHEUS / "fedge-alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for needed in (
        "FedgeNoCommittedVersion",
        "FedgeTooFewEligibleDevices",
        "FedgeRejectedUpdatesSpike",
        "FedgePrivacyBudgetExceeded",
    ):
        assert needed in alerts
    for name, expr in alerts.items():
        unknown = set(METRIC.findall(expr)) - samples
        assert not unknown, f"{name} queries metrics the orchestrator does not export: {unknown}"


def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "fedge.json").read_text())


def test_dashboard_queries_only_exported_metrics_and_covers_the_operator_views(exported) -> None:
    samples, _ = exported
    dash = _dashboard()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = set(METRIC.findall(t["expr"]))
            assert names, f"panel {p['title']!r}: a query without a fedge metric"
            unknown = names - samples
            assert not unknown, f"panel {p['title']!r} queries unexported {unknown}"
            used |= names
    for needed in (
        "fedge_model_evaluation",
        "fedge_round_duration_seconds_bucket",
        "fedge_updates_total",
        "fedge_devices",
        "fedge_wire_bytes_total",
    ):
        assert needed in used
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/fedge.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/fedge"


def test_compose_runs_prometheus_alertmanager_and_grafana_on_existing_files() -> None:
    compose_dir = DEPLOY / "compose"
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    services = compose["services"]
    mounts: dict[str, str] = {}
    for name in ("prometheus", "alertmanager", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (compose_dir / source).exists(), f"{name} mounts missing {source}"
                mounts[target] = source
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert (compose_dir / mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    dashboards = compose_dir / mounts["/var/lib/grafana/dashboards/fedge"]
    assert (dashboards / "fedge.json").is_file()
    # Prometheus scrapes the orchestrator where compose makes it listen
    command = services["orchestrator"]["command"]
    sets = dict(c.split("=", 1) for c in command if "=" in c)
    assert sets["metrics.host"] == "0.0.0.0"
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "fedge-orchestrator"]
    netns = services["orchestrator"]["network_mode"].split(":", 1)[1]
    assert job["static_configs"][0]["targets"] == [f"{netns}:{sets['metrics.port']}"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_docs_table_lists_every_exported_family(exported) -> None:
    _, families = exported
    docs = (ROOT / "docs" / "orchestrator.md").read_text()
    table = set(re.findall(r"^\| `(fedge_[a-z0-9_]+)`", docs, flags=re.M))
    fedge = {f for f in families if f.startswith("fedge_")}
    assert fedge - table == set(), "metrics missing from docs/orchestrator.md's table"
    assert table - fedge == set(), "docs/orchestrator.md lists metrics that are not exported"
