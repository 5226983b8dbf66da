"""The zero-setup demo broker: amqtt, embedded, on loopback, MQTT 3.1.1 only.

Demo only: amqtt has a known ACL leak on reconnect and no persistence. Real deployments use
Mosquitto (see deploy/).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

from fedge.protocol.errors import FedgeError

log = logging.getLogger(__name__)


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """amqtt running in a background thread with its own event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_loopback_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise FedgeError(f"embedded broker did not start on port {self.port}: {self._error}")

    def _serve(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 200}
            },
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

        async def boot() -> None:
            broker = Broker(config, loop=loop)
            self._broker = broker
            await broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def stop(self) -> None:
        if not self._loop or not self._broker:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            fut.result(timeout=10)
        except Exception as exc:  # shutting down anyway
            log.debug("broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=5)
