"""Whole rounds on an in-memory transport: a real Orchestrator, SQLite Store and toy bundle,
scripted in-process devices and a fake clock. No broker, no threads, no sleeps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support.memory_device import FakeClock, MemoryDevice, settle, start_orchestrator
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
from fedge.orchestrator.device_budget import DeviceLimits
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.errors import ConfigError
from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import EvalReport, FetchRequest, RoundTask, new_msg_id, parse_message
from fedge.protocol.tensors import decode_tensors
from fedge.protocol.transport import InMemoryBroker

# The round mechanics below check exact FedAvg arithmetic, so robust weighting is off there;
# test_robust_defaults_* check the defaults.
ROBUST_OFF = RobustSettings(sample_cap_multiple=0, max_claimed_samples=0, norm_multiple=0)


class Federation:
    def __init__(
        self,
        tmp_path: Path,
        devices: int,
        robust: RobustSettings = ROBUST_OFF,
        **rounds: object,
    ) -> None:
        self.tmp_path = tmp_path
        self.broker = InMemoryBroker()
        self.clock = FakeClock()
        self.bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
        settings = {"rounds": 1, "min_devices": devices, "deadline_seconds": 60.0} | rounds
        self.cfg = OrchestratorConfig(
            database=str(tmp_path / "o.db"), rounds=RoundSettings(**settings), robust=robust
        )
        self.devices = {f"dev-{i}": MemoryDevice(self.broker, f"dev-{i}") for i in range(devices)}
        self.orch = self.new_orchestrator()

    def new_orchestrator(self) -> Orchestrator:
        self.orch = start_orchestrator(
            Orchestrator, self.cfg, self.broker, self.bundle, self.clock, self.devices.values()
        )
        return self.orch

    def settle(self) -> None:
        settle(self.orch, self.devices.values())

    def invited(self) -> list[MemoryDevice]:
        return [d for d in self.devices.values() if d.invited]

    def outsiders(self) -> list[MemoryDevice]:
        return [d for d in self.devices.values() if not d.invited]

    def train(self, device: MemoryDevice, value: float) -> None:
        """Fetch the global parameters like an agent, then offer a constant delta."""
        device.fetch_params()
        self.settle()
        assert device.params is not None, f"{device.id} could not fetch the parameters"
        device.offer(delta(device.params, value))
        self.settle()

    def round(self, n: int = 1):
        return self.orch.store.get_round(self.orch.run_id, n)

    def version(self, v: int) -> dict[str, np.ndarray]:
        return decode_tensors(self.orch.store.version_params(self.orch.run_id, v))


def delta(template: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {n: np.full(a.shape, value, a.dtype) for n, a in template.items()}


def assert_moved_by(fed: Federation, step: float) -> None:
    v0, v1 = fed.version(0), fed.version(1)
    for name in v0:
        np.testing.assert_allclose(v1[name] - v0[name], step, atol=1e-6)


def test_a_full_round_commits_the_fedavg_of_the_deltas(tmp_path):
    fed = Federation(tmp_path, 2)
    assert len(fed.invited()) == 2 and fed.orch.current is not None
    a, b = fed.invited()
    fed.train(a, 0.1)
    assert fed.orch.current is not None  # one of two: still open
    fed.train(b, 0.3)
    r = fed.round()
    assert (r.state, r.reports, r.rejected, r.late) == ("committed", 2, 0, 0)
    assert_moved_by(fed, 0.2)  # equal sample counts: the plain mean
    assert all(ack.accepted for d in (a, b) for ack in d.acks)
    assert a.task is not None and a.task.state == "finished"  # rounds=1: the run is done


def test_over_selection_closes_at_the_goal_and_a_later_report_is_late(tmp_path):
    fed = Federation(tmp_path, 3, devices_per_round=2, over_selection=1.5)
    invited = fed.invited()
    assert len(invited) == 3 and fed.round().goal == 2
    fed.train(invited[0], 0.1)
    fed.train(invited[1], 0.3)
    assert fed.orch.current is None  # goal reached: closed without waiting for the third
    fed.devices[invited[2].id].offer(delta(fed.version(0), 0.5), round_no=1, model_version=0)
    fed.settle()
    r = fed.round()
    assert (r.state, r.reports, r.late) == ("committed", 2, 1)
    assert_moved_by(fed, 0.2)
    assert not invited[2].acks[-1].accepted and "closed" in invited[2].acks[-1].reason


def test_the_deadline_closes_the_round(tmp_path):
    fed = Federation(tmp_path, 2, deadline_seconds=30.0)
    a, b = fed.invited()
    fed.train(a, 0.1)
    fed.clock.advance(29.0)
    fed.settle()
    assert fed.orch.current is not None
    fed.clock.advance(1.0)
    fed.settle()
    r = fed.round()
    assert (r.state, r.reports) == ("committed", 1)
    assert_moved_by(fed, 0.1)


def test_a_report_after_the_deadline_is_counted_late(tmp_path):
    fed = Federation(tmp_path, 2, rounds=2, deadline_seconds=30.0)
    a, b = fed.invited()
    fed.train(a, 0.1)
    b.fetch_params()
    fed.settle()
    fed.clock.advance(31.0)
    fed.settle()  # round 1 commits on its deadline, round 2 opens
    assert fed.round(1).state == "committed" and fed.orch.current.round == 2
    b.offer(delta(b.params, 0.3), round_no=1, model_version=0)
    fed.settle()
    assert (fed.round(1).reports, fed.round(1).late) == (1, 1)
    assert fed.round(2).late == 0 and fed.orch.current.reports == 0


def test_a_duplicate_offer_counts_once(tmp_path):
    fed = Federation(tmp_path, 2)
    a, b = fed.invited()
    a.fetch_params()
    fed.settle()
    offer = a.offer(delta(a.params, 0.1))
    fed.settle()
    a.send(offer)  # a QoS 1 redelivery
    a.send(offer)
    fed.settle()
    assert fed.orch.current.reports == 1
    assert [ack.reason for ack in a.acks] == ["", "already counted", "already counted"]
    fed.train(b, 0.3)
    r = fed.round()
    assert (r.state, r.reports, r.duplicates) == ("committed", 2, 1)
    assert_moved_by(fed, 0.2)


def test_a_dropout_closes_the_round_after_the_grace(tmp_path):
    fed = Federation(tmp_path, 2, offline_grace_seconds=10.0)
    a, b = fed.invited()
    fed.train(a, 0.1)
    b.status("offline")  # the broker publishes its Last Will
    fed.settle()
    fed.clock.advance(9.0)
    fed.settle()
    assert fed.orch.current is not None  # a blip, maybe: still waiting
    fed.clock.advance(2.0)
    fed.settle()
    r = fed.round()
    assert (r.state, r.reports, r.dropped) == ("committed", 1, 1)
    assert_moved_by(fed, 0.1)


def test_an_abort_counts_as_an_answer(tmp_path):
    fed = Federation(tmp_path, 2)
    a, b = fed.invited()
    a.abort("battery low")
    fed.settle()
    assert fed.orch.current is not None
    fed.train(b, 0.3)
    r = fed.round()
    assert (r.state, r.reports, r.aborted) == ("committed", 1, 1)
    assert_moved_by(fed, 0.3)


def test_a_device_that_was_not_invited_cannot_close_or_change_the_round(tmp_path):
    """Issue "hostile device": an outsider's abort made the round close while a selected
    device was still training, and that device's honest update was then recorded late."""
    fed = Federation(tmp_path, 3, devices_per_round=2)
    a, b = fed.invited()
    (outsider,) = fed.outsiders()
    fed.train(a, 0.1)
    outsider.abort("I was never asked")
    outsider.offer(delta(fed.version(0), 100.0))
    outsider.offer(delta(fed.version(0), 100.0), round_no=7)  # no such round
    fed.settle()
    r = fed.round()
    assert fed.orch.current is not None and r.state == "open"
    assert (r.aborted, r.rejected, r.late) == (0, 0, 0)
    assert [u["agent_id"] for u in fed.orch.store.updates(fed.orch.run_id, 1)] == [a.id]
    assert fed.orch.intake.ignored == {"abort": 1, "offer": 1, "late_offer": 1}
    assert not fed.orch.intake.uploads  # the outsider's delta was never fetched
    fed.train(b, 0.3)  # the honest update still counts
    r = fed.round()
    assert (r.state, r.reports, r.late, r.rejected) == ("committed", 2, 0, 0)
    assert_moved_by(fed, 0.2)  # the outsider's 100.0 is not in the model


