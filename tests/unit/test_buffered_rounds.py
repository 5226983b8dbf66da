"""Buffered asynchronous runs on an in-memory transport: a real BufferedOrchestrator, SQLite
Store and toy bundle, scripted devices and a fake clock. No broker, no threads, no sleeps."""

from __future__ import annotations

import numpy as np
from support.async_federation import AsyncFederation, delta


def moved(fed: AsyncFederation, a: int, b: int) -> float:
    va, vb = fed.version(a), fed.version(b)
    steps = {round(float(np.mean(vb[n] - va[n])), 5) for n in va}
    assert len(steps) == 1, steps
    return steps.pop()


def test_k_accepted_deltas_commit_a_version_with_the_fedavg_of_the_buffer(tmp_path):
    fed = AsyncFederation(tmp_path, 3, buffer_size=2)
    a, b = fed.ask(0), fed.ask(1)
    assert a.slot and b.slot and a.slot != b.slot
    assert a.task.model_version == 0 and a.task.participants == ["dev-0"]
    fed.train(a, 0.1)
    assert fed.latest() == 0  # one of K=2 buffered: no version yet
    assert fed.orch.bstore.buffered(fed.orch.run_id) == [a.slot]
    fed.train(b, 0.3)
    assert fed.latest() == 1
    assert moved(fed, 0, 1) == 0.2  # equal samples, fresh deltas: the plain mean
    assert all(ack.accepted for ack in a.acks + b.acks)
    assert fed.orch.bstore.buffered(fed.orch.run_id) == []
    fed.clock.advance(1.0)  # the new version is announced within ANNOUNCE_EVERY
    fed.settle()
    assert fed.dev(2).announce is not None and fed.dev(2).announce.model_version == 1


def test_a_duplicate_delta_is_counted_once(tmp_path):
    fed = AsyncFederation(tmp_path, 2, buffer_size=2)
    a = fed.ask(0)
    a.fetch_params()
    fed.settle()
    d = delta(a.params, 0.5)
    fed.train(a, 0.5)
    a.offer(d)  # the ack was lost: offered again
    a.offer(d, msg_id="same")
    a.offer(d, msg_id="same")  # a QoS 1 redelivery
    fed.settle()
    run = fed.orch.run_id
    assert len(fed.orch.bstore.updates(run)) == 1
    assert fed.orch.bstore.buffered(run) == [a.slot]
    assert fed.orch.bstore.counters(run)["duplicates"] == 2
    assert [ack.reason for ack in a.acks[1:]] == ["already counted"] * 3
    assert fed.latest() == 0  # still one of K=2


def test_at_most_c_devices_train_at_once_and_expired_slots_free_their_place(tmp_path):
    fed = AsyncFederation(tmp_path, 3, max_concurrency=2, slot_seconds=30.0)
    fed.ask(0), fed.ask(1), fed.ask(2)
    assert [bool(fed.dev(i).slots) for i in range(3)] == [True, True, False]
    fed.clock.advance(1.0)  # "no slot free" is announced within ANNOUNCE_EVERY
    fed.settle()
    assert fed.dev(2).announce.slots_free == 0
    fed.clock.advance(31)
    fed.settle()
    assert fed.orch.machine.training == 0
    assert fed.orch.bstore.counters(fed.orch.run_id)["expired"] == 2
    assert fed.ask(2).slots, "a freed place goes to the next device that asks"


def test_a_device_asking_again_gets_the_slot_it_holds(tmp_path):
    fed = AsyncFederation(tmp_path, 1)
    first = fed.ask(0).slot
    assert fed.ask(0).slot == first  # e.g. the agent restarted mid-training
    assert fed.orch.machine.training == 1


def test_stale_deltas_are_weighted_and_deltas_past_the_cap_refused(tmp_path):
    fed = AsyncFederation(
        tmp_path,
        3,
        versions=5,
        buffer_size=1,
        max_staleness=1,
        staleness="polynomial",
        staleness_exponent=1.0,
    )
    slow, stale = fed.ask(0), fed.ask(1)  # both train v0
    slow.fetch_params(), stale.fetch_params()
    fed.settle()
    fast = fed.ask(2)
    fed.train(fast, 0.4)  # v1, fresh: weight 1
    assert fed.latest() == 1 and moved(fed, 0, 1) == 0.4
    slow.offer(delta(slow.params, 0.4))  # staleness 1: weight (1+1)^-1
    fed.settle()
    assert fed.latest() == 2 and moved(fed, 1, 2) == 0.2
    stale.offer(delta(stale.params, 0.4))  # staleness 2 > cap 1
    fed.settle()
    assert stale.acks[-1].accepted is False and "cap is 1" in stale.acks[-1].reason
    assert fed.latest() == 2
    assert fed.orch.bstore.staleness_histogram(fed.orch.run_id) == {0: 1, 1: 1}


