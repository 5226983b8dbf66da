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
