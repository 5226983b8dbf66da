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


def test_a_rounds_idle_training_flips_are_written_at_most_once_a_second(tmp_path):
    now = [100.0]
    store = Store(tmp_path / "o.db")
    reg = DeviceRegistry(store, clock=lambda: now[0])
    writes: list[str] = []
    upsert = store.upsert_devices

    def recording(rows):
        writes.extend(row[1] for row in rows)
        upsert(rows)

    store.upsert_devices = recording  # type: ignore[method-assign]

    def say(state: str, **fields) -> None:
        reg.on_status("dev-0", Status(agent="dev-0", state=state, num_samples=5, **fields))

    say("idle")
    say("training")  # a round starts 0.0 s later: held back, but selection sees it
    assert writes == ["idle"] and reg.devices["dev-0"].state == "training"
    say("idle")
    reg.flush()  # not a second yet
    assert writes == ["idle"]
    now[0] += 1.0
    reg.flush()  # the latest state is written
    assert writes == ["idle", "idle"]
    assert store.devices()[0]["state"] == "idle"
    say("training")
    say("ineligible", eligible=False, reason="on battery")  # more than a flip: written at once
    assert writes == ["idle", "idle", "ineligible"]
    say("idle", eligible=False, reason="on battery")
    reg.flush(everything=True)  # on stop: nothing held back is lost
    assert writes[-1] == "idle" and not reg._unwritten
