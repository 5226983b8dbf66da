import pytest

from fedge.orchestrator.plotting import plot_rounds
from fedge.orchestrator.store import RoundRecord
from fedge.protocol.errors import FedgeError


def _round(n, version, state, metrics, kind="train"):
    return RoundRecord(
        "run", n, version, state, ["dev-0"], 0.0, 1.0, 1, 0, 0, 0, 0, 0, metrics, kind=kind
    )


def test_plot_has_training_and_federated_evaluation_points(tmp_path):
    rounds = [
        _round(1, 0, "committed", {"test_accuracy": 0.5, "train_loss": 1.0, "test_loss": 1.2}),
        _round(2, 1, "evaluated", {"fed_val_accuracy": 0.55}, kind="evaluate"),
        _round(3, 1, "committed", {"test_accuracy": 0.7, "train_loss": 0.5, "test_loss": 0.8}),
        _round(4, 2, "abandoned", {}),
    ]
    out = plot_rounds(rounds, tmp_path / "p.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_nothing_committed_is_a_clear_error(tmp_path):
    with pytest.raises(FedgeError, match="no committed rounds"):
        plot_rounds([_round(1, 0, "abandoned", {})], tmp_path / "p.png")


def test_a_regression_plots_its_errors_and_a_classifier_its_accuracy(tmp_path):
    from fedge.orchestrator.plotting import left_panel

    regression = [
        _round(1, 0, "committed", {"test_rmse": 60.0, "test_mae": 50.0, "train_loss": 3e3}),
        _round(2, 1, "committed", {"test_rmse": 55.0, "test_mae": 45.0, "train_loss": 2e3}),
    ]
    is_regression, series = left_panel(regression)
    assert is_regression and [k for k, _ in series] == ["test_rmse", "test_mae"]
    assert plot_rounds(regression, tmp_path / "r.png").stat().st_size > 10_000
    classifier = [_round(1, 0, "committed", {"test_accuracy": 0.5, "test_roc_auc": 0.9})]
    assert left_panel(classifier) == (
        False,
        (
            ("test_accuracy", "test accuracy (held-out)"),
            ("val_accuracy", "local models on their own validation rows"),
        ),
    )


def test_history_shows_the_metrics_of_the_task():
    from fedge.orchestrator.history import history_table

    regression = [_round(1, 0, "committed", {"test_rmse": 54.66, "test_mae": 45.6})]
    head, row = history_table(regression).splitlines()
    assert head.split()[-4:] == ["train_loss", "test_rmse", "test_mae", "note"]
    assert "54.6600" in row and "45.6000" in row
    binary = [_round(1, 0, "committed", {"test_accuracy": 0.96, "test_roc_auc": 0.99})]
    assert history_table(binary).splitlines()[0].split()[-4:] == [
        "train_loss",
        "test_acc",
        "test_auc",
        "note",
    ]
    empty = history_table([_round(1, 0, "open", {})]).splitlines()[0].split()
    assert empty[-4:] == ["train_loss", "val_acc", "test_acc", "note"]