def test_a_participant_has_at_most_one_upload_in_flight(tmp_path):
    """Issue "hostile device": 300 concurrent half-served offers each held a transfer."""
    fed = Federation(tmp_path, 2)
    fed.cfg.limits = DeviceLimits(message_burst=1000)  # about uploads: the rate limit aside
    fed.new_orchestrator()
    a, _b = fed.invited()
    template = fed.version(0)
    offers = [a.offer(delta(template, 0.001 * (i + 1))) for i in range(300)]
    orch = fed.orch
    while (item := orch.transport.get(timeout=0)) is not None:  # the orchestrator side only
        orch.handle(*item)
    assert list(orch.intake.uploads) == [a.id]
    assert orch.intake.uploads[a.id][1].blob == offers[0].blob
    fed.settle()  # now the device serves its chunks
    refused = [ack for ack in a.acks if not ack.accepted]
    assert len(refused) == 299 and "in progress" in refused[0].reason
    assert orch.current.reports == 1 and not orch.intake.uploads


def test_a_fetch_request_is_served_once_per_chunk(tmp_path):
    fed = Federation(tmp_path, 2)
    a, _b = fed.invited()
    params = a.task.params
    pushed = a.frames_received  # small parameters come unasked with the task
    a.send(FetchRequest(new_msg_id(), a.id, params.sha256, [0] * 200 + [1, 5, 99]))
    fed.settle()
    assert a.frames_received - pushed == params.chunks == 1


