"""Read-only views of an orchestrator database for people: status, round history."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedge.protocol.errors import FedgeError

from .store import RoundRecord, Store


class HistoryError(FedgeError):
    """The database or run asked for does not exist."""


def open_store(path: str | Path) -> Store:
    """Open an orchestrator database read-only: no schema is created, nothing is written."""
    if not Path(path).is_file():
        raise HistoryError(f"orchestrator database {path} not found; pass --database PATH")
    return Store.open_read_only(path)


def pick_run(store: Store, run_id: str | None) -> str:
    if run_id:
        if run_id not in {r["run_id"] for r in store.runs()}:
            known = ", ".join(r["run_id"] for r in store.runs()) or "none"
            raise HistoryError(f"run {run_id!r} not in the database; runs: {known}")
        return run_id
    latest = store.latest_run_id()
    if latest is None:
        raise HistoryError("the database has no run yet; start `fedge orchestrator` first")
    return latest


def _fmt(v: Any, width: int, digits: int = 4) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:.{digits}f}".rjust(width)
    return str(v).rjust(width)


# (header, metric keys in order of preference): the columns a run shows are those of its task
# (accuracy and F1 / ROC AUC for classifiers, RMSE and MAE for a regression), found in the
# round metrics themselves, so the table needs no manifest.
METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train_loss", ("train_loss",)),
    ("val_acc", ("val_accuracy", "fed_val_accuracy")),
    ("val_rmse", ("val_rmse", "fed_val_rmse")),
    ("test_acc", ("test_accuracy",)),
    ("test_f1", ("test_macro_f1",)),
    ("test_auc", ("test_roc_auc",)),
    ("test_rmse", ("test_rmse",)),
    ("test_mae", ("test_mae",)),
)
DEFAULT_COLUMNS = ("train_loss", "val_acc", "test_acc")  # a run with no metrics yet


def _metric(r: RoundRecord, keys: tuple[str, ...]) -> float | None:
    return next((r.metrics[k] for k in keys if k in r.metrics), None)


def metric_columns(rounds: list[RoundRecord]) -> list[tuple[str, tuple[str, ...]]]:
    """The task's metric columns: those with a value in some round (train_loss always)."""
    present = [
        (head, keys)
        for head, keys in METRIC_COLUMNS
        if head == "train_loss" or any(_metric(r, keys) is not None for r in rounds)
    ]
    if len(present) == 1:
        present = [c for c in METRIC_COLUMNS if c[0] in DEFAULT_COLUMNS]
    return present


def history_table(rounds: list[RoundRecord]) -> str:
    """One line per round: state, counters, the round's main metrics (the task's: accuracy for
    a classifier, RMSE/MAE for a regression). Federated evaluation rounds have the state
    ``evaluated`` and show the evaluated model's metrics."""
    columns = metric_columns(rounds)
    head = (
        f"{'round':>5} {'ver':>4} {'state':<10} {'rep':>4}/{'goal':<4} {'inv':>4} {'rej':>4} "
        f"{'late':>4} {'dup':>4} {'abrt':>4} {'drop':>4} {'KiB in':>8} {'secs':>6} "
        + " ".join(f"{h:>10}" for h, _ in columns)
        + "  note"
    )
    lines = [head]
    for r in rounds:
        secs = (r.closed - r.opened) if r.closed else None
        values = " ".join(_fmt(_metric(r, keys), 10) for _, keys in columns)
        lines.append(
            f"{r.round:>5} {r.model_version:>4} {r.state:<10} {r.reports:>4}/{r.goal or len(r.participants):<4} "
            f"{len(r.participants):>4} {r.rejected:>4} {r.late:>4} {r.duplicates:>4} {r.aborted:>4} "
            f"{r.dropped:>4} {r.bytes_in / 1024:>8.1f} {_fmt(secs, 6, 1)} {values}  {r.note}"
        )
    return "\n".join(lines)


def status_text(store: Store, run_id: str, *, all_devices: bool = False) -> str:
    """The run, its open round, the devices and the latest metrics.

    Devices that went offline before this run started (an earlier run's fleet) are folded into
    one line unless ``all_devices``: the registry keeps every device it has ever seen."""
    run = next(r for r in store.runs() if r["run_id"] == run_id)
    devices = _device_lines(store, since=run["started"], all_devices=all_devices)
    from .buffered_views import async_status_lines, is_async

    if is_async(store, run_id):
        head = f"run {run_id}: {run['state']}, started " + time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(run["started"])
        )
        return "\n".join([head, *async_status_lines(store, run_id), *devices])
    rounds = store.rounds(run_id)
    committed = [r for r in rounds if r.state == "committed"]
    lines = [
        f"run {run_id}: {run['state']}, started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run['started']))}",
        f"model versions: {len(committed) + 1} (latest v{committed[-1].model_version + 1 if committed else 0});"
        f" rounds: {len(committed)} committed, "
        f"{sum(r.state == 'abandoned' for r in rounds)} abandoned",
    ]
    open_rounds = [r for r in rounds if r.state == "open"]
    if open_rounds:
        r = open_rounds[-1]
        lines.append(
            f"open round {r.round}: {r.reports}/{r.goal or len(r.participants)} reports from "
            f"{len(r.participants)} invited, deadline in {max(0.0, r.deadline - time.time()):.0f} s"
        )
    if committed:
        m = committed[-1].metrics
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items()) if not k.endswith("samples"))
        lines.append(f"last metrics (round {committed[-1].round}): {shown}")
    combined = [r for r in rounds if r.state == "combined"]
    if combined:  # federated standardization (docs/data.md)
        m = combined[-1].metrics
        lines.append(
            f"features standardized: {m.get('stat_features', 0):.0f} features, statistics of "
            f"{m.get('stat_rows', 0):.0f} rows on {m.get('stat_devices', 0):.0f} devices "
            f"(round {combined[-1].round})"
        )
    evaluated = [r for r in rounds if r.state == "evaluated"]
    if evaluated:
        e = evaluated[-1]
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(e.metrics.items()))
        lines.append(f"federated evaluation of v{e.model_version} (round {e.round}): {shown}")
    return "\n".join(lines + devices)


def _device_lines(store: Store, *, since: float, all_devices: bool) -> list[str]:
    devices = store.devices()
    stale = [d for d in devices if d["state"] == "offline" and d["last_seen"] < since]
    shown = devices if all_devices else [d for d in devices if d not in stale]
    lines = [f"devices: {len(shown)}"]
    now = time.time()
    for d in shown:
        why = "" if d["eligible"] else f" ineligible: {d['reason']}"
        lines.append(
            f"  {d['agent_id']:<16} {d['state']:<10} {d['backend'] or '?':<13} "
            f"{d['num_samples']:>7} samples  v{d['version'] or '?':<8} "
            f"seen {now - d['last_seen']:.0f} s ago{why}"
        )
    if stale and not all_devices:
        names = ", ".join(d["agent_id"] for d in stale[:5]) + (", ..." if len(stale) > 5 else "")
        lines.append(
            f"  (+{len(stale)} offline since before this run started: {names}; --all lists them)"
        )
    return lines
