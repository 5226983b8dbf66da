"""What one finished run did, read from the orchestrator's database (read-only).

Used by examples/run.py (the summary it prints) and tests/support/task_federation.py (what the
task-kind tests assert on): metrics of every model version, the committed rounds with their
bytes received, the size of every accepted delta and of the model.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.orchestrator.history import open_store, pick_run
from fedge.orchestrator.schema import RoundRecord


@dataclass
class RunReport:
    run_id: str
    state: str  # "finished" once the orchestrator has committed every round
    version_metrics: list[dict[str, Any]]  # per model version 0..N (0: the exported model)
    rounds: list[RoundRecord]  # committed training rounds, in order
    accepted_bytes: list[int] = field(default_factory=list)  # every accepted delta's size
    model_bytes: int = 0  # the last model version's parameters (what a device downloads)
    seconds: float = 0.0  # from the run's start to its end (or to now)
    abandoned: int = 0  # rounds closed without enough reports (retried)

    @property
    def accepted(self) -> int:
        """Accepted updates over the run."""
        return len(self.accepted_bytes)

    @property
    def bytes_per_round(self) -> float:
        """Median bytes received (all devices' deltas) per committed round."""
        return float(statistics.median(r.bytes_in for r in self.rounds)) if self.rounds else 0.0

    @property
    def final(self) -> dict[str, Any]:
        """The last model version's metrics."""
        return self.version_metrics[-1] if self.version_metrics else {}


def read_run_report(database: str | Path, run_id: str | None = None) -> RunReport:
    """The report of ``run_id`` (default: the latest run) in ``database``."""
    store = open_store(database)
    try:
        run_id = pick_run(store, run_id)
        run = next(r for r in store.runs() if r["run_id"] == run_id)
        every = store.rounds(run_id)
        rounds = [r for r in every if r.state == "committed" and r.kind == "train"]
        rows = store.db.execute(
            "SELECT metrics, length(params) FROM model_versions WHERE run_id=? ORDER BY version",
            (run_id,),
        ).fetchall()
        accepted = [
            int(n)
            for (n,) in store.db.execute(
                "SELECT bytes FROM updates WHERE run_id=? AND status='accepted' ORDER BY id",
                (run_id,),
            )
        ]
    finally:
        store.close()
    end = run["finished"] or max((r.closed or r.opened for r in rounds), default=run["started"])
    return RunReport(
        run_id=run_id,
        state=str(run["state"]),
        version_metrics=[json.loads(m) for m, _ in rows],
        rounds=rounds,
        accepted_bytes=accepted,
        model_bytes=int(rows[-1][1]) if rows else 0,
        seconds=float(end) - float(run["started"]),
        abandoned=sum(r.state == "abandoned" for r in every),
    )
