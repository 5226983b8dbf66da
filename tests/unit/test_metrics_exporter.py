"""The orchestrator's Prometheus endpoint: store-derived gauges, bounded labels, real HTTP."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RoundSettings
from fedge.orchestrator.metrics_exporter import Metrics, MetricsServer
from fedge.orchestrator.registry import DeviceRegistry
from fedge.orchestrator.server import Orchestrator
from fedge.orchestrator.store import RoundRecord, Store
from fedge.protocol.messages import Status
from fedge.protocol.reason_codes import (
    REJECTION_CODES,
    abort_code,
    eligibility_code,
    rejection_code,
)
from fedge.protocol.transport import InMemoryBroker


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def family(text: str | bytes, name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: v
        for (n, labels), v in samples(text).items()
        if n == name and label in dict(labels)
    }


def status(agent: str, state: str, **kw) -> bytes:
    return Status(agent=agent, state=state, **kw).encode()


@pytest.fixture
def orchestrator(tmp_path: Path) -> Orchestrator:
    cfg = OrchestratorConfig(
        federation="m",
        bundle=str(write_toy_bundle(tmp_path / "bundle")),
        database=str(tmp_path / "o.db"),
    )
    orch = Orchestrator(cfg, transport=InMemoryBroker().client("orch"))
    yield orch
    orch.store.close()


def test_device_states_always_sum_to_the_known_devices(orchestrator: Orchestrator) -> None:
    """The bug: idle 3, online 1, training 1 for three devices. Each state is counted from the
    store at scrape time, so a state a device left drops back to 0."""
    o = orchestrator
    moves = [
        ("a", "online"),
        ("b", "online"),
        ("c", "online"),
        ("a", "idle"),
        ("b", "training"),
        ("b", "uploading"),
        ("c", "training"),
        ("b", "idle"),
        ("c", "idle"),
        ("a", "offline"),
        ("a", "idle"),
    ]
    for agent, state in moves:
        o._dispatch(o.topics.agent_status(agent), status(agent, state))
        o.tick()  # the devices table is written once per burst, at the loop's next tick
        devices = family(o.metrics.render(), "fedge_devices", "state")
        known = len(o.store.devices())
        assert sum(devices.values()) == known, (agent, state, devices)
        for row in o.store.devices():
            assert devices[row["state"]] >= 1
    o.registry.flush(everything=True)  # a round's idle/training flips are written within 1 s
    assert family(o.metrics.render(), "fedge_devices", "state") == {
        "idle": 3.0,
        "ineligible": 0.0,
        "offline": 0.0,
        "online": 0.0,
        "training": 0.0,
        "uploading": 0.0,
    }


def test_eligibility_is_counted_by_reason_code_never_by_device(tmp_path: Path) -> None:
    store = Store(tmp_path / "o.db")
    reg = DeviceRegistry(store)
    reg.on_status("ward-a-1", Status(agent="ward-a-1", state="idle"))
    reg.on_status("ward-a-2", Status(agent="ward-a-2", state="offline"))
    why = "on battery at 12% < 20%"
    reg.on_status(
        "ward-a-3", Status(agent="ward-a-3", state="ineligible", eligible=False, reason=why)
    )
    reg.on_status("ward-b-1", Status(agent="ward-b-1", state="idle"))
    metrics = Metrics(
        store.db.execute("PRAGMA database_list").fetchone()[2],
        RoundSettings(target_agents=["ward-a-*"], min_devices=2),
    )
    text = metrics.render().decode()
    got = family(text, "fedge_devices_by_eligibility", "reason")
    assert {k: v for k, v in got.items() if v} == {
        "eligible": 1.0,
        "offline": 1.0,
        "battery_low": 1.0,
        "not_targeted": 1.0,
    }
    assert "ward-" not in text  # no device id anywhere in the exposition
    assert samples(text)[("fedge_round_goal_devices", ())] == 2.0  # no round open: min_devices
    store.close()


def test_reason_codes_are_a_closed_set() -> None:
    assert rejection_code("update norm 12.3 exceeds the bound 5") == "norm_bound"
    assert (
        rejection_code("tensor 'fc.weight' holds 3 non-finite values (NaN or inf)") == "non_finite"
    )
    assert rejection_code("device was not selected for this round") == "not_selected"
    assert rejection_code("update is for model v2, the round trains v3") == "stale_model_version"
    assert rejection_code("object 0123 is 99 bytes; limit 10") == "too_large"
    assert rejection_code("inline delta fails its integrity check: 5 bytes") == "malformed"
    assert rejection_code("'fc.bias' has shape [3], expected [2]") == "shape_mismatch"
    assert rejection_code("the moon is in the wrong phase") == "other"
    assert abort_code("training failed: RuntimeError: boom") == "training_failed"
    assert abort_code("not eligible: too hot: 80.0 °C >= 70 °C") == "not_eligible"
    assert eligibility_code("idle", False, "override: maintenance", True) == "override"
    assert eligibility_code("training", True, "", False) == "not_targeted"
    for reason in ("x", "", "limit", "has dtype float64"):
        assert rejection_code(reason) in REJECTION_CODES


def _round(store: Store, n: int, opened: float, participants: list[str]) -> None:
    store.open_round(
        RoundRecord(
            "r", n, n - 1, "open", participants, opened, opened + 60, 0, 0, 0, 0, 0, 0, {}, goal=2
        )
    )


def test_counters_histograms_and_version_metrics_come_from_the_stored_rounds(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "o.db")
    store.create_run("r", "h" * 64, {}, b"p0", "s0")
    t = time.time() - 100
    _round(store, 1, t, ["a", "b", "c"])
    store.accept_update("r", 1, "a", "x" * 64, 10, {}, b"d" * 100)
    store.accept_update("r", 1, "b", "y" * 64, 10, {}, b"d" * 50)
    store.reject_update("r", 1, "c", "z" * 64, "update norm 9 exceeds the bound 1", 7)
    store.reject_update("r", 1, "c", "w" * 64, "round 1 is closed", 7, counter="late")
    store.count("r", 1, "duplicates")
    store.commit_round(
        "r",
        1,
        1,
        b"p1",
        "s1",
        {
            "test_accuracy": 0.75,
            "test_loss": 0.5,
            "dp_epsilon": 1.5,
            "dp_delta": 1e-5,
            "val_samples": 9.0,
            "bytes_down": 3.0,
        },
    )
    _round(store, 2, time.time(), ["a", "b"])
    store.reject_update("r", 2, "d", "v" * 64, "device was not selected for this round", 1)
    store.reject_update("r", 2, "a", "", "training failed: OOM", 0, counter="aborted")
    m = Metrics(tmp_path / "o.db", RoundSettings())
    m.count_bytes("down", 1000)
    m.count_bytes("up", 10)
    m.observe_aggregation(0.02)
    m.observe_commit(0.2)
    m.inc("fedge_updates_total", status="accepted")  # the old façade: accepted, ignored
    m.set("fedge_devices", 99, state="idle")
    s = samples(m.render())
    assert s[("fedge_store_up", ())] == 1.0
    outcomes = family(m.render(), "fedge_updates_total", "outcome")
    assert outcomes == {
        "accepted": 2.0,
        "evaluated": 0.0,
        "rejected": 2.0,
        "late": 1.0,
        "duplicate": 1.0,
        "aborted": 1.0,
        "dropped": 0.0,
    }
    rejected = family(m.render(), "fedge_updates_rejected_total", "reason")
    assert rejected["norm_bound"] == 1.0 and rejected["not_selected"] == 1.0
    assert sum(rejected.values()) == outcomes["rejected"]
    assert family(m.render(), "fedge_updates_aborted_total", "reason")["training_failed"] == 1.0
    assert s[("fedge_update_bytes_total", ())] == 150.0
    assert s[("fedge_wire_bytes_total", (("direction", "down"),))] == 1000.0
    assert s[("fedge_aggregation_duration_seconds_count", ())] == 1.0
    assert s[("fedge_commit_duration_seconds_sum", ())] == pytest.approx(0.2)
    assert s[("fedge_rounds_total", (("state", "committed"),))] == 1.0
    assert s[("fedge_round_duration_seconds_count", (("state", "committed"),))] == 1.0
    assert s[("fedge_round_duration_seconds_bucket", (("le", "60.0"), ("state", "committed")))] == 0
    assert (
        s[("fedge_round_duration_seconds_bucket", (("le", "120.0"), ("state", "committed")))] == 1
    )
    assert s[("fedge_version_duration_seconds_count", ())] == 1.0
    assert s[("fedge_model_version", ())] == 1.0
    assert s[("fedge_current_round", ())] == 2.0
    assert s[("fedge_round_goal_devices", ())] == 2.0
    assert s[("fedge_round_participants", ())] == 2.0
    assert s[("fedge_run_state", (("state", "running"),))] == 1.0
    assert s[("fedge_privacy_epsilon", ())] == 1.5
    evaluation = family(m.render(), "fedge_model_evaluation", "metric")
    assert evaluation == {"test_accuracy": 0.75, "test_loss": 0.5}
    assert time.time() - s[("fedge_last_commit_timestamp_seconds", ())] < 60
    store.close()


def test_no_database_yet_is_reported_not_raised(tmp_path: Path) -> None:
    s = samples(Metrics(tmp_path / "missing.db").render())
    assert s[("fedge_store_up", ())] == 0.0
    assert not (tmp_path / "missing.db").exists()  # a scrape never creates the database


def test_endpoint_passes_promtool_check_metrics(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("install prometheus (apt-get install prometheus): promtool is missing")
    store = Store(tmp_path / "o.db")
    store.create_run("r", "h" * 64, {}, b"p0", "s0")
    DeviceRegistry(store).on_status("a", Status(agent="a", state="idle"))
    _round(store, 1, time.time() - 5, ["a"])
    store.commit_round("r", 1, 1, b"p1", "s1", {"test_accuracy": 0.5})
    server = MetricsServer(Metrics(tmp_path / "o.db"), "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            body = resp.read()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        server.stop()
        store.close()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    assert b'fedge_devices{state="idle"} 1.0' in body


def test_update_counters_read_only_new_rows_and_restart_with_a_new_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    store = Store(path)
    store.create_run("r", "h" * 64, {}, b"p0", "s0")
    _round(store, 1, time.time(), ["a", "b"])
    store.reject_update("r", 1, "a", "x" * 64, "update norm 9 exceeds the bound 1", 7)
    m = Metrics(path)

    def rejected() -> dict[str, float]:
        return family(m.render(), "fedge_updates_rejected_total", "reason")

    assert rejected()["norm_bound"] == 1.0
    assert rejected()["norm_bound"] == 1.0  # a second scrape does not count the row again
    store.reject_update("r", 1, "b", "y" * 64, "'w' has dtype float64, expected float32", 7)
    store.accept_update("r", 1, "a", "z" * 64, 3, {}, b"d")
    got = rejected()
    assert (got["norm_bound"], got["dtype_mismatch"]) == (1.0, 1.0)
    assert family(m.render(), "fedge_updates_total", "outcome")["accepted"] == 1.0
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh = Store(path)  # the operator replaced the database: counters start again
    fresh.create_run("r2", "h" * 64, {}, b"p0", "s0")
    assert sum(rejected().values()) == 0.0
    fresh.close()
