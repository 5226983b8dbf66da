"""A real Mosquitto 2.x broker for tests: own free loopback port, own files, stopped by PID.

The broker itself is ``fedge.demo.mosquitto.LocalMosquitto`` (the examples use it too); this
module turns its errors into test failures. Never skips: without Mosquitto the test fails with
"install mosquitto", so CI cannot pass without the real broker.
"""

from __future__ import annotations

import pytest

from fedge.demo import mosquitto as _local
from fedge.demo.mosquitto import INSTALL_HINT, LocalMosquitto, free_port, make_users
from fedge.protocol.errors import FedgeError

__all__ = ["INSTALL_HINT", "MosquittoBroker", "find_mosquitto", "free_port", "make_users"]


def find_mosquitto() -> str:
    """Return the mosquitto binary (PATH, then /usr/sbin); fail the test if there is none."""
    try:
        return _local.find_mosquitto()
    except FedgeError as exc:
        pytest.fail(str(exc), pytrace=False)


class MosquittoBroker(LocalMosquitto):
    """``LocalMosquitto`` whose startup failures fail the test (with the broker's log tail)."""

    mqtt_protocol = "5"  # what fedge processes speak to it (RabbitMQBroker: "3.1.1")

    def start(self) -> MosquittoBroker:
        try:
            super().start()
        except FedgeError as exc:
            pytest.fail(str(exc), pytrace=False)
        return self

    def __enter__(self) -> MosquittoBroker:
        return self.start()
