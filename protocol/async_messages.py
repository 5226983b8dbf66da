"""Wire messages of buffered asynchronous runs (FedBuff), registered into ``MESSAGE_TYPES``.

In an asynchronous run there are no rounds that wait. The orchestrator announces the run on
``round/async`` (retained ``AsyncAnnounce``); an idle, eligible device asks for a training slot
(``SlotRequest`` on its up/msg topic); the orchestrator answers on the device's cmd topic with a
``RoundTask`` whose ``round`` is the slot number, ``participants`` is that device alone,
``model_version`` is the version to train and ``deadline`` is when the slot expires. From there
the device's usual journal/outbox/offer/ack path carries the delta, tagged with the slot and
the version it started from, so a crash on either side is survived the same way as in
synchronous rounds. Fields are bounded like every other message (protocol/fields.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from .fields import AgentId, OneOf, Range, Seconds, Version
from .messages import MESSAGE_TYPES, ContentHash, Message, MsgId, RunId

ASYNC_STATES = ("open", "finished")
SlotCount = Annotated[int, Range(0, 1_000_000)]


@dataclass(frozen=True)
class AsyncAnnounce(Message):
    """Orchestrator -> everyone (retained on round/async): an asynchronous run and its state."""

    TYPE: ClassVar[str] = "async"
    run_id: RunId
    model_version: Version
    state: Annotated[str, OneOf(*ASYNC_STATES)]
    bundle_hash: ContentHash
    slots_free: SlotCount = 0
    training: SlotCount = 0  # devices holding a slot now
    retry_after: Seconds = 1.0  # ask for a slot at most this often


@dataclass(frozen=True)
class SlotRequest(Message):
    """Agent -> orchestrator: this device is idle and eligible; may it train now?"""

    TYPE: ClassVar[str] = "slot_request"
    msg_id: MsgId
    agent: AgentId
    run_id: RunId


for _cls in (AsyncAnnounce, SlotRequest):
    MESSAGE_TYPES.setdefault(_cls.TYPE, _cls)
