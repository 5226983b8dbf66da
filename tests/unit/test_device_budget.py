"""Per-device budgets: the token buckets, the record and log budgets, the bounded table; and
the orchestrator on an in-memory broker under a flood from one device (no sleeps)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support.memory_device import FakeClock, MemoryDevice, settle, start_orchestrator
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RoundSettings
from fedge.orchestrator.device_budget import DeviceBudgets, DeviceLimits, TokenBucket
from fedge.orchestrator.metrics_exporter import Metrics
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.chunks import blob_ref, encode_frame
from fedge.protocol.errors import ConfigError
from fedge.protocol.messages import FetchRequest, RoundAbort, UpdateOffer, new_msg_id
from fedge.protocol.settings import load_settings
from fedge.protocol.tensors import encode_tensors
from fedge.protocol.transport import InMemoryBroker


# ---- the budget module alone ----
def test_token_bucket_allows_a_burst_then_the_rate():
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate=2.0, burst=5, now=clock())
    assert sum(bucket.take(clock()) for _ in range(100)) == 5
    clock.advance(1.0)
    assert sum(bucket.take(clock()) for _ in range(100)) == 2
    clock.advance(3600)
    assert sum(bucket.take(clock()) for _ in range(100)) == 5  # never more than the burst


def test_excess_messages_are_dropped_and_counted_by_reason_in_prometheus():
    clock = FakeClock(0.0)
    metrics = Metrics()
    budgets = DeviceBudgets(DeviceLimits(message_burst=10), metrics=metrics, clock=clock)
    admitted = sum(budgets.admit("dev-3") for _ in range(10_000))
    budgets.drop("dev-3", "retained")
    assert admitted == 10
    assert budgets.dropped == {"rate_limit": 9_990, "retained": 1}
    text = metrics.render().decode()
    assert 'fedge_device_messages_dropped_total{reason="rate_limit"} 9990.0' in text
    assert 'fedge_device_messages_dropped_total{reason="retained"} 1.0' in text
    assert "dev-3" not in text  # labels are reasons, never device ids
    with pytest.raises(ValueError, match="unknown"):
        budgets.drop("dev-3", "because")


def test_refusals_cost_a_bounded_number_of_writes_and_none_for_another_run():
    budgets = DeviceBudgets(DeviceLimits(records_per_round=3), clock=FakeClock())
    assert not budgets.may_record("dev-3", "invented-run", "run-1", 4)
    assert [budgets.may_record("dev-3", "run-1", "run-1", 4) for _ in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert budgets.may_record("dev-4", "run-1", "run-1", 4)  # per device
    assert budgets.may_record("dev-3", "run-1", "run-1", 5)  # and per round (a new epoch)


def test_log_lines_are_limited_per_device_and_kind_with_one_summary_per_window(caplog):
    clock = FakeClock(0.0)
    limits = DeviceLimits(message_burst=100, log_lines=2)
    budgets = DeviceBudgets(limits, known=lambda _id: True, clock=clock)
    logged = [budgets.should_log("dev-3", "bad_message") for _ in range(50)]
    assert sum(logged) == 2 and budgets.should_log("dev-3", "late")  # another kind
    for _ in range(9_912):
        budgets.admit("dev-3")
    caplog.set_level(logging.WARNING, "fedge.orchestrator.device_budget")
    clock.advance(5)
    budgets.tick()
    assert not caplog.records  # not before the window is over
    clock.advance(5)
    budgets.tick()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("dev-3: 9,812 messages dropped in the last 10 s (rate limit)"), line
    assert "48 log lines suppressed (bad_message)" in line
    caplog.clear()
    clock.advance(10)
    budgets.tick()
    assert not caplog.records  # a quiet window says nothing
    assert budgets.should_log("dev-3", "bad_message")  # a new window, a new allowance


def test_the_table_is_bounded_by_known_devices_plus_an_lru_of_unknown_ids():
    known = {f"dev-{i}" for i in range(50)}
    budgets = DeviceBudgets(
        DeviceLimits(unknown_devices=100), known=known.__contains__, clock=FakeClock()
    )
    for i in range(100_000):
        budgets.admit(f"invented-{i}")
    for agent in known:
        budgets.admit(agent)
    assert len(budgets) == 150


def test_invented_ids_share_one_bucket_and_one_log_allowance():
    clock = FakeClock(0.0)
    limits = DeviceLimits(unknown_devices_per_second=10.0, log_lines=3)
    budgets = DeviceBudgets(limits, known=lambda a: a == "dev-0", clock=clock)
    assert sum(budgets.admit(f"ghost-{i}") for i in range(10_000)) == 100  # 10 s of the rate
    assert sum(budgets.should_log(f"ghost-{i}", "bad_message") for i in range(1000)) == 3
    assert budgets.admit("dev-0") and budgets.should_log("dev-0", "bad_message")  # unaffected


def test_limits_are_a_config_section_with_ranges(tmp_path: Path):
    toml = tmp_path / "o.toml"
    toml.write_text("[limits]\nmessages_per_second = 5.0\nmessage_burst = 40\n")
    cfg = load_settings(OrchestratorConfig, toml)
    assert (cfg.limits.messages_per_second, cfg.limits.message_burst) == (5.0, 40)
    with pytest.raises(ConfigError, match="limits.message_burst must be >= 1, got 0"):
        DeviceBudgets(DeviceLimits(message_burst=0))  # built in code: checked as well
    with pytest.raises(ConfigError, match="limits.records_per_round must be an integer"):
        DeviceBudgets(DeviceLimits(records_per_round=2.5))  # type: ignore[arg-type]
    toml.write_text("[limits]\nmessages_per_second = 1e9\n")
    with pytest.raises(ConfigError, match=r"limits.messages_per_second must be <= 100000"):
        load_settings(OrchestratorConfig, toml)


# ---- the orchestrator under a flood, on an in-memory broker ----
class Fleet:
    def __init__(self, tmp_path: Path, devices: int = 3, **rounds: object) -> None:
        self.broker = InMemoryBroker()
        self.clock = FakeClock()
        self.bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
        settings = {"rounds": 2, "min_devices": devices, "deadline_seconds": 60.0} | rounds
        self.cfg = OrchestratorConfig(
            database=str(tmp_path / "o.db"), rounds=RoundSettings(**settings)
        )
        self.devices = [MemoryDevice(self.broker, f"dev-{i}") for i in range(devices)]
        self.orch = self.start_orchestrator()

    def start_orchestrator(self) -> Orchestrator:
        self.orch = start_orchestrator(
            Orchestrator, self.cfg, self.broker, self.bundle, self.clock, self.devices
        )
        return self.orch

    def settle(self) -> None:
        settle(self.orch, self.devices)

    def train(self, device: MemoryDevice, value: float) -> None:
        device.fetch_params()
        self.settle()
        assert device.params is not None
        device.offer({n: np.full(a.shape, value, a.dtype) for n, a in device.params.items()})
        self.settle()

    def rows(self) -> int:
        return self.orch.store.db.execute("SELECT COUNT(*) FROM updates").fetchone()[0]


def test_late_offers_with_fresh_ids_cost_a_bounded_number_of_rows(tmp_path):
    """Before the budget every late offer with a new msg_id from a round's participant was an
    updates row, a rounds counter write and a warning line."""
    fleet = Fleet(tmp_path, 3, devices_per_round=2, over_selection=1.5)
    hostile, *honest = fleet.devices  # all three invited for a goal of two
    for i, d in enumerate(honest):
        fleet.train(d, 0.1 * (i + 1))
    r1 = fleet.orch.store.get_round(fleet.orch.run_id, 1)
    assert r1.state == "committed" and hostile.id in r1.participants
    assert fleet.orch.current is not None  # round 2 is open
    rows = fleet.rows()
    for _ in range(200):  # each with a new msg_id: a "fresh" late offer for round 1
        hostile.offer(b"x" * 100, round_no=1, model_version=0)
        fleet.clock.advance(0.2)  # within the rate limit and round 2: the record budget bites
        fleet.settle()
    assert fleet.rows() - rows <= fleet.cfg.limits.records_per_round
    late = fleet.orch.store.get_round(fleet.orch.run_id, 1).late
    assert late <= fleet.cfg.limits.records_per_round


def test_a_flood_of_every_kind_costs_no_rows_and_the_round_still_commits(tmp_path, caplog):
    fleet = Fleet(tmp_path, 3, rounds=1)
    orch, broker = fleet.orch, fleet.broker
    honest, hostile = fleet.devices[:2], fleet.devices[2]
    assert orch.current is not None and hostile.invited
    rows = fleet.rows()
    caplog.set_level(logging.INFO)
    caplog.clear()
    run_id, topics = orch.run_id, hostile.topics
    up = topics.agent_up_msg(hostile.id)
    blob = encode_tensors({"w": np.zeros(3, np.float32)})
    kinds = [
        lambda i: b'{"type": "update", "round": 1e400}',  # garbage numbers
        lambda i: b"{not json",
        lambda i: UpdateOffer(
            new_msg_id(), hostile.id, f"run-{i}", i, 0, blob_ref(blob), 10**6, {}
        ).encode(),  # invented runs and rounds
        lambda i: RoundAbort(new_msg_id(), hostile.id, run_id, 1 + i % 7, "x").encode(),
        lambda i: FetchRequest(new_msg_id(), hostile.id, "ab" * 32, [0] * 256).encode(),
    ]
    for i in range(10_000):
        broker.publish(hostile.id, up, kinds[i % len(kinds)](i), retain=i % 50 == 0)
        if i % 1000 == 0:
            frame = encode_frame(blob_ref(blob), 0, blob)  # a chunk nobody asked for
            broker.publish(hostile.id, topics.agent_up_chunk(hostile.id), frame, False)
    fleet.settle()
    for i, d in enumerate(honest):
        fleet.train(d, 0.1 * (i + 1))
    fleet.clock.advance(61)  # the hostile participant never answered: the deadline closes it
    fleet.settle()
    r = orch.store.get_round(run_id, 1)
    assert (r.state, r.reports) == ("committed", 2)
    accepted = orch.store.db.execute(
        "SELECT agent_id FROM updates WHERE status='accepted' ORDER BY agent_id"
    ).fetchall()
    assert [a for (a,) in accepted] == ["dev-0", "dev-1"]
    # the hostile device's one abort for the open round is its answer: at most one row
    assert fleet.rows() - rows <= 2 + 1
    runs = {x for (x,) in orch.store.db.execute("SELECT DISTINCT run_id FROM updates")}
    assert runs == {run_id}
    dropped = orch.budgets.dropped
    assert dropped["rate_limit"] > 9_000 and dropped["unsolicited_chunk"] == 10
    assert not [t for t in broker.retained if "/up/" in t]  # every retained up message cleared
    assert dropped["empty"] == 0  # our own clears echoed back are not blamed on the device
    hostile_lines = [r for r in caplog.records if hostile.id in r.getMessage()]
    assert len(hostile_lines) <= 20, [r.getMessage() for r in hostile_lines]


def test_retained_messages_on_up_topics_are_cleared_and_ignored_status_kept(tmp_path):
    fleet = Fleet(tmp_path, 2)
    orch, broker = fleet.orch, fleet.broker
    dev = fleet.devices[0]
    orch.transport.stop()  # the orchestrator is away; the device leaves a retained offer
    offer = UpdateOffer(
        new_msg_id(), dev.id, orch.run_id, 1, 0, blob_ref(b"x" * 10), 10, {"train_loss": 1.0}
    )
    up = dev.topics.agent_up_msg(dev.id)
    broker.publish(dev.id, up, offer.encode(), retain=True)
    assert up in broker.retained
    orch.store.close()
    orch = fleet.start_orchestrator()  # the broker replays it on subscribe
    assert up not in broker.retained  # cleared: an empty retained payload
    assert orch.budgets.dropped["retained"] == 1
    assert not orch.intake.uploads and not dev.acks  # ignored: never fetched, never acked
    status = dev.topics.agent_status(dev.id)
    assert status in broker.retained and dev.id in orch.registry.devices


def test_memory_stays_bounded_under_a_flood_of_invented_ids(tmp_path):
    """On a broker without ACL every message can name a new device: the tables stay bounded."""
    fleet = Fleet(tmp_path, 2)
    orch = fleet.orch
    for i in range(20_000):
        orch.handle(f"fedge/v1/demo/agent/ghost-{i}/up/msg", b'{"type": "abort"}')
    assert len(orch.budgets) <= 2 + orch.cfg.limits.unknown_devices
    assert len(orch.intake.uploads) == 0
    assert "ghost" not in orch.metrics.render().decode()


def test_messages_the_transport_dropped_at_its_full_queue_are_counted(tmp_path, caplog):
    fleet = Fleet(tmp_path, 2)
    orch = fleet.orch
    orch.transport.dropped = 7  # what MqttLink counts when its receive queue is full
    caplog.set_level(logging.WARNING, "fedge.orchestrator.device_budget")
    orch.tick()
    orch.tick()  # counted once, not every tick
    assert orch.budgets.dropped["queue_full"] == 7
    assert 'reason="queue_full"} 7.0' in orch.metrics.render().decode()
    fleet.clock.advance(orch.cfg.limits.summary_seconds)
    orch.tick()
    assert any(r.getMessage().startswith("all devices: 7 messages dropped") for r in caplog.records)


def test_a_status_flood_costs_bounded_writes_and_log_lines(tmp_path, caplog):
    from fedge.protocol.messages import Status

    fleet = Fleet(tmp_path, 2)
    orch, dev = fleet.orch, fleet.devices[0]
    topic = dev.topics.agent_status(dev.id)
    writes = orch.store.db.total_changes
    caplog.set_level(logging.INFO, "fedge.orchestrator.registry")
    caplog.clear()
    same = Status(agent=dev.id, state="idle", backend="fake", num_samples=dev.samples)
    for i in range(50):  # the same status again and again (within the budget)
        fleet.clock.advance(0.2)
        orch.handle(topic, replace(same, ts=float(i)).encode())
    assert orch.store.db.total_changes == writes  # nothing new to store
    for i in range(5_000):  # a state that flips with every message
        state = "training" if i % 2 else "idle"
        orch.handle(topic, replace(same, state=state).encode())
    assert orch.store.db.total_changes - writes <= orch.cfg.limits.message_burst
    lines = [r for r in caplog.records if dev.id in r.getMessage()]
    assert len(lines) <= orch.cfg.limits.log_lines


def test_fetches_cannot_buy_more_frames_than_the_devices_budget(tmp_path):
    """A fetch names up to 256 chunks: without a budget, a few small messages bought a frame
    per chunk each (the bundle again and again)."""
    fleet = Fleet(tmp_path, 2)
    fleet.orch.transport.stop()
    fleet.orch.store.close()
    fleet.cfg.limits.chunk_burst = 10
    orch = fleet.start_orchestrator()
    dev = fleet.devices[0]
    dev.frames_received = 0
    bundle = orch.bundle_ref
    for _ in range(50):
        dev.send(FetchRequest(new_msg_id(), dev.id, bundle.sha256, list(range(bundle.chunks))))
    fleet.settle()
    assert dev.frames_received == 10
    assert orch.budgets.frames_withheld == 50 * bundle.chunks - 10
    fleet.clock.advance(1.0)  # the bucket refills at chunks_per_second: a pull that asks again
    dev.send(FetchRequest(new_msg_id(), dev.id, bundle.sha256, [0]))
    fleet.settle()
    assert dev.frames_received == 11


def test_the_message_id_cache_is_bounded_whatever_the_ids_are():
    import tracemalloc

    from fedge.orchestrator.intake import RecentIds

    recent = RecentIds(size=1000)
    tracemalloc.start()
    try:
        for i in range(3000):
            assert recent.first_time(f"{i:08d}" + "x" * 60_000)  # huge ids, all new
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1000 * 400, held  # digests, not 60 MB of ids
    assert not recent.first_time(f"{2999:08d}" + "x" * 60_000)  # still deduplicates
    assert recent.first_time(f"{0:08d}" + "x" * 60_000)  # the oldest fell out


def test_in_memory_transport_models_the_retain_flag():
    broker = InMemoryBroker()
    sender, receiver = broker.client("a"), broker.client("b")
    sender.start()
    sender.publish("t/x", b"kept", retain=True)
    receiver.subscribe("t/#")
    receiver.start()
    assert receiver.get(0) == ("t/x", b"kept") and receiver.last_was_retained()
    sender.publish("t/x", b"live")
    assert receiver.get(0) == ("t/x", b"live") and not receiver.last_was_retained()
    sender.publish("t/x", b"live, retained", retain=True)  # retain-as-published
    assert receiver.get(0) == ("t/x", b"live, retained") and receiver.last_was_retained()


def test_retained_statuses_of_a_large_fleet_are_all_admitted_after_a_restart():
    """10,000 retained statuses reach a restarted orchestrator at once and are never sent
    again: the budget shared by unknown ids (100/s, burst 1,000) dropped 9,000 of them."""
    budgets = DeviceBudgets(DeviceLimits(), known=lambda _a: False)
    payload = b"{}"
    verdicts = [
        budgets.screen(f"t/{i}", f"dev-{i}", "status", payload, retained=True, uploading=False)
        for i in range(5000)
    ]
    assert verdicts.count("admit") == 5000
    live = [
        budgets.screen(f"t/{i}", f"new-{i}", "status", payload, retained=False, uploading=False)
        for i in range(5000)
    ]
    assert live.count("admit") < 2000  # a flood of live statuses of unknown ids stays bounded
