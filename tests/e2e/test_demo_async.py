"""``fedge demo --async`` end to end on one machine (embedded broker, real processes)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e


def test_async_demo_commits_versions_and_status_shows_them(tmp_path):
    out = tmp_path / "demo"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedge", "demo", "--async", "--devices", "3", "--rounds", "4"]
        + ["--out", str(out), "--min-accuracy", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 120, f"the async demo took {elapsed:.0f} s"
    versions = re.findall(
        r"version\s+(\d+)/4 \| (\d+) deltas .* test accuracy ([0-9.]+)", proc.stdout
    )
    assert [int(v[0]) for v in versions] == [1, 2, 3, 4], proc.stdout
    assert all(v[1] == "1" for v in versions)  # K = devices // 2 = 1
    final = float(re.search(r"final test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert final == float(versions[-1][2]) and final >= 0.5
    png = out / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status = subprocess.run(
        [sys.executable, "-m", "fedge", "status", "--database", str(out / "orchestrator.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "mode: async" in status.stdout and "latest v4" in status.stdout, status.stdout
    assert "staleness of accepted deltas" in status.stdout
    history = subprocess.run(
        [sys.executable, "-m", "fedge", "history", "--database", str(out / "orchestrator.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0 and len(history.stdout.splitlines()) == 2 + 5, history.stdout
    assert "Traceback" not in proc.stderr
