"""Federated evaluation bookkeeping: weighted metrics, one report per device, the wire message."""

from __future__ import annotations

import sqlite3

import pytest

from fedge.orchestrator.round_metrics import federated_metrics, training_metrics
from fedge.orchestrator.store import RoundRecord, Store
from fedge.protocol.errors import MessageError
from fedge.protocol.messages import EvalReport, TrainConfig, parse_message


def test_federated_metrics_are_sample_weighted_means_prefixed_fed():
    got = federated_metrics(
        [
            (30, {"val_loss": 1.0, "val_accuracy": 0.5}),
            (10, {"val_loss": 3.0, "val_accuracy": 0.9}),
            (20, {"val_loss": 2.0}),  # accuracy missing: weighs only the loss
        ]
    )
    assert got["fed_val_loss"] == pytest.approx((30 + 30 + 40) / 60)
    assert got["fed_val_accuracy"] == pytest.approx((15 + 9) / 40)
    assert got["fed_samples"] == 60
    assert federated_metrics([]) == {}


def test_training_metrics_unchanged():
    got = training_metrics([(10, {"train_loss": 1.0, "val_loss": 2.0, "val_samples": 2.0})])
    assert got == {"train_loss": 1.0, "val_loss": 2.0, "val_samples": 2.0}


def test_store_counts_each_devices_report_once_and_closes_as_evaluated(tmp_path):
    store = Store(tmp_path / "o.db")
    store.create_run("r", "h", {}, b"p", "s")
    rec = RoundRecord(
        "r", 2, 1, "open", ["a", "b"], 0.0, 9.0, 0, 0, 0, 0, 0, 0, {}, kind="evaluate"
    )
    store.open_round(rec)
    assert store.add_eval_report("r", 2, "a", 30, {"val_loss": 1.0})
    assert not store.add_eval_report("r", 2, "a", 30, {"val_loss": 1.0})  # a re-send
    assert store.add_eval_report("r", 2, "b", 10, {"val_loss": 3.0})
    assert store.answered_agents("r", 2) == {"a", "b"}
    assert store.eval_reports("r", 2) == [(30, {"val_loss": 1.0}), (10, {"val_loss": 3.0})]
    store.close_evaluation("r", 2, {"fed_val_loss": 1.5})
    (r,) = store.rounds("r")
    assert (r.kind, r.state, r.reports, r.model_version, r.metrics) == (
        "evaluate",
        "evaluated",
        2,
        1,
        {"fed_val_loss": 1.5},
    )
    store.close()


def test_an_old_orchestrator_database_gains_the_round_kind(tmp_path):
    path = tmp_path / "o.db"
    store = Store(path)
    store.create_run("r", "h", {}, b"p", "s")
    store.open_round(RoundRecord("r", 1, 0, "open", ["a"], 0.0, 9.0, 0, 0, 0, 0, 0, 0, {}))
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE rounds DROP COLUMN kind")  # as written before the column existed
    db.execute("DROP TABLE migrations")  # ... and before migrations were numbered
    db.commit()
    db.close()
    store = Store(path)
    assert store.rounds("r")[0].kind == "train"
    store.close()


def test_eval_report_and_evaluate_only_on_the_wire():
    report = EvalReport("m1", "dev-0", "run", 4, 2, 17, {"val_loss": 0.5, "val_accuracy": 0.9})
    assert parse_message(report.encode()) == report
    bad = report.encode().replace(b'"num_samples":17', b'"num_samples":0')
    with pytest.raises(MessageError, match="num_samples"):
        parse_message(bad)
    nan = report.encode().replace(b'"val_loss":0.5', b'"val_loss":NaN')
    with pytest.raises(MessageError):
        parse_message(nan)
    assert TrainConfig().evaluate_only is False  # older orchestrators omit it
