"""PNG plots of a run's metrics per round (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from fedge.protocol.errors import FedgeError

from .store import RoundRecord


def left_panel(rounds: list[RoundRecord]) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """(is a regression, the (metric, legend) series of the left panel).

    A classifier's left panel shows accuracy; a regression's (no accuracy in any round, an
    RMSE in some) its held-out errors."""
    has_accuracy = any(k in r.metrics for r in rounds for k in ("test_accuracy", "val_accuracy"))
    has_error = any("test_rmse" in r.metrics or "val_rmse" in r.metrics for r in rounds)
    if has_error and not has_accuracy:
        return True, (("test_rmse", "test RMSE (held-out)"), ("test_mae", "test MAE (held-out)"))
    return False, (
        ("test_accuracy", "test accuracy (held-out)"),
        ("val_accuracy", "local models on their own validation rows"),
    )


def plot_rounds(rounds: list[RoundRecord], path: str | Path, *, title: str = "fedge run") -> Path:
    """Test accuracy (and losses) per committed round; returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FedgeError("plotting needs matplotlib: pip install 'fedge[demo]'") from None
    committed = [r for r in rounds if r.state == "committed"]
    if not committed:
        raise FedgeError("no committed rounds to plot yet")
    xs = [r.model_version + 1 for r in committed]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    regression, left = left_panel(rounds)
    for key, label in left:
        ys = [r.metrics.get(key) for r in committed]
        if any(y is not None for y in ys):
            ax_acc.plot(
                xs, [y if y is not None else float("nan") for y in ys], marker="o", label=label
            )
    evaluated = [r for r in rounds if r.state == "evaluated" and "fed_val_accuracy" in r.metrics]
    if evaluated and not regression:  # federated evaluation rounds score version v
        ax_acc.plot(
            [r.model_version for r in evaluated],
            [r.metrics["fed_val_accuracy"] for r in evaluated],
            marker="s",
            linestyle="--",
            label="federated evaluation (devices' own data)",
        )
    ax_acc.set_xlabel("model version (round)")
    if regression:
        ax_acc.set_ylabel("error (label units)")
        ax_acc.set_ylim(bottom=0)
    else:
        ax_acc.set_ylabel("accuracy")
        ax_acc.set_ylim(0, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="upper right" if regression else "lower right")
    for key, label in (("train_loss", "mean local training loss"), ("test_loss", "test loss")):
        ys = [r.metrics.get(key) for r in committed]
        if any(y is not None for y in ys):
            ax_loss.plot(
                xs, [y if y is not None else float("nan") for y in ys], marker="o", label=label
            )
    ax_loss.set_xlabel("model version (round)")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
