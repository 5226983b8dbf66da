import pytest

from fedge.agent.config import AgentConfig
from fedge.orchestrator.config import OrchestratorConfig
from fedge.protocol.errors import ConfigError
from fedge.protocol.settings import load_settings


def test_file_then_env_then_set_override(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'id = "dev-7"\nthreads = 2\n[mqtt]\nurl = "mqtt://a:1"\n[data]\npath = "x.db"\nfeatures = ["f*"]\n'
    )
    env = {"FEDGE_MQTT_URL": "mqtt://b:2", "FEDGE_THREADS": "3"}
    s = load_settings(
        AgentConfig, cfg, env=env, overrides=["mqtt.url=mqtt://c:3", "data.features=a,b"]
    )
    assert s.id == "dev-7" and s.threads == 3
    assert s.mqtt.url == "mqtt://c:3"
    assert s.data.features == ["a", "b"] and s.data.path == "x.db"


def test_unknown_keys_and_bad_types_are_errors(tmp_path):
    cfg = tmp_path / "o.toml"
    cfg.write_text("[rounds]\nroundz = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'rounds.roundz'"):
        load_settings(OrchestratorConfig, cfg, env={})
    cfg.write_text('[rounds]\nrounds = "ten"\n')
    with pytest.raises(ConfigError, match="must be int"):
        load_settings(OrchestratorConfig, cfg, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(OrchestratorConfig, None, env={"FEDGE_ROUNDS_ROUNDS": "x"})
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.write_text("[[[")
        load_settings(OrchestratorConfig, cfg, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(OrchestratorConfig, tmp_path / "missing.toml", env={})