def test_a_restarted_orchestrator_continues_the_open_round(tmp_path):
    fed = Federation(tmp_path, 2)
    a, b = fed.invited()
    fed.train(a, 0.1)
    fed.orch.transport.stop()
    fed.orch.store.close()
    orch = fed.new_orchestrator()
    assert orch.current is not None and orch.current.accepted == {a.id}
    fed.train(b, 0.3)
    assert (fed.round().state, fed.round().reports) == ("committed", 2)
    assert_moved_by(fed, 0.2)


@pytest.mark.parametrize("outsider_acts", ["abort", "offer"])
def test_the_round_closes_when_every_invited_device_answered(tmp_path, outsider_acts):
    fed = Federation(tmp_path, 3, devices_per_round=2, min_reports=1)
    a, b = fed.invited()
    (outsider,) = fed.outsiders()
    a.abort()
    if outsider_acts == "abort":
        outsider.abort()
    else:
        outsider.offer(delta(fed.version(0), 1.0))
    fed.settle()
    assert fed.orch.current is not None  # b has not answered yet
    b.abort()
    fed.settle()
    r = fed.round()
    assert (r.state, r.aborted) == ("abandoned", 2) and "min_reports" in r.note


def test_an_evaluation_round_follows_and_counts_only_invited_reports(tmp_path):
    fed = Federation(tmp_path, 3, devices_per_round=2, evaluate_every=1)
    for d, v in zip(fed.invited(), (0.1, 0.3), strict=True):
        fed.train(d, v)
    live = fed.orch.current
    assert live is not None and live.kind == "evaluate" and live.model_version == 1
    invited = fed.invited()
    (outsider,) = outsiders = fed.outsiders()
    assert len(invited) == 2
    for d in outsiders:  # not asked: ignored, the round keeps waiting for the invited ones
        d.send(EvalReport(new_msg_id(), d.id, live.run_id, live.round, 1, 5, {"val_loss": 9.0}))
    fed.settle()
    assert fed.orch.current is not None and fed.orch.intake.ignored["eval_report"] == 1
    assert not outsider.acks[-1].accepted
    for d, loss in zip(invited, (1.0, 3.0), strict=True):
        d.send(EvalReport(new_msg_id(), d.id, live.run_id, live.round, 1, 10, {"val_loss": loss}))
    fed.settle()
    r = fed.round(2)
    assert (r.kind, r.state, r.reports) == ("evaluate", "evaluated", 2)
    assert r.metrics["fed_val_loss"] == pytest.approx(2.0)  # the outsider's 9.0 is not in it


