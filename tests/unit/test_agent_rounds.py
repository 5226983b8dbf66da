"""A real Agent through whole rounds on the in-memory transport: no broker, no sleeps.

Real state database, real bundle cache (a toy bundle, verified and unpacked), real SQLite data
file; the orchestrator is scripted in-process: it publishes a retained RoundTask, serves the
bundle and the parameters with BlobServer, fetches the offered delta and acks it. Time is a fake
clock. Training uses a small fake backend (the toy bundle holds no real ONNX model): these tests
are about the round logic, not about the numbers.
"""

from __future__ import annotations

import base64
import json
import logging
import time

import numpy as np
import pytest
from support import agent_world
from support.agent_world import pump
from support.scripted_orchestrator import STEP, FakeBackend, ScriptedOrchestrator

from fedge.agent.daemon import Agent
from fedge.protocol.chunks import blob_ref, encode_frame
from fedge.protocol.fields import MAX_INLINE_BYTES
from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import Ack, TrainConfig, new_msg_id
from fedge.protocol.tensors import decode_tensors

world = agent_world.world  # the fixture: a real Agent, scripted orchestrator, in-memory broker


def fetched(orch: ScriptedOrchestrator, ref) -> int:
    return sum(1 for r in orch.requests if r.sha256 == ref.sha256)


def test_a_participant_fetches_trains_and_offers_its_delta(world):
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.auto_ack = False
    orch.publish_task(orch.task())
    pump(agent, orch)

    assert fetched(orch, orch.bundle_ref) == 1 and fetched(orch, orch.params_ref) == 1
    (offer,) = orch.offers
    assert (offer.agent, offer.run_id, offer.round) == ("dev-0", "run-1", 1)
    assert offer.num_samples == 30  # 40 rows, a quarter kept for validation
    assert offer.metrics["val_accuracy"] == 0.75
    assert backend.steps == 4  # 30 rows in batches of 8, one epoch
    delta = decode_tensors(orch.deltas[offer.blob.sha256])
    np.testing.assert_allclose(delta["fc.weight"], np.full((2, 3), -4 * STEP), atol=1e-5)
    assert "fc.bias" not in delta  # frozen, no running statistic: its zero delta stays home
    assert agent.state.journal_status("run-1", 1) == "offered"
    assert agent.state.has_outbox()  # not acked yet
    assert agent.bundles.get(orch.bundle_hash) is not None  # verified and cached


def test_an_accepted_ack_empties_the_outbox_and_a_rejection_is_journaled(world):
    _, clock, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task())
    pump(agent, orch)
    assert len(orch.offers) == 1 and not agent.state.has_outbox()
    assert agent.state.journal_status("run-1", 1) == "acked"
    assert not agent.server.holds(orch.offers[0].blob.sha256)
    clock.advance(120)  # no re-offer of an acked delta, ever
    pump(agent, orch)
    assert len(orch.offers) == 1

    orch.auto_ack = False
    orch.publish_task(orch.task(2))
    pump(agent, orch)
    orch.ack("dev-0", orch.offers[-1], accepted=False, reason="stale model version")
    pump(agent, orch)
    assert agent.state.journal_entry("run-1", 2) == ("rejected", "stale model version")
    assert not agent.state.has_outbox()


def test_a_device_not_selected_does_nothing(world):
    broker, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task(participants=["dev-1", "dev-2"]))
    pump(agent, orch)
    assert orch.requests == [] and orch.offers == [] and orch.aborts == []
    assert backend.loads == 0 and agent.state.journal_status("run-1", 1) == ""
    sent = [t for sender, t, _, _ in broker.published if sender == "dev-0"]
    assert all(t.endswith("/status") for t in sent)  # only its own status


def test_the_log_says_each_round_transition_once_and_never_round_0(world, caplog):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    caplog.set_level(logging.INFO, logger="fedge.agent.daemon")
    between = orch.task(0, state="closed", participants=[], model_version=1)  # as sent
    script = [
        orch.task(1),
        between,
        between,  # a redelivery (QoS 1, reconnect)
        orch.task(2, participants=["dev-1"]),
        orch.task(2, participants=["dev-1"]),
        between,
        between,  # an abandoned round's retry wait: closed again
        orch.task(3, state="finished", participants=[]),
        orch.task(3, state="finished", participants=[]),
    ]
    for task in script:
        orch.publish_task(task)
        pump(agent, orch)
    said = [r.getMessage() for r in caplog.records if "run run-1" in r.getMessage()]
    assert said == [
        "round 1 of run run-1 open: this device is one of 1 invited (deadline in 60 s)",
        "round 1 of run run-1 closed",
        "round 2 of run run-1 open without this device (1 invited)",
        "round 2 of run run-1 closed",
        "run run-1 finished at model v2; the agent stays connected for the next run",
    ]
    assert not any("round 0" in r.getMessage() for r in caplog.records)


