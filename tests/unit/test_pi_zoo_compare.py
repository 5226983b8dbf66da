"""deploy/pi-emulation/zoo_round.py compare: the host-vs-aarch64 verdict per model.

The emulated run itself needs root and network (docs/raspberry-pi.md); what decides OK/FAIL
is pure logic over the two result directories, checked here on hand-written results.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "pi-emulation" / "zoo_round.py"


def _module():
    spec = importlib.util.spec_from_file_location("zoo_round", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(directory: Path, name: str, params: dict, **record) -> None:
    directory.mkdir(exist_ok=True)
    base = {"model": name, "runtime": "onnxruntime x", "loss": 1.0, "steps": 12}
    base.update({"seconds": 0.1, "changed": 0.01, "finite": True}, **record)
    (directory / f"{name}.json").write_text(json.dumps(base))
    if "error" not in record:
        np.savez(directory / f"{name}.npz", **params)


def _rows(capsys) -> dict[str, str]:
    lines = capsys.readouterr().out.splitlines()
    return {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}


W = {"w": np.array([1.0, 2.0], dtype=np.float32)}


def test_agreeing_results_are_ok(tmp_path: Path, capsys) -> None:
    _result(tmp_path / "h", "mlp", W)
    _result(tmp_path / "p", "mlp", {"w": W["w"] + np.float32(5e-5)})
    assert _module().compare(tmp_path / "h", tmp_path / "p") == 0
    assert _rows(capsys)["mlp"].endswith("| 5.0e-05 | OK |")


@pytest.mark.parametrize(
    ("pi_params", "pi_record", "why"),
    [
        ({"w": W["w"] + np.float32(2e-4)}, {}, "w 2.00e-04; loss diff 0.0e+00 (tolerance 0.0001)"),
        (W, {"loss": 1.01}, "no parameter; other parameters <= 0.0e+00; loss diff 1.0e-02"),
        (W, {"changed": 0.0}, "parameters did not change on aarch64"),
        (W, {"finite": False}, "non-finite loss or parameters on aarch64"),
        (W, {"steps": 11}, "steps differ: 12 vs 11"),
        (W, {"error": "Fail: [ONNXRuntimeError] no kernel"}, "aarch64: Fail: [ONNXRuntimeError]"),
    ],
)
def test_each_failure_is_named_and_fails_the_run(
    tmp_path: Path, capsys, pi_params: dict, pi_record: dict, why: str
) -> None:
    _result(tmp_path / "h", "mlp", W)
    _result(tmp_path / "h", "cnn", W)
    _result(tmp_path / "p", "cnn", W)
    _result(tmp_path / "p", "mlp", pi_params, **pi_record)
    assert _module().compare(tmp_path / "h", tmp_path / "p") == 1
    rows = _rows(capsys)
    assert "FAIL: " + why in rows["mlp"] and rows["cnn"].endswith("| OK |")


def test_the_disagreeing_parameters_are_named_apart_from_the_rest(tmp_path: Path, capsys) -> None:
    _result(tmp_path / "h", "cnn", {"bias": np.zeros(3, np.float32), "w": np.ones(2, np.float32)})
    far = {
        "bias": np.array([0, 0.1, 0], np.float32),
        "w": np.ones(2, np.float32) + np.float32(2**-22),
    }
    _result(tmp_path / "p", "cnn", far)
    assert _module().compare(tmp_path / "h", tmp_path / "p") == 1
    row = _rows(capsys)["cnn"]
    assert "| 1.0e-01 | FAIL: bias 1.00e-01; other parameters <= 2.4e-07; loss diff" in row


def test_a_model_missing_from_the_emulated_run_fails(tmp_path: Path, capsys) -> None:
    _result(tmp_path / "h", "mlp", W)
    (tmp_path / "p").mkdir()
    assert _module().compare(tmp_path / "h", tmp_path / "p") == 1
    assert "FAIL: no result from the emulated run" in _rows(capsys)["mlp"]
