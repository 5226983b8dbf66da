"""A small real federation for one task kind: SQLite tables written as a data owner would
(``fedge.demo.tables.write_table``: INTEGER or REAL labels, REAL or INTEGER feature columns, or
typed BLOBs), a Mosquitto broker, an orchestrator process and agent processes
(tests/integration/test_tasks_*.py). The run's numbers come from ``fedge.demo.run_report``,
which examples/run.py prints from too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedge.demo.run_report import read_run_report
from fedge.demo.tables import write_table

from .fleet import Fleet, agent_config, orchestrator_config

__all__ = ["FederationResult", "run_federation", "write_table"]


@dataclass
class FederationResult:
    metrics: list[dict[str, float]]  # per model version 0..rounds
    accepted: int  # accepted updates over the run
    delta_bytes: list[int]  # size of every accepted delta
    logs: str


def run_federation(
    workdir: Path,
    broker,
    bundle: Path,
    devices: list[tuple[Path, dict]],
    test_db: Path,
    *,
    rounds: int,
    timeout: float = 60.0,
    test_data: dict | None = None,
    **round_settings,
) -> FederationResult:
    """Agents (one per ``(data path, extra agent config)``) and an orchestrator with central
    evaluation on ``test_db`` (``test_data``: more [evaluation.data] keys) for ``rounds``
    rounds; every device takes part in every round."""
    fleet = Fleet(workdir)
    db_path = workdir / "orchestrator.db"
    try:
        for i, (data, extra) in enumerate(devices):
            cfg = agent_config(f"dev-{i}", broker, data, workdir / f"state-{i}")
            cfg["validation_fraction"] = 0.0
            data_cfg = dict(cfg["data"], **extra.pop("data", {}))
            cfg.update(extra, data=data_cfg)
            fleet.start(f"dev-{i}", "agent", cfg)
        settings = {
            "rounds": rounds,
            "min_devices": len(devices),
            "min_reports": len(devices),
            "deadline_seconds": 30,
            "keep_deltas": True,
        } | round_settings
        orch = orchestrator_config(broker, bundle, db_path, test_db, settings)
        orch["evaluation"]["data"].update(test_data or {})
        fleet.start("orchestrator", "orchestrator", orch)
        code = fleet.wait("orchestrator", timeout=timeout)
        logs = fleet.all_logs()
        if code != 0:
            raise AssertionError(f"orchestrator exited {code}\n{logs}")
    finally:
        fleet.stop_all()
    report = read_run_report(db_path)
    if report.state != "finished":
        raise AssertionError(f"run {report.run_id} is {report.state}, not finished\n{logs}")
    return FederationResult(report.version_metrics, report.accepted, report.accepted_bytes, logs)
