"""Control messages on the wire: small JSON objects, validated field by field on receipt.

Every message names its ``type``; those that ask for something carry a ``msg_id`` so that
receivers can drop the duplicates QoS 1 delivers after reconnects. Anything received is
untrusted: ``parse_message`` checks types, ranges and sizes and raises MessageError with the
first problem, never a bare KeyError.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar, overload

from .errors import MessageError
from .fields import (
    MAX_CHUNKS,
    MAX_FEATURES,
    MAX_INLINE_B64,
    MAX_OBJECT_BYTES,
    MAX_PARTICIPANTS,
    MAX_SAMPLES,
    AgentId,
    Base64,
    Fraction,
    InlineSize,
    Len,
    Match,
    Metrics,
    Name,
    NonNegative,
    OneOf,
    OptimizerName,
    Range,
    Reason,
    Round,
    Samples,
    Seconds,
    Sha256,
    Timestamp,
    Version,
    WeightDecay,
    build,
    coerce,
)

MAX_CONTROL_BYTES = 64 * 1024  # control messages are small; blobs travel as chunks
# ... except an offer carrying its small delta inline (base64): still far below MQTT's 2 MB
MAX_INLINE_MESSAGE_BYTES = MAX_CONTROL_BYTES + MAX_INLINE_B64
MAX_FETCH_INDICES = 256
COMPRESSIONS = ("", "int8", "topk")  # = protocol.compression.METHODS (a test keeps them equal)
STATUS_STATES = ("online", "idle", "training", "uploading", "ineligible", "offline")
ROUND_STATES = ("open", "closed", "finished")
EVENT_KINDS = (
    "round_started",
    "round_committed",
    "round_evaluated",
    "round_statistics",  # a statistics round combined the federation's feature statistics
    "round_abandoned",
    "run_finished",
    "version_committed",  # asynchronous runs (protocol/async_messages.py)
    "version_evaluated",  # central evaluation of a committed version (after the next round opened)
)

LocalEpochs = Annotated[int, Range(1, 1000)]
BatchSize = Annotated[int, Range(1, 65536)]
Compression = Annotated[str, OneOf(*COMPRESSIONS)]
LearningRate = Annotated[float, Range(0, 1e3)]  # 0 = the bundle's own
ProximalMu = Annotated[float, Range(0, 1e6)]
Seed = Annotated[int, Range(0, 2**32 - 1)]  # numpy's seed range
MsgId = Annotated[str, Len(1, 64)]
RunId = Annotated[str, Len(0, 128)]
ReportSamples = Annotated[int, Range(1, MAX_SAMPLES)]  # a report weighs at least one row
ObjectSize = Annotated[int, Range(0, MAX_OBJECT_BYTES)]
ChunkCount = Annotated[int, Range(0, MAX_CHUNKS)]
ChunkIndex = Annotated[int, Range(0, MAX_CHUNKS - 1)]
ContentHash = Annotated[str, Match(r"[0-9a-f]{0,64}", "up to 64 lowercase hex digits")]
Count = Annotated[int, Range(0, MAX_SAMPLES)]
FeatureValues = Annotated[list[float], Len(0, MAX_FEATURES)]  # each entry finite (coerce)
FeatureStds = Annotated[list[Annotated[float, Range(0, None, lo_open=True)]], Len(0, MAX_FEATURES)]
FeatureCounts = Annotated[list[Annotated[int, Range(1, MAX_SAMPLES)]], Len(1, MAX_FEATURES)]
FeatureSquares = Annotated[list[Annotated[float, Range(0, None)]], Len(1, MAX_FEATURES)]


_ID_PREFIX = uuid.uuid4().hex[:16]  # random per process: ids never repeat across restarts
_ID_COUNTER = itertools.count()


def new_msg_id() -> str:
    """A unique message id: a random per-process prefix and a counter (uuid4 per message read
    the OS's random source, a syscall each: noticeable at 10,000 messages a round)."""
    return f"{_ID_PREFIX}{os.getpid():x}.{next(_ID_COUNTER):x}"  # the pid: forked children


@dataclass(frozen=True)
class BlobRef:
    """Identity of a chunked object: its sha256, size in bytes and number of chunks."""

    sha256: Sha256
    size: ObjectSize
    chunks: ChunkCount

    def validate(self) -> None:
        """Bounds (also for refs built from chunk headers) and consistency of size and chunks."""
        coerce(self.sha256, Sha256, "blob.sha256", MessageError)
        coerce(self.size, ObjectSize, "blob.size", MessageError)
        coerce(self.chunks, ChunkCount, "blob.chunks", MessageError)
        if (self.size > 0) != (self.chunks > 0) or self.chunks > self.size:
            raise MessageError(f"blob size {self.size} / chunks {self.chunks} are inconsistent")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain_fields(obj: object) -> dict[str, Any]:
    """``dataclasses.asdict`` without its ``deepcopy`` of every leaf: new dicts, lists and
    tuples all the way down, the immutable leaves (str, int, float, bool, None) shared. The
    same result for messages (whose fields are only those), ~3x faster: an orchestrator
    encodes two messages per device and round (ack, invitation)."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return {name: _plain(getattr(obj, name)) for name in names}


def _plain(value: object) -> Any:
    if type(value) in (str, int, float, bool) or value is None:
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):  # not a namedtuple
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_fields(value)
    return dataclasses.asdict(_Boxed(value))["value"]  # anything else: as asdict copies it


@dataclass(frozen=True)
class _Boxed:
    value: object


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    MAX_BYTES: ClassVar[int] = MAX_CONTROL_BYTES  # encoded size limit of this message type

    def to_dict(self) -> dict[str, Any]:
        out = _plain_fields(self)
        out["type"] = self.TYPE
        return out

    def encode(self) -> bytes:
        data = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        if len(data) > self.MAX_BYTES:
            raise MessageError(f"{self.TYPE} message is {len(data)} bytes; limit {self.MAX_BYTES}")
        return data

    def validate(self) -> None:  # overridden where fields have extra rules
        """Check rules beyond each field's own type and bounds."""


@dataclass(frozen=True)
class Status(Message):
    """Agent -> everyone (retained). ``state`` is online, training, idle, ineligible or offline."""

    TYPE: ClassVar[str] = "status"
    agent: AgentId
    state: Annotated[str, OneOf(*STATUS_STATES)]
    backend: Name = ""
    num_samples: Samples = 0
    eligible: bool = True
    reason: Reason = ""
    version: Name = ""
    ts: Timestamp = 0.0

    STATES: ClassVar[frozenset[str]] = frozenset(STATUS_STATES)


@dataclass(frozen=True)
class TrainConfig:
    """What an agent does in a round (sent by the orchestrator)."""

    local_epochs: LocalEpochs = 1
    batch_size: BatchSize = 32
    max_samples: Samples = 0  # 0 = all local rows
    seed: Seed = 0
    learning_rate: LearningRate = 0.0  # 0 = the bundle's own
    optimizer: OptimizerName = ""  # "" = the bundle's default (its first); else sgd | adamw
    weight_decay: WeightDecay = -1.0  # -1 = the bundle's own (AdamW only: SGD has none)
    proximal_mu: ProximalMu = 0.0  # FedProx: pull local weights towards the global model
    compression: Compression = ""  # "" (none) | "int8" | "topk": how the agent encodes its delta
    topk_fraction: Fraction = 0.0  # for "topk": the share of entries kept (with error feedback)
    clip_norm: NonNegative = 0.0  # client-level DP: clip the delta to this L2 norm (0 = off)
    noise_multiplier: NonNegative = 0.0  # client-level DP: noise std = multiplier * clip_norm
    evaluate_only: bool = False  # federated evaluation: evaluate the global model, no training
    # federated standardization: report per-feature count, sum, sum of squares; no training
    statistics_only: bool = False

    COMPRESSIONS: ClassVar[frozenset[str]] = frozenset(COMPRESSIONS)

    def validate(self) -> None:
        if self.compression == "topk" and self.topk_fraction <= 0:
            raise MessageError("train config compression 'topk' needs topk_fraction in (0, 1]")
        if self.weight_decay < 0 and self.weight_decay != -1:
            raise MessageError(
                f"train config weight_decay must be >= 0 (or -1: the bundle's own), got "
                f"{self.weight_decay}"
            )
        if self.evaluate_only and self.statistics_only:
            raise MessageError("train config: evaluate_only and statistics_only exclude each other")


@dataclass(frozen=True)
class Standardization:
    """The run's feature standardization: devices feed ``(x - mean) / std`` per feature.
    Empty lists: off (the default, and what older orchestrators send by omission)."""

    mean: FeatureValues = field(default_factory=list)
    std: FeatureStds = field(default_factory=list)

    def validate(self) -> None:
        if len(self.mean) != len(self.std):
            raise MessageError(
                f"standardize has {len(self.mean)} means but {len(self.std)} stds; "
                "they must be one per feature"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.mean)


@dataclass(frozen=True)
class RoundTask(Message):
    """Orchestrator -> everyone (retained on round/current): the open round, or none."""

    TYPE: ClassVar[str] = "round"
    run_id: RunId
    round: Round
    model_version: Version
    state: Annotated[str, OneOf(*ROUND_STATES)]
    bundle_hash: ContentHash
    bundle: BlobRef
    params: BlobRef
    # Synchronous rounds name no one here (each invited device gets an Invitation on its own
    # topic, protocol/invitations.py) and say only how many are invited; a slot task of an
    # asynchronous run, sent to one device's cmd topic, names that device.
    participants: Annotated[list[AgentId], Len(0, MAX_PARTICIPANTS)] = field(default_factory=list)
    invited: Count = 0
    config: TrainConfig = field(default_factory=TrainConfig)
    deadline: Timestamp = 0.0
    # pace steering: devices not in this round (or done with it) check back after this many s
    retry_after: Seconds = 0.0
    standardize: Standardization = field(default_factory=Standardization)
    # the orchestrator publishes ``params`` unasked on each participant's down topic (a small
    # object): a participant waits a moment for it before asking (docs/wire-protocol.md)
    params_pushed: bool = False
    # the largest delta (bytes) the orchestrator takes inline in an UpdateOffer; 0: none
    inline_max_bytes: InlineSize = 0


@dataclass(frozen=True)
class FetchRequest(Message):
    """Either side asks the other for chunks of an object it announced."""

    TYPE: ClassVar[str] = "fetch"
    msg_id: MsgId
    agent: AgentId
    sha256: Sha256
    indices: Annotated[list[ChunkIndex], Len(1, MAX_FETCH_INDICES)]


@dataclass(frozen=True)
class UpdateOffer(Message):
    """Agent -> orchestrator: a finished round's delta is ready to be fetched."""

    TYPE: ClassVar[str] = "update"
    MAX_BYTES: ClassVar[int] = MAX_INLINE_MESSAGE_BYTES
    msg_id: MsgId
    agent: AgentId
    run_id: RunId
    round: Round
    model_version: Version
    blob: BlobRef
    num_samples: ReportSamples
    metrics: Metrics = field(default_factory=dict)
    # the delta itself (base64) when it is at most the task's ``inline_max_bytes``: no fetch.
    # Checked against ``blob`` (size, sha256) like a fetched one.
    inline: Base64 = ""


@dataclass(frozen=True)
class Ack(Message):
    """Orchestrator -> agent: an update was accepted (or rejected, with the reason)."""

    TYPE: ClassVar[str] = "ack"
    msg_id: MsgId
    agent: AgentId
    run_id: RunId
    round: Round
    sha256: Annotated[str, Match(r"([0-9a-f]{64})?", "64 lowercase hex digits or empty")]
    accepted: bool
    reason: Reason = ""


@dataclass(frozen=True)
class RoundAbort(Message):
    """Agent -> orchestrator: it will not report this round (ineligible, error), and why."""

    TYPE: ClassVar[str] = "abort"
    msg_id: MsgId
    agent: AgentId
    run_id: RunId
    round: Round
    reason: Reason


@dataclass(frozen=True)
class EvalReport(Message):
    """Agent -> orchestrator: metrics of the round's global model on the device's validation
    rows (federated evaluation round). ``num_samples`` weighs them in the federation's mean."""

    TYPE: ClassVar[str] = "eval"
    msg_id: MsgId
    agent: AgentId
    run_id: RunId
    round: Round
    model_version: Version
    num_samples: ReportSamples
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class StatsReport(Message):
    """Agent -> orchestrator: per-feature count, sum and sum of squares of the device's rows
    (statistics round of federated standardization; a few numbers per feature, never rows)."""

    TYPE: ClassVar[str] = "stats"
    msg_id: MsgId
    agent: AgentId
    run_id: RunId
    round: Round
    model_version: Version
    num_samples: ReportSamples
    count: FeatureCounts
    sum: Annotated[list[float], Len(1, MAX_FEATURES)]
    sumsq: FeatureSquares

    def validate(self) -> None:
        if not len(self.count) == len(self.sum) == len(self.sumsq):
            raise MessageError(
                f"stats lists differ in length: count {len(self.count)}, sum {len(self.sum)}, "
                f"sumsq {len(self.sumsq)}; each must have one entry per feature"
            )


@dataclass(frozen=True)
class RoundEvent(Message):
    """Orchestrator -> watchers (orchestrator/events): progress a person can follow."""

    TYPE: ClassVar[str] = "event"
    run_id: RunId
    kind: Annotated[str, OneOf(*EVENT_KINDS)]
    round: Round
    model_version: Version
    reports: Count = 0
    participants: Count = 0
    metrics: Metrics = field(default_factory=dict)
    ts: Timestamp = 0.0


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Status,
        RoundTask,
        FetchRequest,
        UpdateOffer,
        Ack,
        RoundAbort,
        EvalReport,
        StatsReport,
        RoundEvent,
    )
}


M = TypeVar("M", bound="Message")


@overload
def parse_message(payload: bytes, expected: type[M]) -> M: ...
@overload
def parse_message(payload: bytes, expected: None = None) -> Message: ...
def parse_message(payload: bytes, expected: type[Message] | None = None) -> Message:
    """Decode and validate one control message; raise MessageError saying what is wrong.

    Every field is checked against its declared type and bounds (protocol.fields) here, before
    any state or storage sees the value.
    """
    if len(payload) > MAX_INLINE_MESSAGE_BYTES:
        raise MessageError(
            f"control message is {len(payload)} bytes; limit {MAX_INLINE_MESSAGE_BYTES}"
        )
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError also covers integers over Python's 4300-digit limit; RecursionError,
        # deep nesting
        raise MessageError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {kind!r}; known: {sorted(MESSAGE_TYPES)}")
    if expected is not None and cls is not expected:
        raise MessageError(f"expected a {expected.TYPE!r} message here, got {kind!r}")
    if len(payload) > cls.MAX_BYTES:
        raise MessageError(f"{kind} message is {len(payload)} bytes; limit {cls.MAX_BYTES}")
    message: Message = build(cls, data, kind, MessageError)
    return message
