"""Small objects skip the pull round trip: parameters pushed with the task, deltas inline in
the offer. A real Orchestrator, SQLite Store and toy bundle on the in-memory transport with
scripted devices and a fake clock (as tests/unit/test_orchestrator_rounds.py)."""

from __future__ import annotations

import numpy as np
from support.memory_device import MemoryFederation

from fedge.protocol.chunks import decode_frame
from fedge.protocol.fields import MAX_INLINE_BYTES
from fedge.protocol.tensors import encode_tensors

Federation = MemoryFederation


def delta(template: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {n: np.full(a.shape, value, a.dtype) for n, a in template.items()}


def test_small_parameters_come_with_the_task_without_a_fetch(tmp_path):
    fed = Federation(tmp_path)
    task = fed.devices[0].task
    assert task is not None and task.params_pushed and task.inline_max_bytes == MAX_INLINE_BYTES
    v0 = fed.version(0)
    for d in fed.devices:  # nobody asked: exactly the object's one frame arrived
        assert d.frames_received == task.params.chunks == 1
        assert d.params is not None
        for name in v0:
            np.testing.assert_array_equal(d.params[name], v0[name])
    assert fed.orch.blobs.bytes_sent > 2 * task.params.size  # counted as bytes down


def test_a_large_round_shares_one_retained_parameters_frame(tmp_path):
    """From ``shared_params_from`` participants on, the parameters' frame is published once,
    retained on round/params, instead of once on each participant's down topic."""
    fed = Federation(tmp_path, 3, shared_params_from=3)
    task = fed.devices[0].task
    assert task is not None and task.params_pushed
    v0 = fed.version(0)
    for d in fed.devices:
        assert d.frames_received == 1 and d.params is not None
        for name in v0:
            np.testing.assert_array_equal(d.params[name], v0[name])
    late = fed.broker.client("late")  # retained: a device subscribing later gets it too
    late.subscribe(fed.orch.topics.round_params)
    late.start()
    topic, frame = late.get(timeout=1)
    assert decode_frame(frame).sha256 == task.params.sha256
    assert fed.orch.blobs.bytes_sent == len(frame)  # one copy went out, not three


def test_a_round_under_the_threshold_pushes_to_each_participant(tmp_path):
    fed = Federation(tmp_path, 3, shared_params_from=4)
    late = fed.broker.client("late")
    late.subscribe(fed.orch.topics.round_params)
    late.start()
    assert late.get(timeout=0) is None  # nothing shared
    assert all(d.frames_received == 1 and d.params is not None for d in fed.devices)


def test_parameters_over_the_limit_keep_the_pull_path(tmp_path):
    fed = Federation(tmp_path, inline_max_bytes=100)  # the toy parameters are 168 bytes
    a, b = fed.devices
    assert a.task is not None and not a.task.params_pushed and a.task.params.size > 100
    assert a.frames_received == 0 and a.params is None  # nothing pushed
    for d, value in ((a, 0.1), (b, 0.3)):
        d.fetch_params()
        fed.settle()
        assert d.params is not None
        d.offer(delta(d.params, value))  # over the limit: no inline, the orchestrator fetches
        fed.settle()
    assert a.fetches_served == b.fetches_served == 1
    r = fed.round()
    assert (r.state, r.reports) == ("committed", 2)
    v0, v1 = fed.version(0), fed.version(1)
    for name in v0:
        np.testing.assert_allclose(v1[name] - v0[name], 0.2, atol=1e-6)


def test_an_inline_delta_is_counted_without_a_fetch(tmp_path):
    fed = Federation(tmp_path)
    a, b = fed.devices
    template = fed.version(0)
    a.offer(delta(template, 0.1), inline=True)
    b.offer(delta(template, 0.3), inline=True)
    fed.settle()
    assert a.fetches_served == b.fetches_served == 0
    assert all(ack.accepted and not ack.reason for d in (a, b) for ack in d.acks)
    r = fed.round()
    assert (r.state, r.reports, r.rejected) == ("committed", 2, 0)
    v1 = fed.version(1)
    for name in template:  # the same exact FedAvg as fetched deltas give
        np.testing.assert_allclose(v1[name] - template[name], 0.2, atol=1e-6)
    assert r.metrics["bytes_up"] > 2 * len(encode_tensors(delta(template, 0.1)))


def test_an_inline_delta_failing_its_sha256_is_rejected_with_the_reason(tmp_path):
    fed = Federation(tmp_path)
    a, _b = fed.devices
    template = fed.version(0)
    forged = encode_tensors(delta(template, 5.0))  # same size, other bytes
    a.offer(delta(template, 0.1), inline=forged)
    fed.settle()
    (ack,) = a.acks
    assert not ack.accepted
    assert "inline delta fails its integrity check" in ack.reason and "sha256" in ack.reason
    assert a.fetches_served == 0
    assert fed.orch.current is not None and fed.orch.current.reports == 0
    assert fed.orch.store.get_round(fed.orch.run_id, 1).rejected == 1


def test_an_inline_delta_of_the_wrong_size_is_rejected(tmp_path):
    fed = Federation(tmp_path)
    a, _b = fed.devices
    a.offer(delta(fed.version(0), 0.1), inline=b"short")
    fed.settle()
    (ack,) = a.acks
    assert not ack.accepted and "5 bytes" in ack.reason


def test_an_inline_delta_over_the_limit_is_fetched_as_a_blob(tmp_path):
    fed = Federation(tmp_path, inline_max_bytes=100)
    a, b = fed.devices
    for d, value in ((a, 0.1), (b, 0.3)):
        d.fetch_params()
        fed.settle()
        d.offer(delta(d.params, value), inline=True)  # the device inlines it anyway
        fed.settle()
    assert a.fetches_served == b.fetches_served == 1  # the orchestrator fetched the blob
    r = fed.round()
    assert (r.state, r.reports) == ("committed", 2)
