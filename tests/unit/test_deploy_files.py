"""deploy/: the units, compose file and Pi script are consistent with what fedge generates."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import tomllib
import yaml

from fedge.provision.broker_init import init_broker

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep systemd's CamelCase keys
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_agent_unit_is_low_priority_and_hardened() -> None:
    s = _unit("fedge-agent.service")["Service"]
    assert s["Nice"] == "19" and s["IOSchedulingClass"] == "idle"
    assert s["CPUQuota"].endswith("%") and int(s["CPUQuota"][:-1]) <= 100
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict"
    assert s["User"] == "fedge" and s["ReadWritePaths"] == "/var/lib/fedge"
    assert s["ExecStart"].endswith("fedge agent --config /etc/fedge/agent.toml")


def test_orchestrator_unit_reads_the_generated_config() -> None:
    s = _unit("fedge-orchestrator.service")["Service"]
    assert "/etc/fedge-broker/orchestrator/orchestrator.toml" in s["ExecStart"]
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    assert s["ReadWritePaths"] == "/etc/fedge-broker/orchestrator"


def test_generated_files_reference_only_paths_inside_the_broker_dir(tmp_path: Path) -> None:
    # compose.yaml mounts the broker directory at the same path: that is enough only if
    # every path in the generated configs lies inside it.
    d = init_broker(tmp_path / "b", hosts=["broker.lan"], run_as_user="nobody")
    conf_paths = re.findall(r"^\S+ (/\S+)", d.mosquitto_conf.read_text(), flags=re.M)
    orch = tomllib.loads(d.orchestrator_toml.read_text())
    paths = conf_paths + [orch["bundle"], orch["database"], orch["mqtt"]["ca_file"]]
    paths += orch["trusted_keys"]
    assert len(paths) >= 10
    for p in paths:
        assert Path(p).is_relative_to(d.root), p
    assert orch["mqtt"]["url"] == "mqtts://localhost:8883"  # valid inside network_mode service:


def test_compose_mounts_the_generated_layout(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    mq, orch = compose["services"]["mosquitto"], compose["services"]["orchestrator"]
    assert mq["image"] == "eclipse-mosquitto:2" and mq["ports"] == ["8883:8883"]
    root = "${FEDGE_BROKER_DIR:-/etc/fedge-broker}"
    for service in (mq, orch):
        assert service["volumes"] == [f"{root}:{root}"]
    d = init_broker(tmp_path / "b", hosts=["x"], run_as_user="nobody")
    assert mq["command"][-1] == f"{root}/{d.mosquitto_conf.relative_to(d.root)}"
    assert orch["command"][1] == f"{root}/{d.orchestrator_toml.relative_to(d.root)}"
    assert orch["network_mode"] == "service:mosquitto"
    assert (DEPLOY / "compose" / orch["build"]["dockerfile"].split("compose/")[-1]).is_file()


def test_pi_install_script_parses() -> None:
    script = DEPLOY / "pi" / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert "[agent]" in text and "fedge-agent.service" in text and 'bin/fedge" doctor' in text
