import dataclasses
import json
import typing

import pytest

from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.errors import MessageError
from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import (
    MAX_CONTROL_BYTES,
    MAX_INLINE_MESSAGE_BYTES,
    Ack,
    BlobRef,
    EvalReport,
    FetchRequest,
    RoundAbort,
    RoundEvent,
    RoundTask,
    StatsReport,
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
        (b'{"type":"status","agent":"dev/0","state":"online"}', "status.agent must be 1-64"),
        (
            b'{"type":"status","agent":"dev-0","state":"dancing"}',
            "state must be one of .*'dancing'",
        ),
        (
            b'{"type":"status","agent":"dev-0","state":"online","num_samples":"12"}',
            "num_samples must be an integer, got str",
        ),
        (
            b'{"type":"status","agent":"dev-0","state":"online","eligible":1}',
            "eligible must be true or false",
        ),
        (
            b'{"type":"fetch","msg_id":"x","agent":"a","sha256":"zz","indices":[0]}',
            "64 lowercase hex",
        ),
        (
            b'{"type":"fetch","msg_id":"x","agent":"a","sha256":"' + b"a" * 64 + b'","indices":[]}',
            "indices must have at least 1",
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
    # Regression: an integer beyond float range for a float field raised OverflowError
    data["metrics"] = {"loss": 10**400}
    with pytest.raises(MessageError, match="update.metrics.loss must be a finite number"):
        parse_message(json.dumps(data).encode())


def test_oversize_and_wrong_type_refused():
    with pytest.raises(MessageError, match="limit"):
        parse_message(b"{" + b" " * MAX_INLINE_MESSAGE_BYTES + b"}")
    # only an update offer (which may carry its delta inline) is allowed past 64 KiB
    padded = b'{"type":"status","agent":"dev-0","state":"idle"' + b" " * MAX_CONTROL_BYTES + b"}"
    with pytest.raises(MessageError, match=f"status message is .* limit {MAX_CONTROL_BYTES}"):
        parse_message(padded)
    with pytest.raises(MessageError, match="expected a 'round'"):
        parse_message(Status(agent="dev-0", state="online").encode(), RoundTask)


def test_inconsistent_blob_ref_refused():
    with pytest.raises(MessageError, match="inconsistent"):
        parse_message(_task(params=BlobRef(SHA, 100, 0)).encode())


def test_fetch_request_round_trip():
    req = FetchRequest(msg_id="m", agent="dev-1", sha256=SHA, indices=[0, 1, 2])
    assert parse_message(req.encode()) == req


# ---- bounds: every field of every message type ----

HUGE = 10**20
OFFER = UpdateOffer(
    msg_id="m", agent="dev-0", run_id="r", round=1, model_version=0,
    blob=BlobRef(SHA, 1, 1), num_samples=1,
)  # fmt: skip
VALID: dict[str, dict] = {
    "status": json.loads(Status(agent="dev-0", state="idle", num_samples=5, ts=1.7e9).encode()),
    "round": json.loads(_task().encode()),
    "fetch": json.loads(FetchRequest(msg_id="m", agent="a", sha256=SHA, indices=[0]).encode()),
    "update": json.loads(OFFER.encode()),
    "ack": json.loads(
        Ack(msg_id="m", agent="a", run_id="r", round=1, sha256=SHA, accepted=True).encode()
    ),
    "abort": json.loads(
        RoundAbort(msg_id="m", agent="a", run_id="r", round=1, reason="busy").encode()
    ),
    "eval": json.loads(
        EvalReport(
            msg_id="m", agent="a", run_id="r", round=1, model_version=1, num_samples=3
        ).encode()
    ),
    "stats": json.loads(
        StatsReport("m", "a", "r", 1, 0, 3, [3, 3], [1.5, -2.0], [1.0, 4.0]).encode()
    ),
    "event": json.loads(
        RoundEvent(run_id="r", kind="round_started", round=1, model_version=0, ts=1.7e9).encode()
    ),
    # asynchronous runs (protocol/async_messages.py registers them)
    "async": json.loads(AsyncAnnounce("r", 1, "open", SHA, slots_free=2).encode()),
    "slot_request": json.loads(SlotRequest("m", "a", "r").encode()),
    # per-device invitations to a synchronous round (protocol/invitations.py registers them)
    "invite": json.loads(Invitation(run_id="r", round=1, agent="dev-0").encode()),
}
LONG = "x" * 5000

# (message type, dotted field, bad value, fragment of the error)
OUT_OF_BOUNDS = [
    ("status", "agent", "", "status.agent must be 1-64"),
    ("status", "state", "asleep", "status.state must be one of"),
    ("status", "backend", LONG, "status.backend must have at most 64"),
    ("status", "num_samples", HUGE, "status.num_samples must be <= 1000000000, got 10{20}"),
    ("status", "num_samples", -1, "status.num_samples must be >= 0"),
    ("status", "eligible", "yes", "status.eligible must be true or false"),
    ("status", "reason", LONG, "status.reason must have at most 4096"),
    ("status", "version", LONG, "status.version must have at most 64"),
    ("status", "ts", 1e300, "status.ts must be <= "),
    ("status", "ts", -5.0, "status.ts must be >= 0"),
    ("round", "run_id", LONG, "round.run_id must have at most 128"),
    ("round", "round", 2**70, "round.round must be <= 1000000000"),
    ("round", "round", -1, "round.round must be >= 0"),
    ("round", "model_version", 2**63, "round.model_version must be <= "),
    ("round", "state", "paused", "round.state must be one of"),
    ("round", "bundle_hash", "Z" * 64, "round.bundle_hash must be up to 64 lowercase hex"),
    ("round", "bundle.size", 2**63, "round.bundle.size must be <= 536870912"),
    ("round", "bundle.chunks", 2**40, "round.bundle.chunks must be <= "),
    ("round", "bundle.sha256", "a" * 63, "round.bundle.sha256 must be 64 lowercase hex"),
    ("round", "params.size", -1, "round.params.size must be >= 0"),
    ("round", "participants", ["d"] * 10_001, "round.participants must have at most 10000"),
    ("round", "participants", ["a/b"], r"round.participants\[0\] must be 1-64"),
    ("round", "invited", -1, "round.invited must be >= 0"),
    ("round", "invited", HUGE, "round.invited must be <= 1000000000"),
    ("round", "config.local_epochs", 0, "round.config.local_epochs must be >= 1"),
    ("round", "config.local_epochs", HUGE, "round.config.local_epochs must be <= 1000"),
    ("round", "config.batch_size", 0, "round.config.batch_size must be >= 1"),
    ("round", "config.max_samples", HUGE, "round.config.max_samples must be <= "),
    ("round", "config.seed", 2**64, "round.config.seed must be <= "),
    ("round", "config.learning_rate", -0.1, "round.config.learning_rate must be >= 0"),
    ("round", "config.optimizer", "adam", "round.config.optimizer must be one of '', 'sgd'"),
    ("round", "config.weight_decay", 11.0, "round.config.weight_decay must be <= 10"),
    ("round", "config.weight_decay", -0.5, "weight_decay must be >= 0 .or -1"),
    ("round", "config.proximal_mu", 1e300, "round.config.proximal_mu must be <= "),
    ("round", "config.compression", "zip", "round.config.compression must be one of '', 'int8'"),
    ("round", "config.topk_fraction", 1.5, "round.config.topk_fraction must be <= 1"),
    ("round", "config.clip_norm", -1.0, "round.config.clip_norm must be >= 0"),
    ("round", "config.noise_multiplier", 10**400, "noise_multiplier must be a finite number"),
    ("round", "config.evaluate_only", 0, "round.config.evaluate_only must be true or false"),
    ("round", "config.statistics_only", 1, "round.config.statistics_only must be true or false"),
    ("round", "standardize.mean", [0.0] * 513, "round.standardize.mean must have at most 512"),
    ("round", "standardize.std", [0.0], r"round.standardize.std\[0\] must be > 0"),
    ("round", "standardize", {"mean": [1.0], "std": []}, "1 means but 0 stds"),
    ("round", "deadline", 1e11, "round.deadline must be <= "),
    ("round", "retry_after", 1e9, "round.retry_after must be <= "),
    ("round", "params_pushed", "yes", "round.params_pushed must be true or false"),
    ("round", "inline_max_bytes", 2**20, "round.inline_max_bytes must be <= 262144"),
    ("round", "inline_max_bytes", -1, "round.inline_max_bytes must be >= 0"),
    ("fetch", "msg_id", "", "fetch.msg_id must have at least 1"),
    ("fetch", "msg_id", LONG, "fetch.msg_id must have at most 64"),
    ("fetch", "agent", "+", "fetch.agent must be 1-64"),
    ("fetch", "sha256", "A" * 64, "fetch.sha256 must be 64 lowercase hex"),
    ("fetch", "indices", list(range(257)), "fetch.indices must have at most 256"),
    ("fetch", "indices", [2**70], r"fetch.indices\[0\] must be <= "),
    ("fetch", "indices", [-1], r"fetch.indices\[0\] must be >= 0"),
    ("update", "msg_id", ["m"], "update.msg_id must be a string"),
    ("update", "agent", "dev 0", "update.agent must be 1-64"),
    ("update", "round", 2**70, "update.round must be <= 1000000000"),
    ("update", "model_version", -3, "update.model_version must be >= 0"),
    ("update", "run_id", 5, "update.run_id must be a string"),
    ("update", "blob.size", 2**63, "update.blob.size must be <= 536870912"),
    ("update", "blob.chunks", 2**63, "update.blob.chunks must be <= "),
    ("update", "num_samples", 0, "update.num_samples must be >= 1"),
    ("update", "num_samples", HUGE, "update.num_samples must be <= 1000000000"),
    ("update", "metrics", {f"m{i}": 1.0 for i in range(65)}, "update.metrics must have at most 64"),
    ("update", "metrics", {"x" * 65: 1.0}, "update.metrics key .* must have at most 64"),
    ("update", "metrics", {"": 1.0}, "update.metrics key .* must have at least 1"),
    ("update", "metrics", {"loss": "low"}, "update.metrics.loss must be a number"),
    ("update", "inline", "A" * 349_532, "update.inline must have at most 349528"),
    ("update", "inline", "not base64!", "update.inline must be base64"),
    ("ack", "msg_id", "", "ack.msg_id must have at least 1"),
    ("ack", "agent", "-x", "ack.agent must be 1-64"),
    ("ack", "run_id", LONG, "ack.run_id must have at most 128"),
    ("ack", "round", HUGE, "ack.round must be <= "),
    ("ack", "sha256", "eval/r/1", "ack.sha256 must be 64 lowercase hex digits or empty"),
    ("ack", "accepted", None, "ack.accepted must be true or false, got null"),
    ("ack", "reason", LONG, "ack.reason must have at most 4096"),
    ("abort", "msg_id", LONG, "abort.msg_id must have at most 64"),
    ("abort", "run_id", None, "abort.run_id must be a string, got null"),
    ("abort", "round", 2**70, "abort.round must be <= "),
    ("abort", "reason", LONG, "abort.reason must have at most 4096"),
    ("abort", "agent", "", "abort.agent must be 1-64"),
    ("eval", "msg_id", 7, "eval.msg_id must be a string"),
    ("eval", "agent", "a#", "eval.agent must be 1-64"),
    ("eval", "run_id", LONG, "eval.run_id must have at most 128"),
    ("eval", "round", 2**70, "eval.round must be <= 1000000000"),
    ("eval", "model_version", HUGE, "eval.model_version must be <= "),
    ("eval", "num_samples", 0, "eval.num_samples must be >= 1"),
    ("eval", "num_samples", HUGE, "eval.num_samples must be <= "),
    ("eval", "metrics", {"acc": float("inf")}, "eval.metrics.acc must be a finite number"),
    ("stats", "msg_id", "", "stats.msg_id must have at least 1"),
    ("stats", "agent", "a/b", "stats.agent must be 1-64"),
    ("stats", "run_id", LONG, "stats.run_id must have at most 128"),
    ("stats", "round", -1, "stats.round must be >= 0"),
    ("stats", "model_version", HUGE, "stats.model_version must be <= "),
    ("stats", "num_samples", 0, "stats.num_samples must be >= 1"),
    ("stats", "count", [], "stats.count must have at least 1"),
    ("stats", "count", [0, 3], r"stats.count\[0\] must be >= 1"),
    ("stats", "sum", [1.0] * 513, "stats.sum must have at most 512"),
    ("stats", "sum", [1.0, float("inf")], r"stats.sum\[1\] must be a finite number"),
    ("stats", "sumsq", [-1.0, 4.0], r"stats.sumsq\[0\] must be >= 0"),
    ("stats", "sumsq", [1.0], "stats lists differ in length"),
    ("event", "run_id", LONG, "event.run_id must have at most 128"),
    ("event", "kind", "party", "event.kind must be one of"),
    ("event", "round", HUGE, "event.round must be <= "),
    ("event", "model_version", -1, "event.model_version must be >= 0"),
    ("event", "reports", HUGE, "event.reports must be <= "),
    ("event", "participants", -1, "event.participants must be >= 0"),
    ("event", "metrics", {"loss": 10**400}, "event.metrics.loss must be a finite number"),
    ("event", "ts", float("nan"), "event.ts must be a finite number"),
    ("async", "run_id", LONG, "async.run_id must have at most 128"),
    ("async", "model_version", -1, "async.model_version must be >= 0"),
    ("async", "state", "paused", "async.state must be one of"),
    ("async", "bundle_hash", "XYZ", "async.bundle_hash must be"),
    ("async", "slots_free", -1, "async.slots_free must be >= 0"),
    ("async", "training", HUGE, "async.training must be <= "),
    ("async", "retry_after", -1.0, "async.retry_after must be >= 0"),
    ("slot_request", "msg_id", "", "slot_request.msg_id must have at least 1"),
    ("slot_request", "agent", "a/b", "slot_request.agent must be 1-64"),
    ("slot_request", "run_id", LONG, "slot_request.run_id must have at most 128"),
    ("invite", "run_id", LONG, "invite.run_id must have at most 128"),
    ("invite", "round", 2**70, "invite.round must be <= 1000000000"),
    ("invite", "round", -1, "invite.round must be >= 0"),
    ("invite", "agent", "a/b", "invite.agent must be 1-64"),
    ("invite", "agent", "", "invite.agent must be 1-64"),
]


def _with(kind: str, dotted: str, value) -> bytes:
    data = json.loads(json.dumps(VALID[kind]))
    target = data
    *path, last = dotted.split(".")
    for part in path:
        target = target[part]
    target[last] = value
    return json.dumps(data).encode()


def test_every_message_type_and_field_has_a_bounds_case():
    from fedge.protocol.messages import MESSAGE_TYPES

    assert set(VALID) == set(MESSAGE_TYPES)
    for kind, data in VALID.items():
        assert parse_message(json.dumps(data).encode()).TYPE == kind  # the bases are valid
        fields = {f for k, f, _v, _m in OUT_OF_BOUNDS if k == kind}
        tops = {f.split(".")[0] for f in fields}
        missing = {f.name for f in dataclasses.fields(MESSAGE_TYPES[kind])} - tops
        assert not missing, f"{kind}: no out-of-bounds case for {sorted(missing)}"


@pytest.mark.parametrize("kind, dotted, value, fragment", OUT_OF_BOUNDS)
def test_out_of_bounds_field_is_a_message_error_naming_it(kind, dotted, value, fragment):
    with pytest.raises(MessageError, match=fragment):
        parse_message(_with(kind, dotted, value))


@pytest.mark.parametrize(
    "kind, dotted, value",
    [
        ("status", "num_samples", 1_000_000_000),  # the limits themselves are allowed
        ("status", "ts", 0),  # an int where a float is expected
        ("status", "reason", ""),
        ("round", "round", 1_000_000_000),
        ("round", "participants", []),
        ("round", "bundle_hash", ""),
        ("round", "params.size", 512 * 1024 * 1024),
        ("round", "config.topk_fraction", 1),
        ("round", "deadline", 1.7e9),
        ("fetch", "indices", list(range(256))),
        ("update", "metrics", {"loss": -3, "val_accuracy": 0.5}),
        ("ack", "sha256", ""),
        ("eval", "metrics", {}),
        ("event", "reports", 0),
    ],
)
def test_values_at_the_limits_are_accepted(kind, dotted, value):
    parse_message(_with(kind, dotted, value))


def test_huge_integers_in_json_are_a_message_error():
    # Regression: a 5000-digit integer made json.loads raise a bare ValueError
    payload = b'{"type":"status","agent":"a","state":"idle","num_samples":' + b"9" * 5000 + b"}"
    with pytest.raises(MessageError, match="not valid JSON"):
        parse_message(payload)


def test_blob_ref_from_a_chunk_header_is_bounded():
    with pytest.raises(MessageError, match="blob.size must be <= "):
        BlobRef(SHA, 2**63, 1).validate()
    with pytest.raises(MessageError, match="inconsistent"):
        BlobRef(SHA, 3, 4).validate()


def test_topk_without_a_fraction_is_refused():
    data = json.loads(_task(config=TrainConfig(compression="topk", topk_fraction=0.1)).encode())
    parse_message(json.dumps(data).encode())
    data["config"]["topk_fraction"] = 0
    with pytest.raises(MessageError, match="topk_fraction in"):
        parse_message(json.dumps(data).encode())


def test_compression_names_match_the_codec():
    from fedge.protocol.compression import METHODS
    from fedge.protocol.messages import COMPRESSIONS

    assert tuple(COMPRESSIONS) == tuple(METHODS)


def test_field_checker_literal_optional_and_error_class():
    from typing import Literal

    from fedge.protocol.errors import ConfigError
    from fedge.protocol.fields import Range, coerce

    assert coerce("open", Literal["open", "closed"], "s", MessageError) == "open"
    with pytest.raises(MessageError, match="s must be one of 'open', 'closed'; got 'x'"):
        coerce("x", Literal["open", "closed"], "s", MessageError)
    assert coerce(None, int | None, "n", MessageError) is None
    with pytest.raises(MessageError, match="n: unexpected value"):
        coerce("1", int | None, "n", MessageError)
    with pytest.raises(ConfigError, match="k must be > 0, got 0"):
        coerce(0, typing.Annotated[float, Range(0, None, lo_open=True)], "k", ConfigError)
    assert coerce(3, float, "f", MessageError) == 3.0


def test_shared_limits_agree_with_their_users():
    import re
    from pathlib import Path

    from fedge.orchestrator import server
    from fedge.protocol import chunks, fields
    from fedge.protocol.messages import EVENT_KINDS

    assert fields.MAX_OBJECT_BYTES == chunks.MAX_OBJECT_BYTES
    # every event kind the orchestrator emits is one its watchers (the demo) accept
    sources = Path(server.__file__).parent.glob("*.py")
    emitted = {k for p in sources for k in re.findall(r'_event\(\s*"(\w+)"', p.read_text())}
    assert emitted and emitted <= set(EVENT_KINDS), emitted - set(EVENT_KINDS)


def test_an_offer_carries_an_inline_delta_up_to_the_inline_limit():
    import base64

    from fedge.protocol.fields import MAX_INLINE_BYTES

    blob = bytes(range(256)) * (MAX_INLINE_BYTES // 256)
    offer = dataclasses.replace(OFFER, inline=base64.b64encode(blob).decode())
    data = offer.encode()
    assert MAX_CONTROL_BYTES < len(data) <= MAX_INLINE_MESSAGE_BYTES < 2_000_000
    assert parse_message(data) == offer  # a declared bound beats the default string limit


def test_the_base64_check_accepts_exactly_what_its_regex_did():
    """fields.Base64Text replaced ``[A-Za-z0-9+/]*={0,2}`` (a regex over ~26,000 characters
    per inline offer): the same strings pass."""
    import base64
    import re

    from fedge.protocol.fields import is_base64_text

    samples = [
        "",
        "=",
        "==",
        "===",
        "QQ==",
        "QQ=",
        "QQ",
        "QQ===",
        "Q=Q=",
        "a+/9",
        "a-_9",
        "ab cd",
        "abc\n",
        "é",
        "QUJD\u0660",
        base64.b64encode(bytes(range(256))).decode(),
    ]
    for text in samples:
        want = re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text) is not None
        assert is_base64_text(text) is want, text
    bad = dataclasses.replace(OFFER, inline="QQ=Q").encode()
    with pytest.raises(MessageError, match="update.inline must be base64"):
        parse_message(bad)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_to_dict_is_what_dataclasses_asdict_gives_and_shares_no_container(kind):
    """``Message.to_dict`` skips asdict's deep copies (an orchestrator encodes two messages per
    device and round): the same dict, and no list or dict of the message handed out."""
    msg = parse_message(json.dumps(VALID[kind]).encode())
    out = msg.to_dict()
    assert out == dataclasses.asdict(msg) | {"type": kind}
    assert parse_message(msg.encode()) == msg

    def containers(value, found):
        if isinstance(value, (list, dict)):
            found.append(id(value))
            for v in value.values() if isinstance(value, dict) else value:
                containers(v, found)
        return found

    mine = containers([getattr(msg, f.name) for f in dataclasses.fields(msg)], [])[1:]
    assert not set(mine) & set(containers(out, []))
