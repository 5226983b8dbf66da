"""An asynchronous federation on an in-memory transport for unit tests: a real
BufferedOrchestrator, SQLite Store and toy bundle, scripted devices and a fake clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.orchestrator.buffered import BufferedOrchestrator
from fedge.orchestrator.buffered_config import BufferedSettings
from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
from fedge.protocol.bundle import load_bundle
from fedge.protocol.tensors import decode_tensors
from fedge.protocol.transport import InMemoryBroker

from .async_memory_device import AsyncMemoryDevice
from .memory_device import FakeClock, settle, start_orchestrator
from .toy_bundle import write_toy_bundle


class AsyncFederation:
    def __init__(
        self,
        tmp_path: Path,
        devices: int,
        *,
        versions: int = 3,
        rounds: dict | None = None,
        **buffered: object,
    ):
        self.broker = InMemoryBroker()
        self.clock = FakeClock()
        self.bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
        opts = {"buffer_size": 2, "max_concurrency": 10, "staleness": "constant"} | buffered
        self.cfg = OrchestratorConfig(
            database=str(tmp_path / "o.db"),
            mode="async",
            rounds=RoundSettings(rounds=versions, keep_deltas=True, **(rounds or {})),
            # adaptive clipping off: the tests check the plain arithmetic of the buffer
            robust=RobustSettings(norm_multiple=0.0),
            buffered=BufferedSettings(**opts),  # type: ignore[arg-type]
        )
        self.devices = {
            f"dev-{i}": AsyncMemoryDevice(self.broker, f"dev-{i}") for i in range(devices)
        }
        self.orch = self.new_orchestrator()

    def new_orchestrator(self) -> BufferedOrchestrator:
        self.orch = start_orchestrator(
            BufferedOrchestrator,
            self.cfg,
            self.broker,
            self.bundle,
            self.clock,
            self.devices.values(),
        )
        return self.orch

    def settle(self) -> None:
        settle(self.orch, self.devices.values())

    def dev(self, i: int) -> AsyncMemoryDevice:
        return self.devices[f"dev-{i}"]

    def ask(self, i: int) -> AsyncMemoryDevice:
        d = self.dev(i)
        d.ask()
        self.settle()
        return d

    def train(self, d: AsyncMemoryDevice, value: float) -> None:
        d.fetch_params()
        self.settle()
        assert d.params is not None, f"{d.id} could not fetch the parameters"
        d.offer(delta(d.params, value))
        self.settle()

    def version(self, v: int) -> dict[str, np.ndarray]:
        return decode_tensors(self.orch.store.version_params(self.orch.run_id, v))

    def latest(self) -> int:
        return self.orch.store.latest_version(self.orch.run_id)[0]


def delta(template: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {n: np.full(a.shape, value, a.dtype) for n, a in template.items()}
