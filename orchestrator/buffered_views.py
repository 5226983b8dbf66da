"""What ``fedge status``/``history``/``plot`` show for a buffered asynchronous run: versions,
the buffer, devices training now, the staleness histogram, accuracy per version over time."""

from __future__ import annotations

from pathlib import Path

from fedge.protocol.errors import FedgeError

from .buffered_store import BufferedStore
from .store import Store


def is_async(store: Store, run_id: str) -> bool:
    return BufferedStore(store).run_mode(run_id) == "async"


def _bar(n: int, most: int, width: int = 30) -> str:
    return "#" * max(1, round(width * n / most)) if n else ""


def async_status_lines(store: Store, run_id: str) -> list[str]:
    b = BufferedStore(store)
    versions = b.versions(run_id)
    active = b.active_slots(run_id)  # the orchestrator expires overdue slots
    counters = b.counters(run_id)
    buffered = b.buffered(run_id)
    latest = versions[-1] if versions else {"version": 0, "metrics": {}}
    lines = [
        f"mode: async (buffered); model versions: {len(versions)} (latest v{latest['version']})",
        f"buffer: {len(buffered)} accepted deltas not yet committed",
        f"devices training now: {len(active)}"
        + (": " + ", ".join(f"{s.agent_id} (v{s.version})" for s in active[:10]) if active else "")
        + (f" and {len(active) - 10} more" if len(active) > 10 else ""),
        "counters: " + (", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "none yet"),
    ]
    metrics = latest["metrics"]
    if isinstance(metrics, dict) and metrics:
        shown = ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float)
        )
        lines.append(f"last metrics (v{latest['version']}): {shown}")
    hist = b.staleness_histogram(run_id)
    if hist:
        most = max(hist.values())
        lines.append("staleness of accepted deltas (versions behind: count):")
        lines += [f"  {s:>3}: {n:>6} {_bar(n, most)}" for s, n in hist.items()]
    return lines


def async_history_table(store: Store, run_id: str) -> str:
    """One line per version: when, how many deltas, their mean staleness weight, accuracy."""
    b = BufferedStore(store)
    versions = b.versions(run_id)
    t0 = versions[0]["created"] if versions else 0.0
    lines = [
        f"{'ver':>4} {'secs':>8} {'deltas':>6} {'weight':>6} {'train_loss':>10} {'test_acc':>8}"
    ]
    for v in versions:
        m = v["metrics"]
        lines.append(
            f"{v['version']:>4} {v['created'] - t0:>8.1f} {int(m.get('updates', 0)):>6} "
            f"{m.get('mean_weight', 1.0):>6.3f} {_num(m.get('train_loss'), 10)} "
            f"{_num(m.get('test_accuracy'), 8)}"
        )
    return "\n".join(lines)


def _num(v: object, width: int) -> str:
    return f"{v:.4f}".rjust(width) if isinstance(v, float) else "-".rjust(width)


def plot_async(store: Store, run_id: str, path: str | Path, *, title: str) -> Path:
    """Test accuracy per version over wall time, and the staleness histogram; a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FedgeError("plotting needs matplotlib: pip install 'fedge[demo]'") from None
    b = BufferedStore(store)
    versions = b.versions(run_id)
    if len(versions) < 2:
        raise FedgeError("no committed versions to plot yet")
    t0 = versions[0]["created"]
    fig, (ax_acc, ax_st) = plt.subplots(1, 2, figsize=(10, 4))
    pts = [(v["created"] - t0, v["metrics"].get("test_accuracy")) for v in versions]
    pts = [(t, a) for t, a in pts if a is not None]
    if pts:
        ax_acc.plot([t for t, _ in pts], [a for _, a in pts], marker=".", label="test accuracy")
    ax_acc.set_xlabel("seconds since the run started")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.grid(alpha=0.3)
    hist = b.staleness_histogram(run_id)
    ax_st.bar(list(hist), list(hist.values()))
    ax_st.set_xlabel("staleness (versions behind)")
    ax_st.set_ylabel("accepted deltas")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