def test_a_flood_of_messages_does_not_starve_the_deadline(tmp_path):
    fed = Federation(tmp_path, 3, devices_per_round=2, deadline_seconds=30.0)
    a, _b = fed.invited()
    (outsider,) = fed.outsiders()
    fed.train(a, 0.1)
    for _ in range(50):
        outsider.abort("flood")
    fed.clock.advance(31.0)
    fed.orch.poll(0)  # one message handled, 49 still queued: the deadline is decided anyway
    assert fed.orch.transport.pending() == 49
    assert fed.round().state == "committed"


@pytest.mark.parametrize("robust", [ROBUST_OFF, RobustSettings()], ids=["off", "defaults"])
def test_robust_defaults_keep_a_lying_device_from_steering_the_model(tmp_path, robust):
    """One of three invited devices claims 10^9 samples (its status said far fewer) and sends a
    delta 1000x the honest ones: with the defaults the model moves by the honest step."""
    fed = Federation(tmp_path, 3, robust=robust)
    honest_a, honest_b, liar = fed.invited()
    fed.train(honest_a, 0.1)
    fed.train(honest_b, 0.1)
    liar.samples = 10**9
    fed.train(liar, 100.0)
    assert fed.round().state == "committed"
    v0, v1 = fed.version(0), fed.version(1)
    moved = max(float(np.max(np.abs(v1[n] - v0[n]))) for n in v0)
    if robust is ROBUST_OFF:
        # only the registered-count cap (always on) is left: the liar's delta still dominates
        assert moved > 30
    else:
        # claim capped at its registered count, delta clipped to 1.5x the median norm
        assert moved <= 0.1 * (2 + 1.5) / 3 + 1e-6
        metrics = fed.round().metrics
        assert metrics["robust_capped"] == 1 and metrics["robust_clipped"] == 1


def test_runs_started_within_one_second_get_distinct_ids(tmp_path):
    # CI found it: with exit_when_done off, a one-round run finishes within the clock's second
    # and the next run reused the timestamped id (UNIQUE constraint failed: runs.run_id).
    fed = Federation(tmp_path, 1)
    fed.cfg.exit_when_done = False
    fed.new_orchestrator()  # resumes the open run 1 with the new setting; the clock never moves
    ids = [fed.orch.run_id]
    for _ in range(2):
        (device,) = fed.invited()
        fed.train(device, 0.1)
        ids.append(fed.orch.run_id)
    assert len(set(ids)) == 3, ids
    assert ids[1] == f"{ids[0]}-2" and ids[2] == f"{ids[0]}-3"
    assert [r["state"] for r in fed.orch.store.runs()] == ["finished", "finished", "running"]


