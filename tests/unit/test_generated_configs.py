"""The configs `fedge broker init` and `fedge device add` write: every key that matters, with a
comment, and they load with the real config loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from fedge.agent.config import AgentConfig
from fedge.orchestrator.config import OrchestratorConfig
from fedge.protocol.settings import load_settings
from fedge.provision.broker_init import init_broker
from fedge.provision.devices import add_device


@pytest.fixture
def broker_dir(tmp_path: Path):
    return init_broker(tmp_path / "broker", hosts=["broker.lan"], run_as_user="nobody")


def _commented(text: str, key: str) -> bool:
    """Whether the line setting ``key`` has a comment line right above it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip("# ").startswith(f"{key} = "):
            return i > 0 and lines[i - 1].startswith("#")
    raise AssertionError(f"{key} not in the file")


ROUND_KEYS = [
    "rounds",
    "min_devices",
    "devices_per_round",
    "deadline_seconds",
    "local_epochs",
    "batch_size",
    "learning_rate",
    "optimizer",
    "weight_decay",
]


def test_orchestrator_toml_shows_rounds_and_evaluation(broker_dir) -> None:
    text = broker_dir.orchestrator_toml.read_text()
    data = tomllib.loads(text)
    assert set(ROUND_KEYS) <= set(data["rounds"]), data.get("rounds")
    assert data["evaluation"]["enabled"] is False
    for key in ROUND_KEYS:
        assert _commented(text, key), key
    # why min_devices matters: a fleet started together otherwise trains in twos
    above = text[: text.index("min_devices = ")].rsplit("[rounds]", 1)[1]
    assert "fleet size" in above
    cfg = load_settings(OrchestratorConfig, broker_dir.orchestrator_toml)
    assert cfg.rounds == OrchestratorConfig().rounds  # the written values are the defaults
    assert cfg.evaluation.enabled is False and cfg.evaluation.data.path == ""


def test_agent_toml_shows_data_and_eligibility(broker_dir) -> None:
    files = add_device(broker_dir.root, "pi-1", data_path="/d.db", data_table="readings")
    text = files.agent_toml.read_text()
    data = tomllib.loads(text)
    assert data["validation_fraction"] == 0.1
    assert {"path", "table", "features", "label"} <= set(data["data"])
    assert {"max_load_per_cpu", "idle_minutes", "windows", "max_minutes_per_day"} <= set(
        data["eligibility"]
    )
    for key in ("validation_fraction", "table", "features", "label", "idle_minutes", "where"):
        assert _commented(text, key), key
    assert "a tenth of the rows" in text  # the default hold-back is said, not silent
    cfg = load_settings(AgentConfig, files.agent_toml)
    assert (cfg.data.path, cfg.data.table, cfg.data.features) == ("/d.db", "readings", ["f*"])
    assert cfg.validation_fraction == 0.1
    assert cfg.eligibility == AgentConfig().eligibility
    assert cfg.data.where == "" and cfg.data.feature_scale == 1.0  # examples stay commented out
