"""The dashboard's data (build_snapshot) from a Store filled by Store calls or an async run,
and the token decision."""

from __future__ import annotations

import pytest
from support.async_federation import AsyncFederation
from support.dashboard import fill_sync_run

from fedge.orchestrator.dashboard import snapshot
from fedge.orchestrator.dashboard.serve import DashboardError, is_loopback, resolve_token
from fedge.orchestrator.dashboard.snapshot import build_snapshot
from fedge.orchestrator.store import Store


def test_sync_snapshot_has_fleet_open_round_versions_refusals_and_bytes(tmp_path):
    writer = Store(tmp_path / "o.db")
    fill_sync_run(writer)
    s = build_snapshot(Store.open_read_only(tmp_path / "o.db"))

    assert s["run"]["run_id"] == "r1" and s["run"]["mode"] == "sync"
    fleet = s["fleet"]
    assert fleet["totals"] == {"total": 2, "eligible": 1}
    assert fleet["by_state"] == {"online": 2}
    first = fleet["devices"][0]  # ineligible devices come first
    assert (first["agent_id"], first["eligible"], first["reason"]) == ("dev-1", 0, "on battery")
    assert first["backend"] == "ort-portable" and first["last_seen"] > 0
    assert s["round"]["round"] == 3 and s["round"]["goal"] == 2 and s["round"]["invited"] == 2
    assert s["buffer"] is None
    assert s["rounds"] == {"committed": 2, "open": 1}
    assert [v["version"] for v in s["versions"]] == [0, 1, 2]
    assert [v["metrics"].get("test_accuracy") for v in s["versions"]] == [0.1, 0.6, 0.7]
    assert "train_samples" not in s["versions"][1]["metrics"]  # counts are no curve
    assert [(u["round"], u["agent_id"], u["status"]) for u in s["refused"]] == [
        (2, "dev-1", "rejected"),
        (1, "dev-1", "rejected"),
    ]
    assert s["refused"][0]["reason"] == "norm too large in round 2"
    assert s["bytes"] == [
        {"round": 1, "accepted": 2048, "refused": 512, "down": 10_000},
        {"round": 2, "accepted": 2048, "refused": 512, "down": 20_000},
    ]


def test_bytes_and_refusals_look_back_over_a_window_of_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "WINDOW_ROUNDS", 2)  # rounds 2 and 3 of 3
    fill_sync_run(Store(tmp_path / "o.db"))
    s = snapshot.build_snapshot(Store.open_read_only(tmp_path / "o.db"))
    assert [b["round"] for b in s["bytes"]] == [2] and s["window_rounds"] == 2
    assert [u["round"] for u in s["refused"]] == [2]
    assert len(s["versions"]) == 3  # the curves keep every version


def test_snapshot_of_a_database_without_a_run_says_so(tmp_path):
    Store(tmp_path / "o.db").upsert_device("dev-0", "online", "ort-training", 1, True, "", "")
    s = build_snapshot(Store.open_read_only(tmp_path / "o.db"))
    assert s["run"] is None and "no run yet" in s["waiting"]
    assert s["fleet"]["totals"]["total"] == 1 and s["versions"] == []
    s = build_snapshot(Store.open_read_only(tmp_path / "o.db"), "nope")
    assert "'nope' is not in the database" in s["waiting"]


def test_async_snapshot_shows_the_buffer_and_devices_training(tmp_path):
    fed = AsyncFederation(tmp_path, 3, versions=5, buffer_size=2)
    fed.train(fed.ask(0), 0.1)  # one delta waits in the buffer (K=2)
    fed.ask(1)  # training now
    s = build_snapshot(Store.open_read_only(tmp_path / "o.db"))
    assert s["run"]["mode"] == "async" and s["round"] is None
    assert s["buffer"]["buffered"] == 1
    assert [t["agent_id"] for t in s["buffer"]["training"]] == ["dev-1"]
    assert [v["version"] for v in s["versions"]] == [0]
    fed.train(fed.ask(2), 0.1)  # the second delta: version 1 commits
    s = build_snapshot(Store.open_read_only(tmp_path / "o.db"))
    assert [v["version"] for v in s["versions"]] == [0, 1] and s["buffer"]["buffered"] == 0
    assert len(s["bytes"]) == 1 and s["bytes"][0]["round"] == 1 and s["bytes"][0]["accepted"] > 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True)]
    + [("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("broker.lan", False)],
)
def test_only_loopback_addresses_go_without_a_token(host, loopback):
    assert is_loopback(host) is loopback
    token, generated = resolve_token(host, None)
    assert (token is None) is loopback and generated is not loopback
    if token:
        assert len(token) >= 16


def test_a_given_token_is_kept_and_a_short_one_refused():
    assert resolve_token("127.0.0.1", "x" * 20) == ("x" * 20, False)
    assert resolve_token("0.0.0.0", "y" * 16) == ("y" * 16, False)
    with pytest.raises(DashboardError, match="at least 16"):
        resolve_token("0.0.0.0", "short")
