"""A real Mosquitto started with the files ``fedge broker init`` generated (TLS, passwords, ACL).

Unlike ``MosquittoBroker`` (which renders its own files), this runs exactly what a user gets
from ``fedge broker init`` and ``fedge device add``: the test exercises the shipped config.
Started on free loopback ports, stopped by PID.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from fedge.provision.layout import BrokerDir
from support.mosquitto import find_mosquitto, free_port


def fedge_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fedge ARGS`` and fail the test with its output if it exits non-zero."""
    result = subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"fedge {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


class ProvisionedBroker:
    """``fedge broker init DIR`` on free loopback ports, then ``mosquitto -c`` on its config."""

    def __init__(self, root: Path, *, federation: str = "demo", site: Path | None = None) -> None:
        self.dir = BrokerDir(root)
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.federation = federation
        self.log_path = root.parent / f"{root.name}-mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        fedge_cli(
            "broker", "init", str(root),
            "--host", "localhost", "--host", "127.0.0.1",
            "--federation", federation,
            "--tls-port", str(self.tls_port),
            "--plain-port", str(self.plain_port),
            "--bind", "127.0.0.1",  # tests stay on loopback
            # As root, Mosquitto would switch to the `mosquitto` user, which cannot read
            # pytest's private tmp dirs.
            "--run-as", pwd.getpwuid(os.geteuid()).pw_name,
            *(["--site", str(site)] if site is not None else []),
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def prefix(self) -> str:
        return f"fedge/v1/{self.federation}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def add_device(self, name: str, *extra: str) -> dict:
        """``fedge device add NAME`` and return its generated agent.toml as a dict."""
        fedge_cli("device", "add", name, "--dir", str(self.dir.root), *extra)
        return self.agent_config(name)

    def agent_config(self, name: str) -> dict:
        return tomllib.loads((self.dir.device_dir(name) / "agent.toml").read_text())

    def orchestrator_config(self) -> dict:
        return tomllib.loads(self.dir.orchestrator_toml.read_text())

    def password(self, user: str) -> str:
        if user == "fedge-orchestrator":
            return self.orchestrator_config()["mqtt"]["password"]
        return self.agent_config(user)["mqtt"]["password"]

    def start(self, timeout: float = 10.0) -> ProvisionedBroker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the broker
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.dir.mosquitto_conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"mosquitto exited {self._proc.returncode}:\n{self.log_tail()}")
            if self.dir.pid_file.exists() and self._port_open():
                return self
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not open port {self.tls_port}:\n{self.log_tail()}")

    def _port_open(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
