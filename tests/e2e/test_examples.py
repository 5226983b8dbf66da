"""Every example under examples/ runs as its README says (``python examples/run.py NAME``):
its data script, ``fedge export``, Mosquitto on loopback, the orchestrator and three agent
processes; the metric it prints beats the baseline its data script states, by a margin.

Baselines: a classifier must beat always answering the majority class by 0.15 accuracy; the
regression must cut the RMSE of predicting the training mean by 15%. The example's own round
count is used (3..10 rounds: the rounds are cheap, the exports and process starts are not).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESULT = re.compile(
    r"Result: (?P<name>\w+), (?P<rounds>\d+) rounds: (?P<metric>\w+) (?P<value>[0-9.]+) "
    r"\((?P<verdict>beats|does NOT beat) the baseline (?P<baseline>[0-9.]+), (?P<what>[^)]+)\)"
)
BYTES = re.compile(r"([0-9,]+) B per round from 3 devices \(model ([0-9,]+) B\)")
ROUND = re.compile(r"round +(\d+)/(\d+) \| 3/3 devices")


@pytest.mark.parametrize(
    "name",
    ["breast_cancer", "sensor_cnn", "text_transformer", "digits_depthwise", "diabetes_regression"],
)
def test_example_runs_and_beats_its_baseline(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "run.py"), name, "--out", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    found = RESULT.search(proc.stdout)
    assert found, output
    rounds = int(found["rounds"])
    assert [int(m[0]) for m in ROUND.findall(proc.stdout)] == list(range(1, rounds + 1)), output
    value, baseline = float(found["value"]), float(found["baseline"])
    if found["metric"].endswith("accuracy"):
        assert found["what"] == "majority class", output
        assert value > baseline + 0.15, output
    else:
        assert found["metric"] == "test_rmse" and found["what"] == "predicting the mean", output
        assert value < 0.85 * baseline, output
    assert found["verdict"] == "beats", output
    sent = BYTES.search(proc.stdout)
    assert sent, output
    per_round, model = (int(g.replace(",", "")) for g in sent.groups())
    # every device sends one delta of every parameter: about 3 x the model, never more than 4x
    assert 2 * model < per_round < 4 * model, output
