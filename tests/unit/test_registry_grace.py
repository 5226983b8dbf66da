import time

from fedge.orchestrator.registry import DeviceRegistry
from fedge.orchestrator.store import Store
from fedge.protocol.messages import Status


def test_offline_counts_as_dropped_only_after_the_grace(tmp_path):
    reg = DeviceRegistry(Store(tmp_path / "o.db"))
    reg.on_status("dev-0", Status(agent="dev-0", state="online"))
    assert not reg.is_offline("dev-0", grace=0.0)
    reg.on_status("dev-0", Status(agent="dev-0", state="offline"))
    assert reg.is_offline("dev-0", grace=0.0)
    assert not reg.is_offline("dev-0", grace=5.0)  # a blip: maybe a broker restart
    reg.offline_since["dev-0"] -= 6.0
    assert reg.is_offline("dev-0", grace=5.0)
    reg.on_status("dev-0", Status(agent="dev-0", state="idle", ts=time.time()))
    assert not reg.is_offline("dev-0", grace=0.0) and "dev-0" not in reg.offline_since
