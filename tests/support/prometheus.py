"""A real Prometheus server for tests: own free loopback port, own config and TSDB, stopped by PID.

Never skips: without the ``prometheus`` binary the test fails with "install prometheus", so CI
cannot pass without the real server (scripts/test.sh installs Debian's package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from .mosquitto import free_port

INSTALL_HINT = "install prometheus (apt-get install prometheus)"


def find_tool(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fails the test (never skips) when missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return path


class PrometheusServer:
    """``prometheus`` scraping ``targets`` every second, with ``rule_files`` loaded."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path] = ()) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": [
                        {
                            "job_name": "fedge-orchestrator",
                            "scrape_interval": "1s",
                            "scrape_timeout": "1s",
                            "static_configs": [{"targets": targets}],
                        }
                    ],
                }
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        binary = find_tool("prometheus")
        check = subprocess.run(
            [find_tool("promtool"), "check", "config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        out = open(self.log, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: the ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def scalar(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        result = self.api("query", query=promql)["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
