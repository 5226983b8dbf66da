"""A small real federation for one task kind: SQLite tables written as a data owner would
(INTEGER or REAL labels, REAL or INTEGER feature columns, or typed BLOBs), a Mosquitto broker,
an orchestrator process and agent processes (tests/integration/test_tasks_*.py)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fleet import Fleet, agent_config, orchestrator_config


def write_table(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_type: str = "REAL",
    label_type: str = "INTEGER",
    blob_dtype: str = "",
    prefix: str = "f",
) -> Path:
    """Table ``samples``: columns ``{prefix}0..`` of ``feature_type`` (or one BLOB ``x`` of
    ``blob_dtype``) and ``label`` of ``label_type`` (INTEGER labels stored as Python ints)."""
    conn = sqlite3.connect(path)
    if blob_dtype:
        conn.execute(f"CREATE TABLE samples (x BLOB, label {label_type})")
        rows = [
            (row.astype(blob_dtype).tobytes(), _label(v, label_type))
            for row, v in zip(x, y, strict=True)
        ]
        conn.executemany("INSERT INTO samples VALUES (?, ?)", rows)
    else:
        cols = ", ".join(f"{prefix}{i} {feature_type}" for i in range(x.shape[1]))
        conn.execute(f"CREATE TABLE samples ({cols}, label {label_type})")
        cast = int if feature_type == "INTEGER" else float
        rows = [
            (*[cast(v) for v in row], _label(v, label_type)) for row, v in zip(x, y, strict=True)
        ]
        conn.executemany(f"INSERT INTO samples VALUES ({', '.join('?' * (x.shape[1] + 1))})", rows)
    conn.commit()
    conn.close()
    return path


def _label(v: float, label_type: str) -> float | int:
    return int(v) if label_type == "INTEGER" else float(v)


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
    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    metrics = [
        json.loads(m)
        for (m,) in db.execute(
            "SELECT metrics FROM model_versions WHERE run_id=? ORDER BY version", (run_id,)
        )
    ]
    sizes = [
        int(n)
        for (n,) in db.execute(
            "SELECT bytes FROM updates WHERE run_id=? AND status='accepted'", (run_id,)
        )
    ]
    db.close()
    return FederationResult(metrics, len(sizes), sizes, logs)