def test_a_restart_mid_buffer_keeps_the_buffer_and_counts_each_delta_once(tmp_path):
    fed = AsyncFederation(tmp_path, 3, buffer_size=2)
    a, b = fed.ask(0), fed.ask(1)
    fed.train(a, 0.1)
    b.fetch_params()
    fed.settle()
    fed.orch.store.close()  # the orchestrator dies with one delta buffered, one slot active
    fed.new_orchestrator()
    run = fed.orch.run_id
    assert fed.orch.bstore.buffered(run) == [a.slot]
    assert fed.orch.machine.training == 1
    a.offer(delta(a.params, 0.1))  # the first delta again (say its ack was lost)
    b.offer(delta(b.params, 0.3))
    fed.settle()
    assert fed.latest() == 1 and moved(fed, 0, 1) == 0.2
    assert len(fed.orch.bstore.updates(run)) == 2
    assert fed.orch.bstore.counters(run)["duplicates"] == 1


def test_an_abort_frees_the_slot(tmp_path):
    fed = AsyncFederation(tmp_path, 2, max_concurrency=1)
    a = fed.ask(0)
    a.abort(round_no=a.slot)
    fed.settle()
    assert fed.orch.machine.training == 0
    assert fed.ask(1).slots


def test_a_device_gone_offline_frees_its_slot_after_the_grace_and_may_still_report(tmp_path):
    fed = AsyncFederation(
        tmp_path, 2, max_concurrency=1, buffer_size=1, rounds={"offline_grace_seconds": 2.0}
    )
    a = fed.ask(0)
    a.fetch_params()
    fed.settle()
    a.status("offline")  # its Last Will: unplugged mid-training
    fed.settle()
    fed.clock.advance(1.0)
    fed.settle()
    assert fed.orch.machine.training == 1, "a blip within the grace keeps the slot"
    fed.clock.advance(1.5)
    fed.settle()
    assert fed.orch.machine.training == 0  # before slot_seconds (60 s): the place is free
    assert fed.orch.bstore.counters(fed.orch.run_id)["expired"] == 1
    assert fed.ask(1).slots, "the freed place goes to a device that is there"
    a.status("idle")  # back, with the delta it finished: judged like any late delta
    a.offer(delta(a.params, 0.5))
    fed.settle()
    assert a.acks[-1].accepted and fed.latest() == 1


def test_the_run_finishes_after_its_versions(tmp_path):
    fed = AsyncFederation(tmp_path, 1, versions=1, buffer_size=1)
    fed.train(fed.ask(0), 0.1)
    assert fed.orch.machine.finished
    assert fed.dev(0).announce.state == "finished"
    assert fed.orch.store.runs()[-1]["state"] == "finished"


def test_a_delta_for_a_slot_the_device_was_not_handed_is_refused_without_a_row(tmp_path):
    fed = AsyncFederation(tmp_path, 2)
    a, b = fed.ask(0), fed.dev(1)
    a.fetch_params()
    fed.settle()
    b.task, b.params = a.task, a.params  # dev-1 replays dev-0's slot
    b.offer(delta(b.params, 9.0))
    fed.settle()
    assert b.acks[-1].accepted is False and "no such slot" in b.acks[-1].reason
    assert fed.orch.bstore.updates(fed.orch.run_id) == []
    assert fed.orch.machine.training == 1  # dev-0's slot is untouched


