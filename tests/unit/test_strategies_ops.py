"""Orchestrator operations without a broker: history and status views."""

from __future__ import annotations

import time

from fedge.orchestrator.history import history_table, status_text
from fedge.orchestrator.store import RoundRecord, Store


def test_history_and_status_read_the_round_records(tmp_path):
    store = Store(tmp_path / "o.db")
    store.create_run("run-1", "h" * 64, {}, b"params", "s" * 64)
    now = time.time()
    rec = RoundRecord(
        "run-1", 1, 0, "open", ["a", "b", "c"], now, now + 60, 0, 0, 0, 0, 0, 0, {}, goal=2
    )
    store.open_round(rec)
    store.accept_update("run-1", 1, "a", "x" * 64, 50, {"train_loss": 0.5}, b"d" * 2048)
    store.reject_update("run-1", 1, "b", "y" * 64, "non-finite values", 10)
    store.commit_round("run-1", 1, 1, b"p1", "z" * 64, {"train_loss": 0.5, "test_accuracy": 0.9})
    store.upsert_device("a", "idle", "ort-training", 50, True, "", "0.1")
    store.upsert_device("b", "offline", "ort-training", 10, False, "battery low", "0.1")
    table = history_table(store.rounds("run-1"))
    line = table.splitlines()[1].split()
    assert line[:5] == ["1", "0", "committed", "1/2", "3"] and line[5] == "1"  # 1 rejected
    assert "0.9000" in table
    status = status_text(store, "run-1")
    assert "1 committed" in status and "test_accuracy=0.9000" in status
    assert "ineligible: battery low" in status


def test_status_folds_devices_that_left_before_this_run(tmp_path):
    store = Store(tmp_path / "o.db")
    store.upsert_device("old-1", "offline", "ort-training", 10, True, "", "0.1")
    store.upsert_device("old-2", "online", "ort-training", 10, True, "", "0.1")
    store.create_run("run-2", "h" * 64, {}, b"params", "s" * 64)  # starts after both were seen
    store.upsert_device("new-1", "idle", "ort-training", 50, True, "", "0.1")
    status = status_text(store, "run-2")
    assert "devices: 2" in status and "new-1" in status
    assert "old-2" in status.split("(+")[0]  # not offline: it may still join this run
    assert "(+1 offline since before this run started: old-1; --all lists them)" in status
    full = status_text(store, "run-2", all_devices=True)
    assert "devices: 3" in full and "(+" not in full