def test_two_federations_share_a_broker_without_noticing_each_other(tmp_path, caplog):
    # The friction from issue 10: on a shared broker, an orchestrator must neither count nor
    # warn about another federation's devices (each subscribes under its own prefix).
    broker, clock = InMemoryBroker(), FakeClock()
    bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
    orchs, devices = {}, {}
    for fed in ("north", "south"):
        devices[fed] = [
            MemoryDevice(broker, f"{fed}-{i}", federation=fed)
            for i in range(2 if fed == "north" else 3)
        ]
        cfg = OrchestratorConfig(
            federation=fed,
            client_id=f"orch-{fed}",
            database=str(tmp_path / f"{fed}.db"),
            rounds=RoundSettings(rounds=1, min_devices=2, deadline_seconds=60.0),
            robust=ROBUST_OFF,
        )
        orchs[fed] = Orchestrator(
            cfg, transport=broker.client(f"orch-{fed}"), bundle=bundle, clock=clock
        )
    with caplog.at_level("WARNING"):
        for o in orchs.values():
            o.start()
        everyone = [d for ds in devices.values() for d in ds]
        for o in orchs.values():
            settle(o, everyone)
        for fed, o in orchs.items():
            assert sorted(d["agent_id"] for d in o.store.devices()) == [d.id for d in devices[fed]]
            assert o.current is not None
            assert set(o.current.participants) <= {d.id for d in devices[fed]}
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_a_finished_run_continues_from_its_last_version(tmp_path):
    fed = Federation(tmp_path, 1)
    (device,) = fed.invited()
    fed.train(device, 0.1)
    first = fed.orch.run_id
    assert [r["state"] for r in fed.orch.store.runs()] == ["finished"]
    fed.orch.store.close()

    fed.cfg.continue_run = True
    with pytest.raises(ConfigError, match=r"already has model v1 .*rounds.rounds=11"):
        fed.new_orchestrator()  # rounds.rounds is still 1: nothing to continue to

    fed.cfg.continue_run = True
    fed.cfg.rounds = replace(fed.cfg.rounds, rounds=2)
    fed.new_orchestrator()
    assert fed.orch.run_id == first and fed.orch.current is not None
    assert fed.orch.current.round == 2 and fed.orch.current.model_version == 1
    (device,) = fed.invited()
    fed.train(device, 0.1)
    assert [r["state"] for r in fed.orch.store.runs()] == ["finished"]  # still one run
    v0, v2 = fed.version(0), fed.version(2)
    for name in v0:  # v2 = v1 + the second delta: trained on from v1, not from scratch
        np.testing.assert_allclose(v2[name] - v0[name], 0.2, atol=1e-6)


def test_continue_without_a_finished_run_says_so(tmp_path):
    fed = Federation(tmp_path, 1, rounds=3)
    fed.orch.store.close()
    fed.cfg.continue_run = True
    fed.new_orchestrator()  # an unfinished run: resumed as always, --continue changes nothing
    assert fed.orch.current is not None and fed.orch.current.round == 1
    (tmp_path / "other").mkdir()
    fed2 = Federation(tmp_path / "other", 1)
    fed2.cfg.continue_run = True
    fed2.cfg.database = str(tmp_path / "empty.db")
    with pytest.raises(ConfigError, match="no finished run of bundle"):
        fed2.new_orchestrator()


# ---- per-device invitations (protocol/invitations.py) ----
def _retained_invitations(fed: Federation) -> dict[str, Invitation]:
    topics = fed.orch.topics
    found = {}
    for topic, payload in fed.broker.retained.items():
        if topic.endswith("/invite"):
            inv = parse_message(payload, Invitation)
            assert isinstance(inv, Invitation) and topic == topics.agent_invite(inv.agent)
            found[inv.agent] = inv
    return found


