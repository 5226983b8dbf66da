"""The README's demo command, shortened, with the embedded broker: real processes end to end."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_learns_and_plots(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "demo",
            "--devices",
            "3",
            "--rounds",
            "3",
            "--out",
            str(out),
            "--min-accuracy",
            "0.8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    progress = re.findall(
        r"round\s+(\d+)/3 \| (\d)/(\d) devices .* test accuracy ([0-9.]+)", proc.stdout
    )
    assert [int(p[0]) for p in progress] == [1, 2, 3], proc.stdout
    assert all(p[1] == p[2] == "3" for p in progress)
    final = float(re.search(r"final test accuracy ([0-9.]+)", proc.stdout).group(1))
    assert final == float(progress[-1][3]) and final > 0.8
    png = out / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "Traceback" not in proc.stderr


def test_demo_refuses_an_unreachable_broker(tmp_path):
    from fedge.demo.embedded_broker import free_loopback_port

    port = free_loopback_port()  # nothing listens here
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedge",
            "demo",
            "--devices",
            "2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "d"),
            "--broker",
            f"mqtt://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Error: cannot connect to the broker" in proc.stderr and "Traceback" not in proc.stderr
