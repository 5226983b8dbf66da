"""What every locally started MQTT broker process offers: its address and its state.

``LocalMosquitto`` (fedge.demo.mosquitto) and the tests' ``RabbitMQBroker``
(tests/support/rabbitmq.py) share this, so a test or bench written against one broker runs
against the other unchanged (docs/brokers.md). Subclasses set ``host``, ``_port``,
``federation`` and ``_proc`` and implement ``start`` and ``stop``.
"""

from __future__ import annotations

import subprocess
from typing import TypeVar

from fedge.orchestrator.broker_files import federation_prefix

_B = TypeVar("_B", bound="BrokerProcess")  # typing.Self is 3.11+; fedge supports 3.10


class BrokerProcess:
    """A broker process listening for plain MQTT on ``host:port``."""

    host: str
    federation: str
    _port: int
    _proc: subprocess.Popen[bytes] | None

    @property
    def port(self) -> int:
        """The plain MQTT port on ``host``."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``."""
        return f"mqtt://{self.host}:{self._port}"

    @property
    def prefix(self) -> str:
        """The federation's topic prefix, e.g. ``fedge/v1/demo``."""
        return federation_prefix(self.federation)

    @property
    def pid(self) -> int | None:
        """PID of the running broker, or None."""
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self: _B) -> _B:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def __enter__(self: _B) -> _B:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