def test_the_task_names_no_one_and_each_invited_device_holds_its_own_invitation(tmp_path):
    fed = Federation(tmp_path, 30, devices_per_round=12)
    payload = fed.broker.retained[fed.orch.topics.round_current]
    task = parse_message(payload, RoundTask)
    assert isinstance(task, RoundTask) and task.state == "open"
    assert task.participants == [] and task.invited == 12
    assert b"dev-" not in payload  # it named every participant, to every device
    invitations = _retained_invitations(fed)
    assert sorted(invitations) == sorted(fed.orch.current.participants)
    assert {(i.run_id, i.round) for i in invitations.values()} == {(task.run_id, 1)}
    assert sorted(d.id for d in fed.invited()) == sorted(invitations)


def test_a_device_that_comes_back_after_the_round_opened_learns_its_invitation(tmp_path):
    fed = Federation(tmp_path, 3, devices_per_round=2)
    a, b = fed.invited()
    (outsider,) = fed.outsiders()
    # the devices restart: new connections, nothing re-sent by the orchestrator
    for d in (a, b, outsider):
        d.link.stop()
        fed.devices[d.id] = MemoryDevice(fed.broker, d.id)
    fed.settle()
    a2, b2, outsider2 = (fed.devices[d.id] for d in (a, b, outsider))
    assert a2.invited and b2.invited and not outsider2.invited
    fed.train(a2, 0.1)
    fed.train(b2, 0.3)
    assert fed.round().state == "committed"


def test_a_restarted_orchestrator_invites_again_those_that_have_not_answered(tmp_path):
    fed = Federation(tmp_path, 3)
    a, b, c = fed.invited()
    fed.train(a, 0.1)
    fed.orch.transport.stop()
    fed.orch.store.close()
    for topic in [t for t in fed.broker.retained if t.endswith("/invite")]:
        del fed.broker.retained[topic]  # a broker that lost its retained messages
    fed.new_orchestrator()
    assert sorted(_retained_invitations(fed)) == sorted([b.id, c.id])  # not a: it answered


def test_a_forged_invitation_does_not_make_an_outsider_a_participant(tmp_path):
    """The orchestrator's own list decides (a device cannot write another's invitation on a
    real broker; tests/integration/test_mosquitto_acl.py)."""
    fed = Federation(tmp_path, 3, devices_per_round=2)
    a, b = fed.invited()
    (outsider,) = fed.outsiders()
    outsider.invitation = replace(a.invitation, agent=outsider.id)
    assert outsider.invited  # in its own eyes
    outsider.offer(delta(fed.version(0), 100.0))
    fed.settle()
    assert fed.orch.intake.ignored == {"offer": 1} and fed.round().reports == 0
    fed.train(a, 0.1)
    fed.train(b, 0.3)
    assert_moved_by(fed, 0.2)


# ---- group commit of accepted updates ----
def test_updates_are_written_in_one_transaction_and_acked_only_after_it(tmp_path, monkeypatch):
    fed = Federation(tmp_path, 4)
    orch = fed.orch
    devices = fed.invited()
    for d in devices:
        d.fetch_params()
    fed.settle()
    writes = []
    real = orch.store.accept_updates
    monkeypatch.setattr(
        orch.store, "accept_updates", lambda batch: writes.append(batch) or real(batch)
    )
    for i, d in enumerate(devices):
        d.offer(delta(d.params, 0.1 * (i + 1)))
    for _ in range(20):  # offers, fetches and chunks, but no tick (no round decision)
        while (item := orch.transport.get(timeout=0)) is not None:
            orch.handle(*item)
        for d in devices:
            d.pump()
    assert writes == [] and not any(d.acks for d in devices)
    assert orch.store.updates(orch.run_id, 1) == [] and orch.current.reports == 0
    fed.settle()  # the next tick writes them, then acks and counts
    assert len(writes) == 1 and len(writes[0]) == 4
    assert all(d.acks[-1].accepted for d in devices)
    assert (fed.round().state, fed.round().reports) == ("committed", 4)
    assert_moved_by(fed, 0.25)


