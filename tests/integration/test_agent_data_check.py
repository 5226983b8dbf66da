"""``fedge data check``: counts, histogram, split and problems, without writing the user's file."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from fedge.agent.data_check import check_data
from fedge.demo.data import write_samples_sqlite
from fedge.protocol.sqlite_samples import DataSource

pytestmark = pytest.mark.integration


@pytest.fixture
def readings(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = np.array([0] * 30 + [1] * 15 + [2] * 5)
    return write_samples_sqlite(tmp_path / "readings.db", x, y)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "data", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reports_counts_histogram_and_split(readings, tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'validation_fraction = 0.2\n[data]\npath = "{readings}"\ntable = "samples"\n')
    before = hashlib.sha256(readings.read_bytes()).hexdigest()
    proc = _run("--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "rows:        50 in the table, 50 selected" in out
    assert "features:    [4] float32 per sample" in out
    assert "labels:      0: 30, 1: 15, 2: 5" in out
    assert "split:       40 train, 10 validation" in out
    assert "problems:    none" in out
    assert hashlib.sha256(readings.read_bytes()).hexdigest() == before  # read-only

    filtered = _run("--config", str(cfg), "--set", "data.where=label > 0")
    assert "50 in the table, 20 selected" in filtered.stdout


def test_cli_names_the_problems_and_exits_1(tmp_path):
    readings = tmp_path / "messy.db"
    conn = sqlite3.connect(readings)
    conn.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, f0, f1, f2, f3, label)")
    rows = [(i, 0.1, 0.2, 0.3, None if i == 3 else 0.4, None if i < 2 else i % 2) for i in range(9)]
    conn.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()
    proc = _run("--set", f"data.path={readings}")
    assert proc.returncode == 1
    assert "2 rows have a NULL label in column 'label'" in proc.stdout
    assert "1 rows have a NULL feature in column 'f3'" in proc.stdout

    missing = _run("--set", f"data.path={readings}", "--set", "data.table=readings")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert (
        "table 'readings' not found" in missing.stdout and "tables are: samples" in missing.stdout
    )


def test_wrong_feature_count_and_new_rows(readings):
    src = DataSource(path=str(readings))
    report = check_data(src, expected_features=64)
    assert report.problems == ["the model expects 64 features per sample but the data has 4"]
    # rows added between two reads are seen by the next one (nothing is cached)
    conn = sqlite3.connect(readings)
    conn.execute(
        "INSERT INTO samples (f0, f1, f2, f3, label, created_at) "
        "SELECT f0, f1, f2, f3, label, created_at FROM samples"
    )
    conn.commit()
    conn.close()
    assert check_data(src).rows_selected == 100
