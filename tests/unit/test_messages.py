import json

import pytest

from fedge.protocol.errors import MessageError
from fedge.protocol.messages import (
    MAX_CONTROL_BYTES,
    BlobRef,
    FetchRequest,
    RoundTask,
    Status,
    TrainConfig,
    UpdateOffer,
    parse_message,
)

SHA = "a" * 64


def _task(**kw):
    base = dict(
        run_id="r1",
        round=3,
        model_version=2,
        state="open",
        bundle_hash=SHA,
        bundle=BlobRef(SHA, 10, 1),
        params=BlobRef(SHA, 600_000, 2),
        participants=["dev-0", "dev-1"],
        config=TrainConfig(local_epochs=2, batch_size=16),
        deadline=5.0,
    )
    base.update(kw)
    return RoundTask(**base)


def test_round_trip_of_every_field():
    task = _task()
    back = parse_message(task.encode())
    assert back == task
    offer = UpdateOffer(
        msg_id="m1",
        agent="dev-0",
        run_id="r1",
        round=3,
        model_version=2,
        blob=BlobRef(SHA, 5, 1),
        num_samples=120,
        metrics={"loss": 0.5},
    )
    assert parse_message(offer.encode(), UpdateOffer) == offer


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"type":"nope"}', "unknown message type"),
        (b'{"type":"status","state":"online"}', "missing field 'agent'"),
        (b'{"type":"status","agent":"dev/0","state":"online"}', "invalid agent id"),
        (b'{"type":"status","agent":"dev-0","state":"dancing"}', "state 'dancing' unknown"),
        (
            b'{"type":"status","agent":"dev-0","state":"online","num_samples":"12"}',
            "expected an integer",
        ),
        (b'{"type":"status","agent":"dev-0","state":"online","eligible":1}', "expected true/false"),
        (
            b'{"type":"fetch","msg_id":"x","agent":"a","sha256":"zz","indices":[0]}',
            "64 lowercase hex",
        ),
        (
            b'{"type":"fetch","msg_id":"x","agent":"a","sha256":"' + b"a" * 64 + b'","indices":[]}',
            "1-256",
        ),
    ],
)
def test_malformed_messages_name_the_problem(payload, fragment):
    with pytest.raises(MessageError, match=fragment):
        parse_message(payload)


def test_non_finite_metric_is_refused():
    data = json.loads(
        UpdateOffer(
            msg_id="m",
            agent="a",
            run_id="r",
            round=1,
            model_version=0,
            blob=BlobRef(SHA, 1, 1),
            num_samples=1,
        ).encode()
    )
    data["metrics"] = {"loss": float("nan")}
    with pytest.raises(MessageError, match="finite"):
        parse_message(json.dumps(data).encode())


def test_oversize_and_wrong_type_refused():
    with pytest.raises(MessageError, match="limit"):
        parse_message(b"{" + b" " * MAX_CONTROL_BYTES + b"}")
    with pytest.raises(MessageError, match="expected a 'round'"):
        parse_message(Status(agent="dev-0", state="online").encode(), RoundTask)


def test_inconsistent_blob_ref_refused():
    with pytest.raises(MessageError, match="inconsistent"):
        parse_message(_task(params=BlobRef(SHA, 100, 0)).encode())


def test_fetch_request_round_trip():
    req = FetchRequest(msg_id="m", agent="dev-1", sha256=SHA, indices=[0, 1, 2])
    assert parse_message(req.encode()) == req
