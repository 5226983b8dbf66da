"""For dashboard tests: a real ``fedge dashboard`` process (started on port 0, its URL read from
its stdout), and a synchronous run written into a Store by plain Store calls."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fedge.orchestrator.schema import RoundRecord
from fedge.orchestrator.store import Store

URL_LINE = re.compile(r"Dashboard of .*: (http://\S+)")


class DashboardProcess:
    """``python -m fedge dashboard --database DB --port 0 ARGS``; stop() ends it by PID."""

    def __init__(self, database: Path, *args: str, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedge", "dashboard", "--database", str(database)]
            + ["--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.output: list[str] = []
        self.url = self._wait_for_url(timeout)
        port = int(self.url.split("/")[2].rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{port}"  # always reached over loopback
        self._wait_until_answering(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line and self.proc.poll() is not None:
                    break
                self.output.append(line)
                if m := URL_LINE.search(line):
                    return m.group(1)
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError("fedge dashboard printed no URL:\n" + "".join(self.output))

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/static/dashboard.css", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without the token)
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("fedge dashboard does not answer:\n" + "".join(self.output))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        """(status, body, headers) of GET base+path; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def snapshot(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, body, _ = self.get("/api/snapshot", headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def stop(self) -> str:
        """End the process (SIGTERM, then SIGKILL) and return what it printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.output.append(self.proc.stdout.read())
            self.proc.stdout.close()
        return "".join(self.output)


def fill_sync_run(store: Store, rounds: int = 2) -> None:
    """Two devices (one ineligible), ``rounds`` committed rounds with one refused update each,
    and an open round."""
    store.upsert_device("dev-0", "online", "ort-training", 100, True, "", "0.1.0")
    store.upsert_device("dev-1", "online", "ort-portable", 50, False, "on battery", "0.1.0")
    store.create_run("r1", "abc123def4567890", {"mode": "sync"}, b"p0", "sha0")
    store.set_version_metrics("r1", 0, {"test_accuracy": 0.1, "test_loss": 2.3})
    for rnd in range(1, rounds + 1):
        open_round(store, rnd, goal=1)
        store.accept_update("r1", rnd, "dev-0", "sha", 100, {"train_loss": 1.0}, b"x" * 2048)
        store.reject_update("r1", rnd, "dev-1", "sha", f"norm too large in round {rnd}", 512)
        metrics = {"test_accuracy": 0.5 + 0.1 * rnd, "train_loss": 1.0 / rnd}
        metrics |= {"train_samples": 100, "bytes_down": 10_000 * rnd}
        store.commit_round("r1", rnd, rnd, b"p", "sha", metrics)
    open_round(store, rounds + 1, goal=2)


def open_round(store: Store, rnd: int, goal: int) -> None:
    t = time.time()
    participants = ["dev-0", "dev-1"]
    store.open_round(
        RoundRecord("r1", rnd, rnd - 1, "open", participants, t, t + 60, *[0] * 6, {}, goal=goal)
    )
