"""`fedge doctor` next to a running agent: it must not kick it, wipe its session, or hide that
another process uses the device's credentials. Real Mosquitto, real agent processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.fleet import Fleet, agent_config

from fedge.demo.run import write_toml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _doctor(config: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fedge", "doctor", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def _wait(what: str, cond, timeout: float = 30.0, detail=lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{detail()}")


def _session_client(broker, user: str) -> tuple[mqtt.Client, dict[str, Any]]:
    """A persistent MQTT 5 session as the agent keeps it (no clean start, 1 h expiry)."""
    seen: dict[str, Any] = {"messages": [], "connack": threading.Event()}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.users[user])

    def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        seen["session_present"] = flags.session_present
        seen["connack"].set()

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: seen["messages"].append(msg.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert seen["connack"].wait(5)
    return client, seen


def test_doctor_login_keeps_the_devices_session(mosquitto, tmp_path: Path) -> None:
    p = mosquitto.prefix
    cfg = agent_config("dev-0", mosquitto, tmp_path / "data.db", tmp_path / "state")
    config = write_toml(tmp_path / "agent.toml", cfg)
    device, _ = _session_client(mosquitto, "dev-0")
    info = device.subscribe(f"{p}/agent/dev-0/cmd", qos=1)
    time.sleep(0.3)
    device.disconnect()
    device.loop_stop()
    assert info[0] == mqtt.MQTT_ERR_SUCCESS

    out = _doctor(config, "--login")
    assert "logged in as dev-0" in out, out

    orch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fedge-orchestrator",
                       protocol=mqtt.MQTTv5)  # fmt: skip
    orch.username_pw_set("fedge-orchestrator", mosquitto.users["fedge-orchestrator"])
    orch.connect(mosquitto.host, mosquitto.port)
    orch.loop_start()
    orch.publish(f"{p}/agent/dev-0/cmd", b"queued-while-offline", qos=1).wait_for_publish(5)
    orch.disconnect()
    orch.loop_stop()

    device, seen = _session_client(mosquitto, "dev-0")
    try:
        # Before: the doctor logged in with a clean MQTT 3.1.1 session and wiped the device's
        # subscriptions and the commands queued for it.
        assert seen["session_present"], "the doctor's login wiped the device's session"
        _wait("the queued command", lambda: seen["messages"] == [b"queued-while-offline"])
    finally:
        device.disconnect()
        device.loop_stop()


def test_doctor_does_not_kick_a_running_agent_and_shows_a_shared_login(
    mosquitto, digits_federation, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path)
    data = digits_federation.device_paths[0]
    configs = []
    for i in range(2):  # two machines' agents with one device's credentials
        cfg = agent_config("dev-0", mosquitto, data, tmp_path / f"state-{i}")
        configs.append(write_toml(tmp_path / f"agent-{i}.toml", cfg))
    statuses: list[dict] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fedge-orchestrator",
                          protocol=mqtt.MQTTv5)  # fmt: skip
    watcher.username_pw_set("fedge-orchestrator", mosquitto.users["fedge-orchestrator"])
    watcher.on_message = lambda _c, _u, msg: statuses.append(json.loads(msg.payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.loop_start()
    watcher.subscribe(f"{mosquitto.prefix}/agent/dev-0/status", qos=1)
    try:
        fleet.start("agent-0", "agent", cfg | {"state_dir": str(tmp_path / "state-0")})
        _wait("agent-0 online", lambda: any(s["state"] != "offline" for s in statuses),
              detail=fleet.all_logs)  # fmt: skip
        before = mosquitto.log_tail(1000).count("already connected")
        out = _doctor(configs[0], "--login")
        assert "not logging in: the agent of device dev-0 runs on this machine" in out, out
        time.sleep(1.0)
        # Before: the doctor's login took the session over ("already connected, closing old")
        assert mosquitto.log_tail(1000).count("already connected") == before, out

        fleet.start("agent-1", "agent", cfg | {"state_dir": str(tmp_path / "state-1")})
        wanted = "another process is using device dev-0's credentials"
        _wait("the takeover in the retained status",
              lambda: any(wanted in s.get("reason", "") for s in statuses),
              detail=fleet.all_logs)  # fmt: skip

        def doctor_shows_it() -> str:
            text = _doctor(configs[0])
            return text if wanted in text else ""

        out = _wait("the doctor to show the takeover", doctor_shows_it, 40, fleet.all_logs)
        assert "agent link" in out
        assert wanted in fleet.logs("agent-0") + fleet.logs("agent-1")
    finally:
        fleet.stop_all()
        watcher.disconnect()
        watcher.loop_stop()
