"""The README's demo command, shortened, with the embedded broker: real processes end to end."""

from __future__ import annotations

import re
import sqlite3
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


def _demo(out, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", "demo", "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _final_accuracy(stdout: str) -> float:
    found = re.search(r"final test accuracy ([0-9.]+)", stdout)
    assert found, stdout
    return float(found.group(1))


def _majority_baseline(test_db) -> float:
    import numpy as np

    from fedge.demo.data import data_source
    from fedge.protocol.sqlite_samples import read_samples

    labels = read_samples(data_source(test_db)).y
    return float(np.bincount(labels).max() / len(labels))


def test_demo_wine_learns_and_every_model_and_round_flag_takes_effect(tmp_path):
    """Regression: --dataset wine crashed (no tabular_mlp); --optimizer and --hidden were ignored."""
    import json

    from fedge.orchestrator.store import Store
    from fedge.protocol.tensors import decode_tensors

    out = tmp_path / "wine"
    proc = _demo(
        out,
        *("--dataset", "wine", "--devices", "2", "--rounds", "2", "--alpha", "5"),
        *("--optimizer", "sgd", "--lr", "0.05", "--hidden", "12"),
        *("--local-epochs", "3", "--batch-size", "8", "--seed", "1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _final_accuracy(proc.stdout) > _majority_baseline(out / "data" / "test.db") + 0.2, (
        proc.stdout
    )
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    # one "optimizer" object, or (the typed manifest) a list of "optimizers" with one entry
    optimizer = manifest.get("optimizer") or manifest["optimizers"][0]
    assert (optimizer["type"], optimizer["lr"]) == ("sgd", 0.05), optimizer
    params = decode_tensors((out / "bundle" / "parameters.safetensors").read_bytes())
    assert sorted(p.shape for p in params.values()) == [(3,), (3, 12), (12,), (12, 13)]
    store = Store(out / "orchestrator.db")
    try:
        run_id = store.latest_run_id()
        assert run_id
        committed = [r for r in store.rounds(run_id) if r.state == "committed"]
    finally:
        store.close()
    with sqlite3.connect(out / "orchestrator.db") as db:  # the run's stored config
        (config_json,) = db.execute(
            "SELECT config FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    config = json.loads(config_json)
    rounds = config["rounds"]
    assert (rounds["local_epochs"], rounds["batch_size"], rounds["seed"]) == (3, 8, 1)
    assert (rounds["rounds"], rounds["min_devices"]) == (2, 2) and len(committed) == 2
    assert "alpha 5.0, seed 1" in proc.stdout  # the split the data step reports


def test_demo_breast_cancer_learns_and_min_accuracy_fails_the_run(tmp_path):
    """breast_cancer's raw features span 0.001..4000: the demo standardizes them and learns."""
    out = tmp_path / "bc"
    proc = _demo(
        out,
        *("--dataset", "breast_cancer", "--devices", "2", "--rounds", "2"),
        *("--min-accuracy", "1.01"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    final = _final_accuracy(proc.stdout)
    assert final > _majority_baseline(out / "data" / "test.db") + 0.1, proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: final test accuracy {final:.4f} is below --min-accuracy 1.01"], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_demo_refuses_mqtt5_with_the_embedded_broker(tmp_path):
    """The embedded amqtt broker speaks only 3.1.1: --protocol 5 without --broker used to hang."""
    proc = _demo(tmp_path / "d", "--protocol", "5", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "Error: --protocol 5 needs --broker mqtt://host:port: the embedded demo broker speaks "
        "only MQTT 3.1.1"
    )
