"""A real Mosquitto 2.x broker on a free loopback port, with its own files, stopped by PID.

For the examples (examples/run.py), the tests (tests/support/mosquitto.py turns its errors
into test failures: never skips) and the bench scripts. The files come from
``write_broker_files`` (the same passwords, per-device ACL and packet limit as
``fedge broker init``), plain MQTT on 127.0.0.1 only. The broker's stderr goes to
``<workdir>/mosquitto.log``; its tail is part of every startup failure message.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from fedge.demo.broker_process import BrokerProcess
from fedge.orchestrator.broker_files import (
    DEFAULT_ORCHESTRATOR_USER,
    BrokerFiles,
    write_broker_files,
)
from fedge.orchestrator.site_bridge import BridgeSettings
from fedge.protocol.errors import ConfigError, FedgeError

INSTALL_HINT = "install mosquitto (apt-get install mosquitto)"
_BINARY_FALLBACKS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str:
    """Return the mosquitto binary (PATH, then /usr/sbin); ConfigError if there is none."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _BINARY_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(f"mosquitto binary not found: {INSTALL_HINT}")


def make_users(
    n_devices: int = 5, *, orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER
) -> dict[str, str]:
    """Return ``{orchestrator_user: pw, "dev-0": pw, ...}`` with fresh random passwords."""
    users = {orchestrator_user: secrets.token_urlsafe(16)}
    users.update({f"dev-{i}": secrets.token_urlsafe(16) for i in range(n_devices)})
    return users


class LocalMosquitto(BrokerProcess):
    """One Mosquitto process with files rendered by ``write_broker_files`` into ``workdir``."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        users: Mapping[str, str] | None = None,
        federation: str = "demo",
        orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER,
        port: int | None = None,
        persistence: bool = True,
        start_timeout: float = 10.0,
        bridge: BridgeSettings | None = None,
        sys_interval: int = 0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = dict(users) if users is not None else make_users()
        self.federation = federation
        self.orchestrator_user = orchestrator_user
        self.host = "127.0.0.1"
        self.persistence = persistence
        self.start_timeout = start_timeout
        self.bridge = bridge  # a site broker's bridge to the central one (docs/sites.md)
        self.sys_interval = sys_interval  # $SYS topics every N s (0: Mosquitto's default)
        self.log_path = self.workdir / "mosquitto.log"
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port(self.host)
        self._proc: subprocess.Popen[bytes] | None = None
        self.files: BrokerFiles = self._write_files()

    def start(self) -> LocalMosquitto:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            return self
        binary = find_mosquitto()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(binary)
            error = self._wait_ready()
            if error is None:
                return self
            self.stop()
            new_log = self._log_text(offset)
            if attempt < attempts and "in use" in new_log:
                # Another process took the port between free_port() and bind: pick another.
                self._port = free_port(self.host)
                self.files = self._write_files()
                continue
            raise FedgeError(
                f"mosquitto did not start on {self.url}: {error}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            )
        return self  # pragma: no cover - the loop returns or fails

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker by PID (SIGTERM saves persistence), then kill if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def restart(self) -> None:
        """Stop and start again on the same port with the same files (persistence kept)."""
        self.stop()
        fixed, self._fixed_port = self._fixed_port, True
        try:
            self.start()
        finally:
            self._fixed_port = fixed

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker's log."""
        return "\n".join(self._log_text(0).splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url}, pid={self.pid}, workdir={str(self.workdir)!r})"

    def _write_files(self) -> BrokerFiles:
        files = write_broker_files(
            self.workdir,
            port=self._port,
            federation=self.federation,
            users=self.users,
            orchestrator_user=self.orchestrator_user,
            persistence=self.persistence,
            # As root, Mosquitto would switch to the `mosquitto` user, which cannot write
            # private tmp dirs (pytest's, the examples'); as anyone else it is ignored.
            run_as_user=pwd.getpwuid(os.geteuid()).pw_name,
            bridge=self.bridge,
        )
        if self.sys_interval:
            head, _, rest = files.conf_path.read_text().partition("\n")  # a general option:
            files.conf_path.write_text(f"{head}\nsys_interval {self.sys_interval}\n{rest}")
        return files

    def _spawn(self, binary: str) -> None:
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.files.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                return f"process exited with code {code}"
            try:
                with socket.create_connection((self.host, self._port), timeout=0.5):
                    return None
            except OSError:
                time.sleep(0.05)
        return f"port {self._port} not accepting connections after {self.start_timeout:.0f} s"

    def _log_text(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
