"""A restarted orchestrator learns its devices on a broker that replays retained messages
only to exact-topic subscriptions (RabbitMQ 3.x's MQTT plugin), not to ``agent/+/status``."""

from __future__ import annotations

from pathlib import Path

from support.memory_device import FakeClock, MemoryDevice, settle, start_orchestrator
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RoundSettings
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.transport import InMemoryBroker


def _restart(tmp_path: Path, database: str, broker: InMemoryBroker, devices: list[MemoryDevice]):
    cfg = OrchestratorConfig(
        database=database,
        rounds=RoundSettings(rounds=1, min_devices=len(devices), deadline_seconds=60.0),
    )
    root = tmp_path / "bundle"
    bundle = load_bundle(root if root.exists() else write_toy_bundle(root))
    return start_orchestrator(Orchestrator, cfg, broker, bundle, FakeClock(), devices)


def test_a_restarted_orchestrator_fetches_known_devices_statuses_by_exact_topic(tmp_path):
    broker = InMemoryBroker(wildcard_retained=False)
    db = str(tmp_path / "o.db")
    first = _restart(tmp_path, db, broker, [])  # subscribed before the devices came online
    devices = [MemoryDevice(broker, f"dev-{i}") for i in range(2)]
    settle(first, devices)
    assert sorted(first.registry.devices) == ["dev-0", "dev-1"]
    first.transport.stop()
    first.store.close()
    # idle devices publish nothing new: only their retained statuses tell a new orchestrator
    again = _restart(tmp_path, db, broker, devices)
    assert sorted(again.registry.devices) == ["dev-0", "dev-1"]
    assert again.current is not None and sorted(again.current.participants) == ["dev-0", "dev-1"]


def test_the_model_broker_replays_nothing_to_a_wildcard(tmp_path):
    """The limit that stays (docs/brokers.md): a new database knows no device to ask for."""
    broker = InMemoryBroker(wildcard_retained=False)
    devices = [MemoryDevice(broker, f"dev-{i}") for i in range(2)]
    orch = _restart(tmp_path, str(tmp_path / "new.db"), broker, devices)
    assert orch.registry.devices == {} and orch.current is None
    statuses = [t for t in broker.retained if t.endswith("/status") and "/agent/" in t]
    assert len(statuses) == 2  # the statuses are there, just not replayed to the wildcard