def test_an_ineligible_device_aborts_with_the_reason_and_fetches_nothing(world):
    _, _, orch, make_agent, sensors = world
    sensors.write_text(json.dumps({"force_ineligible": "user is gaming"}))
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task())
    pump(agent, orch)
    (abort,) = orch.aborts
    assert (abort.agent, abort.round, abort.reason) == (
        "dev-0",
        1,
        "not eligible: override: user is gaming",
    )
    assert orch.requests == [] and backend.loads == 0
    assert agent.state.journal_entry("run-1", 1)[0] == "aborted"
    pump(agent, orch)
    assert len(orch.aborts) == 1  # said once


def test_a_redelivered_task_trains_once(world):
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.auto_ack = False
    payload = orch.publish_task(orch.task())
    pump(agent, orch)
    for _ in range(3):  # QoS 1 delivers duplicates after reconnects
        agent.handle(orch.topics.round_current, payload)
        pump(agent, orch)
    assert backend.loads == 1 and backend.steps == 4
    assert len(orch.offers) == 1 and fetched(orch, orch.params_ref) == 1


def test_a_round_whose_deadline_has_passed_is_not_trained(world):
    _, clock, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task(deadline=clock.time() - 1.0))
    pump(agent, orch)
    assert orch.requests == [] and orch.offers == [] and orch.aborts == []
    assert backend.loads == 0 and agent.state.journal_status("run-1", 1) == ""


def test_a_restarted_agent_offers_its_outbox_again_without_training(world):
    _, clock, orch, make_agent, _ = world
    orch.auto_fetch = False  # the orchestrator is busy: the delta stays in the outbox
    first = make_agent()
    orch.publish_task(orch.task())
    pump(first, orch)
    (offer,) = orch.offers
    first.close()  # the process ends (the outbox is in its SQLite state)

    orch.auto_fetch = True
    backend = FakeBackend()
    again = make_agent(backend)
    pump(again, orch)
    assert [o.blob.sha256 for o in orch.offers] == [offer.blob.sha256] * 2
    assert backend.loads == 0  # the round was not trained twice
    assert offer.blob.sha256 in orch.deltas and not again.state.has_outbox()
    assert again.state.journal_status("run-1", 1) == "acked"


def test_an_unacked_offer_is_sent_again_then_expires_after_the_deadline(world):
    _, clock, orch, make_agent, _ = world
    orch.auto_fetch = False
    agent = make_agent()
    orch.publish_task(orch.task())
    pump(agent, orch)
    clock.advance(agent.cfg.offer_retry_seconds)
    pump(agent, orch)
    assert len(orch.offers) == 2  # re-offered at the retry interval
    orch.publish_task(orch.task(state="closed"))
    clock.advance(60 + 31)  # past the deadline and the grace for clock skew
    pump(agent, orch)
    assert not agent.state.has_outbox()
    assert agent.state.journal_status("run-1", 1) == "expired"


def test_a_closed_round_stops_the_parameter_download(world):
    _, clock, orch, make_agent, _ = world
    orch.server.withdraw(orch.params_ref.sha256)  # the parameters never come
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task())
    pump(agent, orch)
    assert orch.params_ref.sha256 in agent.fetches.transfers
    clock.advance(6)  # a stalled download is asked for again ...
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 2

    orch.publish_task(orch.task(state="closed"))
    pump(agent, orch)
    assert agent.fetches.transfers == {} and agent.fetches.blobs == {}
    clock.advance(60)  # ... but not once the round is closed
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 2 and backend.loads == 0
    assert agent.bundles.get(orch.bundle_hash) is not None  # the bundle is kept for next time


def test_stopping_mid_training_journals_interrupted_and_the_restart_trains_again(world):
    _, _, orch, make_agent, _ = world
    box: list[Agent] = []
    first = make_agent(FakeBackend(on_step=lambda n: box[0].stop() if n == 2 else None))
    box.append(first)
    orch.publish_task(orch.task())
    pump(first, orch)
    assert first.stopping
    assert first.state.journal_entry("run-1", 1) == (
        "interrupted",
        "training stopped: agent stopping",
    )
    assert orch.aborts == [] and orch.offers == []  # the orchestrator is told nothing
    first.close()

    backend = FakeBackend()
    again = make_agent(backend)
    pump(again, orch)
    assert backend.steps == 4 and len(orch.offers) == 1 and orch.aborts == []
    assert again.state.journal_status("run-1", 1) == "acked"


