"""A trusted_keys entry that points nowhere stops agent and orchestrator with one Error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedge.protocol.toml_writer import write_toml

pytestmark = pytest.mark.integration


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args], capture_output=True, text=True, timeout=60
    )


def _assert_one_error_line(proc: subprocess.CompletedProcess[str], missing: Path) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: trusted key file {missing} does not exist: copy the model author's public key "
        "there or remove it from trusted_keys"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


def test_agent_with_a_missing_trusted_key_file_exits_1_with_one_error_line(tmp_path):
    missing = tmp_path / "keys" / "author.pub"
    cfg = write_toml(
        tmp_path / "agent.toml",
        {
            "id": "dev-0",
            "state_dir": str(tmp_path / "state"),
            "trusted_keys": [str(missing)],
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "data": {"path": str(tmp_path / "data.db")},
        },
    )
    _assert_one_error_line(_run("agent", "--config", str(cfg)), missing)


def test_orchestrator_with_a_missing_trusted_key_file_exits_1_with_one_error_line(tmp_path):
    missing = tmp_path / "author.pub"
    cfg = write_toml(
        tmp_path / "orchestrator.toml",
        {
            "bundle": str(tmp_path / "bundle"),
            "database": str(tmp_path / "orchestrator.db"),
            "trusted_keys": [str(missing)],
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
        },
    )
    _assert_one_error_line(_run("orchestrator", "--config", str(cfg)), missing)
