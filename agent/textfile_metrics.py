"""A device's own metrics for node_exporter's textfile collector, read from the agent's state.

The agent's SQLite state (``<state_dir>/agent.db``) already records every round it took part
in (the journal: training, offered, acked, rejected, aborted with a reason, evaluated,
expired), its training seconds per day and the outbox of unacknowledged updates. This module
renders them in Prometheus's text format and writes the file atomically (temporary file +
rename: node_exporter must never read half a file). Nothing in the daemon has to change: run it
from a timer (deploy/systemd/fedge-agent-metrics.timer)::

    python -m fedge.agent.textfile_metrics --state-dir /var/lib/fedge \\
        --out /var/lib/prometheus/node-exporter/fedge_agent.prom

Labels come from closed sets only (round statuses, ``reason_codes.ABORT_CODES``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from fedge.protocol.errors import FedgeError
from fedge.protocol.reason_codes import ABORT_CODES, abort_code

log = logging.getLogger(__name__)

ROUND_STATUSES = (
    "training",
    "offered",
    "acked",
    "rejected",
    "aborted",
    "evaluated",
    "expired",
    "other",
)


class TextfileError(FedgeError):
    """The agent's state cannot be read or the metrics file cannot be written."""


def _family(lines: list[str], name: str, kind: str, doc: str) -> None:
    lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]


def render(state_db: Path) -> str:
    """The text exposition of one agent's state database (read-only; never creates it)."""
    if not state_db.is_file():
        raise TextfileError(f"no agent state at {state_db}: is --state-dir the agent's state_dir?")
    uri = f"file:{quote(str(state_db.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
        try:
            db.execute("BEGIN")
            journal = db.execute("SELECT status, detail, updated FROM journal").fetchall()
            (seconds,) = db.execute("SELECT COALESCE(SUM(seconds), 0) FROM usage").fetchone()
            (outbox,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise TextfileError(f"agent state {state_db} cannot be read: {exc}") from None
    rounds = dict.fromkeys(ROUND_STATUSES, 0)
    aborts = dict.fromkeys(ABORT_CODES, 0)
    last = 0.0
    for status, detail, updated in journal:
        rounds[status if status in rounds else "other"] += 1
        if status == "aborted":
            aborts[abort_code(detail)] += 1
        last = max(last, float(updated))
    lines: list[str] = []
    _family(lines, "fedge_agent_training_seconds_total", "counter", "Seconds spent training.")
    lines.append(f"fedge_agent_training_seconds_total {float(seconds)!r}")
    _family(lines, "fedge_agent_rounds", "gauge", "Rounds in the journal by their last status.")
    lines += [f'fedge_agent_rounds{{status="{s}"}} {n}' for s, n in rounds.items()]
    _family(lines, "fedge_agent_aborts", "gauge", "Rounds the device gave up, by reason code.")
    lines += [f'fedge_agent_aborts{{reason="{r}"}} {n}' for r, n in aborts.items()]
    _family(lines, "fedge_agent_outbox_updates", "gauge", "Updates waiting for an ack.")
    lines.append(f"fedge_agent_outbox_updates {outbox}")
    _family(
        lines,
        "fedge_agent_last_round_timestamp_seconds",
        "gauge",
        "Unix time of the newest journal change (0 if none).",
    )
    lines.append(f"fedge_agent_last_round_timestamp_seconds {last!r}")
    return "\n".join(lines) + "\n"


def write(state_db: Path, out: Path) -> None:
    """Render ``state_db`` and replace ``out`` atomically (same directory, then rename)."""
    text = render(state_db)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        raise TextfileError(f"cannot write {out}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fedge.agent.textfile_metrics",
        description="Write the agent's metrics for node_exporter's textfile collector.",
        epilog="Example: python -m fedge.agent.textfile_metrics --state-dir /var/lib/fedge "
        "--out /var/lib/prometheus/node-exporter/fedge_agent.prom",
    )
    p.add_argument("--state-dir", required=True, type=Path, help="the agent's state_dir")
    p.add_argument("--out", required=True, type=Path, help="the .prom file to (re)write")
    args = p.parse_args(argv)
    try:
        write(args.state_dir / "agent.db", args.out)
    except TextfileError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
