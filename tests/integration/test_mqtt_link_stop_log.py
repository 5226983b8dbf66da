"""MqttLink on a real Mosquitto: a deliberate stop is logged as one, not as a lost connection."""

from __future__ import annotations

import logging
import time

import pytest

from fedge.protocol.mqtt_link import MqttLink, MqttSettings

pytestmark = pytest.mark.integration


def _link(broker) -> MqttLink:
    settings = MqttSettings(url=broker.url, username="dev-0", password=broker.users["dev-0"])
    return MqttLink(settings, client_id="dev-0")


def _wait_for(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return True
        time.sleep(0.05)
    return False


def test_stop_logs_stopping_and_not_will_reconnect(mosquitto, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fedge.protocol.mqtt_link")
    link = _link(mosquitto)
    link.start()
    assert link.wait_connected(10)
    link.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert "disconnected from broker (stopping)" in messages, messages
    assert not any("will reconnect" in m for m in messages), messages
    assert not link.connected


def test_a_lost_broker_still_says_will_reconnect(mosquitto, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fedge.protocol.mqtt_link")
    link = _link(mosquitto)
    link.start()
    try:
        assert link.wait_connected(10)
        mosquitto.stop()  # not our decision: the link keeps trying
        assert _wait_for(caplog, "will reconnect"), [r.getMessage() for r in caplog.records]
        assert not any("(stopping)" in r.getMessage() for r in caplog.records)
    finally:
        link.stop()