def test_an_evaluation_round_reports_until_acked(world):
    _, clock, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task(config=TrainConfig(evaluate_only=True)))
    pump(agent, orch)
    (report,) = orch.reports
    assert report.num_samples == 10 and report.metrics == {"val_loss": 0.5, "val_accuracy": 0.75}
    assert backend.steps == 0 and agent.state.journal_status("run-1", 1) == "evaluated"
    clock.advance(agent.cfg.offer_retry_seconds)
    pump(agent, orch)
    assert len(orch.reports) == 2  # not acked: sent again
    ack = Ack(msg_id=new_msg_id(), agent="dev-0", run_id="run-1", round=1, sha256="", accepted=True)
    orch.link.publish(orch.topics.agent_cmd("dev-0"), ack.encode())
    clock.advance(agent.cfg.offer_retry_seconds)
    pump(agent, orch)
    assert len(orch.reports) == 2


def test_blob_refs_of_the_scripted_orchestrator_are_what_the_agent_verifies(world):
    _, _, orch, _, _ = world
    assert orch.bundle_ref == blob_ref(orch.archive)


def test_losing_eligibility_mid_training_aborts_with_the_reason(world):
    broker, clock, orch, make_agent, sensors = world

    def heat_up(n: int) -> None:
        if n == 2:
            sensors.write_text(json.dumps({"force_ineligible": "user is gaming"}))
            clock.advance(1.0)  # the sensors are re-read at most twice a second

    backend = FakeBackend(on_step=heat_up)
    agent = make_agent(backend)
    orch.publish_task(orch.task())
    pump(agent, orch)
    (abort,) = orch.aborts
    assert abort.reason == "training stopped: no longer eligible: override: user is gaming"
    assert backend.steps == 2 and orch.offers == []
    assert agent.state.journal_status("run-1", 1) == "aborted"
    status = json.loads(broker.retained[orch.topics.agent_status("dev-0")])
    assert (status["state"], status["eligible"]) == ("ineligible", False)


def test_a_bundle_that_is_not_the_rounds_is_refused(world):
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task(bundle_hash="f" * 64))
    pump(agent, orch)
    (abort,) = orch.aborts
    assert abort.reason.startswith("bundle refused: bundle content hash ")
    assert backend.loads == 0 and agent.bundles.get("f" * 64) is None
    assert fetched(orch, orch.params_ref) == 0


def test_missing_local_data_aborts_without_training(world, tmp_path):
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    agent.cfg.data.path = str(tmp_path / "nowhere.db")
    orch.publish_task(orch.task())
    pump(agent, orch)
    (abort,) = orch.aborts
    assert abort.reason.startswith("local data problem: data file ")
    assert "does not exist" in abort.reason and backend.loads == 0


def test_a_stop_request_cuts_a_cpu_budget_rest_short(world):
    _, _, _, make_agent, _ = world
    agent = make_agent()
    agent.stop()
    started = time.monotonic()
    agent.runner._sleep(30.0)  # the rest DutyCycle takes between batches
    assert time.monotonic() - started < 1.0


# ---- small objects: parameters pushed with the task, a delta inline in the offer ----


def test_the_next_rounds_sessions_are_prepared_once_the_offer_is_acked(world):
    """Not before: building them right after the offer held the GIL while paho's thread
    should have been sending that offer."""
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.auto_ack = False
    orch.publish_task(orch.task())
    pump(agent, orch)
    (offer,) = orch.offers
    assert backend.loads == 1 and backend.prepared == 0
    orch.ack("dev-0", offer, accepted=True)
    pump(agent, orch)
    assert backend.prepared == 1
    orch.ack("dev-0", offer, accepted=True)  # a duplicate ack: nothing more to prepare
    pump(agent, orch)
    assert backend.prepared == 1


def test_pushed_parameters_are_used_without_a_fetch(world):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(params_pushed=True))
    orch.push("dev-0", orch.params_ref)
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 0 and fetched(orch, orch.bundle_ref) == 1
    assert len(orch.offers) == 1 and agent.state.journal_status("run-1", 1) == "acked"


def test_parameters_shared_on_round_params_are_used_without_a_fetch(world):
    """A large round's parameters come once for every device, on round/params."""
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(params_pushed=True))
    orch.share(orch.params_ref)
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 0
    assert len(orch.offers) == 1 and agent.state.journal_status("run-1", 1) == "acked"


def test_parameters_pushed_before_their_task_are_held_for_it(world):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.push("dev-0", orch.params_ref)  # overtakes the task (another topic)
    pump(agent, orch)
    assert orch.params_ref.sha256 in agent.fetches.pushed
    orch.publish_task(orch.task(params_pushed=True))
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 0 and len(orch.offers) == 1


