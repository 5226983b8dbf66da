import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.agent.config import AgentConfig
from fedge.orchestrator.config import OrchestratorConfig
from fedge.protocol.errors import ConfigError
from fedge.protocol.settings import check_settings, load_settings


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
    with pytest.raises(ConfigError, match="rounds.rounds must be an integer, got str"):
        load_settings(OrchestratorConfig, cfg, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(OrchestratorConfig, None, env={"FEDGE_ROUNDS_ROUNDS": "x"})
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.write_text("[[[")
        load_settings(OrchestratorConfig, cfg, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(OrchestratorConfig, tmp_path / "missing.toml", env={})


def test_one_unbracketed_item_for_a_list_says_how_to_write_it(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[data]\npath = "x.db"\nfeatures = "t*"\n')
    with pytest.raises(
        ConfigError, match="data.features must be a list, got the string 't\\*': write \\['t\\*'\\]"
    ):
        load_settings(AgentConfig, cfg, env={})


# ---- ranges and allowed values: refused at load, one line naming key, value and limits ----


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[rounds]\nbatch_size = 0", r"^rounds.batch_size must be >= 1, got 0$"),
        ("[rounds]\nbatch_size = 100000", "rounds.batch_size must be <= 65536, got 100000"),
        ("[rounds]\nlocal_epochs = 0", "rounds.local_epochs must be >= 1, got 0"),
        ("[rounds]\nrounds = 0", "rounds.rounds must be >= 1, got 0"),
        ("[rounds]\nmin_devices = 0", "rounds.min_devices must be >= 1"),
        ("[rounds]\nmin_reports = 0", "rounds.min_reports must be >= 1"),
        ("[rounds]\ndeadline_seconds = 0", "rounds.deadline_seconds must be > 0"),
        ("[rounds]\nretry_seconds = -1", "rounds.retry_seconds must be >= 0"),
        ("[rounds]\nover_selection = 0.5", "rounds.over_selection must be >= 1"),
        ("[rounds]\ntopk_fraction = 1.5", "rounds.topk_fraction must be <= 1"),
        ('[rounds]\ncompression = "zstd"', "rounds.compression must be one of '', 'int8', 'topk'"),
        ('[rounds]\ncompression = "topk"', r"rounds.topk_fraction must be in \(0, 1\]"),
        ("[rounds]\nmax_samples = -1", "rounds.max_samples must be >= 0"),
        ("[rounds]\nseed = -1", "rounds.seed must be >= 0"),
        ("[rounds]\nevaluate_every = -2", "rounds.evaluate_every must be >= 0"),
        ("[rounds]\nnoise_multiplier = 1.0", "rounds.noise_multiplier needs rounds.clip_norm"),
        (
            "[rounds]\ndevices_per_round = 2\nmin_reports = 3",
            r"rounds.min_reports \(3\) must be <= rounds.devices_per_round \(2\)",
        ),
        ('strategy = "fedsgd"', "strategy must be one of 'fedavg', "),
        ("[strategy_options]\ntrim_fraction = 0.5", "strategy_options.trim_fraction must be < 0.5"),
        ("[strategy_options]\ntau = 0", "strategy_options.tau must be > 0"),
        ("[strategy_options]\nbeta1 = 1.0", "strategy_options.beta1 must be < 1"),
        ("[metrics]\nport = 70000", "metrics.port must be <= 65535, got 70000"),
        ('[mqtt]\nurl = "http://x"', "mqtt.url must be mqtt://host:port or mqtts://host:port"),
        ('[mqtt]\nprotocol = "4"', "mqtt.protocol must be one of '5', '3.1.1'"),
        ("[mqtt]\nkeepalive = 0", "mqtt.keepalive must be >= 1"),
        ("[mqtt]\nmax_payload = 10", "mqtt.max_payload must be >= 1024"),
        ("[evaluation]\nenabled = true", "evaluation.data.path must name a SQLite file"),
        ('federation = "a/b"', "federation must be 1-64 letters"),
        ('[evaluation.data]\nblob_dtype = "float16"', "evaluation.data.blob_dtype must be one of"),
        ("[rounds]\nbatch_size = 8.0", "rounds.batch_size must be an integer, got float"),
        ("[rounds]\nkeep_deltas = 1", "rounds.keep_deltas must be true or false, got int"),
        ('[rounds]\ntarget_agents = ["ok", 3]', r"rounds.target_agents\[1\] must be a string"),
    ],
)
def test_orchestrator_config_out_of_range_is_refused(tmp_path, toml, fragment):
    cfg = tmp_path / "o.toml"
    cfg.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings(OrchestratorConfig, cfg, env={})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ('backend = "cuda"', "backend must be one of 'auto', 'ort-training', 'ort-portable'"),
        ("threads = 0", "threads must be >= 1"),
        ("validation_fraction = 1.0", "validation_fraction must be < 1"),
        ("max_cpu_percent = 0", "max_cpu_percent must be >= 1"),
        ("offer_retry_seconds = 0", "offer_retry_seconds must be > 0"),
        ('id = "dev 1"', "id must be 1-64 letters"),
        ("nice = 40", "nice must be <= 19"),
        ("[eligibility]\nmin_battery_percent = 150", "eligibility.min_battery_percent must be <="),
        ('[eligibility]\nwindows = ["22:00-25:00"]', r"eligibility.windows\[0\] must be HH:MM"),
        ("[eligibility]\ncheck_seconds = 0", "eligibility.check_seconds must be > 0"),
        ("[data]\nblob_shape = [28, 0]", r"data.blob_shape\[1\] must be >= 1"),
        ("[data]\nfeature_scale = nan", "data.feature_scale must be a finite number"),
        ("[mqtt]\nsession_expiry = -1", "mqtt.session_expiry must be >= 0"),
    ],
)
def test_agent_config_out_of_range_is_refused(tmp_path, toml, fragment):
    cfg = tmp_path / "a.toml"
    cfg.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=fragment):
        load_settings(AgentConfig, cfg, env={})