def test_mode_and_buffered_keys_are_validated_from_the_settings_file(tmp_path):
    import pytest

    from fedge.orchestrator.buffered import create_orchestrator
    from fedge.orchestrator.config import OrchestratorConfig
    from fedge.protocol.errors import ConfigError
    from fedge.protocol.settings import load_settings
    from fedge.protocol.transport import InMemoryBroker

    toml = tmp_path / "o.toml"
    toml.write_text('mode = "async"\n[buffered]\nbuffer_size = 0\n')
    with pytest.raises(ConfigError, match=r"buffered\.buffer_size.*allowed: 1-100000"):
        load_settings(OrchestratorConfig, toml)
    toml.write_text('mode = "asynchronous"\n')
    with pytest.raises(ConfigError, match="mode must be one of"):
        load_settings(OrchestratorConfig, toml)
    cfg = OrchestratorConfig(mode="asynchronous")  # built in code, not loaded
    with pytest.raises(ConfigError, match="'mode' = 'asynchronous' unknown"):
        create_orchestrator(cfg, transport=InMemoryBroker().client("o"))
    toml.write_text("[buffered]\nbuffer_sise = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'buffered.buffer_sise'"):
        load_settings(OrchestratorConfig, toml)


def test_robust_weighting_caps_a_claimed_sample_count_in_async_versions_too(tmp_path):
    fed = AsyncFederation(tmp_path, 2, buffer_size=2)
    honest, liar = fed.ask(0), fed.ask(1)  # both registered 10 samples in their status
    fed.train(honest, 0.1)
    liar.samples = 10**6  # its offer claims a million rows
    fed.train(liar, 0.3)
    assert fed.latest() == 1
    assert moved(fed, 0, 1) == 0.2  # capped to its registered 10: equal weights


def test_adaptive_clipping_applies_to_the_buffer(tmp_path):
    from fedge.orchestrator.config import RobustSettings
    from fedge.orchestrator.robust_aggregation import robust_weighting

    fed = AsyncFederation(tmp_path, 2, buffer_size=2)
    fed.cfg.robust = RobustSettings()  # on by default: 1.5x the median norm
    fed.orch.robust = robust_weighting(fed.cfg.robust)
    fed.train(fed.ask(0), 0.1)
    fed.train(fed.ask(1), 0.3)  # norm 3x the (lower) median: scaled to 1.5x
    assert moved(fed, 0, 1) == 0.125  # (0.1 + 0.15) / 2


def test_a_grant_pushes_small_parameters_with_the_task(tmp_path):
    fed = AsyncFederation(tmp_path, 2)
    d = fed.ask(0)  # no fetch_params: the grant brought them
    assert d.task.params_pushed
    assert d.params is not None and d.fetches_served == 0
    v0 = fed.version(0)
    assert all(np.array_equal(d.params[n], v0[n]) for n in v0)
    (tmp_path / "big").mkdir()
    big = AsyncFederation(tmp_path / "big", 1, rounds={"inline_max_bytes": 16})
    e = big.ask(0)
    assert not e.task.params_pushed and e.params is None and e.frames_received == 0


def test_privacy_is_accounted_per_device_upload_not_per_version(tmp_path):
    from fedge.protocol.privacy import dp_epsilon

    fed = AsyncFederation(
        tmp_path, 2, buffer_size=3, rounds={"clip_norm": 1.0, "noise_multiplier": 1.0}
    )
    assert fed.orch.train_config().noise_multiplier == 1.0  # devices add the noise
    a = fed.ask(0)
    fed.train(a, 0.1)
    fed.ask(0)
    fed.train(a, 0.1)  # a fast device: two deltas in one buffer
    b = fed.ask(1)
    fed.train(b, 0.1)
    assert fed.latest() == 1
    m = fed.orch.bstore.versions(fed.orch.run_id)[1]["metrics"]
    assert m["dp_releases"] == 2.0
    assert m["dp_epsilon"] == dp_epsilon(1.0, 2) > dp_epsilon(1.0, 1)  # one version, 2 uploads
    assert m["dp_delta"] == 1e-5


def test_announcements_are_paced_while_slots_and_versions_turn_over(tmp_path):
    fed = AsyncFederation(tmp_path, 4, buffer_size=1, max_concurrency=1, versions=10)
    seen: list[bytes] = []
    publish = fed.orch.transport.publish

    def spy(topic: str, payload: bytes, **kw) -> None:
        if topic == fed.orch.topics.round_async:
            seen.append(payload)
        publish(topic, payload, **kw)

    fed.orch.transport.publish = spy  # type: ignore[method-assign]
    for i in range(4):  # within one second: 4 grants, 4 versions, 8 free/full flips
        d = fed.ask(i)
        fed.train(d, 0.1)
    assert fed.latest() == 4
    assert len(seen) <= 2, f"{len(seen)} announcements in under a second"
    fed.clock.advance(1.0)
    fed.settle()
    assert fed.dev(3).announce.model_version == 4  # the newest state still goes out
