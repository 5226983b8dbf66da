"""Wire messages of buffered asynchronous runs (FedBuff), registered into ``MESSAGE_TYPES``.

In an asynchronous run there are no rounds that wait. The orchestrator announces the run on
``round/async`` (retained ``AsyncAnnounce``); an idle, eligible device asks for a training slot
(``SlotRequest`` on its up/msg topic); the orchestrator answers on the device's cmd topic with a
``RoundTask`` whose ``round`` is the slot number, ``participants`` is that device alone,
``model_version`` is the version to train and ``deadline`` is when the slot expires. From there
the device's usual journal/outbox/offer/ack path carries the delta, tagged with the slot and
the version it started from, so a crash on either side is survived the same way as in
synchronous rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .errors import MessageError
from .messages import MESSAGE_TYPES, Message
from .topics import validate_name


@dataclass(frozen=True)
class AsyncAnnounce(Message):
    """Orchestrator -> everyone (retained on round/async): an asynchronous run and its state."""

    TYPE: ClassVar[str] = "async"
    run_id: str
    model_version: int
    state: str  # open | finished
    bundle_hash: str
    slots_free: int = 0
    training: int = 0  # devices holding a slot now
    retry_after: float = 1.0  # ask for a slot at most this often

    STATES: ClassVar[frozenset[str]] = frozenset({"open", "finished"})

    def validate(self) -> None:
        if self.state not in self.STATES:
            raise MessageError(f"async state {self.state!r} unknown; one of {sorted(self.STATES)}")
        if not 0 <= self.model_version <= 10_000_000:
            raise MessageError("async model_version out of range")
        if not 0 <= self.slots_free <= 1_000_000 or not 0 <= self.training <= 1_000_000:
            raise MessageError("async slot counts out of range")
        if not 0 <= self.retry_after <= 86_400:
            raise MessageError("async retry_after must be 0-86400 s")
        if len(self.run_id) > 200 or len(self.bundle_hash) > 200:
            raise MessageError("async run_id/bundle_hash too long")


@dataclass(frozen=True)
class SlotRequest(Message):
    """Agent -> orchestrator: this device is idle and eligible; may it train now?"""

    TYPE: ClassVar[str] = "slot_request"
    msg_id: str
    agent: str
    run_id: str

    def validate(self) -> None:
        validate_name(self.agent)
        if not 1 <= len(self.msg_id) <= 64 or len(self.run_id) > 200:
            raise MessageError("slot request msg_id/run_id length out of range")


for _cls in (AsyncAnnounce, SlotRequest):
    MESSAGE_TYPES.setdefault(_cls.TYPE, _cls)