def test_a_corrupt_push_is_dropped_and_the_parameters_are_asked_for_after_the_grace(world, caplog):
    _, clock, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(params_pushed=True))
    pump(agent, orch)  # the bundle arrives; the parameters are awaited, not asked for
    assert fetched(orch, orch.params_ref) == 0 and not orch.offers
    real = orch.server._find(orch.params_ref.sha256)[0]
    forged = bytes([real[0] ^ 1]) + real[1:]  # same size, its own chunk hash, wrong object
    ref = orch.params_ref
    with caplog.at_level(logging.WARNING):
        orch.push("dev-0", ref, frame=encode_frame(ref, 0, forged))
        pump(agent, orch)
    assert "fails its sha256" in caplog.text and not orch.offers
    clock.advance(2.5)  # PUSH_GRACE_SECONDS: then it is pulled as before
    pump(agent, orch)
    assert fetched(orch, orch.params_ref) == 1 and len(orch.offers) == 1
    delta = decode_tensors(orch.deltas[orch.offers[0].blob.sha256])
    np.testing.assert_allclose(delta["fc.weight"], np.full((2, 3), -4 * STEP), atol=1e-5)


def test_a_small_delta_travels_inline_in_the_offer(world):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(inline_max_bytes=MAX_INLINE_BYTES))
    pump(agent, orch)
    (offer,) = orch.offers
    blob = base64.b64decode(offer.inline)
    assert blob_ref(blob) == offer.blob  # the same sha256 and size as the blob path
    assert not orch._pulls  # nothing fetched
    assert agent.state.journal_status("run-1", 1) == "acked" and not agent.state.has_outbox()


def test_a_delta_over_the_tasks_inline_limit_is_offered_as_a_blob(world):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    orch.publish_task(orch.task(inline_max_bytes=10))
    pump(agent, orch)
    (offer,) = orch.offers
    assert offer.inline == "" and offer.blob.size > 10
    assert offer.blob.sha256 in orch._pulls and offer.blob.sha256 in orch.deltas  # fetched
    assert agent.state.journal_status("run-1", 1) == "acked"


@pytest.mark.parametrize("invitation_first", [True, False])
def test_a_device_trains_when_its_own_invitation_names_the_open_round(world, invitation_first):
    """The real orchestrator's task names no one: the device's retained invitation (before
    or after the task) makes it a participant."""
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    task = orch.task(participants=[], invited=1000)
    if invitation_first:
        orch.invite("dev-0")
    orch.publish_task(task)
    pump(agent, orch)
    if not invitation_first:
        assert orch.offers == [] and agent.state.journal_status("run-1", 1) == ""
        orch.invite("dev-0")
        pump(agent, orch)
    (offer,) = orch.offers
    assert (offer.agent, offer.round) == ("dev-0", 1)
    assert agent.state.journal_status("run-1", 1) == "acked"


def test_an_invitation_to_another_round_or_run_does_nothing(world):
    broker, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.invite("dev-0", round_no=1)  # left over from round 1
    orch.publish_task(orch.task(2, participants=[], invited=5))
    pump(agent, orch)
    orch.invite("dev-0", round_no=2, run_id="another-run")
    pump(agent, orch)
    assert orch.requests == [] and orch.offers == [] and backend.loads == 0
    assert agent.state.journal_status("run-1", 2) == ""


def test_an_invitation_naming_another_device_is_refused(world, caplog):
    _, _, orch, make_agent, _ = world
    agent = make_agent()
    forged = Invitation(run_id="run-1", round=1, agent="dev-1")
    orch.link.publish(orch.topics.agent_invite("dev-0"), forged.encode(), retain=True)
    orch.publish_task(orch.task(participants=[], invited=2))
    with caplog.at_level(logging.WARNING):
        pump(agent, orch)
    assert orch.offers == [] and "names another device" in caplog.text


def test_a_restarted_agent_learns_its_invitation_again_from_the_retained_message(world):
    _, _, orch, make_agent, _ = world
    first = make_agent()
    orch.invite("dev-0")
    orch.publish_task(orch.task(participants=[], invited=3))
    first.close()  # stopped before it handled either message; nothing is sent again
    again = make_agent()
    pump(again, orch)
    assert [o.agent for o in orch.offers] == ["dev-0"]


def test_a_task_naming_an_optimizer_the_bundle_lacks_aborts_with_what_it_carries(world):
    _, _, orch, make_agent, _ = world
    backend = FakeBackend()
    agent = make_agent(backend)
    orch.publish_task(orch.task(config=TrainConfig(optimizer="adamw")))  # the toy carries sgd
    pump(agent, orch)
    (abort,) = orch.aborts
    assert abort.reason == (
        "the round asks for optimizer 'adamw': bundle 'toy' carries sgd; got 'adamw' (choose "
        "one it carries, or re-export it with --optimizers sgd,adamw)"
    )
    assert backend.steps == 0 and orch.offers == []
    assert agent.state.journal_status("run-1", 1) == "aborted"
