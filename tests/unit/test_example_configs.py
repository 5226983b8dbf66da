"""The examples' configs load with the real settings loader (a renamed or removed key fails
here, not in the 2-minute e2e run) and agree with each other: every agent reads the same
columns as the orchestrator's test table, in the same federation, and example.toml's rounds
are the orchestrator's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fedge.agent.config import AgentConfig
from fedge.orchestrator.config import OrchestratorConfig
from fedge.protocol.settings import load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = sorted(p.parent.name for p in EXAMPLES.glob("*/example.toml"))


def test_there_are_five_examples() -> None:
    assert NAMES == [
        "breast_cancer",
        "diabetes_regression",
        "digits_depthwise",
        "sensor_cnn",
        "text_transformer",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_configs_load_and_agree(name: str) -> None:
    folder = EXAMPLES / name
    agent = load_settings(AgentConfig, folder / "agent.toml", env={})
    orch = load_settings(OrchestratorConfig, folder / "orchestrator.toml", env={})
    spec = tomllib.loads((folder / "example.toml").read_text())
    assert agent.federation == orch.federation
    assert orch.evaluation.enabled and orch.evaluation.data.path == "data/test.db"
    train, test = agent.data, orch.evaluation.data
    for key in ("table", "features", "blob_column", "blob_dtype", "blob_shape", "label"):
        assert getattr(train, key) == getattr(test, key), key
    assert train.feature_scale == test.feature_scale
    assert orch.rounds.min_devices == orch.rounds.min_reports == 3
    assert orch.rounds.rounds == spec["rounds"]
    for item in (s for device in spec.get("agents", {}).get("set", []) for s in device):
        load_settings(AgentConfig, folder / "agent.toml", overrides=[item], env={})
    for path in ("model.py", "prepare.py", "README.md"):
        assert (folder / path).is_file(), path