@pytest.mark.parametrize("restart", [False, True])
def test_robust_weighting_after_a_restart_uses_the_stored_deltas_norms(tmp_path, restart):
    """Norms are kept as updates arrive; a restarted orchestrator computes the lost ones from
    the stored deltas, and the committed model is the same."""
    fed = Federation(tmp_path, 3, robust=RobustSettings(norm_window=1))
    a, b, c = fed.invited()
    fed.train(a, 0.1)
    fed.train(b, 0.2)
    if restart:
        fed.orch.transport.stop()
        fed.orch.store.close()
        fed.new_orchestrator()
        assert fed.orch.intake.norms(fed.orch.run_id, 1) == {}
    fed.train(c, 1.0)  # clipped to 1.5x the median norm (0.2's)
    assert fed.round().state == "committed"
    v0, v1 = fed.version(0), fed.version(1)
    for name in v0:
        np.testing.assert_allclose(v1[name] - v0[name], (0.1 + 0.2 + 0.3) / 3, atol=1e-6)


def test_a_burst_of_statuses_is_written_in_one_transaction(tmp_path, monkeypatch):
    fed = Federation(tmp_path, 20)
    orch = fed.orch
    writes = []
    real = orch.store.upsert_devices
    monkeypatch.setattr(
        orch.store, "upsert_devices", lambda rows: writes.append(rows) or real(rows)
    )
    for d in fed.devices.values():  # going offline: more than an idle/training flip, which
        d.status("offline")  # the registry holds back up to FLIP_SECONDS (written later)
    while (item := orch.transport.get(timeout=0)) is not None:
        orch.handle(*item)
    assert writes == []
    # decisions see it now; the state all 20 left counts 0 (its fedge_devices gauge drops to 0
    # instead of keeping its last value)
    assert orch.registry.counts() == {"idle": 0, "offline": 20}
    orch.tick()
    assert len(writes) == 1 and {r[0] for r in writes[0]} == set(fed.devices)
    assert {row["state"] for row in orch.store.devices()} == {"offline"}


def test_an_upload_is_not_asked_again_while_its_chunks_may_wait_in_our_own_queue(tmp_path):
    """10,000 answers at once: chunks waited >5 s in the orchestrator's receive queue, every
    transfer looked stalled and was asked again, doubling the traffic it was drowning in."""
    fed = Federation(tmp_path, 2)
    orch = fed.orch
    a, _b = fed.invited()
    a.offer(delta(fed.version(0), 0.1))
    while (item := orch.transport.get(timeout=0)) is not None:  # the offer: a fetch goes out
        orch.handle(*item)
    cmd = orch.topics.agent_cmd(a.id)

    def fetches() -> int:
        return sum(
            1
            for _s, topic, payload, _r in fed.broker.published
            if topic == cmd and isinstance(parse_message(payload), FetchRequest)
        )

    assert fetches() == 1
    fed.clock.advance(6)  # past the 5 s stall timeout
    orch.intake.tick(backlog=500)
    assert fetches() == 1  # its chunk may be among the 500 queued messages
    orch.intake.tick(backlog=0)
    assert fetches() == 2  # the queue is drained and still nothing: ask again


@pytest.mark.parametrize("restart", [False, True])
def test_the_close_aggregates_the_deltas_validated_at_intake_without_reading_them_back(
    tmp_path, restart
):
    """Intake keeps each validated delta decoded; the close reads none of them again from
    SQLite, and the committed model is the same to the bit. A restarted orchestrator holds
    none of the earlier ones: it reads exactly those back."""
    fed = Federation(tmp_path, 3)
    a, b, c = fed.invited()
    fed.train(a, 0.1)
    if restart:
        fed.orch.transport.stop()
        fed.orch.store.close()
        fed.new_orchestrator()
    fed.train(b, 0.2)
    reads = _delta_reads_while(fed, lambda: fed.train(c, 0.6))
    assert fed.round().state == "committed"
    # after a restart: dev a's delta (accepted before it), once for its norm, once to add it
    assert len(reads) == (2 if restart else 0)
    assert_moved_by(fed, 0.3)  # (0.1+0.2+0.6)/3
    assert fed.orch.intake.kept_deltas(fed.orch.run_id, 1) == {}  # released after the close