def test_env_and_set_overrides_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match="rounds.batch_size must be >= 1, got 0"):
        load_settings(OrchestratorConfig, None, env={"FEDGE_ROUNDS_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="threads must be >= 1, got -3"):
        load_settings(AgentConfig, None, env={}, overrides=["threads=-3"])
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(AgentConfig, None, env={}, overrides=["data.blob_shape={}"])


def test_defaults_and_limits_are_accepted(tmp_path):
    load_settings(OrchestratorConfig, None, env={})
    load_settings(AgentConfig, None, env={})
    cfg = tmp_path / "o.toml"
    cfg.write_text(
        'strategy = "krum"\n[rounds]\nbatch_size = 65536\ndeadline_seconds = 5\n'
        'compression = "topk"\ntopk_fraction = 1\nclip_norm = 1\nnoise_multiplier = 0.5\n'
        "devices_per_round = 3\nmin_reports = 3\nover_selection = 1.5\n"
        '[mqtt]\nurl = "mqtts://[::1]:8883"\nprotocol = "3.1.1"\n'
        '[evaluation]\nenabled = true\n[evaluation.data]\npath = "test.db"\n'
    )
    agent = tmp_path / "a.toml"
    agent.write_text('[eligibility]\nwindows = ["22:00-06:00", "12:00-24:00", "6:30-7:00"]\n')
    load_settings(AgentConfig, agent, env={})
    s = load_settings(OrchestratorConfig, cfg, env={})
    assert s.rounds.deadline_seconds == 5.0 and isinstance(s.rounds.deadline_seconds, float)
    assert isinstance(s.rounds.topk_fraction, float) and s.strategy == "krum"


def test_strategy_and_backend_names_match_their_registries():
    from fedge.agent.backends import create_backend
    from fedge.agent.config import BACKENDS
    from fedge.orchestrator.strategies import STRATEGIES

    cfg = OrchestratorConfig()
    for name in STRATEGIES:
        cfg.strategy = name
        check_settings(cfg)
    with pytest.raises(ConfigError, match="unknown backend") as info:
        create_backend("cuda")  # its message lists the names it knows (without importing ORT)
    assert all(name in str(info.value) for name in BACKENDS)


def test_check_settings_for_objects_built_in_code():
    from fedge.orchestrator.config import RoundSettings

    check_settings(OrchestratorConfig())
    with pytest.raises(ConfigError, match="rounds.batch_size must be >= 1, got 0"):
        check_settings(OrchestratorConfig(rounds=RoundSettings(batch_size=0)))


@pytest.mark.parametrize(
    "command, toml, line",
    [
        (
            "orchestrator",
            "[rounds]\nbatch_size = 0\n",
            "Error: rounds.batch_size must be >= 1, got 0",
        ),
        (
            "orchestrator",
            '[rounds]\ncompression = "zstd"\n',
            "Error: rounds.compression must be one of '', 'int8', 'topk'; got 'zstd'",
        ),
        (
            "agent",
            'backend = "cuda"\n',
            "Error: backend must be one of 'auto', 'ort-training', 'ort-portable'; got 'cuda'",
        ),
    ],
)
def test_cli_refuses_a_bad_config_in_one_line(tmp_path, command, toml, line):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    proc = subprocess.run(
        [sys.executable, "-m", "fedge", command, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert (proc.stdout + proc.stderr).strip() == line


# ---- fuzz: any value for any key loads, or is one ConfigError line ----


def _leaf_keys(obj, prefix=""):
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_leaf_keys(value, f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # nan, inf, -inf are TOML floats too
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for what json escapes
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml(dotted: str, value) -> str:
    *tables, key = dotted.split(".")
    head = f"[{'.'.join(tables)}]\n" if tables else ""
    return f"{head}{key} = {_toml_value(value)}\n"


CONFIGS = [OrchestratorConfig, AgentConfig]
KEYS = [(cls, key) for cls in CONFIGS for key in _leaf_keys(cls())]
toml_values = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.text(max_size=30),
    st.lists(st.integers() | st.text(max_size=5), max_size=4),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(target=st.sampled_from(KEYS), value=toml_values)
def test_any_value_for_any_key_loads_or_is_one_config_error(tmp_path_factory, target, value):
    cls, key = target
    path = tmp_path_factory.mktemp("fuzz") / "c.toml"
    path.write_text(_toml(key, value))
    try:
        load_settings(cls, path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc).strip(), str(exc)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(target=st.sampled_from(KEYS), text=st.text(max_size=40))
def test_any_environment_text_loads_or_is_a_config_error(target, text):
    cls, key = target
    env = {"FEDGE_" + key.replace(".", "_").upper(): text}
    try:
        load_settings(cls, None, env=env)
    except ConfigError:
        pass
