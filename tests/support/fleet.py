"""Real agent and orchestrator processes for integration tests (``python -m fedge ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedge.demo.run import stop_processes
from fedge.protocol.toml_writer import write_toml


class Fleet:
    """Starts fedge processes with TOML configs in ``workdir``; stops them all by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start(self, name: str, command: str, config: dict, *extra: str) -> subprocess.Popen:
        cfg = write_toml(self.workdir / f"{name}.toml", config)
        log = open(self.log_path(name), "a")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedge", command, "--config", str(cfg), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.procs[name] = proc
        return proc

    def logs(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text() if path.exists() else ""

    def all_logs(self, tail: int = 40) -> str:
        parts = []
        for name in self.procs:
            lines = self.logs(name).splitlines()[-tail:]
            parts.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} did not exit within {timeout} s\n{self.all_logs()}"
            ) from None

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def stop_all(self) -> None:
        stop_processes(list(self.procs.values()))


def agent_config(agent_id: str, broker, data_path: Path, state_dir: Path, **extra) -> dict:
    cfg = {
        "id": agent_id,
        "federation": broker.federation,
        "state_dir": str(state_dir),
        "mqtt": {
            "url": broker.url,
            "username": agent_id,
            "password": broker.users[agent_id],
            "protocol": getattr(broker, "mqtt_protocol", "5"),  # RabbitMQ: "3.1.1"
        },
        "data": {"path": str(data_path), "table": "samples"},
    }
    cfg.update(extra)
    return cfg


def orchestrator_config(
    broker, bundle: Path, database: Path, test_db: Path | None, rounds: dict
) -> dict:
    user = "fedge-orchestrator"
    cfg = {
        "federation": broker.federation,
        "bundle": str(bundle),
        "database": str(database),
        "client_id": user,
        "mqtt": {
            "url": broker.url,
            "username": user,
            "password": broker.users[user],
            "protocol": getattr(broker, "mqtt_protocol", "5"),  # RabbitMQ: "3.1.1"
        },
        "rounds": rounds,
    }
    if test_db is not None:
        cfg["evaluation"] = {"enabled": True, "data": {"path": str(test_db), "table": "samples"}}
    return cfg