def test_with_no_memory_for_decoded_deltas_the_close_reads_them_back_to_the_same_model(tmp_path):
    """rounds.decoded_deltas_mib = 0 (a small broker host): nothing kept decoded, every delta
    read back at the close, the committed model the same."""
    fed = Federation(tmp_path, 3, decoded_deltas_mib=0)
    a, b, c = fed.invited()
    fed.train(a, 0.1)
    fed.train(b, 0.2)
    assert fed.orch.intake.kept_deltas(fed.orch.run_id, 1) == {}
    reads = _delta_reads_while(fed, lambda: fed.train(c, 0.6))
    assert fed.round().state == "committed"
    assert reads  # read back, not kept
    assert_moved_by(fed, 0.3)


def _delta_reads_while(fed: Federation, action) -> list[str]:
    """The SELECTs of stored deltas the orchestrator's database runs during ``action()``."""
    reads: list[str] = []
    fed.orch.store.db.set_trace_callback(
        lambda sql: (
            reads.append(sql) if "delta" in sql and sql.lstrip().startswith("SELECT") else None
        )
    )
    try:
        action()
    finally:
        fed.orch.store.db.set_trace_callback(None)
    return reads


def _kept_deltas(fed: Federation, round_no: int) -> int:
    return fed.orch.store.db.execute(
        "SELECT COUNT(*) FROM updates WHERE round=? AND delta IS NOT NULL", (round_no,)
    ).fetchone()[0]


def test_a_rounds_deltas_are_freed_after_its_commit_not_in_it(tmp_path):
    """Freeing the deltas (with secure_delete: zeroing them) is not in the commit's
    transaction, which the whole fleet waits for; it follows once the orchestrator is idle."""
    fed = Federation(tmp_path, 2, rounds=2)
    statements: list[str] = []
    fed.orch.store.db.set_trace_callback(statements.append)
    for device, value in zip(fed.invited(), (0.1, 0.3), strict=True):
        fed.train(device, value)
    fed.orch.store.db.set_trace_callback(None)
    commit = next(i for i, sql in enumerate(statements) if "INSERT INTO model_versions" in sql)
    end = next(i for i in range(commit, len(statements)) if statements[i] == "COMMIT")
    assert not any("delta=NULL" in sql for sql in statements[commit:end])
    assert any("delta=NULL" in sql for sql in statements[end:])  # then, once idle
    assert fed.round(1).state == "committed" and _kept_deltas(fed, 1) == 0
    assert_moved_by(fed, 0.2)


def test_deltas_left_by_a_crash_after_the_commit_are_freed_by_the_restart(tmp_path):
    fed = Federation(tmp_path, 2, rounds=2)
    fed.orch._drop_old_deltas = lambda: None  # the crash comes before the orchestrator is idle
    for device, value in zip(fed.invited(), (0.1, 0.3), strict=True):
        fed.train(device, value)
    assert fed.round(1).state == "committed" and _kept_deltas(fed, 1) == 2
    fed.orch.transport.stop()
    fed.orch.store.close()
    fed.new_orchestrator()
    fed.settle()
    assert _kept_deltas(fed, 1) == 0
    assert fed.orch.current is not None and fed.orch.current.round == 2  # the run goes on


def test_keep_deltas_keeps_them(tmp_path):
    fed = Federation(tmp_path, 2, rounds=2, keep_deltas=True)
    for device, value in zip(fed.invited(), (0.1, 0.3), strict=True):
        fed.train(device, value)
    fed.settle()
    assert fed.round(1).state == "committed" and _kept_deltas(fed, 1) == 2
